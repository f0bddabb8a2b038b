#!/usr/bin/env bash
# Writer stalls over HTTP: durable reservations with snapshots and segment rolls
# happening during the run, one or more surge binaries side by side (say, before
# and after a change), in alternating rounds so that the box's noise hits both.
#
#   bash benches/writer-stalls.sh                         # the release build
#   ROUNDS=2 bash benches/writer-stalls.sh old=/tmp/surge-old new=target/release/surge
#
# For each binary and round: a fresh surge (durability sync, a snapshot every
# SNAPSHOT_EVERY records, 64 MiB segments) on a free loopback port with a temp data
# dir, 1000 SKUs, then `wrk -t1 -c$CONNS -d${DURATION}s` reserving one unit of a
# random SKU. Prints one table row per run: wrk's rate and latency, then from the
# server's /metrics the writer loop iterations above 5, 10, 25 and 50 ms
# (surge_writer_iteration_seconds, the sync excluded), the slowest bucket reached,
# the commits above 10 ms (surge_wal_commit_seconds), and the snapshots taken.
# Needs wrk and curl (apt-get install wrk curl). Stops only what it started.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
source benches/lib/processes.sh
# shellcheck source=benches/lib/metrics.sh
source benches/lib/metrics.sh
# shellcheck source=benches/lib/surge_bin.sh
source benches/lib/surge_bin.sh

DURATION=${DURATION:-20}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-1}
SNAPSHOT_EVERY=${SNAPSHOT_EVERY:-100000}
SKUS=${SKUS:-1000}

need_tools wrk curl
if (($# == 0)); then
    set -- "$(release_binary_spec)"
fi

TOKEN="bench-$RANDOM$RANDOM"
slowest_bucket() { # metrics-file histogram -> the smallest bound holding every observation
    local total
    total=$(metric_sum "$1" "$2_count ")
    grep "^$2_bucket" "$1" | sed 's/.*le="\([^"]*\)"} \(.*\)/\1 \2/' |
        awk -v t="$total" '$2 + 0 >= t { print $1; exit }'
}

echo "| binary | round | req/s | p50 ms | p99 ms | p99.9 ms | writer iterations | > 5 ms | > 10 ms | > 25 ms | > 50 ms | all within | commits > 10 ms | snapshots |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for ((round = 1; round <= ROUNDS; round++)); do
    for spec in "$@"; do
        name=${spec%%=*}
        bin=${spec#*=}
        data="$WORK/data-$name-$round"
        start_surge "$name" "$bin" "$data" \
            SURGE_TOKENS="admin:$TOKEN,storefront:$TOKEN" SURGE_DURABILITY=sync \
            SURGE_QUEUE_LEN_MAX=262144 SURGE_SNAPSHOT_EVERY_RECORDS="$SNAPSHOT_EVERY"
        pid=$SURGE_PID
        url=$SURGE_URL
        define_skus "$url" "$TOKEN" "$SKUS" '{"on_hand":1000000000}'
        log "$name round $round: wrk -t1 -c$CONNS -d${DURATION}s"
        SURGE_BENCH_TOKEN=$TOKEN wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency \
            -s benches/wrk/reserve.lua "$url" -- many "$SKUS" >"$WORK/wrk.txt" 2>&1
        result=$(grep '^RESULT' "$WORK/wrk.txt" | tail -1)
        [[ -n $result ]] || { cat "$WORK/wrk.txt" >&2; exit 1; }
        curl -fsS "$url/metrics" >"$WORK/metrics.txt"
        stop "$pid"
        rm -rf "$data"
        field() { sed -n "s/.*[[:space:]]$1=\([0-9.]*\).*/\1/p" <<<"$result"; }
        ms() { awk -v us="$(field "$1")" 'BEGIN { printf "%.2f", us / 1000 }'; }
        it=surge_writer_iteration_seconds
        echo "| $name | $round | $(field rps) | $(ms p50_us) | $(ms p99_us) | $(ms p999_us)" \
            "| $(metric_sum "$WORK/metrics.txt" "${it}_count ")" \
            "| $(over "$WORK/metrics.txt" "$it" 0.005) | $(over "$WORK/metrics.txt" "$it" 0.01)" \
            "| $(over "$WORK/metrics.txt" "$it" 0.025) | $(over "$WORK/metrics.txt" "$it" 0.05)" \
            "| $(slowest_bucket "$WORK/metrics.txt" "$it") s" \
            "| $(over "$WORK/metrics.txt" surge_wal_commit_seconds 0.01)" \
            "| $(metric_sum "$WORK/metrics.txt" 'surge_snapshots_total ')" \
            "|"
    done
done
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load before the last run: $(cut -d' ' -f1-3 /proc/loadavg)"
