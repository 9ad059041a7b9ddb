"""How long 'lab up' and 'lab down' take for a topology (default: the sample lab).

Prints a table and writes benchmarks/results/lab_updown.json. Needs root and OVS.
    .venv/bin/python benchmarks/lab_updown.py [--runs 10] [--topology topologies/sample.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

from meshpeer.lab import build, teardown
from meshpeer.lab.cli import load_topology

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--topology", default=os.path.join(ROOT, "topologies", "sample.yaml"))
    p.add_argument("--lab", default="bench")
    args = p.parse_args()
    topo = load_topology(args.topology)
    ups, downs = [], []
    for _ in range(args.runs):
        try:
            plan, elapsed = build.fresh(topo, args.lab, progress=lambda _line: None)
            ups.append(elapsed)
        finally:
            t0 = time.monotonic()
            teardown.down(args.lab)
            downs.append(time.monotonic() - t0)
    result = {
        "topology": os.path.relpath(args.topology, ROOT),
        "hosts": len(topo.hosts),
        "vms": len(plan.vms),
        "runs": args.runs,
        "up_s": {"median": statistics.median(ups), "max": max(ups), "min": min(ups)},
        "down_s": {"median": statistics.median(downs), "max": max(downs), "min": min(downs)},
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(f"lab up/down, {result['hosts']} hosts, {result['vms']} VMs, {args.runs} runs")
    print(f"{'':6} {'median':>8} {'min':>8} {'max':>8}")
    for key in ("up_s", "down_s"):
        r = result[key]
        print(f"{key[:-2]:6} {r['median']:8.3f} {r['min']:8.3f} {r['max']:8.3f}  seconds")
    out = os.path.join(ROOT, "benchmarks", "results", "lab_updown.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
