"""The OVN lab (meshpeer/lab/ovn.py, docs/ovn.md): OVN on the meshpeer lab's own hosts.

Two VPCs peered on OVN (logical routers joined by peer ports and static routes), a VM of each on
different hosts, and a VM of a third, unpeered VPC: a ping crosses the peering over Geneve, the
unpeered VM gets no answer, and 'down' leaves no process and no namespace behind. Through the
IDL (meshpeer/lab/ovnidl.py): a port deleted with ``wait="hv"`` no longer answers, added back it
does again, and every chassis reports when it applied each change. Two shards as two
availability zones joined by ovn-ic: ping and TCP cross the zones' peering."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from meshpeer.lab import ovn, ovnidl, ovnplan, supervisor, teardown, topology
from meshpeer.lab.plan import LabPlan
from meshpeer.lab.procs import alive
from meshpeer.lab.sh import run
from tests.integration.labkit import Lab

TOPOLOGY = {
    "hosts": [{"name": "hv1"}, {"name": "hv2"}, {"name": "hv3"}],
    "vpcs": [
        {"name": "blue", "subnets": ["10.1.0.0/24"]},
        {"name": "red", "subnets": ["10.2.0.0/24"]},
        {"name": "green", "subnets": ["10.3.0.0/24"]},
    ],
    "endpoints": [
        {"name": "b1", "vpc": "blue", "host": "hv1", "ip": "10.1.0.11"},
        {"name": "r1", "vpc": "red", "host": "hv2", "ip": "10.2.0.11"},
        {"name": "g1", "vpc": "green", "host": "hv3", "ip": "10.3.0.11"},
    ],
    "peerings": [{"vpc": "blue", "peer": "red"}, {"vpc": "red", "peer": "blue"}],
}


def ping(netns: str, ip: str, count: int = 1) -> bool:
    args = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", ip]
    return run(args, netns=netns, check=False, timeout=30).returncode == 0


def ping_within(netns: str, ip: str, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ping(netns, ip):
            return True
    return False


def lab_pids(lab: str, state_dir: str) -> set[int]:
    pids = {p["pid"] for p in supervisor.processes(state_dir) if p["pid"] is not None}
    return pids | teardown.lab_pids(lab, teardown.lab_netns(lab))


@contextlib.contextmanager
def ovn_lab(raw: dict[str, Any]) -> Iterator[tuple[str, LabPlan]]:
    """An OVN lab of ``raw`` (skipped, saying why, without OVN); after it, no namespace left."""
    why = ovn.missing()
    if why:
        print(f"skipped: {why}")
        pytest.skip(why)
    lab = f"o{os.getpid() % 10000}"
    plan = ovn.up(topology.parse(raw), lab)
    try:
        yield lab, plan
    finally:
        ovn.down(lab)
    assert teardown.lab_netns(lab) == []


def test_ping_across_an_ovn_peering_and_not_to_an_unpeered_vpc() -> None:
    with ovn_lab(TOPOLOGY) as (lab, plan):
        b1, r1, g1 = (f"{lab}-{n}" for n in ("b1", "r1", "g1"))
        assert ping_within(b1, "10.2.0.11"), "blue b1 (hv1) -> red r1 (hv2) across the peering"
        assert ping(r1, "10.1.0.11"), "red r1 -> blue b1, the other way"
        assert not ping(g1, "10.1.0.11", count=3), "green is not peered with blue"
        assert not ping(b1, "10.3.0.11", count=3), "blue has no route to green"
        started = lab_pids(lab, plan.state_dir)
        assert len(started) >= 3 * 3 + 3, started  # per host 3 daemons, central 3
    assert [p for p in started if alive(p)] == []
    assert run(["ip", "link", "show", plan.root_mgmt_if], check=False).returncode != 0


def test_idl_delete_and_add_back_a_port_waited_for_on_every_chassis() -> None:
    with ovn_lab(TOPOLOGY) as (lab, plan):
        c = ovnplan.central(plan)
        b1 = f"{lab}-b1"
        assert ping_within(b1, "10.2.0.11"), "the peering works before"
        r1 = next(v for v in plan.vms if v.name == "r1")
        with ovnidl.nb(c.nb_sock) as nb, ovnidl.sb(c.sb_sock) as sb:
            gone = ovnidl.commit(nb, ovnidl.delete_ports("ls-red", {"r1"}, nb), wait="hv")
            assert "r1" not in {p.name for p in nb.one("Logical_Switch", name="ls-red").ports}
            assert not ping(b1, "10.2.0.11", count=3), "r1's port is gone on every chassis"
            back = ovnidl.add_ports("ls-red", [("r1", f"{r1.mac} {r1.ip}")], nb)
            added = ovnidl.commit(nb, back, wait="hv")
            assert ping_within(b1, "10.2.0.11"), "r1 answers again once its port is back"
            for a in (gone, added):
                assert a.nb_cfg is not None
                hosts = ovnidl.applied_at(sb, a.nb_cfg, a.wall)
                assert set(hosts) == {"hv1", "hv2", "hv3"}, hosts
            syncs, last = ovnidl.sync_hv(nb, budget=60)
            assert syncs >= 1
            assert (last.nb_cfg or 0) > (added.nb_cfg or 0), "a sync is a new nb_cfg"


ZONES = {
    # two shards: two availability zones (blue's, red and green's), joined by ovn-ic
    **TOPOLOGY,
    "controllers": [{"name": "ctl1"}, {"name": "ctl2"}],
    "vpcs": [
        {"name": "blue", "controller": "ctl1", "subnets": ["10.1.0.0/24"]},
        {"name": "red", "controller": "ctl2", "subnets": ["10.2.0.0/24"]},
        {"name": "green", "controller": "ctl2", "subnets": ["10.3.0.0/24"]},
    ],
}


def test_ping_and_tcp_across_a_peering_between_two_zones_joined_by_ovn_ic() -> None:
    with ovn_lab(ZONES) as (lab, plan):
        b1, r1, g1 = (f"{lab}-{n}" for n in ("b1", "r1", "g1"))
        centrals = {ovnplan.central(plan, z).netns for z in (0, 1)}
        assert centrals <= set(teardown.lab_netns(lab)), "a central namespace per zone"
        assert ping_within(b1, "10.2.0.11", timeout=40), "blue b1 (az1) -> red r1 (az2) via ovn-ic"
        assert ping(r1, "10.1.0.11"), "and back"
        assert not ping(g1, "10.1.0.11", count=3), "green (az2) is not peered with blue"
        received, rate = Lab(lab, plan).tcp_transfer("b1", "r1", 1 << 20)
        print(f"TCP b1 -> r1 across zones: {rate / 1e6:.0f} Mbit/s")
        assert received == 1 << 20, "every byte crossed the transit switch"
