"""BGP convergence with a real BIRD2: announce -> first packet, withdraw -> traffic stops (issue 12).

On tests/e2e/topologies/bgp.yaml (dc1 behind blue's vpn endpoint v1 on hv1; red on another
shard imports blue's custom routes), b1 (blue, hv2) and r1 (red, hv3) ping d1 (behind dc1)
every 10 ms while dc1 withdraws and announces 192.168.10.0/24 ``--runs`` times
(``prefixes.conf`` rewritten, then ``birdc configure``). For each, from the configure:

- withdraw: the receive time of the last reply (traffic stops within one ping interval of it);
- announce: the receive time of the first reply.

Both for b1 (the VPC that holds the BGP session: the shard's speaker, its forwarding stream,
hv2's OHC) and r1 (a peer on another shard: plus the federation view and the peer service).
Prints p50/p99 and writes benchmarks/results/bgp_convergence.json. Needs root, OVS, BIRD2.
    .venv/bin/python benchmarks/bgp_convergence.py [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import common

from meshpeer.lab import onprem
from meshpeer.lab.plan import OnpremPlan, VmPlan
from tests.e2e.traffic import Pinger

TOPOLOGY = os.path.join(common.ROOT, "tests", "e2e", "topologies", "bgp.yaml")
PREFIX = "192.168.10.0/24"
D1 = "192.168.10.10"
INTERVAL = 0.01
QUIET = 0.5  # no reply for this long after a withdrawal: the traffic has stopped
TIMEOUT = 30.0


def until(pred: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {TIMEOUT}s waiting for {what}")
        time.sleep(0.01)


def established(r: OnpremPlan) -> bool:
    return "Established" in onprem.birdc(r, "show", "protocols", "vpc")


def stopped(p: Pinger) -> bool:
    last = p.last_reply()
    return last is not None and time.time() - last > QUIET


def run(dc1: OnpremPlan, pingers: dict[str, Pinger], runs: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, list[float]]] = {n: {"withdraw": [], "announce": []} for n in pingers}
    for i in range(runs):
        t0 = time.time()
        onprem.announce(dc1, [])
        until(lambda: all(stopped(p) for p in pingers.values()), "the traffic to stop")
        for name, p in pingers.items():
            last = p.last_reply()
            assert last is not None
            out[name]["withdraw"].append(last - t0)
        t1 = time.time()
        onprem.announce(dc1, [PREFIX])
        for name, p in pingers.items():
            first = p.wait_reply_after(t1, TIMEOUT)
            if first is None:
                raise RuntimeError(f"run {i}: {name} gets no reply after the announcement")
            out[name]["announce"].append(first - t1)
        until(lambda: all(p.replies_after(time.time() - 0.1) for p in pingers.values()), "flow")
    return {
        name: {what: common.summary(xs) | {"runs_s": [round(x, 4) for x in xs]}
               for what, xs in r.items()}
        for name, r in out.items()
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--lab", default="bbgp")
    p.add_argument("--json")
    args = p.parse_args()
    m = common.machine(args.lab)
    with common.LoadSampler() as load, common.lab(TOPOLOGY, args.lab) as lab:
        dc1 = lab.plan.router("dc1")
        assert dc1 is not None
        until(lambda: established(dc1), "dc1's session")
        vms: dict[str, VmPlan] = {v.name: v for v in lab.plan.vms}
        with Pinger(vms["b1"], D1, 10**6, INTERVAL) as b1, Pinger(vms["r1"], D1, 10**6, INTERVAL) as r1:  # fmt: skip
            pingers = {"b1 (blue, the session's VPC)": b1, "r1 (red, a peer on ctl2)": r1}
            until(lambda: all(p.replies_after(time.time() - 0.1) for p in pingers.values()), "d1")
            results = run(dc1, pingers, args.runs)
    print(f"\nBGP convergence, {args.runs} runs, ping every {INTERVAL * 1000:.0f} ms, from birdc"
          " configure")  # fmt: skip
    print(f"{'source':30} {'event':9} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}")
    for name, r in results.items():
        for what, s in r.items():
            print(f"{name:30} {what:9} {s['p50'] * 1000:7.0f} {s['p99'] * 1000:7.0f}"
                  f" {s['max'] * 1000:7.0f}")  # fmt: skip
    common.write_json(
        {"interval_s": INTERVAL, "runs": args.runs, "results": results, "machine": m,
         "load": load.result()},
        args.json,
        "bgp_convergence.json",
    )  # fmt: skip


if __name__ == "__main__":
    main()
