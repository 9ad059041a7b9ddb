"""A shard's cost per write as its VPC grows (issue 11: it must not depend on the VPC's size).

In process, over the real store (SQLite, a temporary file) and stream hub: one shard with a
peered VPC pair, endpoints added one by one to red; at each size, the mean of ``--writes`` more
``ShardState.commit``s of one new endpoint (the REST handler's own work is not in it).
Prints a table and writes benchmarks/results/write_cost.json.

    .venv/bin/python benchmarks/write_cost.py [--sizes 1000,10000,30000] [--writes 200]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

from meshpeer.controller import intent as ops
from meshpeer.controller.model import Host, Subnet
from meshpeer.controller.shard import ShardState
from meshpeer.directory import parse_directory
from meshpeer.store.sqlite import Store
from meshpeer.streaming.publisher import StreamHub
from policies.export import ExportPolicy

DIRECTORY = {
    "shards": {"ctl1": {"url": "http://127.0.0.1:1", "vni_range": [1000, 1999],
                        "vpcs": ["blue", "red"]}},
    "grant_keys": {"k1": "ab" * 32},
    "federation_token": "f" * 20,
}  # fmt: skip
FIRST = int(ipaddress.ip_address("10.128.0.10"))


def build(path: str) -> ShardState:
    d = parse_directory(DIRECTORY)
    store = Store.open(path, synchronous="NORMAL")
    s = ShardState("ctl1", d, store, StreamHub(base_version=1 << 32), time.time)
    for name, cidr in (("blue", "10.1.0.0/24"), ("red", "10.128.0.0/9")):
        subnet = Subnet("s0", ipaddress.ip_network(cidr))
        s.commit([ops.new_vpc(s.intent, d, "ctl1", name, [subnet], None)])
    for i, h in enumerate(("hv1", "hv2", "hv3")):
        s.commit([Host(h, ipaddress.ip_address(f"169.254.101.{11 + i}"))])
    b1 = ipaddress.ip_address("10.1.0.11")
    s.commit([ops.new_endpoint(s.intent, "blue", "b1", "vm", b1, None, "hv1", [])])
    for a, b in (("blue", "red"), ("red", "blue")):
        s.commit([ops.new_peering(s.intent, a, "p", b, ExportPolicy(), False, None)])
    return s


def add(s: ShardState, k: int) -> None:
    ip = ipaddress.ip_address(FIRST + k)
    host = ("hv2", "hv3")[k % 2]
    s.commit([ops.new_endpoint(s.intent, "red", f"r{k}", "vm", ip, None, host, [])])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="1000,10000,30000", help="comma-separated, ascending")
    p.add_argument("--writes", type=int, default=200, help="writes timed at each size")
    p.add_argument("--json", default=None, help="result file (default benchmarks/results/...)")
    args = p.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        s = build(os.path.join(tmp, "s.db"))
        k = 0
        for size in (int(x) for x in args.sizes.split(",")):
            while k < size:
                add(s, k)
                k += 1
            t0 = time.perf_counter()
            for _ in range(args.writes):
                add(s, k)
                k += 1
            ms = (time.perf_counter() - t0) / args.writes * 1000
            rows.append({"size": size, "writes": args.writes, "ms_per_write": round(ms, 3)})
            print(f"  red holds {size:>6}: {ms:.3f} ms per write", flush=True)
        s.store.close()
    result = {"benchmark": "write_cost", "at": common.now_utc(), "rows": rows,
              "machine": common.machine()}  # fmt: skip
    common.write_json(result, args.json, "write_cost.json")


if __name__ == "__main__":
    main()
