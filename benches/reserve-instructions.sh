#!/usr/bin/env bash
# The user-space instructions one durable reservation costs the server, counted by
# callgrind: repeatable on a shared, noisy box, where CPU time and req/s are not.
#
#   bash benches/reserve-instructions.sh                  # builds the release surge
#   SURGE_BIN=/path/to/surge bash benches/reserve-instructions.sh
#   FEW=2000 MANY=12000 TOP=40 bash benches/reserve-instructions.sh
#   DURABILITY=none bash benches/reserve-instructions.sh   # the HTTP path alone
#   BATCH_OPS=1000 bash benches/reserve-instructions.sh    # through POST /v1/batch
#   GET_PATH=/v1/skus/S1 bash benches/reserve-instructions.sh  # a read instead
#
# It runs the server twice under `valgrind --tool=callgrind` (durability
# $DURABILITY, default sync; a
# temporary data dir, a loopback port, no periodic snapshot), sends $FEW and then
# $MANY `POST /v1/reservations` (one unit of one SKU) with `ab -k -c16`, and prints
# (total(MANY) - total(FEW)) / (MANY - FEW): start-up and shutdown cancel out. With
# BATCH_OPS=n the reservations go n to a request through `POST /v1/batch` (FEW and
# MANY still count reservations, so they must be multiples of n). With GET_PATH set,
# FEW and MANY `GET $GET_PATH` are counted instead (the SKU S1 exists). Then
# the $TOP most expensive functions of the MANY run, inclusive, per request. The
# kernel's share (socket reads and writes, fdatasync) is not counted: callgrind
# sees only user space. In `sync` mode the count moves by 1-2k between runs of one
# build (how many reservations share a commit depends on timing, and each commit
# has a cost of its own); `none` leaves out the engine's threads and repeats closely. Needs valgrind, ab (apache2-utils) and curl; installs them
# with apt-get when missing. Everything it starts is stopped (by pid) at the end.
set -euo pipefail

FEW=${FEW:-2000}
MANY=${MANY:-12000}
TOP=${TOP:-30}
DURABILITY=${DURABILITY:-sync}
BATCH_OPS=${BATCH_OPS:-0}
GET_PATH=${GET_PATH:-}
((MANY > FEW)) || { echo "MANY must be larger than FEW" >&2; exit 2; }
if ((BATCH_OPS > 0)) && ((FEW % BATCH_OPS || MANY % BATCH_OPS)); then
    echo "FEW and MANY must be multiples of BATCH_OPS" >&2
    exit 2
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=benches/lib/processes.sh
source "$ROOT/benches/lib/processes.sh"

missing=()
for tool in valgrind callgrind_annotate ab curl; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    SUDO=()
    if [[ $(id -u) -ne 0 ]]; then SUDO=(sudo); fi
    log "missing: ${missing[*]}; installing valgrind apache2-utils curl"
    "${SUDO[@]}" apt-get update
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y valgrind apache2-utils curl
fi

# shellcheck source=benches/lib/surge_bin.sh
source "$ROOT/benches/lib/surge_bin.sh"
surge_release_bin

METHOD=POST
if [[ -n $GET_PATH ]]; then
    METHOD=GET
    PATH_OF_REQUEST=$GET_PATH
    REQUESTS_PER=1
elif ((BATCH_OPS > 0)); then
    PATH_OF_REQUEST=/v1/batch
    REQUESTS_PER=$BATCH_OPS
    python3 -c 'import sys; n = int(sys.argv[1]); print("{\"ops\":[" + ",".join(["{\"op\":\"reserve\",\"lines\":[{\"sku\":\"S1\",\"qty\":1}]}"] * n) + "]}")' \
        "$BATCH_OPS" >"$WORK/body.json"
else
    PATH_OF_REQUEST=/v1/reservations
    REQUESTS_PER=1
    echo '{"lines":[{"sku":"S1","qty":1}]}' >"$WORK/body.json"
