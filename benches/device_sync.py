#!/usr/bin/env python3
"""The device's price for one durable write, measured beside the HTTP runs.

Writes 512 bytes with pwrite and makes them durable with fdatasync, one at a time,
into a file written and synced whole beforehand (no allocation or size change
per sync: what a WAL commit into a prepared segment costs at the least). Bounded by
a count and a time limit. Prints one line:

    DEVICE count=N mean_us=.. p50_us=.. p99_us=.. p999_us=.. max_us=.. syncs_per_s=..

Usage: device_sync.py DIR [COUNT] [SECONDS]
"""

import os
import sys
import time

FILE_LEN = 1 << 20
WRITE_LEN = 512


def main() -> None:
    directory = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    limit_s = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
    if count < 1 or limit_s <= 0:
        sys.exit("COUNT must be at least 1 and SECONDS above 0")
    path = os.path.join(directory, "device-sync.probe")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.pwrite(fd, b"\0" * FILE_LEN, 0)
        os.fsync(fd)
        block = b"x" * WRITE_LEN
        latencies_ns = []
        started = time.perf_counter_ns()
        deadline = started + int(limit_s * 1e9)
        for i in range(count):
            t0 = time.perf_counter_ns()
            os.pwrite(fd, block, (i * WRITE_LEN) % FILE_LEN)
            os.fdatasync(fd)
            t1 = time.perf_counter_ns()
            latencies_ns.append(t1 - t0)
            if t1 > deadline:
                break
        elapsed_s = (time.perf_counter_ns() - started) / 1e9
    finally:
        os.close(fd)
        os.unlink(path)
    latencies_ns.sort()
    n = len(latencies_ns)

    def pct(p: float) -> int:
        return latencies_ns[min(n - 1, int(p * n))] // 1000

    mean_us = sum(latencies_ns) // n // 1000
    print(
        f"DEVICE count={n} mean_us={mean_us} p50_us={pct(0.50)} p99_us={pct(0.99)} "
        f"p999_us={pct(0.999)} max_us={latencies_ns[-1] // 1000} syncs_per_s={n / elapsed_s:.0f}"
    )


if __name__ == "__main__":
    main()
