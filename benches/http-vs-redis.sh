#!/usr/bin/env bash
# surge over HTTP vs Redis running the usual Lua reserve script, on this machine.
#
#   benches/http-vs-redis.sh            # defaults below
#   DURATION=30s CONNECTIONS=64 benches/http-vs-redis.sh
#
# Builds the release `surge`, starts it on a loopback port with durability `sync` and
# a temporary data dir, defines the SKUs, and measures with wrk:
#   - one reservation per request (POST /v1/reservations), one hot SKU;
#   - the same over many SKUs (a random one of $SKUS per request);
#   - POST /v1/batch with $BATCH_OPS reservations per request.
# Then starts redis-server on a loopback port (its own temp dir, appendonly yes with
# appendfsync always, then again with everysec), loads the reserve script (check the
# stock key, DECRBY, store the hold with a TTL) and measures EVALSHA with
# redis-benchmark at the same concurrency, hot key and many keys.
# Prints a Markdown table. Installs nothing; stops only the processes it started.
set -euo pipefail

DURATION=${DURATION:-20s}
BATCH_DURATION=${BATCH_DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
BATCH_CONNECTIONS=${BATCH_CONNECTIONS:-16}
BATCH_OPS=${BATCH_OPS:-1000}
SKUS=${SKUS:-1000}
REDIS_REQUESTS=${REDIS_REQUESTS:-200000}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

missing=()
for tool in wrk redis-server redis-benchmark redis-cli curl; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "missing: ${missing[*]}" >&2
    echo "install them with: sudo apt-get install -y wrk redis-server redis-tools curl" >&2
    exit 1
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/surge-bench.XXXXXX")
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "# $*" >&2; }

# A free loopback TCP port (nothing answers a connect to it).
free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 20000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
}

log "building surge (release)"
cargo build --release --quiet -p surge-api --bin surge
SURGE_BIN="$ROOT/target/release/surge"

# ---------------------------------------------------------------- surge
ADMIN_TOKEN="bench-admin-$RANDOM$RANDOM"
SF_TOKEN="bench-sf-$RANDOM$RANDOM"
SURGE_PORT=$(free_port)
SURGE_TOKENS="admin:$ADMIN_TOKEN,storefront:$SF_TOKEN" \
SURGE_DURABILITY=sync \
SURGE_QUEUE_LEN_MAX=262144 \
RUST_LOG=warn \
    "$SURGE_BIN" --listen "127.0.0.1:$SURGE_PORT" --data-dir "$WORK/surge-data" \
    >"$WORK/surge.out" 2>"$WORK/surge.err" &
PIDS+=($!)
SURGE="http://127.0.0.1:$SURGE_PORT"
for _ in $(seq 1 300); do
    if curl -fsS "$SURGE/readyz" >/dev/null 2>&1; then break; fi
    sleep 0.1
done
curl -fsS "$SURGE/readyz" >/dev/null || { cat "$WORK/surge.err" >&2; exit 1; }

log "defining HOT and S0..S$((SKUS - 1))"
{
    echo "url = \"$SURGE/v1/skus/HOT\""
    for ((i = 0; i < SKUS; i++)); do
        echo "url = \"$SURGE/v1/skus/S$i\""
    done
} >"$WORK/define.curl"
curl -fsS -X PUT -H "Authorization: Bearer $ADMIN_TOKEN" -H "Content-Type: application/json" \
    --data '{"on_hand":1000000000000}' -K "$WORK/define.curl" >/dev/null

export SURGE_BENCH_TOKEN="$SF_TOKEN"
run_wrk() { # name connections duration script args...
    local name=$1 conns=$2 dur=$3 script=$4
    shift 4
    log "wrk: $name"
    wrk -t"$THREADS" -c"$conns" -d"$dur" --latency -s "$script" "$SURGE" -- "$@" \
        >"$WORK/wrk-$name.txt" 2>&1
    grep '^RESULT' "$WORK/wrk-$name.txt" | tail -1
}
SURGE_HOT=$(run_wrk hot "$CONNECTIONS" "$DURATION" benches/wrk/reserve.lua hot)
SURGE_MANY=$(run_wrk many "$CONNECTIONS" "$DURATION" benches/wrk/reserve.lua many "$SKUS")
SURGE_BATCH=$(run_wrk batch "$BATCH_CONNECTIONS" "$BATCH_DURATION" benches/wrk/batch.lua "$BATCH_OPS" "$SKUS")
HELD=$(curl -fsS -H "Authorization: Bearer $ADMIN_TOKEN" "$SURGE/v1/skus/HOT" | sed -n 's/.*"reserved":\([0-9]*\).*/\1/p')
log "surge HOT reserved after the run: $HELD"

