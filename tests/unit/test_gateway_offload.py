"""On-demand offload (issue 14, docs/gateways.md): the pure decisions of ``ohc.offload``, and
on the fake switches a side that says ``forwarding: on-demand``: through the gateways, each
(VPC, destination) pair counted by a flow the switch learns; an offloaded pair direct to its
host (still counted), every other one through the gateways."""

from __future__ import annotations

import dataclasses
import ipaddress

from meshpeer.controller import intent as ops
from meshpeer.controller.model import Host
from ohc.compiler import gateway_mac, offload_cookie
from ohc.cookies import Kind, kind_of
from ohc.flows import Flow
from ohc.offload import Reading, State, Thresholds, by_side, decide
from ohc.pipeline import OFFLOAD_COUNT
from policies.export import ExportPolicy
from tests.support.fakeoftable import TraceResult
from tests.unit.test_gateway_liveness import recompiled
from tests.unit.test_ohc_compiler import OFPORT, Lab, build_lab, only, v6_intent
from tests.unit.test_ohc_gateways import GATEWAYS, gateway_lab, hop

T = Thresholds(hot_pps=50, idle_pps=1, idle_s=10)
AB = ("blue", "red", "10.2.0.11")
AC = ("blue", "red", "10.2.0.12")


def test_a_pair_at_the_threshold_goes_direct_and_a_slower_one_does_not() -> None:
    first = decide(State(), {AB: 100, AC: 100}, 10.0, T)
    assert first.state.offloaded == set() and first.moved == set()  # a baseline only
    got = decide(first.state, {AB: 150, AC: 149}, 11.0, T)  # 50 pps and 49 pps
    assert (got.moved, got.state.offloaded) == ({AB}, {AB})


def test_a_direct_pair_returns_after_idle_s_quiet_or_when_its_counter_is_gone() -> None:
    s = State(frozenset({AB, AC}), {AB: Reading(500, 0.0), AC: Reading(500, 0.0)})
    s = decide(s, {AB: 500, AC: 900}, 1.0, T).state  # AB quiet from 0, AC busy
    got = decide(s, {AB: 505, AC: 1300}, 9.0, T)
    assert got.returned == set() and got.state.offloaded == {AB, AC}  # quiet 9 s < 10 s
    got = decide(got.state, {AB: 505, AC: 1700}, 10.0, T)
    assert (got.returned, got.state.offloaded) == ({AB}, {AC})
    got = decide(got.state, {}, 11.0, T)  # the switch idled AC's counter out
    assert (got.returned, got.state.offloaded) == ({AC}, set())


def test_a_relearned_counter_is_a_new_baseline_and_busy_again_stays() -> None:
    s = State(frozenset({AB}), {AB: Reading(1000, 0.0, quiet_since=0.0)})
    got = decide(s, {AB: 3}, 20.0, T)  # counter restarted (relearned): no rate, not quiet
    assert got.state.readings[AB] == Reading(3, 20.0) and got.state.offloaded == {AB}


def test_by_side_groups_the_addresses() -> None:
    assert by_side(frozenset({AB, AC})) == {
        ("blue", "red"): frozenset(map(ipaddress.ip_address, ("10.2.0.11", "10.2.0.12")))
    }


def offloaded(lab: Lab, host: str, pairs: dict[tuple[str, str], set[str]]) -> Lab:
    """``lab`` with ``host`` compiled again with these pairs sent direct."""
    view = lab.views[host]
    peers = tuple(
        dataclasses.replace(
            p, offloaded=frozenset(map(ipaddress.ip_address, pairs.get((p.vpc, p.peer_vpc), ())))
        )
        for p in view.peers
    )
    return recompiled(lab, host, dataclasses.replace(view, peers=peers))


def learned(lab: Lab, host: str) -> set[tuple[int, str]]:
    """(cookie, destination) of the flows the host's switch learned in offload_count."""
    return {
        (f.cookie, str(f.match_dict()["ipv4_dst"]))
        for f in lab.tables[host].flows(OFFLOAD_COUNT)
        if kind_of(f.cookie) == Kind.OFFLOAD
    }


def to_red(lab: Lab, host: str) -> list[Flow]:
    """The host's flows per red endpoint (blue's context: red's addresses)."""
    return [
        f
        for f in lab.states[host].flows
        if kind_of(f.cookie) == Kind.PEER_DEST and str(f.match.get("ipv4_dst")).startswith("10.2.")
    ]


