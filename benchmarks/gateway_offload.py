"""Time to move a busy pair off the gateways (issue 14, forwarding: on-demand).

On tests/e2e/topologies/gateway.yaml with blue's side toward red set to ``on-demand`` (red's
stays ``gateway``), b1 (hv1) pings r1 (hv2) every 10 ms: hv1's switch counts the pair, hv1's
OHC reads the counters every ``[ohc] offload_interval`` (1 s) and, at ``offload_pps`` (50) or
more, compiles r1's destination, so the requests go hv1 -> hv2 straight. Then b1 stops and the
pair goes back after ``offload_idle_s`` (10 s). ``--runs`` times.

Per run: seconds from the first reply to the direct flow on hv1 (polled: an upper bound),
pings lost across the switch (must be 0), whether the captured requests after it went
hv1 -> hv2 only, and seconds from the last ping until the direct flow is gone. Prints a table
and writes benchmarks/results/gateway_offload.json. Needs root and OVS.
    .venv/bin/python benchmarks/gateway_offload.py [--runs 5]
"""

from __future__ import annotations

import time
from typing import Any

import common
import gateway_bench

from meshpeer.lab import controllers
from meshpeer.lab.probe import until
from tests.e2e import gwkit

DEADLINE = 60.0
PEERING = "/v1/vpcs/blue/peerings/blue-red?wait=programmed"


def one_run(lab: common.Lab) -> dict[str, Any]:
    hv1, hv2 = lab.host("hv1"), lab.host("hv2")
    src = next(v for v in lab.plan.vms if v.name == "b1")
    dst = next(v for v in lab.plan.vms if v.name == "r1")
    run = gwkit.offload(lab.plan, hv1, src, dst, DEADLINE)
    stopped = time.time()
    back = until(lambda: not gwkit.has_direct_flow(hv1, dst.ip), DEADLINE, interval=0.1)
    requests = {
        (p.src, p.dst) for p in run.captured if p.icmp == "request" and p.inner_dst == dst.ip
    }
    return {
        "to_direct_s": round(run.offloaded_at - run.started_at, 3),
        "lost": len(run.result.gaps()),
        "direct_only": requests == {(hv1.underlay_ip, hv2.underlay_ip)},
        "back_to_gateways_s": None if back is None else round(time.time() - stopped, 1),
    }


def on_demand(lab: common.Lab) -> None:
    got = controllers.client_for(lab.plan, "ctl1").put(PEERING, {"forwarding": "on-demand"})
    if not got["programmed"]:
        raise RuntimeError(f"on-demand not programmed: {got}")


def main() -> None:
    args, runs, m, load = gateway_bench.run(
        __doc__ or "", "offloads", "bgwo", one_run, setup=on_demand
    )
    title = "b1 (hv1) -> r1 (hv2) at 100 pps, blue's side on-demand (50 pps, 1 s readings)"
    columns = [("to direct s", "to_direct_s", ".2f"), ("lost", "lost", "")]
    columns += [("direct only", "direct_only", ""), ("back after s", "back_to_gateways_s", "")]
    gateway_bench.table(title, columns, runs)
    to_direct = [r["to_direct_s"] for r in runs]
    result = {
        "pps": 100,
        "offload": {"interval_s": 1.0, "pps": 50.0, "idle_s": 10},
        "runs": runs,
        "to_direct_s": common.summary(to_direct),
        "lost_total": sum(r["lost"] for r in runs),
    }
    gateway_bench.write(args, "gateway_offload", result, m, load)


if __name__ == "__main__":
    main()
