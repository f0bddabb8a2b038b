#!/usr/bin/env bash
# Stock reads beside writes while the follower encodes snapshots of a large state,
# against the same without periodic snapshots (issue 8: a snapshot must not stall
# reads beyond the read-latency target). Runs each setting in turn, ROUNDS times.
#
#   bash benches/snapshot-reads.sh                  # 2 rounds, about 4 minutes
#   ROUNDS=3 SNAPSHOT_EVERY_RECORDS=50000 bash benches/snapshot-reads.sh
#
# Each run: a fresh `surge` (durability sync, SURGE_PRETOUCH_MIB pretouched) on a free
# loopback port and a temporary data dir; 1000 SKUs; `/v1/batch` for PRELOAD_SECONDS
# at 1000 reservations a request (a state of millions of holds, so that a snapshot
# takes a while to encode); then wrk -t1 -c16 reserves beside wrk -t1 -c64 stock
# reads for 15 s. Prints each wrk RESULT line, and the snapshots written and the reads
# sent through the writer's queue while the follower encoded
# (`surge_reads_during_snapshot_total`) during the read run.
#
# Environment: SURGE_BIN (else built), ROUNDS [2], SNAPSHOT_EVERY_RECORDS [100000],
# PRELOAD_SECONDS [3], SURGE_PRETOUCH_MIB [3072].
set -euo pipefail
ROUNDS=${ROUNDS:-2}
EVERY=${SNAPSHOT_EVERY_RECORDS:-100000}
PRELOAD_SECONDS=${PRELOAD_SECONDS:-3}
PRETOUCH_MIB=${SURGE_PRETOUCH_MIB:-3072}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=benches/lib/processes.sh
source "$ROOT/benches/lib/processes.sh"
# shellcheck source=benches/lib/surge_bin.sh
source "$ROOT/benches/lib/surge_bin.sh"
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }
surge_release_bin

ADMIN="bench-admin-$RANDOM$RANDOM"
export SURGE_BENCH_TOKEN="bench-sf-$RANDOM$RANDOM"

one_run() { # snapshot_every_records
    local port dir pid writer
    port=$(free_port)
    dir=$(mktemp -d "$WORK/run.XXXX")
    SURGE_TOKENS="admin:$ADMIN,storefront:$SURGE_BENCH_TOKEN" SURGE_DURABILITY=sync \
        SURGE_QUEUE_LEN_MAX=262144 SURGE_PRETOUCH_MIB="$PRETOUCH_MIB" \
        SURGE_SNAPSHOT_EVERY_RECORDS="$1" SURGE_SNAPSHOT_LOG_PERCENT_MIN=0 RUST_LOG=warn \
        "$SURGE_BIN" --listen "127.0.0.1:$port" --data-dir "$dir/data" >"$dir/out" 2>"$dir/err" &
    pid=$!
    PIDS+=("$pid")
    wait_ready "http://127.0.0.1:$port" 60 "$dir/err"
    for ((i = 0; i < 1000; i++)); do echo "url = \"http://127.0.0.1:$port/v1/skus/S$i\""; done >"$dir/skus.curl"
    curl -fsS -X PUT -H "Authorization: Bearer $ADMIN" -H "Content-Type: application/json" \
        --data '{"on_hand":1000000000000}' -K "$dir/skus.curl" >/dev/null
    wrk -t1 -c16 -d"${PRELOAD_SECONDS}s" -s benches/wrk/batch.lua "http://127.0.0.1:$port" -- 1000 1000 |
        grep '^RESULT' | sed 's/^/preload /'
    counters() {
        curl -fs "http://127.0.0.1:$port/metrics" |
            awk '/^surge_snapshots_total / { s = $2 } /^surge_reads_during_snapshot_total / { r = $2 }
                 END { print s + 0, r + 0 }'
    }
    local before after
    before=$(counters)
    wrk -t1 -c16 -d17s -s benches/wrk/reserve.lua "http://127.0.0.1:$port" -- many 1000 >"$dir/writes.txt" 2>&1 &
    writer=$!
    PIDS+=("$writer")
    sleep 1 # the reserves start first and stop last
    wrk -t1 -c64 -d15s --latency -s benches/wrk/get.lua "http://127.0.0.1:$port" -- /v1/skus/S 1000 |
        grep '^RESULT' | sed 's/^/read /'
    wait "$writer"
    forget "$writer"
    grep '^RESULT' "$dir/writes.txt" | sed 's/^/write /'
    after=$(counters)
    read -r s0 r0 <<<"$before"
    read -r s1 r1 <<<"$after"
    echo "during the read run: snapshots $((s1 - s0)), reads through the writer's queue $((r1 - r0))"
    stop "$pid"
}

echo "surge $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
for ((round = 1; round <= ROUNDS; round++)); do
    for every in "$EVERY" 0; do
        echo "== round $round, SURGE_SNAPSHOT_EVERY_RECORDS=$every"
        one_run "$every"
    done
done
