"""Two on-prem routers announce the same prefix over BGP: the conflict rules pick, traffic
follows (issue 12), on a whole lab with real BIRD2.

On tests/e2e/topologies/bgp_conflict.yaml: dc1 (behind teak's vpn endpoint v1, hv1) and dc2
(behind vine's v2, hv2) both announce 192.168.50.0/24, each with an on-prem host at
192.168.50.10 (d1, d2). teak and vine import each other's custom routes: each installs its own
dynamic route (``local-preferred`` beats the other's). sage imports both, preferring vine (200
against 100): s1's pings must be tunnelled to hv2 and reach d2. Which one they reached is
shown three ways: ``ofproto/trace`` of hv3's flow (the Geneve destination it sets), tcpdump on
both vpn hosts' underlay links (the Geneve packets carrying s1's echo requests and the
replies, on hv2's link only), and d1's and d2's own ICMP counters. After sage's preference for
vine drops to 50 over REST (``?wait=programmed``) the traffic moves to hv1 and d1; at equal
preferences the lower peer id (teak) keeps it, by ``lower-peer-id``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest

from meshpeer.client import Client
from meshpeer.lab import controllers, ovs
from ohc.compiler import gateway_mac
from tests.e2e.test_bgp_e2e import established, reaches
from tests.e2e.test_route_conflicts_e2e import echoes_in, set_preference  # sage is on c2 there too
from tests.e2e.traffic import Capture
from tests.integration.labkit import E2E_TOPOLOGIES, Lab, running
from tests.support.wait import wait_for

TOPOLOGY = "bgp_conflict.yaml"
PREFIX = "192.168.50.0/24"
BEHIND = "192.168.50.10"  # d1 behind dc1, d2 behind dc2: the same address
VPN = {"teak": "v1", "vine": "v2"}  # the vpn endpoint in front of each VPC's router
ONPREM = {"teak": "d1", "vine": "d2"}  # the on-prem host at BEHIND behind each VPC's router
SHARD = {"teak": "c1", "vine": "c2", "sage": "c2"}
DEADLINE = 30.0


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """Named ``lab`` so that conftest dumps flows when a test fails; 'down' ends BIRD and
    deletes every namespace, also when a test failed."""
    with running(TOPOLOGY, E2E_TOPOLOGIES) as the_lab:
        for r in the_lab.plan.onprem:
            wait_for(lambda r=r: established(r), DEADLINE, 0.1, f"{r.name}'s BGP session")
        yield the_lab


def client(lab: Lab, vpc: str) -> Client:
    return controllers.client_for(lab.plan, SHARD[vpc])


def routes(lab: Lab, vpc: str) -> list[dict[str, Any]]:
    """The VPC's effective routes to PREFIX."""
    got = client(lab, vpc).get(f"/v1/vpcs/{vpc}/routes/effective")["routes"]
    return [r for r in got if r["prefix"] == PREFIX]


