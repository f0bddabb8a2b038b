#!/usr/bin/env bash
# surge over HTTP vs Redis running the usual Lua reserve script, same machine, same run
# (issue 9, "A fair, repeatable comparison script").
#
#   bash benches/http-vs-redis.sh                    # defaults below, about 3 minutes
#   DURATION=20 CONNS_HIGH=64 CONNS_LOW=16 bash benches/http-vs-redis.sh
#
# Fair by construction:
#   - one load-generator thread on each side: `wrk -t1` against surge, redis-benchmark
#     without --threads (single-threaded) against Redis;
#   - the same connection counts on both sides: $CONNS_HIGH and $CONNS_LOW;
#   - both keep every hold: surge keeps each reservation (15-minute TTL); the Redis
#     script (benches/wrk/reserve.redis.lua) takes a new id with INCR and stores each
#     hold as its own key `hold:<id>` with the same TTL. After each run the script counts
#     what was stored (surge: the `reserved` sum over the SKUs; Redis: keys with a TTL,
#     the id counter and the units taken from stock) and prints it beside the number of
#     successful requests.
#
# What it does:
#   1. Installs wrk, redis-server, redis-tools and curl with apt-get when one is missing
#      (through sudo when not root).
#   2. Builds the release `surge` (cargo build --release -p surge-api --bin surge; the
#      binary is taken from cargo's target directory, so CARGO_TARGET_DIR is honoured),
#      or uses $SURGE_BIN when set. Starts it on a free loopback port with durability
#      `sync` and a temporary data dir; defines the SKUs S0..S<SKUS-1>.
#   3. Measures surge with wrk -t1 (benches/wrk/*.lua; each prints a RESULT line with
#      non-2xx and socket errors):
#        - GET /healthz at $CONNS_HIGH connections: the HTTP ceiling, and at $CONNS_LOW
#          (its p99 beside the reserve p99 at that count);
#        - GET /v1/skus/{sku} (with the bearer token) at $CONNS_HIGH connections, idle;
#        - the device between them (benches/device_sync.py): 512-byte pwrite +
#          fdatasync one at a time in the data dir's file system, the floor under a
#          durable answer;
#        - POST /v1/reservations, one unit of a random SKU, at $CONNS_HIGH and $CONNS_LOW;
#        - the same at $CONNS_HIGH on SKUs L0..L<SKUS-1> that have a purchase limit
#          ($LIMIT per customer) and an open sale window, each request for one of
#          $CUSTOMERS customers (issue 12: the figures must hold with limits on);
#        - the same stock read at $CONNS_HIGH while a second wrk -t1 runs reservations at
#          $WRITE_LOAD_CONNECTIONS connections beside it (started first, stopped last);
#        - POST /v1/batch with $BATCH_OPS reservations per request at $BATCH_CONNECTIONS,
#          last, on a server of its own started the same way with an empty state (step
#          5's wire runs and the read under writes run on a second one, before it): a
#          fast box would otherwise fill the room for held reservations and time
#          refusals. Only the reservations made count (refused ops are counted apart
#          and taken off).
#   4. For appendfsync always and everysec, at $CONNS_HIGH and $CONNS_LOW connections:
#      a fresh redis-server on a free loopback port (temp dir, appendonly yes), the SKUs
#      as stock keys, and $REDIS_REQUESTS EVALSHA reserve calls over random SKUs.
#   5. Measures the durable reserve again on the wire, surge at $CONNS_HIGH and $CONNS_LOW
#      connections and Redis appendfsync always at the same counts, in separate runs:
#      tcpdump on lo captures a $WIRE_SECONDS s window from the 2nd second (a Redis
#      wire run makes as many calls as its main run did in $WIRE_SECONDS + 2 s), and
#      benches/wire_latency.py pairs each request packet with its answer packet. Both
#      timestamps are the kernel's, so this is the server's latency without the load
#      generator's own delay in noticing the answer (the client-side columns carry it).
#   6. Prints three Markdown tables and the ratios against issue 9's targets; the third
#      splits each surge run's CPU per request (benches/cpu_split.py, /proc before and
#      after): the server's threads, the rest of the box, idle and stolen time.
# Everything it starts runs on 127.0.0.1 with temporary directories and is stopped (by
# its pid) and removed at the end, also on Ctrl-C. It stops nothing it did not start.
#
# Environment (defaults in brackets):
#   DURATION [15]             seconds per surge run (a trailing `s` is accepted)
#   BATCH_DURATION [5]        seconds for the /v1/batch run (on its own server: below 2M
#                             reservations/s it stays within the 10M held)
#   CONNS_HIGH [64]           connections: ceiling, reads, reserve, Redis
#   CONNS_LOW [16]            the second connection count for reserve and Redis
#   WRITE_LOAD_CONNECTIONS [16]  connections of the reservation load beside the read
#   BATCH_CONNECTIONS [16]    connections for /v1/batch
#   BATCH_OPS [1000]          reservations per /v1/batch request
#   SKUS [1000]               SKUs (surge) and stock keys (Redis) reserved at random
#   LIMIT [1000]              purchase limit per customer of the limited SKUs
#   CUSTOMERS [100000]        customers of the limited run
#   REDIS_REQUESTS [300000]   EVALSHA calls per Redis run (redis-benchmark -n)
#   WRK_TIMEOUT [5s]          wrk --timeout (slower responses count as socket errors)
#   WIRE_SECONDS [5]          length of the packet capture of each wire run
#   PRETOUCH_MIB [4096]       surge's --pretouch-mib (less where 40 % of MemAvailable is less): memory made resident at start-up,
#                             as for a sale (fresh memory's first touch costs 0.3-0.6 GB/s
#                             on a virtual machine; BENCHMARKS.md, "The first touch of memory")
#   SURGE_BIN                 use this binary instead of building one
set -euo pipefail

