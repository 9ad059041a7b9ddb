"""Packets lost when a gateway dies under traffic (issue 14), with BFD liveness.

On tests/e2e/topologies/gateway.yaml (b1 on hv1, r1 on hv2, both sides of blue <-> red through
gw1 and gw2), b1 pings r1 every 10 ms; the gateway carrying it is killed (its ovs-vswitchd
stopped by the pid the lab's supervisor recorded); the hypervisors' BFD sessions to it go
down (``[ohc] bfd_interval_ms``, 100 ms: detection after 3 intervals) and OVS skips its select
bucket; then it is started again and the sessions come back. ``--runs`` times.

Per run: which gateway died, pings lost (unanswered while later ones were answered), the loss
window (longest time between two consecutive replies: target < 1 s), the time from the kill
until every hypervisor's sessions showed it (seen by polling bfd/show, so an upper bound), and
pings lost after that (must be 0). Prints a table and writes
benchmarks/results/gateway_failover.json. Needs root and OVS.
    .venv/bin/python benchmarks/gateway_failover.py [--runs 5]
"""

from __future__ import annotations

import statistics
from typing import Any

import common
import gateway_bench

from meshpeer.lab.probe import until
from tests.e2e import gwkit

HYPERVISORS = ("hv1", "hv2")
GATEWAYS = ("gw1", "gw2")
DEADLINE = 60.0


def one_run(lab: common.Lab) -> dict[str, Any]:
    hvs = [lab.host(h) for h in HYPERVISORS]
    gws = {g: lab.host(g) for g in GATEWAYS}
    ips = [h.underlay_ip for h in gws.values()]
    if until(lambda: gwkit.all_fast(hvs, ips), DEADLINE) is None:
        raise RuntimeError("BFD sessions not all up")
    src = next(v for v in lab.plan.vms if v.name == "b1")
    dst = next(v for v in lab.plan.vms if v.name == "r1")
    run = gwkit.failover(lab.plan, hvs, gws, src, dst, DEADLINE)
    return {
        "killed": run.dead,
        "sent": run.result.sent,
        "lost": len(run.result.gaps()),
        "loss_window_s": round(run.window_s(), 3),
        "kill_to_sessions_down_s": round(run.switched_at - run.killed_at, 3),
        "lost_after_switch": len(run.lost_after_switch()),
    }


def main() -> None:
    args, runs, m, load = gateway_bench.run(__doc__ or "", "gateway kills", "bgwf", one_run)
    columns = [("killed", "killed", ""), ("sent", "sent", ""), ("lost", "lost", "")]
    columns += [
        ("window s", "loss_window_s", ".3f"),
        ("detected s", "kill_to_sessions_down_s", ".3f"),
    ]
    columns += [("lost after", "lost_after_switch", "")]
    title = "gateway killed under b1 (hv1) -> r1 (hv2) at 100 pps, BFD every 100 ms"
    gateway_bench.table(title, columns, runs)
    windows = [r["loss_window_s"] for r in runs]
    summary = {
        "loss_window_s": common.summary(windows),
        "loss_window_median_s": round(statistics.median(windows), 3),
        "under_1s": all(w < 1.0 for w in windows),
    }
    print(f"loss window: median {summary['loss_window_median_s']:.3f} s, max {max(windows):.3f} s")
    result = {"pps": 100, "bfd_interval_ms": 100, "runs": runs, **summary}
    gateway_bench.write(args, "gateway_failover", result, m, load)


if __name__ == "__main__":
    main()
