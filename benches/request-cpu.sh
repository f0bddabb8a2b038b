#!/usr/bin/env bash
# Server CPU per request of two or more surge builds, alternating, in one run (say,
# before and after a change on the request path): the box's noise moves each
# round's figures, so the builds take turns and the means are compared.
#
#   bash benches/request-cpu.sh old=/tmp/surge-old new=target/release/surge
#   ROUNDS=4 DURATION=6 CONNS=64 MODE=hot bash benches/request-cpu.sh a=... b=...
#
# Each round, for each binary in turn: a fresh surge (durability sync) on a free
# loopback port with a temp data dir, SKUs `HOT` and S0..S999, then `wrk -t1
# -c$CONNS -d${DURATION}s -s benches/wrk/reserve.lua URL -- $MODE 1000` (one unit per
# request). The server's CPU is its utime + stime from /proc before and after wrk;
# it prints, per run, wrk's rate and the server's CPU per request in microseconds,
# then each build's means. Needs wrk and curl (apt-get install wrk curl). Stops only
# what it started.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
source benches/lib/processes.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-6}
CONNS=${CONNS:-64}
MODE=${MODE:-hot}
need_tools wrk curl
(($# >= 1)) || { echo "usage: $0 name=binary [name=binary ...]" >&2; exit 1; }

ADMIN_TOKEN="bench-admin-$RANDOM$RANDOM"
SF_TOKEN="bench-sf-$RANDOM$RANDOM"
TICKS=$(getconf CLK_TCK)
cpu_ticks() { # pid -> utime + stime of the whole process, in clock ticks
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

declare -A RATE_SUM CPU_SUM
for spec in "$@"; do
    [[ -x ${spec#*=} ]] || { echo "no binary at ${spec#*=}" >&2; exit 1; }
    RATE_SUM[${spec%%=*}]=0
    CPU_SUM[${spec%%=*}]=0
done
printf '%-8s %5s %12s %14s\n' build round "req/s" "server µs/req"
for ((round = 1; round <= ROUNDS; round++)); do
    for spec in "$@"; do
        name=${spec%%=*}
        bin=${spec#*=}
        start_surge "$name" "$bin" "$WORK/data-$name-$round" \
            SURGE_TOKENS="admin:$ADMIN_TOKEN,storefront:$SF_TOKEN" SURGE_DURABILITY=sync
        pid=$SURGE_PID
        url=$SURGE_URL
        define_skus "$url" "$ADMIN_TOKEN" 1000 '{"on_hand":100000000}'
        curl -fsS -X PUT -H "Authorization: Bearer $ADMIN_TOKEN" -H "Content-Type: application/json" \
            --data '{"on_hand":100000000}' "$url/v1/skus/HOT" >/dev/null
        before=$(cpu_ticks "$pid")
        out=$(SURGE_BENCH_TOKEN=$SF_TOKEN wrk -t1 -c"$CONNS" -d"${DURATION}s" \
            -s benches/wrk/reserve.lua "$url" -- "$MODE" 1000)
        after=$(cpu_ticks "$pid")
        stop "$pid"
        rm -rf "$WORK/data-$name-$round"
        errors=$(awk '/Socket errors/' <<<"$out")
        [[ -z $errors ]] || { echo "$name: $errors" >&2; exit 1; }
        rate=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
        non2xx=$(awk '/Non-2xx/ { print $NF }' <<<"$out")
        [[ -z $non2xx ]] || { echo "$name: $non2xx answers were not 2xx" >&2; exit 1; }
        requests=$(awk '/ requests in / { print $1 }' <<<"$out")
        cpu_us=$(awk -v t=$((after - before)) -v hz="$TICKS" -v n="$requests" \
            'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
        printf '%-8s %5d %12.0f %14s\n' "$name" "$round" "$rate" "$cpu_us"
        RATE_SUM[$name]=$(awk -v a="${RATE_SUM[$name]}" -v b="$rate" 'BEGIN { print a + b }')
        CPU_SUM[$name]=$(awk -v a="${CPU_SUM[$name]}" -v b="$cpu_us" 'BEGIN { print a + b }')
    done
done
echo
printf '%-8s %12s %14s   (means of %d rounds, %d conns, %s s each, mode %s)\n' \
    build "req/s" "server µs/req" "$ROUNDS" "$CONNS" "$DURATION" "$MODE"
for spec in "$@"; do
    name=${spec%%=*}
    awk -v n="$name" -v r="${RATE_SUM[$name]}" -v c="${CPU_SUM[$name]}" -v k="$ROUNDS" \
        'BEGIN { printf "%-8s %12.0f %14.2f\n", n, r / k, c / k }'
done
