"""Chaos: faults under 100 pps cross-shard ping and REST write loops on both shards (issue 17).

On tests/chaos/topologies/chaos.yaml, b1 (blue, shard ctl1, host hv1) pings r1 (red, shard
ctl2, host hv2) every 10 ms while a write loop per shard creates and deletes endpoints of its
VPC on every host (tests/chaos/harness.py). Each scenario injects one fault:

- kill -9 of each supervised process kind (a shard, an OHC, ovsdb-server, ovs-vswitchd), on
  the ping's path; the lab's supervisor restarts it;
- hv1's management link cut for 10 s (its underlay stays up);
- shard ctl2 partitioned away from hv1 and from shard ctl1 for 10 s (each still reaches the
  others, and the write loop still reaches ctl2).

Each asserts behaviour only: no acknowledged write is lost, the lab converges (every host has
applied the shards' latest versions) within a generous deadline, the ping passes afterwards,
the killed process came back; for a network fault, the ping keeps passing while the fault
lasts (fail static). Packets lost, the largest gap and the time to converge are measured and
printed (the table at the end of the run; docs/reliability.md, "Chaos"), never asserted.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from meshpeer.lab import faults, ovs, supervisor
from meshpeer.lab.sh import run
from tests.chaos.harness import ChaosRun, Row
from tests.e2e.test_supervision import wait_healthy
from tests.integration.labkit import Lab
from tests.support.wait import wait_for

# One of each kind, on b1 -> r1's way: hv1 and hv2, ctl1 and ctl2.
KILLS = [("shard", "ctl2"), ("ohc", "hv1"), ("ovsdb-server", "hv1"), ("ovs-vswitchd", "hv2")]
FAULT_S = 10.0  # how long a network fault lasts (the 10 s)


def process(lab: Lab, kind: str, name: str) -> dict[str, Any]:
    """The supervised process as the supervisor reports it (`scripts/lab status --json`)."""
    procs = supervisor.processes(lab.plan.state_dir)
    found = [p for p in procs if p["kind"] == kind and p["name"] == name]
    assert len(found) == 1, procs
    return found[0]


def reaches(lab: Lab, src: str, ip: str) -> bool:
    """One ping over the management network from ``src``'s namespace."""
    res = run(["ping", "-n", "-c", "1", "-W", "1", ip], netns=lab.plan.netns_of(src), check=False)
    return res.returncode == 0


def copied_since(lab: Lab, host: str, t: float) -> bool:
    """The supervisor took a copy of the host's br-int (for a warm restart) after ``t``: it
    must keep one while the write loops keep the OHCs syncing, or a kill -9 of ovs-vswitchd
    restores nothing (a cold restart) or flows far older than the last sync."""
    path = ovs.saved_flows_path(lab.host(host))
    return os.path.exists(path) and os.path.getmtime(path) > t


def hold_fault(chaos: ChaosRun, cut_off: str, shards: list[str]) -> None:
    """Keep the fault for FAULT_S (its length: nothing is checked until it has lasted), then,
    with it still in place, check that it bites (writes made meanwhile on ``shards`` wait
    for host ``cut_off``) and that b1 -> r1 still passes: the hosts keep their flows (fail
    static)."""
    assert chaos.pinger is not None
    time.sleep(max(0.0, chaos.t_fault + FAULT_S - time.time()))
    for w in chaos.writers:
        if w.shard in shards:
            assert w.pending_on(cut_off), f"{w.vpc}'s new endpoints are not pending on {cut_off}"
    assert chaos.pinger.wait_reply_after(time.time(), 10) is not None, "no reply during the fault"


def check(row: Row) -> None:
    print(f"\n{row}")
    assert row.acked_lost == 0, row.notes


@pytest.mark.parametrize(("kind", "name"), KILLS)
def test_kill_9(lab: Lab, rows: list[Row], kind: str, name: str) -> None:
    before = process(lab, kind, name)
    assert before["running"] and before["pid"] is not None, before
    with ChaosRun(lab, f"kill -9 {kind} {name}") as chaos:
        if kind == "ovs-vswitchd":
            wait_for(lambda: copied_since(lab, name, chaos.t_loaded), 60, what="a br-int copy")
        chaos.fault()
        os.kill(before["pid"], signal.SIGKILL)
        after = wait_for(
            lambda: (p := process(lab, kind, name))["running"] and p["pid"] != before["pid"] and p,
            30,
            what=f"{kind} {name}: a new pid",
        )
        wait_healthy(lab, kind, name, chaos.t_fault)
        chaos.healed()
        row = chaos.finish()
    rows.append(row)
    assert after["restarts"] == before["restarts"] + 1, after
    check(row)


def test_management_link_cut(lab: Lab, rows: list[Row]) -> None:
    """hv1 loses the management network for 10 s: its flows stay, and it catches up with the
    writes made meanwhile once the link is back."""
    ctl1 = lab.plan.controllers[0]
    with ChaosRun(lab, "hv1 management link cut 10 s") as chaos:
        chaos.fault()
        faults.cut_mgmt(lab.plan, "hv1")
        try:
            assert not reaches(lab, "hv1", ctl1.mgmt_ip), "hv1 still reaches ctl1"
            hold_fault(chaos, "hv1", ["ctl1", "ctl2"])
        finally:
            faults.restore_mgmt(lab.plan, "hv1")
        chaos.healed()
        row = chaos.finish()
    rows.append(row)
    check(row)


def test_peer_shard_partitioned_away(lab: Lab, rows: list[Row]) -> None:
    """ctl2 (red's shard) unreachable from hv1 (which follows red's services as blue's
    host) and from ctl1 (blue's shard, its federation peer) for 10 s; hv2 and hv3 and the
    write loop still reach it. hv1 keeps its flows and catches up afterwards."""
    ctl2 = faults.mgmt_ip(lab.plan, "ctl2")
    others = ["hv1", "ctl1"]
    with ChaosRun(lab, "ctl2 partitioned from hv1 and ctl1 10 s") as chaos:
        chaos.fault()
        faults.partition(lab.plan, "ctl2", others)
        try:
            assert not any(reaches(lab, x, ctl2) for x in others), "the partition leaks"
            assert reaches(lab, "hv2", ctl2), "hv2 lost ctl2 too"
            hold_fault(chaos, "hv1", ["ctl2"])
        finally:
            faults.heal(lab.plan, "ctl2", others)
        chaos.healed()
        row = chaos.finish()
    rows.append(row)
    check(row)
