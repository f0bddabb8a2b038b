#!/usr/bin/env python3
"""Time this virtual machine's host took from it: samples the `steal` column of
/proc/stat every 10 ms for SECONDS seconds and prints each sample that moved, as
`STEAL <unix time> <jiffies>` (a jiffy is 10 ms of one virtual CPU), then the total.

    python3 benches/steal.py 75 > steal.txt &   # beside a bench run

Compare the times with a run's slow iterations: a writer iteration whose wall time
is far above its CPU time (`surge_writer_iteration_cpu_seconds`, the `cpu_` figures
of `runtime/writer_iterations`) was off a core; steal in the same samples says the
host took time then. The counter covers both virtual CPUs in 10 ms units, so it
cannot say which one, nor place steal within a 10 ms iteration.
"""

import sys
import time


def steal_jiffies():
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    return int(fields[8])


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    start = time.time()
    last = steal_jiffies()
    total = 0
    while time.time() - start < seconds:
        time.sleep(0.01)
        now = steal_jiffies()
        if now != last:
            print(f"STEAL {time.time():.3f} {now - last}", flush=True)
            total += now - last
        last = now
    print(f"TOTAL {total} jiffies in {seconds:.0f} s")


if __name__ == "__main__":
    main()
