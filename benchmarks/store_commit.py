"""Commit latency of the intent store: 1k single-resource commits, SQLite with synchronous
NORMAL and FULL, and etcd (one local member, its data in ``--dir`` too, through the shard's
own client: ``meshpeer.store.etcd``, etcd3gw).

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
from collections.abc import Callable
from contextlib import closing

from meshpeer.store import Change, IntentStore, Store
from meshpeer.store.etcd import EtcdStore
from meshpeer.store.sqlite import Synchronous
from tests.support.etcd import etcd_cluster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(store: IntentStore, commits: int) -> list[float]:
    """Seconds per commit; each writes one endpoint-sized body to a distinct key."""
    body = {"ip": "10.0.0.1", "mac": "02:00:00:00:00:01", "host": "h1", "kind": "vm"}
    out = []
    for i in range(commits):
        change = [Change("endpoint", f"blue/b{i}", {**body, "name": f"b{i}"})]
        t0 = time.perf_counter()
        store.commit(change)
        out.append(time.perf_counter() - t0)
    return out


def sqlite(synchronous: Synchronous) -> Callable[[str, int], list[float]]:
    def run(directory: str, commits: int) -> list[float]:
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            path = os.path.join(tmp, "intent.db")
            with closing(Store.open(path, synchronous=synchronous)) as store:
                return timed(store, commits)

    return run


def etcd(directory: str, commits: int, extra: dict[str, float]) -> list[float]:
    """The single commits, then (into ``extra``) one 5 000-endpoint change set and a load of
    everything."""
    tempfile.tempdir = directory  # the member's data dir (tests/support/etcd.py: mkdtemp)
    try:
        with etcd_cluster(1) as cluster, EtcdStore.open(cluster.urls, "/bench/") as store:
            out = timed(store, commits)
            batch = [Change("endpoint", f"red/r{i}", {"ip": "10.9.0.1"}) for i in range(5000)]
            t0 = time.perf_counter()
            store.commit(batch)
            extra["change_set_5000_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            extra["load_resources"] = len(store.load().records)
            extra["load_s"] = time.perf_counter() - t0
            return out
    finally:
        tempfile.tempdir = None


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--commits", type=int, default=1000)
    p.add_argument("--dir", default=tempfile.gettempdir())
    args = p.parse_args()
    result: dict[str, object] = {"commits": args.commits, "dir": args.dir}
    print(f"store commit latency, {args.commits} single-resource commits, in {args.dir}")
    print(f"{'sync':6} {'median':>9} {'p99':>9} {'max':>9} {'commit/s':>9}   (ms)")
    extra: dict[str, float] = {}
    modes = {
        "NORMAL": sqlite("NORMAL"),
        "FULL": sqlite("FULL"),
        "etcd": lambda d, n: etcd(d, n, extra),
    }
    for mode, run in modes.items():
        lat = sorted(run(args.dir, args.commits))
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
        r = {
            "median_ms": statistics.median(lat) * 1e3,
            "p99_ms": p99 * 1e3,
            "max_ms": lat[-1] * 1e3,
            "commits_per_s": len(lat) / sum(lat),
        }
        result[mode] = {**r, **extra} if mode == "etcd" else r
        print(
            f"{mode:6} {r['median_ms']:9.3f} {r['p99_ms']:9.3f} {r['max_ms']:9.3f}"
            f" {r['commits_per_s']:9.0f}"
        )
    print(
        f"etcd: one 5 000-endpoint change set {extra['change_set_5000_s']:.2f} s, load of"
        f" {extra['load_resources']:.0f} resources {extra['load_s']:.2f} s"
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
