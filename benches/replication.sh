#!/usr/bin/env bash
# Durable reservations over HTTP with and without replication to NATS JetStream, in one
# run on one machine (issue 13, "Measured"), and the standby's lag under that load.
#
#   bash benches/replication.sh                # about 2 minutes
#   DURATION=20 CONNS=64 bash benches/replication.sh
#
# For each mode, a fresh nats-server (JetStream, temp store) and a fresh surge leader
# (release build, temp data dir), $SKUS SKUs, then `wrk -t1 -c$CONNS` reserving one
# unit of a random SKU (benches/wrk/reserve.lua) for $DURATION seconds:
#   - sync:                 the local commit only (no NATS);
#   - sync + replicate-to:  the local commit; publishing trails it;
#   - replicated:           the local commit AND the stream's acknowledgement;
#   - replicated + standby: the same with a standby following the stream; its
#                           /readyz lag (LSNs, seconds) is sampled every 0.2 s.
# Prints one Markdown table. Everything runs on 127.0.0.1 and is stopped (by pid) and
# removed at the end. nats-server comes from PATH (.ci/setup installs it).
#
# Environment (defaults in brackets): DURATION [15] seconds per run, CONNS [64],
# SKUS [1000], SURGE_BIN (use this binary instead of building one).
set -euo pipefail
DURATION=${DURATION:-15}
CONNS=${CONNS:-64}
SKUS=${SKUS:-1000}
STOCK=1000000000000

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=benches/lib/processes.sh
source "$ROOT/benches/lib/processes.sh"

for tool in wrk curl nats-server; do
    command -v "$tool" >/dev/null 2>&1 || { echo "missing $tool (bash .ci/setup; apt-get install wrk)" >&2; exit 1; }
done
# shellcheck source=benches/lib/surge_bin.sh
source "$ROOT/benches/lib/surge_bin.sh"
surge_release_bin


start_nats() { # name -> sets NATS_URL, NATS_PID
    local port
    port=$(free_port)
    nats-server -js -a 127.0.0.1 -p "$port" -sd "$WORK/$1-js" >"$WORK/$1-nats.log" 2>&1 &
    NATS_PID=$!
    PIDS+=("$NATS_PID")
    NATS_URL="nats://127.0.0.1:$port"
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return
        sleep 0.05
    done
    echo "nats-server did not start" >&2
    exit 1
}

start_surge() { # name durability extra-env... -> sets SURGE_URL, SURGE_PID
    local name=$1 durability=$2 port
    shift 2
    port=$(free_port)
    env SURGE_DURABILITY="$durability" SURGE_QUEUE_LEN_MAX=262144 RUST_LOG=warn "$@" \
        "$SURGE_BIN" --listen "127.0.0.1:$port" --data-dir "$WORK/$name-data" \
        >"$WORK/$name.out" 2>"$WORK/$name.err" &
    SURGE_PID=$!
    PIDS+=("$SURGE_PID")
    SURGE_URL="http://127.0.0.1:$port"
    wait_ready "$SURGE_URL" 30
}

define_skus() { # url
    for ((i = 0; i < SKUS; i++)); do echo "url = \"$1/v1/skus/S$i\""; done >"$WORK/skus.curl"
    curl -fsS -X PUT -H "Content-Type: application/json" --data "{\"on_hand\":$STOCK}" \
        -K "$WORK/skus.curl" >/dev/null
}

reserve_load() { # url name -> RESULT line
    log "wrk -t1 -c$CONNS -d${DURATION}s reserve: $2"
    wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 5s --latency -s benches/wrk/reserve.lua \
        "$1" -- many "$SKUS" >"$WORK/wrk-$2.txt" 2>&1
    grep '^RESULT' "$WORK/wrk-$2.txt" | tail -1 | grep . || { cat "$WORK/wrk-$2.txt" >&2; exit 1; }
}
field() { sed -n "s/.*[[:space:]]$1=\([0-9.]*\).*/\1/p" <<<"$2"; }

# Mean writer loop iteration (µs) so far, from /metrics: publishing must not add to it.
writer_iteration_us() { # url
    curl -fsS "$1/metrics" | awk '/^surge_writer_iteration_seconds_sum/ { s = $2 }
        /^surge_writer_iteration_seconds_count/ { n = $2 } END { printf "%.1f", n ? s / n * 1e6 : 0 }'
}

ROWS=()
row() { # label RESULT writer-iteration-us [note]
    ROWS+=("| $1 | $(field rps "$2") | $(field p50_us "$2") | $(field p99_us "$2") | $(field non2xx "$2") | $3 | ${4:-} |")
}

# ---------------------------------------------------------------- sync
start_surge sync sync
define_skus "$SURGE_URL"
SYNC=$(reserve_load "$SURGE_URL" sync)
row "sync (no NATS)" "$SYNC" "$(writer_iteration_us "$SURGE_URL")"
stop "$SURGE_PID"

# ---------------------------------------------------------------- sync + replicate-to
start_nats trail
start_surge trail sync SURGE_REPLICATE_TO="$NATS_URL"
define_skus "$SURGE_URL"
TRAIL=$(reserve_load "$SURGE_URL" trail)
row "sync + --replicate-to (publish trails)" "$TRAIL" "$(writer_iteration_us "$SURGE_URL")"
stop "$SURGE_PID"
stop "$NATS_PID"

# ---------------------------------------------------------------- replicated
start_nats replicated
start_surge replicated replicated SURGE_REPLICATE_TO="$NATS_URL"
define_skus "$SURGE_URL"
REPL=$(reserve_load "$SURGE_URL" replicated)
row "replicated" "$REPL" "$(writer_iteration_us "$SURGE_URL")"
stop "$SURGE_PID"
stop "$NATS_PID"

# ---------------------------------------------------------------- replicated + standby
start_nats standby
start_surge leader replicated SURGE_REPLICATE_TO="$NATS_URL"
LEADER_URL=$SURGE_URL
start_surge standby sync SURGE_STANDBY="$NATS_URL"
STANDBY_URL=$SURGE_URL
define_skus "$LEADER_URL"
(
    end=$((SECONDS + DURATION))
    while ((SECONDS < end)); do
        curl -fsS "$STANDBY_URL/readyz" || true
        echo
        sleep 0.2
    done
) >"$WORK/lag.txt" &
SAMPLER=$!
WITH_STANDBY=$(reserve_load "$LEADER_URL" with-standby)
wait "$SAMPLER" || true
LAG=$(grep -o '"lag_lsn":[0-9]*,"lag_seconds":[0-9.e-]*' "$WORK/lag.txt" |
    awk -F'[:,]' '{ n++; l += $2; s += $4; if ($2 > lm) lm = $2; if ($4 > sm) sm = $4 }
        END { if (n) printf "standby lag over %d samples: mean %.0f LSNs / %.3f s, max %d LSNs / %.3f s", n, l / n, s / n, lm, sm }')
row "replicated, standby following" "$WITH_STANDBY" "$(writer_iteration_us "$LEADER_URL")" "$LAG"

# ---------------------------------------------------------------- report
echo
echo "Durable reservations, wrk -t1 -c$CONNS, ${DURATION}s each, $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "| mode | req/s | p50 µs | p99 µs | non-2xx | writer iteration, mean µs | note |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${ROWS[@]}"
awk -v s="$(field rps "$SYNC")" -v r="$(field rps "$REPL")" -v t="$(field rps "$TRAIL")" \
    'BEGIN { printf "\nreplicated / sync = %.2f; sync+replicate-to / sync = %.2f\n", r / s, t / s }'