seconds() { # "15" or "15s" -> 15
    local d=${1%s}
    [[ $d =~ ^[0-9]+$ && $d -gt 0 ]] || { echo "not a duration in seconds: $1" >&2; exit 2; }
    echo "$d"
}
DURATION=$(seconds "${DURATION:-15}")
BATCH_DURATION=$(seconds "${BATCH_DURATION:-5}")
CONNS_HIGH=${CONNS_HIGH:-64}
CONNS_LOW=${CONNS_LOW:-16}
WRITE_LOAD_CONNECTIONS=${WRITE_LOAD_CONNECTIONS:-16}
BATCH_CONNECTIONS=${BATCH_CONNECTIONS:-16}
BATCH_OPS=${BATCH_OPS:-1000}
SKUS=${SKUS:-1000}
LIMIT=${LIMIT:-1000}
CUSTOMERS=${CUSTOMERS:-100000}
REDIS_REQUESTS=${REDIS_REQUESTS:-300000}
WRK_TIMEOUT=${WRK_TIMEOUT:-5s}
# 4 GiB, or 40 % of the memory available where that is less (one server at a time).
PRETOUCH_MIB=${PRETOUCH_MIB:-$(awk '/^MemAvailable:/ { m = int($2 / 1024 * 0.4); print (m < 4096 ? m : 4096) }' /proc/meminfo)}
WIRE_SECONDS=$(seconds "${WIRE_SECONDS:-5}")
((DURATION >= WIRE_SECONDS + 3)) || { echo "DURATION must be at least WIRE_SECONDS + 3" >&2; exit 2; }
HOLD_TTL_MS=900000 # surge's default reservation TTL (15 minutes), for the Redis holds
STOCK=1000000000000

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# log, WORK, PIDS, stop, free_port; everything started is stopped on exit.
# shellcheck source=benches/lib/processes.sh
source "$ROOT/benches/lib/processes.sh"

# ---------------------------------------------------------------- tools
SUDO=()
if [[ $(id -u) -ne 0 ]]; then SUDO=(sudo); fi
missing=()
for tool in wrk redis-server redis-benchmark redis-cli curl tcpdump python3; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    log "missing: ${missing[*]}; installing wrk redis-server redis-tools curl tcpdump python3"
    "${SUDO[@]}" apt-get update
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y wrk redis-server redis-tools \
        curl tcpdump python3
fi

# ---------------------------------------------------------------- build
# shellcheck source=benches/lib/surge_bin.sh
source "$ROOT/benches/lib/surge_bin.sh"
surge_release_bin

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- surge
ADMIN_TOKEN="bench-admin-$RANDOM$RANDOM"
SF_TOKEN="bench-sf-$RANDOM$RANDOM"
start_surge() { # data dir: a server on a new port with an empty state, SKUs S* and L* defined
    SURGE_PORT=$(free_port)
    SURGE="http://127.0.0.1:$SURGE_PORT"
    SURGE_TOKENS="admin:$ADMIN_TOKEN,storefront:$SF_TOKEN" \
    SURGE_DURABILITY=sync \
    SURGE_QUEUE_LEN_MAX=262144 \
    SURGE_PRETOUCH_MIB="$PRETOUCH_MIB" \
    RUST_LOG=warn \
        "$SURGE_BIN" --listen "127.0.0.1:$SURGE_PORT" --data-dir "$1" \
        >>"$WORK/surge.out" 2>>"$WORK/surge.err" &
    SURGE_PID=$!
    PIDS+=("$SURGE_PID")
    # Ready after its pretouch: up to 4 GiB at 0.3 GB/s, 14 s.
    wait_ready "$SURGE" 60 "$WORK/surge.err"

    log "defining S0..S$((SKUS - 1)) with on_hand $STOCK"
    for ((i = 0; i < SKUS; i++)); do echo "url = \"$SURGE/v1/skus/S$i\""; done >"$WORK/skus.curl"
    curl -fsS -X PUT -H "Authorization: Bearer $ADMIN_TOKEN" -H "Content-Type: application/json" \
        --data "{\"on_hand\":$STOCK}" -K "$WORK/skus.curl" >/dev/null
    log "defining L0..L$((SKUS - 1)) with on_hand $STOCK, $LIMIT per customer, on sale since 2020"
    for ((i = 0; i < SKUS; i++)); do echo "url = \"$SURGE/v1/skus/L$i\""; done >"$WORK/limited.curl"
    curl -fsS -X PUT -H "Authorization: Bearer $ADMIN_TOKEN" -H "Content-Type: application/json" \
        --data "{\"on_hand\":$STOCK,\"purchase_limit_per_customer\":$LIMIT,\"sale_starts_at\":\"2020-01-01T00:00:00Z\",\"sale_ends_at\":\"2999-01-01T00:00:00Z\"}" \
        -K "$WORK/limited.curl" >/dev/null
}
start_surge "$WORK/surge-data"
fresh_surge() { # data dir: stop the running server, start another with an empty state
    stop "$SURGE_PID"
    start_surge "$1"
}

