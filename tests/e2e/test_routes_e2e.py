"""A peer's custom route reaches only the VPCs that import it, on a whole lab (issue 21 part 1).

On tests/e2e/topologies/routes.yaml: teak (c1) exports custom routes to plum and sage (c2) under
one policy, so one service set serves both. teak routes 10.129.0.0/24 via its router endpoint,
which holds 10.129.0.5 on its loopback. sage imports teak's custom routes, plum does not: plum's
VM must not reach 10.129.0.5 (its host holds neither the route nor the source check for it),
sage's must; flipping plum's flag with ``?wait=programmed`` installs and removes it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from meshpeer.client import Client
from meshpeer.lab import controllers
from meshpeer.lab.sh import run
from tests.integration.labkit import E2E_TOPOLOGIES, Lab, running

TOPOLOGY = "routes.yaml"
PREFIX = "10.129.0.0/24"
BEHIND = "10.129.0.5"  # on the router's loopback
DEADLINE = 20.0


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """routes.yaml, with teak's static route and the address behind its router. Named ``lab``
    so that conftest dumps flows when a test fails."""
    with running(TOPOLOGY, E2E_TOPOLOGIES) as the_lab:
        the_lab.sh("router", "ip", "addr", "add", f"{BEHIND}/32", "dev", "lo")
        # ARP from eth0's own address, not from the reply's source (10.129.0.5): the switch's
        # anti-spoofing takes only the port's address (as for an ILB backend, lab/build.py)
        the_lab.sh("router", "sysctl", "-qw", "net.ipv4.conf.all.arp_announce=2")
        route = {"name": "onprem", "prefix": PREFIX, "next_hop": the_lab.vm("router").ip}
        client(the_lab, "c1").post("/v1/vpcs/teak/routes", route)
        yield the_lab


def client(lab: Lab, ctl: str) -> Client:
    return controllers.client_for(lab.plan, ctl)


def reaches(lab: Lab, vm: str, count: int = 1) -> bool:
    """Does ``vm`` get an answer from the address behind teak's router?"""
    args = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", BEHIND]
    return run(args, netns=lab.vm(vm).netns, check=False, timeout=30).returncode == 0


def effective(lab: Lab, vpc: str) -> dict[str, Any]:
    routes = client(lab, "c2").get(f"/v1/vpcs/{vpc}/routes/effective")["routes"]
    (route,) = [r for r in routes if r["prefix"] == PREFIX]
    return dict(route)


def set_import(lab: Lab, vpc: str, on: bool) -> dict[str, Any]:
    """PUT the flag with ?wait=programmed: the answer must say every host applied it."""
    path = f"/v1/vpcs/{vpc}/peerings/{vpc}-teak?wait=programmed&timeout={DEADLINE:.0f}"
    body = dict(client(lab, "c2").put(path, {"import_custom_routes": on}))
    assert (body["programmed"], body["pending_hosts"]) == (True, []), body
    return body


def route_flows(lab: Lab, vm: str) -> list[str]:
    """The flows on ``vm``'s host that name the prefix (table 30 route, table 41 source)."""
    host = lab.vm(vm).host
    return [line for line in lab.flows(host).splitlines() if PREFIX in line]


def test_only_the_importing_peer_reaches_an_address_behind_the_router(lab: Lab) -> None:
    body = set_import(lab, "sage", True)
    print(f"\nsage imports: programmed={body['programmed']} pending={body['pending_hosts']}")
    assert reaches(lab, "s1", count=3), "s1 does not reach " + BEHIND
    sage = effective(lab, "sage")
    assert (sage["installed"], sage["imported"]) == (True, True), sage
    plum = effective(lab, "plum")
    assert (plum["installed"], plum["imported"]) == (False, False), plum
    assert "import_custom_routes" in plum["reason"], plum
    assert not reaches(lab, "p1", count=3)
    assert route_flows(lab, "p1") == []  # no route, no source check on plum's host


def test_flipping_plums_flag_installs_and_removes_the_route(lab: Lab) -> None:
    assert not reaches(lab, "p1", count=2)
    t0 = time.monotonic()
    body = set_import(lab, "plum", True)
    answered = time.monotonic() - t0
    assert body["import_custom_routes"] is True
    plum = effective(lab, "plum")
    assert (plum["installed"], plum["imported"]) == (True, True), plum
    print(f"\nplum imports: PUT ?wait=programmed answered in {answered * 1000:.0f} ms")
    # programmed: the flows are there now, and the traffic follows (no polling)
    assert len(route_flows(lab, "p1")) >= 2  # the table 30 route and the table 41 source check
    assert reaches(lab, "p1", count=3), "p1 does not reach the address behind teak's router"

    body = set_import(lab, "plum", False)
    plum = effective(lab, "plum")
    assert (plum["installed"], plum["imported"]) == (False, False), plum
    assert route_flows(lab, "p1") == []
    assert not reaches(lab, "p1", count=3)
    assert reaches(lab, "s1")  # sage is not affected
