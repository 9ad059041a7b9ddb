"""The overload shift on the fake switches (docs/gateways.md, docs/pipeline.md tables 36-38):
blue's ILB ``web`` (VIP 10.1.0.100, local backend b3 on hv2) lists red's r3 (hv3) and r4 (hv1)
as spillover backends. A connection's first packet picks a backend in the select group and
the switch learns a flow that pins the rest of it there; the share the OHC decides moves
only new connections."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from ohc.compiler import compile_host, lb_cookie
from ohc.cookies import Kind, kind_of
from ohc.pipeline import LB_AFFINITY, LB_PICK, TUNNEL_PORT
from tests.support.fakeoftable import TraceResult
from tests.unit.controller_fixtures import add_ilb, peer
from tests.unit.test_ohc_compiler import OFPORT, Lab, base_intent, build_lab, only, sync

VIP = "10.1.0.100"


def spill_lab() -> Lab:
    i = base_intent()
    peer(i, "blue", "red")
    peer(i, "red", "blue")
    add_ilb(i, "blue", "web", VIP, {"b3": 1}, {("red", "r3"): 1, ("red", "r4"): 1})
    return build_lab(i)


def with_share(lab: Lab, host: str, share: int) -> None:
    """Sync ``host``'s switch (in place: it keeps what it learned) to this share."""
    view = dataclasses.replace(lab.views[host], spill=((lb_cookie("blue", "web"), share),))
    new = compile_host(view)
    sync(lab.tables[host], lab.states[host], new)
    lab.views[host], lab.states[host] = view, new


def connect(lab: Lab, sport: int, proto: int = 6, bucket: int | None = None) -> TraceResult:
    """b1 (hv1) sends a packet of the connection from port ``sport`` to the VIP, port 80; a
    new connection takes the group's ``bucket`` (None: the trace follows every bucket)."""
    ports = ("tcp_src", "tcp_dst") if proto == 6 else ("udp_src", "udp_dst")
    _, port, ip, mac = lab.vm("blue", "b1")
    pkt: dict[str, Any] = {
        "eth_src": mac,
        "eth_dst": lab.mac("blue", "web"),
        "eth_type": 0x0800,
        "ipv4_src": ip,
        "ipv4_dst": VIP,
        "ip_proto": proto,
        "ip_ttl": 64,
        ports[0]: sport,
        ports[1]: 80,
    }
    return lab.tables["hv1"].trace(pkt, in_port=port, select_bucket=bucket)


def backend(lab: Lab, sent: TraceResult) -> str:
    """The name of the backend whose MAC the packet left hv1 with."""
    mac = only(sent).packet["eth_dst"]
    return next(e.name for e in lab.intent.endpoints.values() if e.mac == mac)


def test_without_a_share_new_connections_go_local_and_each_is_pinned() -> None:
    lab = spill_lab()
    first = connect(lab, 1000)
    assert len(first.selects) == 1 and len(first.selects[0].buckets) == 1, str(first)
    out = only(first)
    assert out.has(tunnel_id=lab.vni("blue"), tun_ipv4_dst=lab.ip("hv2")), str(first)
    assert backend(lab, first) == "b3"
    learned = [f for f in lab.tables["hv1"].flows(LB_AFFINITY) if f.priority]
    assert [kind_of(f.cookie) for f in learned] == [Kind.AFFINITY]
    again = connect(lab, 1000)  # the learned flow's eth_dst picks the pin flow, no group
    assert again.selects == [] and backend(lab, again) == "b3", str(again)
    assert any(f.table_id == LB_PICK and f.priority == 200 for f in again.flows)
    assert lab.arrive(only(again), "hv1").ports() == {OFPORT[("blue", "b3")]}