fi

counted_run() { # reservations -> prints the callgrind file of a run with that many
    local reservations=$1 port pid out="$WORK/callgrind.$1"
    local requests=$((reservations / REQUESTS_PER))
    port=$(free_port)
    SURGE_TOKENS="admin:adm,storefront:sf" SURGE_DURABILITY="$DURABILITY" RUST_LOG=warn \
        SURGE_SNAPSHOT_EVERY_RECORDS=0 \
        valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$SURGE_BIN" --listen "127.0.0.1:$port" --data-dir "$WORK/data.$requests" \
        >"$WORK/surge.$requests.out" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    # Under callgrind start-up is slow.
    wait_ready "http://127.0.0.1:$port" 120 "$WORK/surge.$requests.out"
    curl -fsS -X PUT -H "Authorization: Bearer adm" -H "Content-Type: application/json" \
        --data '{"on_hand":1000000000000}' "http://127.0.0.1:$port/v1/skus/S1" >/dev/null
    log "ab -k -c16 -n$requests $METHOD $PATH_OF_REQUEST (under callgrind)"
    local body=(-p "$WORK/body.json" -T application/json)
    if [[ -n $GET_PATH ]]; then body=(); fi
    ab -q -k -c 16 -n "$requests" "${body[@]}" \
        -H "Authorization: Bearer sf" "http://127.0.0.1:$port$PATH_OF_REQUEST" >"$WORK/ab.$requests" 2>&1
    # ab counts answers of another length than the first as "failed"; non-2xx is
    # what matters, and ab prints that line only when there are some.
    if grep -q "Non-2xx" "$WORK/ab.$requests"; then
        cat "$WORK/ab.$requests" >&2
        echo "non-2xx answers under callgrind" >&2
        exit 1
    fi
    # Every reservation was taken (a batch answers 200 even when an op fails).
    local reserved
    reserved=$(curl -fsS -H "Authorization: Bearer adm" "http://127.0.0.1:$port/v1/skus/S1" |
        grep -o '"reserved":[0-9]*' | cut -d: -f2)
    if [[ -z $GET_PATH && $reserved != "$reservations" ]]; then
        echo "S1 holds $reserved reserved units after $reservations reservations" >&2
        exit 1
    fi
    kill -INT "$pid"
    wait "$pid" || true
    forget "$pid"
    echo "$out"
}
total_of() { callgrind_annotate "$1" 2>/dev/null | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,; }

few_file=$(counted_run "$FEW")
many_file=$(counted_run "$MANY")
few_total=$(total_of "$few_file")
many_total=$(total_of "$many_file")
per_request=$(((many_total - few_total) / (MANY - FEW)))

echo "surge $(git rev-parse --short HEAD 2>/dev/null || echo '?') ($SURGE_BIN); $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "durability $DURABILITY; $METHOD $PATH_OF_REQUEST, $REQUESTS_PER counted per request; instructions: $few_total for $FEW, $many_total for $MANY"
echo "RESULT instructions_per_reservation=$per_request"
echo
echo "inclusive instructions per reservation, top $TOP functions of the $MANY-request run:"
callgrind_annotate --inclusive=yes "$many_file" 2>/dev/null |
    sed 's|/root/.cargo/registry/src/[^/]*/||; s|/rustc/[0-9a-f]*/library/||' |
    awk -v n="$MANY" -v top="$TOP" '
        /PROGRAM TOTALS/ { started = 1; next }
        # Skip the recursive entries (poll, then a quote and 2): callgrind counts a
        # cycle there twice.
        started && $1 ~ /^[0-9,]+$/ && $2 ~ /^\(/ && $0 !~ /\047[0-9]/ {
            v = $1; gsub(",", "", v)
            sub(/^ *[0-9,]+ +\([^)]*\) +/, "")
            printf "%8.0f  %s\n", v / n, $0
            if (++shown == top) exit
        }'