# Units reserved over the S SKUs, or over the SKUs a curl config names (each
# reservation holds one unit).
surge_reserved() { # [curl config]
    curl -fsS -H "Authorization: Bearer $ADMIN_TOKEN" -K "${1:-$WORK/skus.curl}" |
        grep -o '"reserved":[0-9]*' | awk -F: '{ s += $2 } END { printf "%d\n", s }'
}

export SURGE_BENCH_TOKEN="$SF_TOKEN"
wrk_cmd() { # connections seconds script args...
    local conns=$1 secs=$2 script=$3
    shift 3
    wrk -t1 -c"$conns" -d"${secs}s" --timeout "$WRK_TIMEOUT" --latency -s "$script" "$SURGE" -- "$@"
}
result_of() { # wrk output file -> its RESULT line (fails when there is none)
    grep '^RESULT' "$1" | tail -1 | grep . || { cat "$1" >&2; echo "no RESULT in $1" >&2; exit 1; }
}
run_wrk() { # name connections seconds script args... -> RESULT line (and the run's CPU split)
    local name=$1
    shift
    log "wrk -t1 -c$1 -d${2}s: $name"
    python3 benches/cpu_split.py snap "$SURGE_PID" >"$WORK/cpu-$name.before"
    wrk_cmd "$@" >"$WORK/wrk-$name.txt" 2>&1
    python3 benches/cpu_split.py snap "$SURGE_PID" >"$WORK/cpu-$name.after"
    result_of "$WORK/wrk-$name.txt"
}
cpu_of() { # name count -> the CPU line of run `name` (benches/cpu_split.py), per `count`
    python3 benches/cpu_split.py diff "$WORK/cpu-$1.before" "$WORK/cpu-$1.after" "$2" | grep '^CPU' ||
        { echo "no CPU figures for $1" >&2; exit 1; }
}
# Packet capture of one run (see step 5 above): start it just before the load.
capture_wire() { # name port
    (
        sleep 1
        "${SUDO[@]}" timeout "$WIRE_SECONDS" tcpdump -i lo -n -s 128 -w "$WORK/wire-$1.pcap" \
            "tcp port $2 and (tcp[tcpflags] & tcp-push != 0)" >"$WORK/wire-$1.log" 2>&1 || true
    ) &
    WIRE_PID=$!
    PIDS+=("$WIRE_PID")
}
wire_wait() { # the capture's end (in this shell: a subshell cannot wait for it)
    wait "$WIRE_PID" || true
    forget "$WIRE_PID"
}
wire_result() { # name port -> WIRE line (after wire_wait)
    tcpdump -r "$WORK/wire-$1.pcap" -n -tt 2>/dev/null | python3 benches/wire_latency.py "$2" |
        grep '^WIRE' || { cat "$WORK/wire-$1.log" >&2; echo "no wire figures for $1" >&2; exit 1; }
}
field() { sed -n "s/.*[[:space:]]$1=\([0-9.]*\).*/\1/p" <<<"$2"; }
ok_requests() { echo $(($(field requests "$1") - $(field non2xx "$1"))); }
slack() { echo $(($1 + $(field socket_errors "$2"))); } # connections RESULT

# Reservations held against 2xx answers: the server may still carry out requests that
# were in flight when wrk stopped counting (at most one per connection) or that wrk
# gave up on (socket errors).
# The total once requests still in flight after a run have landed: wrk stops
# counting at the deadline, the server finishes what it accepted (bounded: 10 s).
settled_reserved() { # [curl config]
    local a b
    a=$(surge_reserved "$@")
    for _ in $(seq 1 50); do
        sleep 0.2
        b=$(surge_reserved "$@")
        [[ "$a" == "$b" ]] && break
        a=$b
    done
    echo "$a"
}
HOLD_NOTES=()
check_holds() { # label held ok_answers connections
    local verdict="ok"
    if (($2 < $3 || $2 > $3 + $4)); then verdict="MISMATCH"; fi
    HOLD_NOTES+=("$1: $2 units held for $3 2xx answers (allowance for unanswered requests: $4): $verdict")
}

SURGE_CEILING=$(run_wrk healthz "$CONNS_HIGH" "$DURATION" benches/wrk/get.lua /healthz)
SURGE_CEILING_LOW=$(run_wrk healthz-low "$CONNS_LOW" "$DURATION" benches/wrk/get.lua /healthz)
SURGE_READ=$(run_wrk read "$CONNS_HIGH" "$DURATION" benches/wrk/get.lua /v1/skus/S "$SKUS")
# The device's price for one durable write, on the log's file system, just before the
# durable runs: the floor under a durable answer's latency.
log "512-byte pwrite + fdatasync, one at a time, in the data dir's file system"
DEVICE=$(python3 benches/device_sync.py "$WORK/surge-data" 3000 5 | grep '^DEVICE') ||
    { echo "no DEVICE line" >&2; exit 1; }

before=$(settled_reserved)
SURGE_RES_HIGH=$(run_wrk reserve-high "$CONNS_HIGH" "$DURATION" benches/wrk/reserve.lua many "$SKUS")
after=$(settled_reserved)
check_holds "surge reserve, $CONNS_HIGH conns" $((after - before)) "$(ok_requests "$SURGE_RES_HIGH")" "$(slack "$CONNS_HIGH" "$SURGE_RES_HIGH")"

