#!/usr/bin/env bash
# Which file-system calls the writer thread makes while the log rolls (issue 8: no
# file creation, fallocate, unlink or directory fsync on the writer), one or more
# surge binaries side by side (say, before and after a change).
#
#   bash benches/writer-syscalls.sh                        # the release build
#   bash benches/writer-syscalls.sh old=/tmp/surge-old new=target/release/surge
#
# For each binary: a fresh surge (durability sync, 64 MiB segments) on a free
# loopback port with a temp data dir, 1000 SKUs, then `wrk -t1 -c$CONNS
# -d${DURATION}s` reserving one unit of a random SKU, with `strace -T` attached to the
# writer thread (`surge-writer`) and, separately, to the sync thread (`surge-sync`),
# tracing openat, rename*, mmap, unlink*, fsync, fdatasync, fallocate and ftruncate.
# Prints, per binary and thread, each traced call other than fdatasync with its
# time, then how many fdatasyncs there were, the segments the run left (more than one:
# it rolled) and wrk's rate. strace slows the traced threads: the rate is not a
# benchmark figure. Needs strace, wrk and curl (apt-get install strace wrk curl).
# Stops only what it started.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
source benches/lib/processes.sh
# shellcheck source=benches/lib/surge_bin.sh
source benches/lib/surge_bin.sh

DURATION=${DURATION:-20}
CONNS=${CONNS:-64}
SKUS=${SKUS:-1000}
TRACED=openat,rename,renameat,renameat2,mmap,unlink,unlinkat,fsync,fdatasync,fallocate,ftruncate

for tool in strace wrk curl; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install $tool)" >&2; exit 1; }
done
if (($# == 0)); then
    set -- "$(release_binary_spec)"
fi

TOKEN="bench-$RANDOM$RANDOM"
thread_of() { # pid name -> the tid of that process's thread with this name
    grep -lx "$2" /proc/"$1"/task/*/comm | head -1 | cut -d/ -f5
}

for spec in "$@"; do
    name=${spec%%=*}
    bin=${spec#*=}
    data="$WORK/data-$name"
    start_surge "$name" "$bin" "$data" \
        SURGE_TOKENS="admin:$TOKEN,storefront:$TOKEN" SURGE_DURABILITY=sync \
        SURGE_QUEUE_LEN_MAX=262144
    pid=$SURGE_PID
    url=$SURGE_URL
    define_skus "$url" "$TOKEN" "$SKUS" '{"on_hand":100000000}'
    tracers=()
    for thread in surge-writer surge-sync; do
        tid=$(thread_of "$pid" "$thread")
        [[ -n $tid ]] || { echo "$name: no thread $thread" >&2; exit 1; }
        strace -T -tt -p "$tid" -e trace="$TRACED" -o "$WORK/$name.$thread" 2>/dev/null &
        tracers+=($!)
        PIDS+=("$!")
    done
    sleep 1 # the tracers attached
    rate=$(SURGE_BENCH_TOKEN=$TOKEN wrk -t1 -c"$CONNS" -d"${DURATION}s" \
        -s benches/wrk/reserve.lua "$url" -- many "$SKUS" | sed -n 's/^Requests\/sec: *//p')
    for tracer in "${tracers[@]}"; do stop "$tracer"; done
    segments=$(find "$data" -name 'wal-*.seg' | wc -l)
    stop "$pid"
    echo "## $name ($bin): $rate req/s under strace, $segments segments at the end"
    for thread in surge-writer surge-sync; do
        calls="$WORK/$name.$thread"
        echo "### $thread: $(grep -c 'fdatasync(' "$calls" || true) fdatasync calls, and:"
        grep -v -e 'fdatasync(' -e '^strace:' -e '+++' "$calls" | sed "s|$data/||g" || echo "(none)"
    done
done
