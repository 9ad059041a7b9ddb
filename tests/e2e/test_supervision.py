"""The lab supervises every process it starts (issue 17): kill -9 of one comes back by itself.

On tests/e2e/topologies/mesh.yaml, each process kind is killed with SIGKILL in turn; the test
waits (generous deadlines) for `scripts/lab status --json` to show a new pid for it, for the
host or shard to be healthy again and for cross-host, cross-shard traffic to pass. A process
the lab stops on purpose (its own stop command) stays stopped until the lab starts it again.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from meshpeer.lab import controllers, ohcs, ovs, supervisor
from tests.e2e.traffic import Pinger
from tests.integration.labkit import E2E_TOPOLOGIES as TOPOLOGIES
from tests.integration.labkit import Lab, lab_cli, running
from tests.support.wait import wait_for

# One of each kind, spread over the hosts and shards of mesh.yaml, on b1 -> r1's way (hv1, hv2,
# ctl1, ctl2) but for ovs-vswitchd (hv3: its restore is tested in test_ohc_restarts.py).
KINDS = [
    ("shard", "ctl2"), ("shard", "ctl1"), ("ohc", "hv1"), ("ohc", "hv2"),
    ("ovsdb-server", "hv2"), ("ovs-vswitchd", "hv3"),
]  # fmt: skip
PINGS = 100000  # more than any test sends: each stops its pinger when it has what it needs
# Cross-host pairs that cross both shards (blue on ctl1, red on ctl2) and all three hosts.
PAIRS = [("b1", "r1"), ("r2", "b2"), ("g1", "r1")]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """mesh.yaml. Named ``lab`` so that conftest dumps flows when a test fails."""
    with running("mesh.yaml", TOPOLOGIES) as the_lab:
        yield the_lab


def supervised(lab: Lab, kind: str, name: str) -> dict[str, Any]:
    """The process as `scripts/lab status --json` lists it."""
    procs = json.loads(lab_cli(lab.name, "status", "--json").stdout)["processes"]
    found = [p for p in procs if p["kind"] == kind and p["name"] == name]
    assert len(found) == 1, procs
    return found[0]


def supervisor_log(lab: Lab) -> str:
    with open(supervisor.at(lab.plan.state_dir, supervisor.LOG), encoding="utf-8") as f:
        return f.read()


def synced_after(lab: Lab, host: str, t: float) -> bool:
    """The host's OHC finished a complete sync after ``t``."""
    last = (ohcs.status(lab.host(host)) or {}).get("last_sync", {})
    return last.get("at", 0) > t and bool(last.get("complete"))


def wait_healthy(lab: Lab, kind: str, name: str, since: float) -> None:
    if kind == "shard":
        c = next(x for x in lab.plan.controllers if x.name == name)
        controllers.wait_healthy(lab.plan, c, timeout=60)
        return
    if kind == "ohc":
        wait_for(lambda: synced_after(lab, name, since), 60, what=f"{name}: OHC synced again")
        return
    h = lab.host(name)
    # both daemons run, the database answers and the switch forwards (not restoring flows)
    wait_for(lambda: len(ovs.pids(h)) == len(ovs.DAEMONS), 60, what=f"{name}: OVS running")
    wait_for(
        lambda: "flow-restore-wait" not in ovs.vsctl(h, "get", "Open_vSwitch", ".", "other_config"),
        60,
        what=f"{name}: the database answers, flows restored",
    )


def traffic_passes(lab: Lab) -> bool:
    return all(lab.ping(src, dst, count=3) for src, dst in PAIRS)


@pytest.mark.parametrize(("kind", "name"), KINDS)
def test_kill_9_of_a_supervised_process_is_restarted(lab: Lab, kind: str, name: str) -> None:
    """kill -9 under 100 pps b1 -> r1 (hv1 -> hv2, ctl1 -> ctl2). A shard, an OHC or an
    ovsdb-server away loses nothing (the switches keep forwarding); ovs-vswitchd's own loss
    window is measured by benchmarks/ovs_restart.py, and its restore tested in
    test_ohc_restarts.py."""
    before = supervised(lab, kind, name)
    old = before["pid"]
    assert before["running"] and before["wanted"] and old is not None
    with Pinger(lab.vm("b1"), lab.vm("r1").ip, count=PINGS) as pinger:
        assert pinger.wait_reply_after(time.time(), 30) is not None, "b1 -> r1 before the kill"
        t_kill = time.time()
        os.kill(old, signal.SIGKILL)
        after = wait_for(
            lambda: (p := supervised(lab, kind, name))["running"] and p["pid"] != old and p,
            30,
            what=f"{kind} {name}: a new pid",
        )
        wait_healthy(lab, kind, name, t_kill)
        assert pinger.wait_reply_after(time.time(), 30) is not None, "b1 -> r1 after"
        result = pinger.stop()
    print(f"\nkill -9 of {kind} {name}: {result.sent} sent, {len(result.gaps())} lost")
    assert after["restarts"] == before["restarts"] + 1, after
    if kind != "ovs-vswitchd":
        assert not result.gaps(), result.missing()
    assert wait_for(lambda: traffic_passes(lab), 60, what="traffic across hosts and shards")
    log = supervisor_log(lab)
    assert f"{kind} {name} (pid {old}) exited" in log, log[-2000:]
    assert f"{kind} {name} restarted as pid {after['pid']}" in log, log[-2000:]


def test_a_process_the_lab_stops_stays_stopped_until_started(lab: Lab) -> None:
    hv3 = lab.host("hv3")
    before = supervised(lab, "ohc", "hv3")
    old = before["pid"]
    ohcs.stop(lab.plan, hv3)
    # The supervisor saw that exit (and decided then, from the spec the stop wrote first).
    seen = wait_for(
        lambda: (
            (p := supervised(lab, "ohc", "hv3"))["last_exit"] and p["last_exit"]["pid"] == old and p
        ),
        30,
        what="the supervisor saw the OHC exit",
    )
    assert seen["pid"] is None and not seen["running"] and not seen["wanted"], seen
    assert seen["restarts"] == before["restarts"], seen
    assert not ohcs.running(hv3)
    assert f"ohc hv3 (pid {old}) exited with code" in supervisor_log(lab)
    t_start = time.time()
    new = ohcs.start(lab.plan, hv3)
    assert new != old
    wait_for(lambda: synced_after(lab, "hv3", t_start), 60, what="hv3: OHC synced again")
    back = supervised(lab, "ohc", "hv3")
    assert back["pid"] == new and back["wanted"] and back["restarts"] == before["restarts"]
    assert wait_for(lambda: traffic_passes(lab), 60, what="traffic across hosts and shards")
