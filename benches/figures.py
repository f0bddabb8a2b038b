#!/usr/bin/env python3
"""Print the criterion results under target/criterion as a Markdown table.

Throughput is elements (commands, records, reservations, orders) per second from the
median estimate; run the benches first (`cargo bench --bench <name>`)."""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
rows = []
for bench in sorted(root.glob("**/new/benchmark.json")):
    meta = json.loads(bench.read_text())
    est = json.loads((bench.parent / "estimates.json").read_text())
    median_ns = est["median"]["point_estimate"]
    thr = meta.get("throughput") or {}
    if "Elements" in thr:
        rate = f"{thr['Elements'] / median_ns * 1e9:,.0f} /s"
    elif "Bytes" in thr:
        rate = f"{thr['Bytes'] / median_ns * 1e9 / 2**20:,.1f} MiB/s"
    else:
        rate = "-"
    rows.append((meta["full_id"], f"{median_ns / 1e3:,.1f} µs", rate))
print("| benchmark | median time per iteration | throughput |")
print("| --- | --- | --- |")
for name, t, rate in rows:
    print(f"| `{name}` | {t} | {rate} |")
for path in [root / "memory.json", *sorted(root.glob("runtime_latency_*.json"))]:
    if path.exists():
        print(f"\n{path.name}: {path.read_text().strip()}")