# ---------------------------------------------------------------- redis
REDIS_SCRIPT=$(cat benches/wrk/reserve.redis.lua)
# Output of redis-benchmark -> "rps p50_us p99_us p999_us" (percentiles: the first
# line of its distribution at or above the percentile).
parse_redis() {
    awk '
        /throughput summary:/ { rps = $3 }
        /^[0-9.]+% <= [0-9.]+ milliseconds/ {
            p = $1; sub("%", "", p); ms = $3
            if (p50 == "" && p + 0 >= 50) p50 = ms
            if (p99 == "" && p + 0 >= 99) p99 = ms
            if (p999 == "" && p + 0 >= 99.9) p999 = ms
        }
        END { printf "%s %d %d %d\n", rps, p50 * 1000, p99 * 1000, p999 * 1000 }
    ' "$1"
}
run_redis() { # fsync-policy -> sets REDIS_<POLICY>_HOT / _MANY
    local policy=$1 port dir pid sha
    port=$(free_port)
    dir="$WORK/redis-$policy"
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
    redis-cli -p "$port" set stock:HOT 1000000000000 >/dev/null
    # redis-benchmark writes __rand_int__ as a 12-digit zero-padded number.
    for ((i = 0; i < SKUS; i++)); do printf 'SET stock:%012d 1000000000000\n' "$i"; done |
        redis-cli -p "$port" >/dev/null
    sha=$(redis-cli -p "$port" script load "$REDIS_SCRIPT")
    log "redis-benchmark: appendfsync $policy, hot key"
    redis-benchmark -h 127.0.0.1 -p "$port" -n "$REDIS_REQUESTS" -c "$CONNECTIONS" -r 100000000 \
        EVALSHA "$sha" 2 stock:HOT hold:__rand_int__ 1 900000 >"$dir/hot.txt" 2>&1
    log "redis-benchmark: appendfsync $policy, many keys"
    redis-benchmark -h 127.0.0.1 -p "$port" -n "$REDIS_REQUESTS" -c "$CONNECTIONS" -r "$SKUS" \
        EVALSHA "$sha" 2 stock:__rand_int__ hold:__rand_int__ 1 900000 >"$dir/many.txt" 2>&1
    # Check that the script really held stock (a missing key would make it a no-op).
    local held_hot held_many
    held_hot=$(redis-cli -p "$port" eval "return 1000000000000 - tonumber(redis.call('GET', KEYS[1]))" 1 stock:HOT)
    held_many=$(redis-cli -p "$port" eval "local s = 0 for i = 0, tonumber(ARGV[1]) - 1 do s = s + 1000000000000 - tonumber(redis.call('GET', string.format('stock:%012d', i))) end return s" 0 "$SKUS")
    log "redis appendfsync $policy: units held: hot $held_hot, many $held_many (of $REDIS_REQUESTS requests each)"
    printf -v "REDIS_${policy^^}_HELD" '%s' "hot $held_hot, many $held_many"
    printf -v "REDIS_${policy^^}_HOT" '%s' "$(parse_redis "$dir/hot.txt")"
    printf -v "REDIS_${policy^^}_MANY" '%s' "$(parse_redis "$dir/many.txt")"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
run_redis always
run_redis everysec

# ---------------------------------------------------------------- report
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$2"; }
ms() { awk -v us="$1" 'BEGIN { printf "%.3f", us / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
surge_row() { # label result unit-multiplier
    local rps
    rps=$(field rps "$2")
    printf '| %s | %.0f | %s | %s | %s | %s |\n' "$1" "$(awk -v r="$rps" -v m="$3" 'BEGIN { print r * m }')" \
        "$(ms "$(field p50_us "$2")")" "$(ms "$(field p99_us "$2")")" "$(ms "$(field p999_us "$2")")" \
        "$(field non2xx "$2")/$(field socket_errors "$2")"
}
redis_row() { # label "rps p50 p99 p999"
    read -r rps p50 p99 p999 <<<"$2"
    printf '| %s | %.0f | %s | %s | %s | - |\n' "$1" "$rps" "$(ms "$p50")" "$(ms "$p99")" "$(ms "$p999")"
}

echo
echo "surge $(git rev-parse --short HEAD 2>/dev/null || echo '?') vs $(redis-server --version | awk '{print $1, $2, $3}'); $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)); $CONNECTIONS connections"
echo
echo "| what | requests/s | p50 ms | p99 ms | p99.9 ms | non-2xx/socket errors |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
surge_row "surge, 1 reservation/request, hot SKU (wrk -c$CONNECTIONS, sync)" "$SURGE_HOT" 1
surge_row "surge, 1 reservation/request, $SKUS SKUs (wrk -c$CONNECTIONS, sync)" "$SURGE_MANY" 1
surge_row "surge /v1/batch, $BATCH_OPS reservations/request (wrk -c$BATCH_CONNECTIONS, sync)" "$SURGE_BATCH" 1
redis_row "redis EVALSHA reserve, hot key, appendfsync always" "$REDIS_ALWAYS_HOT"
redis_row "redis EVALSHA reserve, $SKUS keys, appendfsync always" "$REDIS_ALWAYS_MANY"
redis_row "redis EVALSHA reserve, hot key, appendfsync everysec" "$REDIS_EVERYSEC_HOT"
redis_row "redis EVALSHA reserve, $SKUS keys, appendfsync everysec" "$REDIS_EVERYSEC_MANY"
echo
batch_rps=$(field rps "$SURGE_BATCH")
echo "- /v1/batch: $(awk -v r="$batch_rps" -v n="$BATCH_OPS" 'BEGIN { printf "%.0f", r * n }') reservations/s ($BATCH_OPS per request; batches with a failed op: $(field failed_batches "$SURGE_BATCH"))"
read -r ah _ <<<"$REDIS_ALWAYS_HOT"
read -r eh _ <<<"$REDIS_EVERYSEC_HOT"
read -r am _ <<<"$REDIS_ALWAYS_MANY"
read -r em _ <<<"$REDIS_EVERYSEC_MANY"
echo "- hot SKU: surge / redis-always = $(ratio "$(field rps "$SURGE_HOT")" "$ah"), surge / redis-everysec = $(ratio "$(field rps "$SURGE_HOT")" "$eh")"
echo "- $SKUS SKUs: surge / redis-always = $(ratio "$(field rps "$SURGE_MANY")" "$am"), surge / redis-everysec = $(ratio "$(field rps "$SURGE_MANY")" "$em")"
echo "- units held after the runs: surge HOT $HELD; redis always: $REDIS_ALWAYS_HELD; redis everysec: $REDIS_EVERYSEC_HELD (of $REDIS_REQUESTS requests each)"
