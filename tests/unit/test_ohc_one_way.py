"""One-way peering on the fake switches: blue's side of blue <-> red says ``inbound: replies``.

Blue's endpoints may open connections to red's; red's may only answer them. The same world as
tests/unit/test_ohc_compiler.py (b1 on hv1; r1 on hv2, over the tunnel; r4 on hv1, on the same
host), traced packet by packet through each host's conntrack (the fake switch's connection
table): a request from b1 is committed in b1's zone on hv1, and what red sends to b1 is
delivered only as a reply to it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from meshpeer.protocol.peering import Inbound
from ohc import wire
from ohc.canonical import canonical_state
from ohc.compiler import compile_host
from ohc.engine import FlowEngine
from ohc.ofio import flow_from_stats
from ohc.pipeline import INBOUND_CT, TUNNEL_PORT
from ohc.syncer import with_canary
from tests.support.changes import Streams, changes
from tests.support.fakeoftable import parse_wire
from tests.unit.controller_fixtures import add_ilb, peer
from tests.unit.test_ohc_compiler import (
    DP,
    OFPORT,
    Lab,
    base_intent,
    build_lab,
    followed,
    host_view,
    only,
    osken_bytes,
    publish,
    wire_bytes,
)

TCP, UDP, ICMP = 6, 17, 1
# (ip_proto, b1's packet fields, the reply's fields)
FLOWS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "tcp": ({"ip_proto": TCP, "tcp_src": 40000, "tcp_dst": 80}, {"tcp_src": 80, "tcp_dst": 40000}),
    "udp": ({"ip_proto": UDP, "udp_src": 5353, "udp_dst": 53}, {"udp_src": 53, "udp_dst": 5353}),
    "icmp": ({"ip_proto": ICMP}, {}),
}


def one_way_lab(inbound: Inbound = "replies") -> Lab:
    i = base_intent()
    peer(i, "blue", "red", inbound=inbound)
    peer(i, "red", "blue")
    return build_lab(i)


@pytest.fixture
def lab() -> Lab:
    return one_way_lab()


def b1_to(lab: Lab, red_vm: str, fields: dict[str, Any]) -> set[Any]:
    """b1 sends to red's ``red_vm``; the ports the packet ends on (at the peer's host)."""
    host, _, ip, _ = lab.vm("red", red_vm)
    sent = lab.send("blue", "b1", ip, **fields)
    if host == "hv1":
        return sent.ports()
    return lab.arrive(only(sent), "hv1").ports()


def red_to_b1(lab: Lab, red_vm: str, fields: dict[str, Any]) -> set[Any]:
    """``red_vm`` sends to b1; the ports the packet ends on at hv1."""
    host, _, ip, _ = lab.vm("red", red_vm)
    _, _, b1_ip, _ = lab.vm("blue", "b1")
    sent = lab.send("red", red_vm, b1_ip, ipv4_src=ip, **fields)
    if host == "hv1":
        return sent.ports()
    out = only(sent)
    assert out.port == TUNNEL_PORT and out.has(tunnel_id=lab.vni("blue")), str(sent)
    return lab.arrive(out, host).ports()


@pytest.mark.parametrize("proto", sorted(FLOWS))
@pytest.mark.parametrize("red_vm", ["r1", "r4"])  # over the tunnel; on b1's own host
def test_blue_opens_red_answers_red_cannot_open(lab: Lab, proto: str, red_vm: str) -> None:
    out, back = FLOWS[proto]
    b1_port, red_port = OFPORT[("blue", "b1")], OFPORT[("red", red_vm)]
    # red cannot open anything toward b1
    assert red_to_b1(lab, red_vm, {**out, **back}) == set()
    # b1 opens; it reaches red; red's answer reaches b1
    assert b1_to(lab, red_vm, out) == {red_port}
    assert red_to_b1(lab, red_vm, {**out, **back}) == {b1_port}
    # a connection red starts from another port does not; once hv1 forgets b1's connections
    # (the fake keys ICMP by addresses only), neither does the same packet
    if proto != "icmp":
        other = {k: (v + 1 if k.endswith("_src") else v) for k, v in back.items()}
        assert red_to_b1(lab, red_vm, {**out, **other}) == set()
    lab.tables["hv1"].forget_connections()
    assert red_to_b1(lab, red_vm, {**out, **back}) == set()


def test_the_check_is_conntrack_in_the_receiving_ports_zone(lab: Lab) -> None:
    b1_port = OFPORT[("blue", "b1")]
    _, _, b1_ip, _ = lab.vm("blue", "b1")
    got = lab.send("red", "r4", b1_ip, ipv4_src="10.2.0.14", ip_proto=ICMP)
    assert got.dropped and INBOUND_CT in got.tables, str(got)
    assert any(f"zone {b1_port}, ct_state 0x21" in n for n in got.notes), str(got)  # +trk+new


def test_red_side_and_other_vpcs_are_unaffected(lab: Lab) -> None:
    """Red lets everything in from blue (its side says all); blue's own VPC traffic is not
    tracked at all."""
    _, b3_port, b3_ip, _ = lab.vm("blue", "b3")
    own = lab.send("blue", "b1", b3_ip, routed=False, ip_proto=ICMP)
    got = lab.arrive(only(own), "hv1")
    assert got.ports() == {b3_port} and INBOUND_CT not in got.tables
    assert lab.tables["hv1"].connections() == 0
    # what b1 sends to red is committed (once), never checked on red's side
    assert b1_to(lab, "r1", {"ip_proto": ICMP}) == {OFPORT[("red", "r1")]}
    assert lab.tables["hv1"].connections() == 1 and lab.tables["hv2"].connections() == 0


def test_inbound_all_is_todays_two_way_peering() -> None:
    lab = one_way_lab("all")
    assert red_to_b1(lab, "r1", {"ip_proto": ICMP}) == {OFPORT[("blue", "b1")]}
    assert red_to_b1(lab, "r4", {"ip_proto": ICMP}) == {OFPORT[("blue", "b1")]}
    assert all(t.connections() == 0 for t in lab.tables.values())
    assert not any(
        f.table == INBOUND_CT and f.priority > 0 for s in lab.states.values() for f in s.flows
    )


def test_a_peer_ilb_is_opened_through_and_answers_from_its_vip() -> None:
    i = base_intent()
    add_ilb(i, "red", "lbin", "10.2.0.100", {"r1": 1})
    peer(i, "blue", "red", inbound="replies")
    peer(i, "red", "blue")
    lab = build_lab(i)
    b1_port = OFPORT[("blue", "b1")]
    # r1 answers from the VIP (direct server return): only after b1 asked
    dsr = {"ipv4_src": "10.2.0.100", "ip_proto": ICMP}
    _, _, b1_ip, _ = lab.vm("blue", "b1")
    unasked = lab.send("red", "r1", b1_ip, **dsr)
    assert lab.arrive(only(unasked), "hv2").ports() == set()
    sent = lab.send("blue", "b1", "10.2.0.100", ip_proto=ICMP)
    assert lab.arrive(only(sent), "hv1").ports() == {OFPORT[("red", "r1")]}
    answer = lab.send("red", "r1", b1_ip, **dsr)
    assert lab.arrive(only(answer), "hv2").ports() == {b1_port}


def test_the_peer_side_setting_reaches_only_the_hosts_that_need_it() -> None:
    """Only the setting of the local side travels in a host's peering objects: hv3 (red only)
    compiles the same flows whatever blue's side says."""
    replies, both = one_way_lab("replies"), one_way_lab("all")
    assert replies.states["hv3"].flows == both.states["hv3"].flows
    assert replies.states["hv1"].flows != both.states["hv1"].flows
    pub = publish(replies.intent)
    view = host_view(replies.intent, pub, "hv1")[0]
    assert {(p.vpc, p.peer_vpc, p.inbound) for p in view.peers} == {
        ("blue", "red", "replies"),
        ("red", "blue", "all"),
    }
    flipped = replace(view, peers=tuple(replace(p, inbound="all") for p in view.peers))
    assert compile_host(flipped).flows == both.states["hv1"].flows