def decided(lab: Lab, vpc: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(installed, loser) once both routers' routes are in the VPC's table, one installed."""
    mine = routes(lab, vpc)
    won = [r for r in mine if r["installed"]]
    lost = [r for r in mine if not r["installed"]]
    if len(won) != 1 or len(lost) != 1:
        return None
    return won[0], lost[0]


def decision(lab: Lab, vpc: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return wait_for(lambda: decided(lab, vpc), DEADLINE, 0.1, f"both routes in {vpc}'s table")


def check_decision(
    won: dict[str, Any], lost: dict[str, Any], winner: str, loser: str, rule: str
) -> None:
    """``winner``/``loser`` are origins; the loser names the rule and the winner, the winner
    lists the loser with the rule (docs/routing.md, "What the API shows")."""
    assert (won["kind"], won["origin"]) == ("dynamic", winner), won
    assert (lost["kind"], lost["origin"], lost["rule"]) == ("dynamic", loser, rule), lost
    assert lost["reason"].startswith(f"{rule}: "), lost
    assert lost["reason"].endswith(f"({PREFIX} from {winner} via {won['next_hop']})"), lost
    assert (lost["winner"]["origin"], lost["winner"]["next_hop"]) == (winner, won["next_hop"])
    assert [(x["origin"], x["rule"]) for x in won["losers"]] == [(loser, rule)], won


def tunnel_dst(lab: Lab, vm: str) -> str:
    """The Geneve destination (a host's underlay IP) the VM's host sets for its echo request
    to BEHIND, as ``ofproto/trace`` shows it; "" when its flows drop it."""
    v = lab.vm(vm)
    flow = (
        f"in_port={v.host_port},icmp,dl_src={v.mac},dl_dst={gateway_mac(v.vni)},"
        f"nw_src={v.ip},nw_dst={BEHIND},nw_ttl=64,icmp_type=8"
    )
    out = ovs.appctl(lab.host(v.host), "ofproto/trace", "br-int", flow)
    found = re.findall(r"set_field:([0-9.]+)->tun_dst", out)
    assert len(found) <= 1, out
    return str(found[0]) if found else ""


def vpn_host(lab: Lab, vpc: str) -> str:
    return lab.vm(VPN[vpc]).host


def tunnels_to(lab: Lab, vm: str, vpc: str) -> bool:
    """The VM's host sends its packets to BEHIND to the host of ``vpc``'s vpn endpoint."""
    return tunnel_dst(lab, vm) == lab.host(vpn_host(lab, vpc)).underlay_ip


def check_traffic_goes_to(lab: Lab, winner: str) -> None:
    """s1's pings to BEHIND cross ``winner``'s vpn host only: hv3 tunnels them there (trace),
    tcpdump on both vpn hosts' underlay links sees s1's echo requests going in (with the
    winner's VNI) and the replies coming back on the winner's link, and nothing of them on the
    other's; and only the winner's on-prem host counts the echo requests (its ICMP counters)."""
    s1 = lab.vm("s1")
    underlay = {vpc: lab.host(vpn_host(lab, vpc)).underlay_ip for vpc in VPN}
    wait_for(partial(tunnels_to, lab, "s1", winner), DEADLINE, 0.1, f"s1 tunnels to {winner}'s")
    count = 3
    with contextlib.ExitStack() as stack:  # the captures end (killed) whatever happens
        # each armed ("listening on") before the first ping
        captures = {vpc: stack.enter_context(Capture(lab.plan, vpn_host(lab, vpc))) for vpc in VPN}
        before = {vpc: echoes_in(lab, host) for vpc, host in ONPREM.items()}
        args = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", BEHIND]
        lab.sh("s1", *args, timeout=30)  # check: every one answered
        echoes = {vpc: echoes_in(lab, host) - before[vpc] for vpc, host in ONPREM.items()}
        seen = {}
        for vpc, cap in captures.items():
            # the winner's link carries each request and each reply: wait for all of them
            packets, _ = cap.stop(expect=2 * count if vpc == winner else 0, timeout=DEADLINE)
            seen[vpc] = [
                (p.src, p.dst, p.vni, p.icmp)
                for p in packets
                if {p.inner_src, p.inner_dst} == {s1.ip, BEHIND}
            ]
    print(f"\n{winner} wins: echo requests received on-prem {echoes}; s1 <-> {BEHIND} on the "
          f"vpn hosts' underlay links (src, dst, vni, icmp): {seen}")  # fmt: skip
    hv3, there, vni = lab.host("hv3").underlay_ip, underlay[winner], lab.vm(VPN[winner]).vni
    requests = [x for x in seen[winner] if x[3] == "request"]
    assert len(requests) >= count and set(requests) == {(hv3, there, vni, "request")}, seen
    assert [x[:2] for x in seen[winner] if x[3] == "reply"] == [(there, hv3)] * count, seen
    assert all(not s for vpc, s in seen.items() if vpc != winner), seen
    assert echoes[winner] >= count, echoes
    assert all(n == 0 for vpc, n in echoes.items() if vpc != winner), echoes


def test_each_vpc_keeps_its_own_routers_route(lab: Lab) -> None:
    """teak and vine each install the route their own router announced (origin local, next hop
    their vpn endpoint) and show the other's, imported over the peering, as the loser by
    ``local-preferred``; each one's VM, on the other's vpn host, is tunnelled to its own."""
    for vpc, other in (("teak", "vine"), ("vine", "teak")):
        won, lost = decision(lab, vpc)
        check_decision(won, lost, "local", f"peer:{other}", "local-preferred")
        assert won["next_hop"] == lab.vm(VPN[vpc]).ip, won
        assert lost["next_hop"] == lab.vm(VPN[other]).ip, lost
    for vm, vpc in (("t1", "teak"), ("w1", "vine")):
        assert lab.vm(vm).host != vpn_host(lab, vpc)  # so it must cross to its vpn host
        wait_for(partial(tunnels_to, lab, vm, vpc), DEADLINE, 0.1, f"{vm} tunnels to {vpc}'s")
        wait_for(partial(reaches, lab, vm, BEHIND), DEADLINE, 0.1, f"{vm} reaches {BEHIND}")


def test_sage_picks_the_preferred_router_and_traffic_follows(lab: Lab) -> None:
    won, lost = decision(lab, "sage")
    check_decision(won, lost, "peer:vine", "peer:teak", "peering-preference")
    assert (won["preference"], lost["preference"]) == (200, 100)
    assert "(200 > 100)" in lost["reason"], lost
    assert won["next_hop"] == lab.vm("v2").ip, won
    check_traffic_goes_to(lab, "vine")


def test_preference_over_rest_then_a_tie_to_the_lower_peer_id(lab: Lab) -> None:
    decision(lab, "sage")
    try:
        set_preference(lab, "vine", 50)
        won, lost = decision(lab, "sage")
        check_decision(won, lost, "peer:teak", "peer:vine", "peering-preference")
        assert won["next_hop"] == lab.vm("v1").ip, won
        check_traffic_goes_to(lab, "teak")

        set_preference(lab, "vine", 100)  # a tie: the lower peer id, teak, wins
        won, lost = decision(lab, "sage")
        check_decision(won, lost, "peer:teak", "peer:vine", "lower-peer-id")
        check_traffic_goes_to(lab, "teak")
    finally:
        set_preference(lab, "vine", 200)
    won, lost = decision(lab, "sage")
    check_decision(won, lost, "peer:vine", "peer:teak", "peering-preference")
    check_traffic_goes_to(lab, "vine")