limited_before=$(settled_reserved "$WORK/limited.curl")
SURGE_RES_LIMITED=$(run_wrk reserve-limited "$CONNS_HIGH" "$DURATION" benches/wrk/reserve.lua limited "$SKUS" "$CUSTOMERS")
limited_after=$(settled_reserved "$WORK/limited.curl")
check_holds "surge reserve on limited SKUs, $CONNS_HIGH conns" $((limited_after - limited_before)) \
    "$(ok_requests "$SURGE_RES_LIMITED")" "$(slack "$CONNS_HIGH" "$SURGE_RES_LIMITED")"

before=$after
SURGE_RES_LOW=$(run_wrk reserve-low "$CONNS_LOW" "$DURATION" benches/wrk/reserve.lua many "$SKUS")
after=$(settled_reserved)
check_holds "surge reserve, $CONNS_LOW conns" $((after - before)) "$(ok_requests "$SURGE_RES_LOW")" "$(slack "$CONNS_LOW" "$SURGE_RES_LOW")"

# The durable reserve again, on the wire, on a second server with an empty state
# started the same way: three reserve runs at issue 9's target rate would leave the
# first one near the room for held reservations (HELD_RESERVATIONS_MAX, 10M, S and L
# SKUs together), and refusals must not be timed. Its holds are counted like theirs.
fresh_surge "$WORK/surge-data-wire"
before=$(settled_reserved)
capture_wire surge-high "$SURGE_PORT"
SURGE_RES_HIGH_W=$(run_wrk reserve-high-wire "$CONNS_HIGH" "$DURATION" benches/wrk/reserve.lua many "$SKUS")
wire_wait
WIRE_SURGE_HIGH=$(wire_result surge-high "$SURGE_PORT")
capture_wire surge-low "$SURGE_PORT"
SURGE_RES_LOW_W=$(run_wrk reserve-low-wire "$CONNS_LOW" "$DURATION" benches/wrk/reserve.lua many "$SKUS")
wire_wait
WIRE_SURGE_LOW=$(wire_result surge-low "$SURGE_PORT")
after=$(settled_reserved)
check_holds "surge reserve on the wire, $CONNS_HIGH then $CONNS_LOW conns" $((after - before)) \
    $(($(ok_requests "$SURGE_RES_HIGH_W") + $(ok_requests "$SURGE_RES_LOW_W"))) \
    $(($(slack "$CONNS_HIGH" "$SURGE_RES_HIGH_W") + $(slack "$CONNS_LOW" "$SURGE_RES_LOW_W")))

# The read again, with reservations running beside it: the writer starts a second
# before the read and stops a second after it.
before=$after
log "wrk -t1 -c$WRITE_LOAD_CONNECTIONS -d$((DURATION + 2))s in the background: reservations beside the read"
wrk_cmd "$WRITE_LOAD_CONNECTIONS" $((DURATION + 2)) benches/wrk/reserve.lua many "$SKUS" \
    >"$WORK/wrk-write-load.txt" 2>&1 &
WRITER_PID=$!
PIDS+=("$WRITER_PID")
sleep 1
SURGE_READ_LOADED=$(run_wrk read-under-writes "$CONNS_HIGH" "$DURATION" benches/wrk/get.lua /v1/skus/S "$SKUS")
wait "$WRITER_PID" || { cat "$WORK/wrk-write-load.txt" >&2; exit 1; }
forget "$WRITER_PID"
SURGE_WRITE_LOAD=$(result_of "$WORK/wrk-write-load.txt")
after=$(settled_reserved)
check_holds "surge reserve beside the read, $WRITE_LOAD_CONNECTIONS conns" $((after - before)) \
    "$(ok_requests "$SURGE_WRITE_LOAD")" "$(slack "$WRITE_LOAD_CONNECTIONS" "$SURGE_WRITE_LOAD")"

# /v1/batch on a server of its own with an empty state: a fast box fills the room for
# held reservations (HELD_RESERVATIONS_MAX, 10M) within seconds at this rate, and the
# runs before it already hold millions. Only reservations that were made count: the
# ops a batch refused (`failed_ops`, each a problem in its answer) are taken off.
fresh_surge "$WORK/surge-data-batch"
before=$(settled_reserved)
SURGE_BATCH=$(run_wrk batch "$BATCH_CONNECTIONS" "$BATCH_DURATION" benches/wrk/batch.lua "$BATCH_OPS" "$SKUS")
after=$(settled_reserved)
batch_made=$(($(field requests "$SURGE_BATCH") * BATCH_OPS - $(field failed_ops "$SURGE_BATCH")))
check_holds "surge /v1/batch, $BATCH_CONNECTIONS conns" $((after - before)) \
    "$batch_made" $(($(slack "$BATCH_CONNECTIONS" "$SURGE_BATCH") * BATCH_OPS))

stop "$SURGE_PID"

