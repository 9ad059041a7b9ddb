"""Gateway forwarding on the fake switches (issue 14): blue's side of blue <-> red says
``forwarding: gateway``. Blue's hosts keep no flow per red endpoint: red's subnet goes to a
select group over the gateway hosts, tagged with red's VNI; a gateway relays it to the red
endpoint's host by VNI and address. The world of tests/unit/test_ohc_compiler.py (b1 on hv1;
r1 on hv2; r4 on hv1) plus gateway hosts gw1 (and gw2)."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any

import pytest

from meshpeer.controller import intent as ops
from meshpeer.controller.model import Host, Intent
from meshpeer.protocol.gateways import Forwarding
from ohc import host as ohc_host
from ohc.canonical import canonical_state
from ohc.compiler import compile_host
from ohc.cookies import Kind, kind_of
from ohc.engine import FlowEngine
from ohc.pipeline import GATEWAY_RELAY, L3_LOOKUP, TUNNEL_PORT
from ohc.syncer import with_canary
from policies.export import ExportPolicy
from tests.support.changes import changes
from tests.support.fakeoftable import Output
from tests.unit.test_ohc_compiler import (
    HOSTS,
    OFPORT,
    Lab,
    base_intent,
    followed,
    host_view,
    load,
    only,
    publish,
)

GATEWAYS = {"gw1": "169.254.101.51", "gw2": "169.254.101.52"}


def gateway_intent(blue: Forwarding, red: Forwarding, gateways: tuple[str, ...]) -> Intent:
    i = base_intent()
    for gw in gateways:
        i.put(Host(gw, ipaddress.ip_address(GATEWAYS[gw]), "gateway"))
    for vpc, other, fwd in (("blue", "red", blue), ("red", "blue", red)):
        p = ops.new_peering(i, vpc, f"to-{other}", other, ExportPolicy(), False, None)
        i.put(replace(p, forwarding=fwd))
    return i


def gateway_lab(
    blue: Forwarding = "gateway", red: Forwarding = "direct", gateways: tuple[str, ...] = ("gw1",)
) -> Lab:
    i = gateway_intent(blue, red, gateways)
    pub = publish(i)
    vs = {h: host_view(i, pub, h)[0] for h in HOSTS}
    for gw in gateways:  # what a gateway follows: the sides that send through it
        streams = followed(pub, gw)
        vs[gw], skipped = ohc_host.gateway_view(GATEWAYS[gw], streams, TUNNEL_PORT)
        assert skipped == ()
        engine = FlowEngine(GATEWAYS[gw], "gateway")
        engine.update(changes({}, streams, True), {}, TUNNEL_PORT)
        assert engine.state() == with_canary(canonical_state(compile_host(vs[gw])))
    compiled = {h: compile_host(v) for h, v in vs.items()}
    return Lab(i, vs, compiled, {h: load(s) for h, s in compiled.items()})


def hop(lab: Lab, out: Output, from_host: str) -> tuple[str, Any]:
    """Where a tunnel packet from ``from_host`` lands, and what that host does with it."""
    to = next(h for h in lab.tables if lab.ip(h) == out.packet["tun_ipv4_dst"])
    return to, lab.arrive(out, from_host)


def test_blue_reaches_red_through_the_gateway_and_red_answers_directly() -> None:
    lab = gateway_lab()
    sent = lab.send("blue", "b1", "10.2.0.11", ip_proto=1)  # r1, on hv2
    out = only(sent)
    assert out.port == TUNNEL_PORT, str(sent)
    assert out.has(tunnel_id=lab.vni("red"), tun_ipv4_dst=GATEWAYS["gw1"]), str(sent)
    to, relayed = hop(lab, out, "hv1")
    assert to == "gw1" and GATEWAY_RELAY in relayed.tables, str(relayed)
    out = only(relayed)
    assert out.has(
        tunnel_id=lab.vni("red"), tun_ipv4_dst=lab.ip("hv2"), eth_dst=lab.mac("red", "r1")
    )
    to, delivered = hop(lab, out, "gw1")
    assert (to, delivered.ports()) == ("hv2", {OFPORT[("red", "r1")]}), str(delivered)
    # red's side says direct: r1 answers straight to hv1, which takes red's subnet from any host
    back = only(lab.send("red", "r1", "10.1.0.11", ip_proto=1))
    assert back.has(tunnel_id=lab.vni("blue"), tun_ipv4_dst=lab.ip("hv1")), str(back)
    to, delivered = hop(lab, back, "hv2")
    assert (to, delivered.ports()) == ("hv1", {OFPORT[("blue", "b1")]}), str(delivered)


def test_both_sides_through_gateways_and_the_same_host() -> None:
    lab = gateway_lab(red="gateway")
    back = only(lab.send("red", "r1", "10.1.0.11", ip_proto=1))
    assert back.has(tunnel_id=lab.vni("blue"), tun_ipv4_dst=GATEWAYS["gw1"]), str(back)
    to, relayed = hop(lab, back, "hv2")
    to, delivered = hop(lab, only(relayed), "gw1")
    assert (to, delivered.ports()) == ("hv1", {OFPORT[("blue", "b1")]}), str(delivered)
    # r4 is on b1's own host: still through the gateway (hv1 knows no red endpoint), and back
    out = only(lab.send("blue", "b1", "10.2.0.14", ip_proto=1))
    assert out.has(tun_ipv4_dst=GATEWAYS["gw1"]), str(out)
    to, relayed = hop(lab, out, "hv1")
    to, delivered = hop(lab, only(relayed), "gw1")
    assert (to, delivered.ports()) == ("hv1", {OFPORT[("red", "r4")]}), str(delivered)


def test_the_source_host_holds_no_flow_per_peer_endpoint() -> None:
    direct, via = gateway_lab("direct"), gateway_lab("gateway")
    red_ips = {str(e.ip) for e in via.intent.endpoints.values() if e.vpc == "red"}

    def per_endpoint(lab: Lab) -> set[str]:
        blue_ctx = lab.vni("blue")
        return {
            str(dict(f.match).get("ipv4_dst"))
            for f in lab.states["hv1"].flows
            if f.table == L3_LOOKUP
            and kind_of(f.cookie) == Kind.PEER_DEST
            and dict(f.match)["metadata"][0] & 0xFFFFFF == blue_ctx  # type: ignore[index]
        }

    assert per_endpoint(direct) == red_ips  # r4 too: on b1's own host
    assert per_endpoint(via) == set()


def test_the_select_group_spreads_over_every_gateway_and_relays_are_equal() -> None:
    lab = gateway_lab(gateways=("gw1", "gw2"))
    sent = lab.send("blue", "b1", "10.2.0.11", ip_proto=1)
    assert {o.packet["tun_ipv4_dst"] for o in sent.outputs} == set(GATEWAYS.values()), str(sent)
    assert len(sent.selects) == 1 and len(sent.selects[0].buckets) == 2
    for out in sent.outputs:
        to, relayed = hop(lab, out, "hv1")
        to, delivered = hop(lab, only(relayed), to)
        assert (to, delivered.ports()) == ("hv2", {OFPORT[("red", "r1")]}), str(delivered)


@pytest.mark.parametrize(
    ("src", "from_host", "delivered"),
    [
        ("10.2.0.11", "gw1", True),  # red's subnet, from a gateway
        ("10.2.0.11", "hv3", True),  # from any host: blue's side knows none of red's hosts
        ("10.3.0.11", "gw1", False),  # green: not peered
        ("10.9.0.1", "hv2", False),  # outside red's exported subnet
    ],
)
def test_what_blues_host_accepts_from_the_tunnel(src: str, from_host: str, delivered: bool) -> None:
    lab = gateway_lab()
    ip = GATEWAYS.get(from_host) or lab.ip(from_host)
    pkt = {
        "eth_type": 0x0800,
        "ipv4_src": src,
        "ipv4_dst": "10.1.0.11",
        "tunnel_id": lab.vni("blue"),
        "tun_ipv4_src": ip,
        "eth_dst": lab.mac("blue", "b1"),
    }
    got = lab.tables["hv1"].trace(pkt, in_port=TUNNEL_PORT)
    assert (got.ports() == {OFPORT[("blue", "b1")]}) is delivered, str(got)


def test_a_gateway_relays_only_what_a_gateway_side_sends_it() -> None:
    lab = gateway_lab()  # blue -> red through gateways; red -> blue direct
    pkt = {
        "eth_type": 0x0800,
        "ipv4_src": "10.2.0.11",
        "ipv4_dst": "10.1.0.11",
        "tunnel_id": lab.vni("blue"),
        "tun_ipv4_src": lab.ip("hv2"),
    }
    assert lab.tables["gw1"].trace(pkt, in_port=TUNNEL_PORT).dropped
    assert not lab.states["gw1"].notes


def test_without_a_gateway_the_peer_is_unreachable_and_said_so() -> None:
    lab = gateway_lab(gateways=())
    assert lab.send("blue", "b1", "10.2.0.11", ip_proto=1).dropped
    assert any("no gateway" in n for n in lab.states["hv1"].notes)
