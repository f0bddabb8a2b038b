#!/usr/bin/env python3
"""Server latency as seen on the loopback wire, from a packet capture.

    tcpdump -r capture.pcap -n -tt | python3 benches/wire_latency.py PORT

For each client connection to PORT (one request in flight per connection, as with
wrk and redis-benchmark), a request is the last client packet carrying data before
the server's answer, and its latency runs from that packet to the first server packet
carrying data after it. Both timestamps are taken by the kernel when the packet is
sent, so the figure is the server's (socket queueing included) and leaves out how
long the load generator takes to notice the answer.

Prints one line: `WIRE count=N mean_us=.. p50_us=.. p99_us=.. p999_us=.. max_us=..`.
"""

import re
import sys

LINE = re.compile(
    r"^(\d+\.\d+) IP 127\.0\.0\.1\.(\d+) > 127\.0\.0\.1\.(\d+): .* length (\d+)"
)


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    port = sys.argv[1]
    asked_at = {}  # client port -> time of its latest request packet
    latencies_us = []
    for line in sys.stdin:
        m = LINE.match(line)
        if not m or m.group(4) == "0":
            continue
        at, src, dst = float(m.group(1)), m.group(2), m.group(3)
        if dst == port:
            asked_at[src] = at
        elif src == port and dst in asked_at:
            latencies_us.append((at - asked_at.pop(dst)) * 1e6)
    if not latencies_us:
        print("no request/answer pairs in the capture", file=sys.stderr)
        return 1
    latencies_us.sort()
    n = len(latencies_us)

    def pct(p: float) -> int:
        return round(latencies_us[min(n - 1, int(n * p / 100))])

    print(
        f"WIRE count={n} mean_us={round(sum(latencies_us) / n)} p50_us={pct(50)} "
        f"p99_us={pct(99)} p999_us={pct(99.9)} max_us={round(latencies_us[-1])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