# ---------------------------------------------------------------- redis
REDIS_SCRIPT=$(cat benches/wrk/reserve.redis.lua)
# Output of redis-benchmark -> "rps p50_us p99_us p999_us" (percentiles: the first
# line of its distribution at or above the percentile).
parse_redis() {
    tr '\r' '\n' <"$1" | awk '
        /throughput summary:/ { rps = $3 }
        /^ *[0-9.]+% <= [0-9.]+ milliseconds/ {
            p = $1; sub("%", "", p); ms = $3
            if (p50 == "" && p + 0 >= 50) p50 = ms
            if (p99 == "" && p + 0 >= 99) p99 = ms
            if (p999 == "" && p + 0 >= 99.9) p999 = ms
        }
        END { printf "%s %d %d %d\n", rps, p50 * 1000, p99 * 1000, p999 * 1000 }
    '
}
redis_field() { # "rps p50 p99 p999" index
    local a
    read -r -a a <<<"$1"
    echo "${a[$2]}"
}
run_redis() { # fsync-policy connections [wire] -> sets REDIS_<POLICY>_<CONNS>[_FAILED]
    # (with `wire`: REDIS_WIRE_<POLICY>_<CONNS> for the client side and
    # WIRE_REDIS_<POLICY>_<CONNS> for the capture, and its holds are checked too)
    local policy=$1 conns=$2 wire=${3:-} port dir pid sha rc n=$REDIS_REQUESTS
    if [[ -n $wire ]]; then
        # As long as the capture and a second on each side, at the main run's rate.
        local main="REDIS_${policy^^}_$conns"
        n=$(awk -v rps="$(redis_field "${!main}" 0)" -v s=$((WIRE_SECONDS + 2)) -v min="$REDIS_REQUESTS" \
            'BEGIN { n = int(rps * s); print (n > min) ? n : min }')
    fi
    port=$(free_port)
    dir="$WORK/redis-$policy-$conns${wire:+-wire}"
    mkdir -p "$dir"
    redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --save '' \
        --appendonly yes --appendfsync "$policy" --daemonize no \
        >"$dir/redis.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    for _ in $(seq 1 100); do
        if redis-cli -p "$port" ping >/dev/null 2>&1; then break; fi
        sleep 0.1
    done
    # redis-benchmark writes __rand_int__ as a 12-digit zero-padded number.
    for ((i = 0; i < SKUS; i++)); do printf 'SET stock:%012d %s\n' "$i" "$STOCK"; done |
        redis-cli -p "$port" >/dev/null
    sha=$(redis-cli -p "$port" script load "$REDIS_SCRIPT")
    log "redis-benchmark -c$conns -n$n: EVALSHA reserve, appendfsync $policy"
    rc=0
    if [[ -n $wire ]]; then capture_wire "redis-$policy-$conns" "$port"; fi
    redis-benchmark -h 127.0.0.1 -p "$port" -n "$n" -c "$conns" -r "$SKUS" \
        EVALSHA "$sha" 2 stock:__rand_int__ hold:seq 1 "$HOLD_TTL_MS" >"$dir/bench.txt" 2>&1 || rc=$?
    # What Redis kept: keys with a TTL (only holds have one), the id counter, and the
    # units taken from the stock keys.
    local holds ids units
    holds=$(redis-cli -p "$port" info keyspace | tr -d '\r' | sed -n 's/^db0:.*expires=\([0-9]*\).*/\1/p')
    holds=${holds:-0}
    ids=$(redis-cli -p "$port" get hold:seq)
    ids=${ids:-0}
    units=$(redis-cli -p "$port" eval "local s = 0 for i = 0, tonumber(ARGV[1]) - 1 do s = s + tonumber(ARGV[2]) - tonumber(redis.call('GET', string.format('stock:%012d', i))) end return s" 0 "$SKUS" "$STOCK")
    local verdict="ok"
    if ((rc != 0 || holds != n || ids != n || units != n)); then
        verdict="MISMATCH (redis-benchmark exit $rc; see below)"
        tr '\r' '\n' <"$dir/bench.txt" | grep -iv '% <=' | grep -i 'error' | head -3 >&2 || true
    fi
    HOLD_NOTES+=("redis appendfsync $policy, $conns conns${wire:+ (wire run)}: $holds holds stored (hold:seq $ids, $units units taken) for $n calls: $verdict")
    if [[ -n $wire ]]; then
        local wire_line
        wire_wait
        wire_line=$(wire_result "redis-$policy-$conns" "$port")
        printf -v "REDIS_WIRE_${policy^^}_$conns" '%s' "$(parse_redis "$dir/bench.txt")"
        printf -v "WIRE_REDIS_${policy^^}_$conns" '%s' "$wire_line"
    else
        printf -v "REDIS_${policy^^}_$conns" '%s' "$(parse_redis "$dir/bench.txt")"
        printf -v "REDIS_${policy^^}_${conns}_FAILED" '%s' $((n - holds))
    fi
    stop "$pid"
}
for policy in always everysec; do
    for conns in "$CONNS_HIGH" "$CONNS_LOW"; do
        run_redis "$policy" "$conns"
    done
done
for conns in "$CONNS_HIGH" "$CONNS_LOW"; do
    run_redis always "$conns" wire
done