def test_the_engine_follows_a_flip_of_either_side() -> None:
    """Destination units depend on their context: flipping a side must recompile them
    (commits toward the peer, the check before a local port of the other side)."""
    both, replies = one_way_lab("all"), one_way_lab("replies")
    for host in ("hv1", "hv2"):
        engine = FlowEngine(str(both.intent.hosts[host].underlay_ip))
        held: Streams = {}
        for lab in (both, replies, both):
            streams = followed(publish(lab.intent), host)
            engine.update(changes(held, streams, False), OFPORT, TUNNEL_PORT)
            held = streams
            view = host_view(lab.intent, publish(lab.intent), host)[0]
            assert engine.state().flows == with_canary(compile_host(view)).flows


def test_ct_flows_pack_like_os_ken_and_read_back_equal(lab: Lab) -> None:
    """Every flow with a ct action or a ct match: ohc.wire's bytes are os-ken's, and what a
    switch would report back (os-ken's parse of those bytes) canonicalises to the desired flow,
    so a sync after a restart changes nothing (tests/e2e/test_one_way_e2e.py, on OVS)."""
    flows = {
        f
        for state in lab.states.values()
        for f in canonical_state(state).flows
        if "ct(" in f.text() or f.match.get("ct_zone") is not None
    }
    texts = " ".join(f.text() for f in flows)
    assert "ct(commit,zone=in_port[0..15])" in texts and "ct(zone=metadata[32..47]" in texts
    assert "ct(zone=" in texts and any(f.match.get("ct_zone") is not None for f in flows)
    for f in flows:
        assert wire_bytes(f, "add") == osken_bytes(f, "add"), f.text()
        parsed = parse_wire(wire.flow_mod(f, "add", 1))
        assert flow_from_stats(DP, parsed) == f, f.text()
