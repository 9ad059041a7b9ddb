"""Flows and bytes per host for direct vs gateway vs on-demand at 1,000 hosts (issue 14), with
a 5 % active-pair workload (Andromeda's comparison). A model on the scale simulation's world
(benchmarks/sim/scenario.py, the ``large`` preset: 1,000 hosts, 100 VPCs, 20k endpoints, 4 peers
a VPC, 2 export policies), counted per host, every host:

- **direct**: per peer destination exported to a local VPC, 2 flows (l3_lookup, tunnel_src:
  docs/pipeline.md) and its destination object in the stream;
- **gateway**: per (local VPC, peer) per peer subnet, the subnet flow, one source check per
  gateway and one from any host, and the select group; no peer destination object;
- **on-demand**: gateway's, plus the counter learner per subnet, and per *active* peer
  destination 2 direct flows and 1 learned counter. A (local endpoint, peer destination) pair
  is active with probability ``--active`` (seeded); a destination is active on a host when a
  pair from one of its endpoints is (``vm_pairs``). Also with (host, peer destination) pairs
  active with that probability (``host_pairs``), the host-level reading of "5 % of pairs".
  Bytes: the active destinations' objects only (its peer destination stream narrowed to
  them, docs/protocol.md "Destination filter"; the one empty delta per write elsewhere in the
  peer VPC, the same count as on the whole stream, is not counted in any mode).

Own-VPC flows and objects are the same in every mode and left out. Prints a table and writes
benchmarks/results/gateway_scale.json. Pure (no lab):
    .venv/bin/python benchmarks/gateway_scale.py [--active 0.05] [--gateways 2]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import sys
from collections import Counter

import common

from meshpeer.protocol.objects import destination_json

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sim.scenario import Ep, Scenario, Sizes, build

LARGE = Sizes(hosts=1000, vpcs=100, endpoints=20_000, shards=4, peers_per_vpc=4, policies=2)
DIRECT_FLOWS = 2  # l3_lookup + tunnel_src per remote peer destination
LEARNED = 1  # an active pair's counter in offload_count


def object_bytes(e: Ep) -> int:
    """A destination object as a stream carries it (key and JSON, meshpeer.protocol.objects)."""
    ip, host_ip = ipaddress.ip_address(e.ip), ipaddress.ip_address("192.168.100.1")
    obj = destination_json(ip, "02:00:0a:00:00:02", 1001, host_ip, "vm", e.host)
    return len(json.dumps({e.name: obj}, separators=(",", ":")))


def per_host(sc: Scenario, active: float, gateways: int, seed: int) -> dict[str, list[int]]:
    rng = random.Random(seed)
    by_vpc: dict[str, list[Ep]] = {v: [] for v in sc.vpcs}
    local: Counter[tuple[str, str]] = Counter()  # (host, vpc) -> endpoints there
    for e in sc.endpoints:
        by_vpc[e.vpc].append(e)
        local[(e.host, e.vpc)] += 1
    size = {e.ip: object_bytes(e) for e in sc.endpoints}
    out: dict[str, list[int]] = {k: [] for k in (
        "direct_flows", "gateway_flows", "on_demand_flows_vm_pairs", "on_demand_flows_host_pairs",
        "direct_bytes", "gateway_bytes", "on_demand_bytes_vm_pairs", "on_demand_bytes_host_pairs",
        "active_destinations_vm_pairs", "active_destinations_host_pairs")}  # fmt: skip
    for h in sc.hosts:
        f = Counter[str]()
        b = Counter[str]()
        for v in sc.host_vpcs[h]:
            share = {"vm_pairs": 1 - (1 - active) ** local[(h, v)], "host_pairs": active}
            for u in sc.peers[v]:
                pol = sc.policy(u, v)
                dests = [e for e in by_vpc[u] if pol.exports_ip(ipaddress.ip_address(e.ip))]
                subnets = 1  # one /16 per VPC (export ranges cut it, the route stays one)
                side = subnets * (1 + gateways + 1) + 1  # subnet, source checks, the group
                f["direct"] += DIRECT_FLOWS * len(dests)
                f["gateway"] += side
                b["direct"] += sum(size[e.ip] for e in dests)
                for how, p_active in share.items():
                    hot = [e for e in dests if rng.random() < p_active]
                    f[how] += side + subnets + (DIRECT_FLOWS + LEARNED) * len(hot)
                    b[how] += sum(size[e.ip] for e in hot)
                    f[f"n_{how}"] += len(hot)
        out["direct_flows"].append(f["direct"])
        out["gateway_flows"].append(f["gateway"])
        out["direct_bytes"].append(b["direct"])
        out["gateway_bytes"].append(0)
        for how in ("vm_pairs", "host_pairs"):
            out[f"on_demand_flows_{how}"].append(f[how])
            out[f"on_demand_bytes_{how}"].append(b[how])
            out[f"active_destinations_{how}"].append(f[f"n_{how}"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--active", type=float, default=0.05, help="share of active pairs")
    p.add_argument("--gateways", type=int, default=2, help="gateway hosts")
    p.add_argument("--seed", type=int, default=14)
    p.add_argument("--json", help="where to write the results (default: benchmarks/results)")
    args = p.parse_args()
    sc = build(LARGE)
    got = per_host(sc, args.active, args.gateways, args.seed)
    summary = {k: common.summary(v) for k, v in got.items()}
    print(f"\n{LARGE.hosts} hosts, {LARGE.vpcs} VPCs, {LARGE.endpoints} endpoints, "
          f"{args.active:.0%} active pairs, {args.gateways} gateways: peer state per host")  # fmt: skip
    print(f"{'':44} {'p50':>10} {'p99':>10} {'max':>10}")
    for k, s in summary.items():
        print(f"{k:44} {s['p50']:10.0f} {s['p99']:10.0f} {s['max']:10.0f}")
    common.write_json(
        {
            "benchmark": "gateway_scale",
            "sizes": vars(LARGE),
            "active": args.active,
            "gateways": args.gateways,
            "per_host": summary,
        },
        args.json,
        "gateway_scale.json",
    )


if __name__ == "__main__":
    main()
