#!/usr/bin/env python3
"""Where a run's CPU went, per request: the server's threads, everything else on
the box (the load generator, the kernel's work for it, other tenants), and what
was left idle. Ticks from /proc (USER_HZ, 10 ms), read before and after a run.

    python3 benches/cpu_split.py snap PID > before.txt
    ... the run ...
    python3 benches/cpu_split.py snap PID > after.txt
    python3 benches/cpu_split.py diff before.txt after.txt REQUESTS

`diff` prints one line:

    CPU requests=N seconds=S server_us=.. rest_us=.. idle_pct=.. steal_pct=.. \
        writer_us=.. sync_us=.. follower_us=.. http_us=.. other_threads_us=..

`server_us`: the server process's CPU (user + system, all threads) per request;
`rest_us`: the busy CPU of the whole box outside the server per request (on a
bench box: the load generator and its share of the loopback network stack);
`idle_pct`: share of the box's CPU capacity (all cores over the run) left idle;
`steal_pct`: share the hypervisor took. The per-thread figures group the server's
threads by name (`surge-writer`, `surge-sync`, `surge-follower`, tokio's workers
as `http`); `other_threads` is the rest of the process's CPU, threads that ended
during the run included.

When `idle_pct` is near 0, the box is the limit: the request rate cannot exceed
cores / (server_us + rest_us), and a server path that costs more CPU per request
than `/healthz` must serve fewer requests than it.
"""

import os
import sys

GROUPS = {
    "surge-writer": "writer",
    "surge-sync": "sync",
    "surge-follower": "follower",
    "tokio-runtime-w": "http",  # tokio's worker (and blocking) threads, by version
    "tokio-rt-worker": "http",
}


def box_ticks():
    """(busy, idle, steal) of all CPUs together, in ticks."""
    with open("/proc/stat") as stat:
        f = [int(x) for x in stat.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = f
    return user + nice + system + irq + softirq, idle + iowait, steal


def thread_ticks(pid):
    """{tid: (group, ticks)} over the threads of `pid` now, and the process's total."""
    threads = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                line = stat.read()
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        comm = line[line.index("(") + 1 : line.rindex(")")]
        fields = line[line.rindex(")") + 2 :].split()
        threads[tid] = (GROUPS.get(comm, "other"), int(fields[11]) + int(fields[12]))
    with open(f"/proc/{pid}/stat") as stat:
        line = stat.read()
    fields = line[line.rindex(")") + 2 :].split()
    # The process's own utime + stime, with those of threads that already ended.
    total = int(fields[11]) + int(fields[12])
    return threads, total


def snap(pid):
    busy, idle, steal = box_ticks()
    threads, total = thread_ticks(pid)
    parts = [f"busy={busy}", f"idle={idle}", f"steal={steal}", f"server={total}"]
    parts += [f"{group}@{tid}={ticks}" for tid, (group, ticks) in sorted(threads.items())]
    with open("/proc/uptime") as uptime:
        parts.append(f"uptime={uptime.read().split()[0]}")
    print(" ".join(parts))


def parse(path):
    with open(path) as snapshot:
        return {k: float(v) for k, v in (p.split("=") for p in snapshot.read().split())}


def diff(before_path, after_path, requests):
    before, after = parse(before_path), parse(after_path)
    hz = os.sysconf("SC_CLK_TCK")
    requests = max(int(requests), 1)

    def delta(key):
        return after.get(key, 0.0) - before.get(key, 0.0)

    def us_per_request(ticks):
        return ticks / hz * 1e6 / requests

    capacity = delta("busy") + delta("idle") + delta("steal")
    server = delta("server")
    # Per group: each thread alive at the end, from its ticks at the start (0 if it
    # started during the run). A thread that ended during the run took its ticks
    # with it; the process total keeps them, so they count as `other_threads`.
    groups = {}
    for key, ticks in after.items():
        if "@" in key:
            group = key.split("@")[0]
            groups[group] = groups.get(group, 0.0) + ticks - before.get(key, 0.0)
    named = sum(t for g, t in groups.items() if g != "other")
    groups["other_threads"] = max(server - named, 0.0)
    parts = [
        f"requests={requests}",
        f"seconds={delta('uptime'):.1f}",
        f"server_us={us_per_request(server):.2f}",
        f"rest_us={us_per_request(max(delta('busy') - server, 0.0)):.2f}",
        f"idle_pct={100 * delta('idle') / capacity if capacity else 0:.1f}",
        f"steal_pct={100 * delta('steal') / capacity if capacity else 0:.1f}",
    ]
    for group in ("writer", "sync", "follower", "http", "other_threads"):
        parts.append(f"{group}_us={us_per_request(groups.get(group, 0.0)):.2f}")
    print("CPU " + " ".join(parts))


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "snap":
        snap(int(sys.argv[2]))
    elif len(sys.argv) == 5 and sys.argv[1] == "diff":
        diff(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