# ---------------------------------------------------------------- report
ms() { awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
thousands() { LC_ALL=C printf '%.0f' "$1" | sed ':a;s/\B[0-9]\{3\}\>/,&/;ta'; }
surge_row() { # label RESULT
    printf '| %s | %s | %s | %s | %s | %s / %s |\n' "$1" "$(thousands "$(field rps "$2")")" \
        "$(ms "$(field p50_us "$2")")" "$(ms "$(field p99_us "$2")")" "$(ms "$(field p999_us "$2")")" \
        "$(field non2xx "$2")" "$(field socket_errors "$2")"
}
redis_row() { # label "rps p50 p99 p999" failed
    local rps p50 p99 p999
    read -r rps p50 p99 p999 <<<"$2"
    printf '| %s | %s | %s | %s | %s | %s failed |\n' "$1" "$(thousands "$rps")" \
        "$(ms "$p50")" "$(ms "$p99")" "$(ms "$p999")" "$3"
}
verdict() { # value op target
    awk -v v="$1" -v t="$3" -v op="$2" 'BEGIN {
        met = (op == ">=") ? (v >= t) : (v <= t)
        print met ? "met" : "**missed**"
    }'
}
rv() { local name="REDIS_$1"; echo "${!name}"; } # POLICY_CONNS[_FAILED] -> its value
wv() { local name="WIRE_REDIS_$1"; echo "${!name}"; } # POLICY_CONNS -> its WIRE line

rev=$(git rev-parse --short HEAD 2>/dev/null || echo '?')
if [[ -n $(git status --porcelain 2>/dev/null) ]]; then rev="$rev (with uncommitted changes)"; fi
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
echo
echo "surge $rev, durability sync, vs $(redis-server --version | awk '{print $1, $2, $3}'); $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "$(nproc) CPUs ($cpu); load average before the run: $LOAD_BEFORE; $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}') -t1, redis-benchmark single-threaded"
echo "surge runs ${DURATION} s each (batch ${BATCH_DURATION} s), each server with --pretouch-mib $PRETOUCH_MIB; Redis runs $REDIS_REQUESTS calls each (wire runs: see below)"
echo
echo "| what | req/s | p50 ms | p99 ms | p99.9 ms | non-2xx / socket errors |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
surge_row "surge \`GET /healthz\`, the HTTP ceiling, $CONNS_HIGH conns" "$SURGE_CEILING"
surge_row "surge reserve (sync), $CONNS_HIGH conns" "$SURGE_RES_HIGH"
surge_row "surge reserve (sync), $CONNS_HIGH conns, limited SKUs ($LIMIT per customer, a sale window), $CUSTOMERS customers" "$SURGE_RES_LIMITED"
surge_row "surge reserve (sync), $CONNS_LOW conns" "$SURGE_RES_LOW"
surge_row "surge stock read \`GET /v1/skus/{sku}\`, idle, $CONNS_HIGH conns" "$SURGE_READ"
surge_row "surge stock read, $CONNS_HIGH conns, with reserve load beside it" "$SURGE_READ_LOADED"
surge_row "(the reserve load beside that read, $WRITE_LOAD_CONNECTIONS conns)" "$SURGE_WRITE_LOAD"
# Reservations made per second: wrk's seconds are its requests over its rate.
batch_res=$(awk -v made="$batch_made" -v n="$(field requests "$SURGE_BATCH")" -v r="$(field rps "$SURGE_BATCH")" \
    'BEGIN { printf "%.0f", (n > 0 ? made * r / n : 0) }')
surge_row "surge \`/v1/batch\`, $BATCH_OPS reservations/request, $BATCH_CONNECTIONS conns (= $(thousands "$batch_res") reservations/s)" "$SURGE_BATCH"
redis_row "Redis EVALSHA reserve, appendfsync always, $CONNS_HIGH conns" "$(rv "ALWAYS_$CONNS_HIGH")" "$(rv "ALWAYS_${CONNS_HIGH}_FAILED")"
redis_row "Redis EVALSHA reserve, appendfsync always, $CONNS_LOW conns" "$(rv "ALWAYS_$CONNS_LOW")" "$(rv "ALWAYS_${CONNS_LOW}_FAILED")"
redis_row "Redis EVALSHA reserve, appendfsync everysec, $CONNS_HIGH conns" "$(rv "EVERYSEC_$CONNS_HIGH")" "$(rv "EVERYSEC_${CONNS_HIGH}_FAILED")"
redis_row "Redis EVALSHA reserve, appendfsync everysec, $CONNS_LOW conns" "$(rv "EVERYSEC_$CONNS_LOW")" "$(rv "EVERYSEC_${CONNS_LOW}_FAILED")"

