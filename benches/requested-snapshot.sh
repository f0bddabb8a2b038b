#!/usr/bin/env bash
# A snapshot requested (`POST /v1/admin/snapshot`) in the middle of a sale: what it
# costs the writer and the reservations beside it, for one or more surge binaries
# (say, before and after a change) in alternating rounds, so that the box's noise
# hits both.
#
#   bash benches/requested-snapshot.sh                    # the release build
#   ROUNDS=2 bash benches/requested-snapshot.sh old=/tmp/surge-old new=target/release/surge
#
# For each binary and round: a fresh surge (durability sync, no periodic snapshot,
# SURGE_PRETOUCH_MIB pretouched) on a free loopback port with a temp data dir, 1000
# SKUs, `/v1/batch` for PRELOAD_SECONDS at 1000 reservations a request (a state of
# millions of holds, so that encoding it takes a while); then `wrk -t1 -c16` reserves
# for DURATION seconds, and SNAPSHOT_AFTER seconds into them one snapshot request,
# timed. One table row per run: the request's time, wrk's rate and tail, and from
# the server's /metrics, counted over the reserve run only, the writer loop
# iterations above 10, 50 and 100 ms (surge_writer_iteration_seconds, the sync
# excluded) and the snapshots the writer encoded itself
# (surge_snapshots_encoded_by_writer_total; "-" where a binary does not export it).
# Needs wrk and curl (apt-get install wrk curl). Stops only what it started.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=benches/lib/processes.sh
source benches/lib/processes.sh
# shellcheck source=benches/lib/metrics.sh
source benches/lib/metrics.sh
# shellcheck source=benches/lib/surge_bin.sh
source benches/lib/surge_bin.sh

DURATION=${DURATION:-12}
SNAPSHOT_AFTER=${SNAPSHOT_AFTER:-4}
PRELOAD_SECONDS=${PRELOAD_SECONDS:-4}
PRETOUCH_MIB=${SURGE_PRETOUCH_MIB:-3072}
ROUNDS=${ROUNDS:-1}

need_tools wrk curl
if (($# == 0)); then
    set -- "$(release_binary_spec)"
fi

TOKEN="bench-$RANDOM$RANDOM"
export SURGE_BENCH_TOKEN=$TOKEN
grown() { # before after line-prefix -> after minus before, summed over the lines ("-": absent)
    if grep -q "^$3" "$2"; then
        echo $(($(metric_sum "$2" "$3") - $(metric_sum "$1" "$3")))
    else
        echo -
    fi
}
over_during() { # before after histogram le -> observations above that bound in between
    echo $(($(over "$2" "$3" "$4") - $(over "$1" "$3" "$4")))
}

echo "| binary | round | records before | snapshot request s | req/s | p99 ms | p99.9 ms | non-2xx | iterations > 10 / 50 / 100 ms | encoded by the writer |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"
for ((round = 1; round <= ROUNDS; round++)); do
    for spec in "$@"; do
        name=${spec%%=*}
        bin=${spec#*=}
        data="$WORK/data-$name-$round"
        start_surge "$name" "$bin" "$data" \
            SURGE_TOKENS="admin:$TOKEN,storefront:$TOKEN" SURGE_DURABILITY=sync \
            SURGE_QUEUE_LEN_MAX=262144 SURGE_PRETOUCH_MIB="$PRETOUCH_MIB" \
            SURGE_SNAPSHOT_EVERY_RECORDS=0
        pid=$SURGE_PID
        url=$SURGE_URL
        define_skus "$url" "$TOKEN" 1000 '{"on_hand":1000000000000}'
        log "$name round $round: preload ${PRELOAD_SECONDS}s of /v1/batch"
        wrk -t1 -c16 -d"${PRELOAD_SECONDS}s" -s benches/wrk/batch.lua "$url" -- 1000 1000 >/dev/null
        curl -fsS "$url/metrics" >"$WORK/before.txt"
        records=$(metric_sum "$WORK/before.txt" 'surge_engine_records_logged_total ')
        log "$name round $round: wrk -t1 -c16 -d${DURATION}s, a snapshot requested after ${SNAPSHOT_AFTER}s"
        wrk -t1 -c16 -d"${DURATION}s" --latency -s benches/wrk/reserve.lua "$url" -- many 1000 \
            >"$WORK/wrk.txt" 2>&1 &
        load=$!
        PIDS+=("$load")
        sleep "$SNAPSHOT_AFTER"
        took=$(curl -fsS -o /dev/null -w '%{time_total}' -X POST \
            -H "Authorization: Bearer $TOKEN" "$url/v1/admin/snapshot")
        wait "$load"
        forget "$load"
        result=$(grep '^RESULT' "$WORK/wrk.txt" | tail -1)
        [[ -n $result ]] || { cat "$WORK/wrk.txt" >&2; exit 1; }
        curl -fsS "$url/metrics" >"$WORK/after.txt"
        stop "$pid"
        rm -rf "$data"
        field() { sed -n "s/.*[[:space:]]$1=\([0-9.]*\).*/\1/p" <<<"$result"; }
        ms() { awk -v us="$(field "$1")" 'BEGIN { printf "%.2f", us / 1000 }'; }
        it=surge_writer_iteration_seconds
        b="$WORK/before.txt" a="$WORK/after.txt"
        echo "| $name | $round | $records | $took | $(field rps) | $(ms p99_us) | $(ms p999_us) | $(field non2xx)" \
            "| $(over_during "$b" "$a" "$it" 0.01) / $(over_during "$b" "$a" "$it" 0.05) / $(over_during "$b" "$a" "$it" 0.1)" \
            "| $(grown "$b" "$a" 'surge_snapshots_encoded_by_writer_total ')" \
            "|"
    done
done
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load before the last run: $(cut -d' ' -f1-3 /proc/loadavg)"