def test_on_demand_starts_through_the_gateways_and_counts_each_pair() -> None:
    lab = gateway_lab(blue="on-demand", gateways=("gw1",))
    assert to_red(lab, "hv1") == []
    out = only(lab.send("blue", "b1", "10.2.0.11", ip_proto=1))
    assert out.has(tunnel_id=lab.vni("red"), tun_ipv4_dst=GATEWAYS["gw1"]), str(out)
    lab.send("blue", "b1", "10.2.0.12", ip_proto=1)
    cookie = offload_cookie("blue", "red")
    assert learned(lab, "hv1") == {(cookie, "10.2.0.11"), (cookie, "10.2.0.12")}
    # the next packet of the pair is counted by the learned flow, not learned again (which
    # would reset its counters in OVS)
    again = lab.send("blue", "b1", "10.2.0.11", ip_proto=1)
    (counted,) = [f for f in again.flows if f.table_id == OFFLOAD_COUNT]
    assert kind_of(counted.cookie) == Kind.OFFLOAD and not counted.instructions, str(again)
    to, relayed = hop(lab, out, "hv1")
    to, delivered = hop(lab, only(relayed), to)
    assert (to, delivered.ports()) == ("hv2", {OFPORT[("red", "r1")]}), str(delivered)


def test_an_offloaded_pair_goes_straight_to_its_host_and_is_still_counted() -> None:
    lab = offloaded(gateway_lab(blue="on-demand"), "hv1", {("blue", "red"): {"10.2.0.11"}})
    out = only(lab.send("blue", "b1", "10.2.0.11", ip_proto=1))
    assert out.has(tunnel_id=lab.vni("red"), tun_ipv4_dst=lab.ip("hv2")), str(out)
    to, delivered = hop(lab, out, "hv1")  # hv2 takes it from hv1 (red's side: direct)
    assert (to, delivered.ports()) == ("hv2", {OFPORT[("red", "r1")]}), str(delivered)
    assert learned(lab, "hv1") == {(offload_cookie("blue", "red"), "10.2.0.11")}
    other = only(lab.send("blue", "b1", "10.2.0.12", ip_proto=1))  # r2: not offloaded
    assert other.has(tun_ipv4_dst=GATEWAYS["gw1"]), str(other)
    assert [f.match.get("ipv4_dst") for f in to_red(lab, "hv1")] == ["10.2.0.11"]


def test_a_gateway_side_keeps_no_counter() -> None:
    lab = gateway_lab(blue="gateway")
    lab.send("blue", "b1", "10.2.0.11", ip_proto=1)
    assert learned(lab, "hv1") == set()
    assert [f for f in lab.tables["hv1"].flows(OFFLOAD_COUNT) if f.priority] == []  # its miss


def v6_lab(offload: frozenset[str] = frozenset()) -> Lab:
    """``v6_intent``'s blue -> red on-demand over gw1, red's side direct; ``offload``: red's
    addresses hv1 sends to directly."""
    i = v6_intent()
    i.put(Host("gw1", ipaddress.ip_address(GATEWAYS["gw1"]), "gateway"))
    for vpc, other, fwd in (("blue", "red", "on-demand"), ("red", "blue", "direct")):
        p = ops.new_peering(i, vpc, f"to-{other}", other, ExportPolicy(), False, None)
        i.put(dataclasses.replace(p, forwarding=fwd))
    return offloaded(build_lab(i), "hv1", {("blue", "red"): offload})


def send6(lab: Lab, dst: str) -> TraceResult:
    host, port, ip, mac = lab.vm("blue", "b1")
    pkt = {"eth_src": mac, "eth_dst": gateway_mac(lab.vni("blue")), "eth_type": 0x86DD,
           "ipv6_src": ip, "ipv6_dst": dst, "ip_proto": 58, "ip_ttl": 64}  # fmt: skip
    return lab.tables[host].trace(pkt, in_port=port)


def learned6(lab: Lab) -> set[str]:
    return {
        str(ipaddress.ip_address(f.match_dict()["ipv6_dst"]))
        for f in lab.tables["hv1"].flows(OFFLOAD_COUNT)
        if kind_of(f.cookie) == Kind.OFFLOAD
    }


def test_ipv6_pairs_are_counted_and_go_direct_as_ipv4_ones() -> None:
    lab = v6_lab()
    out = only(send6(lab, "fd00:2::11"))
    assert out.has(tunnel_id=lab.vni("red"), tun_ipv4_dst=GATEWAYS["gw1"]), str(out)
    assert learned6(lab) == {"fd00:2::11"}  # the pair's counter
    lab = v6_lab(frozenset({"fd00:2::11"}))
    out = only(send6(lab, "fd00:2::11"))
    assert out.has(tunnel_id=lab.vni("red"), tun_ipv4_dst=lab.ip("hv2")), str(out)
    assert lab.arrive(out, "hv1").ports() == {OFPORT[("red", "r1")]}
    assert learned6(lab) == {"fd00:2::11"}  # still counted on the direct path
    other = only(send6(lab, "fd00:2::ff:11"))
    assert other.has(tun_ipv4_dst=GATEWAYS["gw1"]), str(other)