echo
echo "The device, in the data dir's file system just before the durable runs: $(field count "$DEVICE") \
512-byte pwrite + fdatasync one at a time, $(thousands "$(field syncs_per_s "$DEVICE")") syncs/s; \
mean $(ms "$(field mean_us "$DEVICE")"), p50 $(ms "$(field p50_us "$DEVICE")"), \
p99 $(ms "$(field p99_us "$DEVICE")"), p99.9 $(ms "$(field p999_us "$DEVICE")"), max $(ms "$(field max_us "$DEVICE")") ms."
echo
echo "On the wire: separate runs, tcpdump on lo for $WIRE_SECONDS s from the 2nd second; latency from the"
echo "request packet to its answer packet (the kernel's timestamps), beside the load generator's own"
echo "figures for the same run."
echo
echo "| what | req/s | conns / (req/s), ms | client mean; p50 / p99 / p99.9 ms | wire mean; p50 / p99 / p99.9 / max ms | pairs |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
# Little's law: with one request in flight per connection the mean latency is at
# most conns / (req/s); a client mean above that is the client's own accounting.
little() { awk -v c="$1" -v r="$2" 'BEGIN { if (r > 0) printf "%.2f", c / r * 1000; else print "-" }'; }
wire_cols() { # WIRE line -> "mean; p50 / p99 / p99.9 / max | count"
    printf '%s; %s / %s / %s / %s | %s' "$(ms "$(field mean_us "$1")")" "$(ms "$(field p50_us "$1")")" \
        "$(ms "$(field p99_us "$1")")" "$(ms "$(field p999_us "$1")")" "$(ms "$(field max_us "$1")")" \
        "$(thousands "$(field count "$1")")"
}
surge_wire_row() { # label connections RESULT WIRE
    printf '| %s | %s | %s | %s; %s / %s / %s | %s |\n' "$1" "$(thousands "$(field rps "$3")")" \
        "$(little "$2" "$(field rps "$3")")" "$(ms "$(field mean_us "$3")")" \
        "$(ms "$(field p50_us "$3")")" "$(ms "$(field p99_us "$3")")" "$(ms "$(field p999_us "$3")")" \
        "$(wire_cols "$4")"
}
redis_wire_row() { # label connections "rps p50 p99 p999" WIRE
    local rps p50 p99 p999
    read -r rps p50 p99 p999 <<<"$3"
    printf '| %s | %s | %s | -; %s / %s / %s | %s |\n' "$1" "$(thousands "$rps")" "$(little "$2" "$rps")" \
        "$(ms "$p50")" "$(ms "$p99")" "$(ms "$p999")" "$(wire_cols "$4")"
}
surge_wire_row "surge reserve (sync), $CONNS_HIGH conns" "$CONNS_HIGH" "$SURGE_RES_HIGH_W" "$WIRE_SURGE_HIGH"
surge_wire_row "surge reserve (sync), $CONNS_LOW conns" "$CONNS_LOW" "$SURGE_RES_LOW_W" "$WIRE_SURGE_LOW"
redis_wire_row "Redis EVALSHA reserve, appendfsync always, $CONNS_HIGH conns" "$CONNS_HIGH" "$(rv "WIRE_ALWAYS_$CONNS_HIGH")" "$(wv "ALWAYS_$CONNS_HIGH")"
redis_wire_row "Redis EVALSHA reserve, appendfsync always, $CONNS_LOW conns" "$CONNS_LOW" "$(rv "WIRE_ALWAYS_$CONNS_LOW")" "$(wv "ALWAYS_$CONNS_LOW")"

# Where each run's CPU went (benches/cpu_split.py): the server's threads and the rest
# of the box per request (per reservation for the batch run), the idle and stolen share.
echo
echo "CPU per request (per reservation for /v1/batch), from /proc before and after each run: the server"
echo "process and its threads, the rest of the box (wrk and its share of the loopback stack), the"
echo "capacity of both cores left idle or taken by the hypervisor."
echo
echo "| what | req/s | server µs | writer / sync / follower / http / other threads µs | rest of the box µs | idle % | steal % |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
cpu_row() { # label name RESULT count
    local c
    c=$(cpu_of "$2" "$4")
    printf '| %s | %s | %s | %s / %s / %s / %s / %s | %s | %s | %s |\n' "$1" "$(thousands "$(field rps "$3")")" \
        "$(field server_us "$c")" "$(field writer_us "$c")" "$(field sync_us "$c")" "$(field follower_us "$c")" \
        "$(field http_us "$c")" "$(field other_threads_us "$c")" "$(field rest_us "$c")" \
        "$(field idle_pct "$c")" "$(field steal_pct "$c")"
}
cpu_row "\`GET /healthz\`, $CONNS_HIGH conns" healthz "$SURGE_CEILING" "$(field requests "$SURGE_CEILING")"
cpu_row "\`GET /healthz\`, $CONNS_LOW conns" healthz-low "$SURGE_CEILING_LOW" "$(field requests "$SURGE_CEILING_LOW")"
cpu_row "stock read, idle, $CONNS_HIGH conns" read "$SURGE_READ" "$(field requests "$SURGE_READ")"
cpu_row "reserve (sync), $CONNS_HIGH conns" reserve-high "$SURGE_RES_HIGH" "$(field requests "$SURGE_RES_HIGH")"
cpu_row "reserve (sync), $CONNS_LOW conns" reserve-low "$SURGE_RES_LOW" "$(field requests "$SURGE_RES_LOW")"
cpu_row "reserve (sync), $CONNS_HIGH conns, limited SKUs" reserve-limited "$SURGE_RES_LIMITED" "$(field requests "$SURGE_RES_LIMITED")"
cpu_row "stock read beside the reserve load (both loads' CPU, per read)" read-under-writes "$SURGE_READ_LOADED" "$(field requests "$SURGE_READ_LOADED")"
cpu_row "\`/v1/batch\`, per reservation" batch "$SURGE_BATCH" "$batch_made"
CPU_CEILING=$(cpu_of healthz "$(field requests "$SURGE_CEILING")")
CPU_RES_HIGH=$(cpu_of reserve-high "$(field requests "$SURGE_RES_HIGH")")