def test_a_share_sends_new_connections_to_the_peer_and_existing_ones_stay() -> None:
    lab = spill_lab()
    assert backend(lab, connect(lab, 1000)) == "b3"
    with_share(lab, "hv1", 50)
    sent = connect(lab, 2000)
    weights = sorted(w for _, w in sent.selects[0].buckets)
    assert weights == [2500, 2500, 5000], str(sent)  # b3 half, r3 and r4 a quarter each
    assert backend(lab, connect(lab, 1000)) == "b3"  # the open connection keeps its backend
    # a new connection the group gives r3 (hv3): red's VNI, delivered to r3 by its MAC
    to_r3 = connect(lab, 2001, bucket=1)
    out = only(to_r3)
    assert out.has(tunnel_id=lab.vni("red"), tun_ipv4_dst=lab.ip("hv3")), str(to_r3)
    assert lab.arrive(out, "hv1").ports() == {OFPORT[("red", "r3")]}
    # r3 answers from the VIP (direct server return); b1's host takes it from hv3
    reply = lab.send("red", "r3", "10.1.0.11", ipv4_src=VIP, tcp_src=80, tcp_dst=2001)
    back = only(reply)
    assert back.has(tunnel_id=lab.vni("blue"), tun_ipv4_dst=lab.ip("hv1")), str(reply)
    assert lab.arrive(back, "hv3").ports() == {OFPORT[("blue", "b1")]}
    # r4 is red's, on hv1 itself: out of its port
    to_r4 = connect(lab, 2002, bucket=2)
    assert to_r4.ports() == {OFPORT[("red", "r4")]} and backend(lab, to_r4) == "r4"
    # later packets of both stay where they went
    assert backend(lab, connect(lab, 2001)) == "r3" and backend(lab, connect(lab, 2002)) == "r4"


def test_back_to_no_share_new_connections_return_and_spilled_ones_stay() -> None:
    lab = spill_lab()
    with_share(lab, "hv1", 80)
    assert backend(lab, connect(lab, 3000, bucket=1)) == "r3"
    assert backend(lab, connect(lab, 3001, proto=17, bucket=2)) == "r4"  # UDP too
    with_share(lab, "hv1", 0)
    fresh = connect(lab, 3002)
    assert len(fresh.selects[0].buckets) == 1 and backend(lab, fresh) == "b3", str(fresh)
    assert backend(lab, connect(lab, 3000)) == "r3"
    assert backend(lab, connect(lab, 3001, proto=17)) == "r4"


@pytest.mark.parametrize("share", [0, 50])
def test_only_the_listed_peer_backends_may_answer_from_the_vip(share: int) -> None:
    lab = spill_lab()
    with_share(lab, "hv1", share)
    r1 = lab.send("red", "r1", "10.1.0.11", ipv4_src=VIP)  # r1 (hv2) is no backend of web
    assert r1.dropped, str(r1)
    # and hv3 delivers the VIP only to r3, by r3's MAC
    out = only(connect(lab, 4000, bucket=1)) if share else None
    if out is not None:
        forged = dict(eth_dst=lab.mac("red", "r2"))
        assert lab.arrive(out, "hv1", **forged).dropped


def test_a_spillover_backend_its_vpc_does_not_export_is_left_out() -> None:
    i = base_intent()
    peer(i, "blue", "red")
    peer(i, "red", "blue")
    add_ilb(i, "blue", "web", VIP, {"b3": 1}, {("red", "r3"): 1})
    i.drop("peering", "red/to-blue")  # later, red stops peering back: it exports nothing to blue
    lab = build_lab(i)
    with_share(lab, "hv1", 50)
    sent = connect(lab, 5000)
    assert len(sent.selects[0].buckets) == 1 and backend(lab, sent) == "b3", str(sent)
    assert TUNNEL_PORT in sent.ports()


def test_a_spillover_backend_whose_vpc_takes_only_replies_is_left_out() -> None:
    """Red's side toward blue says ``inbound: replies``: red's endpoints take no new
    connection from blue, so none of blue's ILB's share may go there. r4 is on b1's own host,
    where sending it one would need ct in lb_deliver (the compile failed on that flow)."""
    i = base_intent()
    peer(i, "blue", "red")
    peer(i, "red", "blue", inbound="replies")
    add_ilb(i, "blue", "web", VIP, {"b3": 1}, {("red", "r3"): 1, ("red", "r4"): 1})
    lab = build_lab(i)
    with_share(lab, "hv1", 50)
    sent = connect(lab, 5000)
    assert len(sent.selects[0].buckets) == 1 and backend(lab, sent) == "b3", str(sent)
