"""Packets lost when ovs-vswitchd restarts, at 100 pings/s across hosts (issue 17).

On peered.yaml, b1 (hv1) pings r1 (hv2) every 10 ms while hv2's ovs-vswitchd is restarted
``--kills`` times, ``--spacing`` seconds apart, two ways:

- ``cold``: the lab stops it and starts it again (what any restart was before the supervisor:
  no flows and no tunnel neighbours until the OHC reconnects and resyncs);
- ``warm``: kill -9, and the lab's supervisor restarts it under flow-restore-wait, restoring
  tunnel neighbours, groups and flows before it forwards (docs/reliability.md).

For each: pings sent, lost (unanswered while later ones were answered), the largest gap between
two consecutive replies (the loss window), and each restart's own window. Prints a table and
writes benchmarks/results/ovs_restart.json. Needs root and OVS.
    .venv/bin/python benchmarks/ovs_restart.py [--kills 5] [--spacing 3]
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import time
from typing import Any

import common

from meshpeer.lab import ovs, supervisor
from meshpeer.lab.plan import HostPlan, LabPlan
from tests.e2e.traffic import Pinger, PingResult

HOST = "hv2"
INTERVAL = 0.01


def vswitchd_pid(plan: LabPlan, h: HostPlan) -> int | None:
    procs = supervisor.processes(plan.state_dir)
    p = next(p for p in procs if p["kind"] == "ovs-vswitchd" and p["name"] == h.name)
    return int(p["pid"]) if p["running"] else None


def until(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def forwarding(h: HostPlan) -> bool:
    return "flow-restore-wait" not in ovs.vsctl(h, "get", "Open_vSwitch", ".", "other_config")


def restart(plan: LabPlan, h: HostPlan, mode: str) -> None:
    if mode == "cold":
        ovs.stop_vswitchd(plan, h)
        ovs.start_vswitchd(plan, h)
        ovs.wait_ready(h, [])
        return
    old = vswitchd_pid(plan, h)
    assert old is not None
    os.kill(old, signal.SIGKILL)
    until(lambda: vswitchd_pid(plan, h) not in (None, old), 30, "a new ovs-vswitchd")
    until(lambda: forwarding(h), 30, "flow-restore-wait cleared")


def window(result: PingResult, t: float) -> float:
    """The gap between the last reply before ``t`` and the first one after it."""
    times = sorted(at for _, at in result.replies)
    before = max((x for x in times if x <= t), default=times[0])
    after = min((x for x in times if x > t), default=times[-1])
    return after - before


def run_mode(lab: common.Lab, mode: str, kills: int, spacing: float) -> dict[str, Any]:
    h = lab.host(HOST)
    src = next(v for v in lab.plan.vms if v.name == "b1")
    dst = next(v for v in lab.plan.vms if v.name == "r1")
    t_kills = []
    with Pinger(src, dst.ip, count=10**6, interval=INTERVAL) as pinger:
        if pinger.wait_reply_after(time.time(), 30) is None:
            raise RuntimeError("b1 -> r1 does not answer")
        for _ in range(kills):
            time.sleep(spacing)
            t_kills.append(time.time())
            restart(lab.plan, h, mode)
            if pinger.wait_reply_after(time.time(), 30) is None:
                raise RuntimeError(f"no reply after a {mode} restart")
        time.sleep(spacing)
        result = pinger.stop()
    times = sorted(at for _, at in result.replies)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return {
        "restarts": kills,
        "sent": result.sent,
        "lost": len(result.gaps()),
        "largest_gap_s": round(max(gaps), 3),
        "windows_s": [round(window(result, t), 3) for t in t_kills],
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--spacing", type=float, default=3.0, help="seconds between two restarts")
    p.add_argument("--modes", default="cold,warm")
    p.add_argument("--lab", default="bovs")
    p.add_argument("--json")
    args = p.parse_args()
    m = common.machine(args.lab)
    results: dict[str, Any] = {}
    topo = common.topology("peered.yaml")
    with common.LoadSampler() as load, common.lab(topo, args.lab) as lab:
        for mode in args.modes.split(","):
            results[mode] = run_mode(lab, mode, args.kills, args.spacing)
    print(f"\novs-vswitchd restarts on {HOST}, b1 (hv1) -> r1 (hv2) at {1 / INTERVAL:.0f} pps")
    print(f"{'mode':6} {'restarts':>8} {'sent':>6} {'lost':>5} {'largest gap':>12}  windows (s)")
    for mode, r in results.items():
        print(f"{mode:6} {r['restarts']:8} {r['sent']:6} {r['lost']:5} {r['largest_gap_s']:11.3f}s"
              f"  {r['windows_s']}")  # fmt: skip
    common.write_json(
        {"pps": 1 / INTERVAL, "host": HOST, **results, "machine": m, "load": load.result()},
        args.json,
        "ovs_restart.json",
    )


if __name__ == "__main__":
    main()