always_high=$(rv "ALWAYS_$CONNS_HIGH")
always_low=$(rv "ALWAYS_$CONNS_LOW")
ceiling=$(field rps "$SURGE_CEILING")
r_res_always=$(ratio "$(field rps "$SURGE_RES_HIGH")" "$(redis_field "$always_high" 0)")
r_res_always_low=$(ratio "$(field rps "$SURGE_RES_LOW")" "$(redis_field "$always_low" 0)")
r_res_ceiling=$(ratio "$(field rps "$SURGE_RES_HIGH")" "$ceiling")
r_read=$(ratio "$(field rps "$SURGE_READ")" "$ceiling")
r_read_loaded=$(ratio "$(field rps "$SURGE_READ_LOADED")" "$ceiling")
p99_high=$(ms "$(field p99_us "$SURGE_RES_HIGH")")
p99_low=$(ms "$(field p99_us "$SURGE_RES_LOW")")
p99_read=$(ms "$(field p99_us "$SURGE_READ")")
p99_read_loaded=$(ms "$(field p99_us "$SURGE_READ_LOADED")")
non2xx=0
for r in "$SURGE_CEILING" "$SURGE_RES_HIGH" "$SURGE_RES_LIMITED" "$SURGE_RES_LOW" "$SURGE_RES_HIGH_W" "$SURGE_RES_LOW_W" \
    "$SURGE_READ" "$SURGE_READ_LOADED" "$SURGE_WRITE_LOAD" "$SURGE_BATCH"; do
    non2xx=$((non2xx + $(field non2xx "$r") + $(field socket_errors "$r")))
done
echo
echo "Issue 9's targets, from this run:"
echo "- surge reserve / Redis always, $CONNS_HIGH conns: $r_res_always (target >= 1.2: $(verdict "$r_res_always" '>=' 1.2)); at $CONNS_LOW conns: $r_res_always_low"
cpu_per_request() { awk -v a="$(field server_us "$1")" -v b="$(field rest_us "$1")" 'BEGIN { printf "%.2f", a + b }'; }
echo "- surge reserve / surge /healthz ceiling, $CONNS_HIGH conns: $r_res_ceiling (target >= 0.85: $(verdict "$r_res_ceiling" '>=' 0.85)); \
CPU per request, server + rest of the box: /healthz $(field server_us "$CPU_CEILING") + $(field rest_us "$CPU_CEILING") µs \
(idle $(field idle_pct "$CPU_CEILING") %), reserve $(field server_us "$CPU_RES_HIGH") + $(field rest_us "$CPU_RES_HIGH") µs \
(idle $(field idle_pct "$CPU_RES_HIGH") %): with both cores busy the rates go as the inverse, \
$(ratio "$(cpu_per_request "$CPU_CEILING")" "$(cpu_per_request "$CPU_RES_HIGH")")"
p99_ceiling=$(ms "$(field p99_us "$SURGE_CEILING")")
p99_ceiling_low=$(ms "$(field p99_us "$SURGE_CEILING_LOW")")
echo "- reserve p99: $p99_high ms at $CONNS_HIGH conns (target <= 2: $(verdict "$p99_high" '<=' 2)), $p99_low ms at $CONNS_LOW conns (target <= 1: $(verdict "$p99_low" '<=' 1)); \
/healthz's own p99 in this run: $p99_ceiling ms at $CONNS_HIGH conns, $p99_ceiling_low ms at $CONNS_LOW"
wire_high=$(ms "$(field p99_us "$WIRE_SURGE_HIGH")")
wire_low=$(ms "$(field p99_us "$WIRE_SURGE_LOW")")
echo "- reserve p99 on the wire: $wire_high ms at $CONNS_HIGH conns ($(verdict "$wire_high" '<=' 2)), $wire_low ms at $CONNS_LOW conns ($(verdict "$wire_low" '<=' 1)); Redis always on the wire: $(ms "$(field p99_us "$(wv "ALWAYS_$CONNS_HIGH")")") and $(ms "$(field p99_us "$(wv "ALWAYS_$CONNS_LOW")")") ms"
device_p99=$(ms "$(field p99_us "$DEVICE")")
echo "- the device's own fdatasync p99 in this run: $device_p99 ms (a durable answer waits for its sync, and for the one in progress when it arrived); reserve p99 on the wire / device p99: $(ratio "$wire_high" "$device_p99") at $CONNS_HIGH conns, $(ratio "$wire_low" "$device_p99") at $CONNS_LOW"
echo "- stock read / ceiling: $r_read idle (target >= 0.9: $(verdict "$r_read" '>=' 0.9)), $r_read_loaded with the reserve load beside it"
echo "- stock read p99: $p99_read ms idle, $p99_read_loaded ms with the reserve load (target <= 2: $(verdict "$p99_read" '<=' 2) / $(verdict "$p99_read_loaded" '<=' 2)); /healthz's own p99 at $CONNS_HIGH conns: $p99_ceiling ms"
echo "- /v1/batch: $(thousands "$batch_res") reservations/s (target >= 1,000,000: $(verdict "$batch_res" '>=' 1000000)); batches with a refused op: $(field failed_batches "$SURGE_BATCH"), ops refused: $(field failed_ops "$SURGE_BATCH") (not counted)"
echo "- non-2xx and socket errors over all surge runs: $non2xx (target 0: $(verdict "$non2xx" '<=' 0))"
r_limited=$(ratio "$(field rps "$SURGE_RES_LIMITED")" "$(field rps "$SURGE_RES_HIGH")")
echo "- issue 12: reserve on limited SKUs / plain reserve, $CONNS_HIGH conns: $r_limited req/s; p99 $(ms "$(field p99_us "$SURGE_RES_LIMITED")") ms against $p99_high ms"
echo
echo "Holds kept (every successful reservation stored, on both sides):"
for note in "${HOLD_NOTES[@]}"; do echo "- $note"; done
