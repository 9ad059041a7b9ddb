"""Commit latency of the intent store: 1k single-resource commits, synchronous NORMAL vs FULL.

Prints a table and writes benchmarks/results/store_commit.json. Measure on the filesystem the
controller's store will live on (``--dir``): on tmpfs an fsync costs nothing and FULL looks free.
    .venv/bin/python benchmarks/store_commit.py [--commits 1000] [--dir /var/lib/meshpeer]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

from meshpeer.store import Change, Store
from meshpeer.store.sqlite import Synchronous

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(directory: str, synchronous: Synchronous, commits: int) -> list[float]:
    """Seconds per commit; each writes one endpoint-sized body to a distinct key."""
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        store = Store.open(os.path.join(tmp, "intent.db"), synchronous=synchronous)
        body = {"ip": "10.0.0.1", "mac": "02:00:00:00:00:01", "host": "h1", "kind": "vm"}
        out = []
        for i in range(commits):
            change = [Change("endpoint", f"blue/b{i}", {**body, "name": f"b{i}"})]
            t0 = time.perf_counter()
            store.commit(change)
            out.append(time.perf_counter() - t0)
        store.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--commits", type=int, default=1000)
    p.add_argument("--dir", default=tempfile.gettempdir())
    args = p.parse_args()
    result: dict[str, object] = {"commits": args.commits, "dir": args.dir}
    print(f"store commit latency, {args.commits} single-resource commits, in {args.dir}")
    print(f"{'sync':6} {'median':>9} {'p99':>9} {'max':>9} {'commit/s':>9}   (ms)")
    modes: tuple[Synchronous, ...] = ("NORMAL", "FULL")
    for mode in modes:
        lat = sorted(run(args.dir, mode, args.commits))
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
        r = {
            "median_ms": statistics.median(lat) * 1e3,
            "p99_ms": p99 * 1e3,
            "max_ms": lat[-1] * 1e3,
            "commits_per_s": len(lat) / sum(lat),
        }
        result[mode] = r
        print(
            f"{mode:6} {r['median_ms']:9.3f} {r['p99_ms']:9.3f} {r['max_ms']:9.3f}"
            f" {r['commits_per_s']:9.0f}"
        )
    result["machine"] = {"cpus": os.cpu_count(), "kernel": platform.release()}
    result["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = os.path.join(ROOT, "benchmarks", "results", "store_commit.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
