"""Two peers export one prefix to a third VPC: it picks by preference, traffic follows (issue 12).

On tests/e2e/topologies/conflict.yaml: teak and vine (c1) each route 10.129.0.0/24 via their
router, which holds 10.129.0.5 on its loopback; sage (c2) imports both, its side preferring vine
(200 against 100). s1's pings to 10.129.0.5 must reach vine's router and not teak's (each
router's own ICMP counters, read in its namespace, say which one answered), and hv3's flow for
them must tunnel to vine's host (``ofproto/trace``). After sage's preference for vine drops to
50 over REST (``?wait=programmed``), the same holds for teak; at equal preferences the lower
peer id (teak) wins.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from meshpeer.client import Client
from meshpeer.lab import controllers, ovs
from ohc.compiler import gateway_mac
from tests.integration.labkit import E2E_TOPOLOGIES, Lab, running
from tests.support.wait import wait_for

TOPOLOGY = "conflict.yaml"
PREFIX = "10.129.0.0/24"
BEHIND = "10.129.0.5"  # on each router's loopback
ROUTERS = {"teak": "rt", "vine": "rv"}
DEADLINE = 30.0


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """conflict.yaml, with each router's static route and the address behind it. Named
    ``lab`` so that conftest dumps flows when a test fails."""
    with running(TOPOLOGY, E2E_TOPOLOGIES) as the_lab:
        for vpc, router in ROUTERS.items():
            the_lab.sh(router, "ip", "addr", "add", f"{BEHIND}/32", "dev", "lo")
            # ARP from eth0's own address: the switch's anti-spoofing takes only the port's
            the_lab.sh(router, "sysctl", "-qw", "net.ipv4.conf.all.arp_announce=2")
            route = {"name": "onprem", "prefix": PREFIX, "next_hop": the_lab.vm(router).ip}
            client(the_lab, "c1").post(f"/v1/vpcs/{vpc}/routes", route)
        yield the_lab


def client(lab: Lab, ctl: str) -> Client:
    return controllers.client_for(lab.plan, ctl)


def decided(lab: Lab) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """sage's installed route to PREFIX and its losers, once both peers' routes are there."""
    routes = client(lab, "c2").get("/v1/vpcs/sage/routes/effective")["routes"]
    mine = [r for r in routes if r["prefix"] == PREFIX]
    won = [r for r in mine if r["installed"]]
    if len(mine) != 2 or len(won) != 1:
        return None
    return won[0], [r for r in mine if not r["installed"]]


def now_decided(lab: Lab) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    got = decided(lab)
    assert got is not None, "sage's table lacks one of the two routes"
    return got


def echoes_in(lab: Lab, router: str) -> int:
    """Echo requests the router's namespace has received (its own ICMP counters)."""
    lines = lab.sh(router, "cat", "/proc/net/snmp").splitlines()
    names, values = [ln.split()[1:] for ln in lines if ln.startswith("Icmp:")][:2]
    return int(values[names.index("InEchos")])


def tunnel_dst(lab: Lab) -> str:
    """Where hv3's br-int sends s1's packet to BEHIND: the Geneve destination (a host's
    underlay IP) its flows set, as ``ofproto/trace`` shows them; "" when they drop it."""
    s1 = lab.vm("s1")
    flow = (
        f"in_port={s1.host_port},icmp,dl_src={s1.mac},dl_dst={gateway_mac(s1.vni)},"
        f"nw_src={s1.ip},nw_dst={BEHIND},nw_ttl=64,icmp_type=8"
    )
    out = ovs.appctl(lab.host("hv3"), "ofproto/trace", "br-int", flow)
    found = re.findall(r"set_field:([0-9.]+)->tun_dst", out)
    assert len(found) <= 1, out
    return str(found[0]) if found else ""


def check_traffic_goes_to(lab: Lab, winner: str) -> None:
    """s1's pings to BEHIND reach ``winner``'s router only, through the tunnel to its host."""
    router = lab.vm(ROUTERS[winner])
    assert tunnel_dst(lab) == lab.host(router.host).underlay_ip
    before = {vpc: echoes_in(lab, r) for vpc, r in ROUTERS.items()}
    args = ["ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", BEHIND]
    lab.sh("s1", *args, timeout=30)  # check: every one answered
    after = {vpc: echoes_in(lab, r) for vpc, r in ROUTERS.items()}
    got = {vpc: after[vpc] - before[vpc] for vpc in ROUTERS}
    print(f"\n{winner} wins: echo requests received {got}, tunnel to {router.host}")
    assert got[winner] >= 3, got
    assert all(n == 0 for vpc, n in got.items() if vpc != winner), got


def set_preference(lab: Lab, vpc: str, preference: int) -> None:
    path = f"/v1/vpcs/sage/peerings/sage-{vpc}?wait=programmed&timeout={DEADLINE:.0f}"
    body = dict(client(lab, "c2").put(path, {"preference": preference}))
    assert (body["preference"], body["programmed"], body["pending_hosts"]) == (
        preference,
        True,
        [],
    ), body


def test_sage_picks_the_preferred_peer_and_traffic_follows(lab: Lab) -> None:
    wait_for(lambda: decided(lab), DEADLINE, what="both routes in sage's table")
    won, (lost,) = now_decided(lab)
    assert (won["origin"], won["preference"]) == ("peer:vine", 200), won
    assert (lost["origin"], lost["rule"], lost["winner"]["origin"]) == (
        "peer:teak",
        "peering-preference",
        "peer:vine",
    ), lost
    # the hosts have vine's route once the ping passes: wait for that, then check where it went
    wait_for(lambda: tunnel_dst(lab) == lab.host("hv2").underlay_ip, DEADLINE, what="hv3's flow")
    check_traffic_goes_to(lab, "vine")


def test_changing_the_preference_over_rest_moves_the_traffic(lab: Lab) -> None:
    wait_for(lambda: decided(lab), DEADLINE, what="both routes in sage's table")
    try:
        set_preference(lab, "vine", 50)
        won, (lost,) = now_decided(lab)
        assert (won["origin"], lost["origin"], lost["rule"]) == (
            "peer:teak",
            "peer:vine",
            "peering-preference",
        )
        check_traffic_goes_to(lab, "teak")

        set_preference(lab, "vine", 100)  # a tie: the lower peer id, teak, wins
        won, (lost,) = now_decided(lab)
        assert (won["origin"], lost["rule"]) == ("peer:teak", "lower-peer-id"), lost
        check_traffic_goes_to(lab, "teak")
    finally:
        set_preference(lab, "vine", 200)
    check_traffic_goes_to(lab, "vine")
