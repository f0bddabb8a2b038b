# Process bookkeeping for the bench scripts (sourced): a temp dir, the pids a script
# started, stopping only those, and a free loopback port. Sets WORK, PIDS; defines
# log, stop, free_port, and traps EXIT to stop and remove everything it started.

log() { echo "# $*" >&2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/surge-bench.XXXXXX")
PIDS=() # only processes this script started and has not reaped yet
forget() { # pid: drop it from PIDS once it has been waited for
    local kept=() p
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || kept+=("$p"); done
    PIDS=("${kept[@]}")
}
stop() { # pid: stop one process this script started, reap it, forget it
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    forget "$1"
}
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits until a server answers /readyz, polling every 0.1 s for up to SECONDS; if it
# never does, prints LOG (the server's output, when given) and exits.
wait_ready() { # url seconds [log]
    local tries=$(($2 * 10)) try
    for ((try = 0; try < tries; try++)); do
        curl -fsS "$1/readyz" >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "not ready after $2 s: $1" >&2
    if [[ -n ${3:-} ]]; then cat "$3" >&2; fi
    exit 1
}

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


# Starts BIN (a surge build) as NAME on a free loopback port with DATA as its data
# dir and the VAR=value settings given in its environment (RUST_LOG=warn unless one
# is given), its output in $WORK/NAME.out and .err; waits until it is ready. Sets
# SURGE_PID and SURGE_URL.
start_surge() { # name bin data [VAR=value ...]
    local name=$1 bin=$2 data=$3 port
    shift 3
    [[ -x $bin ]] || { echo "no binary at $bin" >&2; exit 1; }
    port=$(free_port)
    env RUST_LOG=warn "$@" "$bin" --listen "127.0.0.1:$port" --data-dir "$data" \
        >"$WORK/$name.out" 2>"$WORK/$name.err" &
    SURGE_PID=$!
    PIDS+=("$SURGE_PID")
    SURGE_URL="http://127.0.0.1:$port"
    wait_ready "$SURGE_URL" 60 "$WORK/$name.err"
}

# Defines SKUs S0..S<count-1> on a running surge with one PUT each (one curl for all,
# its URLs in $WORK/skus.curl, which a script may reuse to read them back).
define_skus() { # url admin-token count body
    local i
    for ((i = 0; i < $3; i++)); do echo "url = \"$1/v1/skus/S$i\""; done >"$WORK/skus.curl"
    curl -fsS -X PUT -H "Authorization: Bearer $2" -H "Content-Type: application/json" \
        --data "$4" -K "$WORK/skus.curl" >/dev/null
}

need_tools() { # tool... -> exits naming the first one missing
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install $tool)" >&2; exit 1; }
    done
}
