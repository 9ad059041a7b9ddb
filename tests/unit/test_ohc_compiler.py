"""The OHC flow compiler, asserted by where packets go on a fake switch per host.

The input is the real publication of a controller (``meshpeer.controller.mux``) for a small
world, parsed by ``ohc.model`` exactly as an OHC would; each host's compiled flows are loaded
into a FakeOFTable with real os-ken messages, and packets are traced across hosts: a packet
that leaves one host on the Geneve port is fed into the receiving host's table.

World (all VPCs on one shard; hosts hv1 .11, hv2 .12, hv3 .13):

    blue 10.1.0.0/24   b1 .11 hv1, b2 .12 hv1, b3 .13 hv2; route 192.168.0.0/16 via b2
    red  10.2.0.0/24   r1 .11 hv2, r3 .12 hv3, r4 .14 hv1, r2 .200 hv3 (hidden from blue);
                       ILB lbin .100 -> r1 (weight 3), r4 (weight 1)
    green 10.3.0.0/24  g1 .11 hv1 (peers with nobody)

blue <-> red are peered; red exports only 10.2.0.0/25 to blue, blue exports everything.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
from collections.abc import Iterable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from meshpeer.controller import intent as ops
from meshpeer.controller.model import Host, Intent
from meshpeer.controller.mux import GrantSettings, Publication, desired_streams
from meshpeer.controller.peering import statuses
from meshpeer.protocol import ServiceName
from meshpeer.protocol.gateways import Forwarding
from meshpeer.protocol.messages import PEER_SERVICES, StreamId
from ohc import cookies, wire
from ohc import host as ohc_host
from ohc.canonical import canonical_state
from ohc.compiler import DesiredState, compile_host, gateway_mac
from ohc.flows import Flow, flow_mod, group_mod
from ohc.model import HostView, Skipped
from ohc.pipeline import PIPELINE, TUNNEL_PORT, check_flow
from ohc.subscriptions import Sub
from tests.support import FakeOFTable, TraceResult
from tests.support.fakeoftable import Output
from tests.unit.controller_fixtures import add_ilb, add_vm, add_vpc, directory, peer, views

D = directory(ctl1=["blue", "red", "green"])
G = GrantSettings(D, ttl=600)
OWNER = dict.fromkeys(D.shards["ctl1"].vpcs, "ctl1")
DP = SimpleNamespace(ofproto=ofp, ofproto_parser=parser)
HOSTS = ("hv1", "hv2", "hv3")
IPV4, ARP = 0x0800, 0x0806

# (vpc, name, ip, host): the candidate endpoints, in the order they are created
VMS = (
    ("blue", "b1", "10.1.0.11", "hv1"),
    ("blue", "b2", "10.1.0.12", "hv1"),
    ("blue", "b3", "10.1.0.13", "hv2"),
    ("red", "r1", "10.2.0.11", "hv2"),
    ("red", "r3", "10.2.0.12", "hv3"),
    ("red", "r4", "10.2.0.14", "hv1"),
    ("red", "r2", "10.2.0.200", "hv3"),
    ("green", "g1", "10.3.0.11", "hv1"),
)
OFPORT = {(vpc, name): 10 + i for i, (vpc, name, _, _) in enumerate(VMS)}
SHARD = "http://ctl1"  # the shard URL in the Subs of followed(): the view ignores it


def base_intent() -> Intent:
    i = Intent()
    add_vpc(i, D, "ctl1", "blue", "10.1.0.0/24")
    add_vpc(i, D, "ctl1", "red", "10.2.0.0/24")
    add_vpc(i, D, "ctl1", "green", "10.3.0.0/24")
    for vpc, name, ip, host in VMS:
        add_vm(i, vpc, name, ip, host)
    return i


def full_intent() -> Intent:
    i = base_intent()
    add_ilb(i, "red", "lbin", "10.2.0.100", {"r1": 3, "r4": 1})
    add_route(i, "blue", "onprem", "192.168.0.0/16", "10.1.0.12")
    peer(i, "blue", "red")
    peer(i, "red", "blue", {"ranges": ["10.2.0.0/25"]})
    return i


def add_route(i: Intent, vpc: str, name: str, prefix: str, hop: str) -> None:
    net, nh = ipaddress.ip_network(prefix), ipaddress.ip_address(hop)
    i.put(ops.new_route(i, vpc, name, net, nh, 1000))


def publish(i: Intent, grants: GrantSettings = G, owner: dict[str, str] = OWNER) -> Publication:
    """What the shards (``owner``: VPC -> shard) publish for ``i``, as one publication."""
    return desired_streams(i, statuses(i, views(i, owner), owner), grants, now=0.0)


def host_view(
    i: Intent,
    pub: Publication,
    host: str,
    ofports: dict[tuple[str, str], int] = OFPORT,
    tunnel_port: int | None = TUNNEL_PORT,
) -> tuple[HostView, tuple[Skipped, ...]]:
    """What an OHC on ``host`` builds (ohc.host, as the app does) from the streams it follows
    (ohc.subscriptions), with its ports numbered ``ofports`` and its tunnel at ``tunnel_port``."""
    return ohc_host.host_view(
        str(i.hosts[host].underlay_ip), followed(pub, host), ofports, tunnel_port
    )


def followed(pub: Publication, host: str) -> dict[Sub, dict[str, Any]]:
    """The objects of the streams an OHC on ``host`` follows, keyed as its agent keys them."""

    def sub(sid: StreamId) -> Sub:
        return Sub(SHARD, sid.service, sid.key, sid.policy, host)

    endpoints = StreamId(ServiceName.ENDPOINT, host)
    out = {sub(endpoints): pub.streams.get(endpoints, {})}
    for vpc in sorted({o["vpc"] for o in out[sub(endpoints)].values()}):
        peerings = StreamId(ServiceName.PEERING, vpc, None, host)
        out[sub(peerings)] = pub.streams.get(peerings, {})
        keys = [(vpc, None)] + [
            (o["peer_vpc"], o["policy_id"]) for o in out[sub(peerings)].values()
        ]
        for key, policy in keys:
            for service in PEER_SERVICES:
                sid = StreamId(service, key, policy)
                out[sub(sid)] = pub.streams.get(sid, {})
    return out


def load(state: DesiredState) -> FakeOFTable:
    table = FakeOFTable()
    groups = [group_mod(DP, g) for g in sorted(state.groups, key=lambda g: g.group_id)]
    table.apply_bundle([*groups, *(flow_mod(DP, f) for f in sorted_flows(state.flows))])
    return table


def sorted_flows(flows: Iterable[Flow]) -> list[Flow]:
    return sorted(flows, key=lambda f: (f.table, -f.priority, f.text()))


@dataclass
class Lab:
    intent: Intent
    views: dict[str, HostView]
    states: dict[str, DesiredState]
    tables: dict[str, FakeOFTable]

    def ip(self, host: str) -> str:
        return str(self.intent.hosts[host].underlay_ip)

    def vni(self, vpc: str) -> int:
        return self.intent.vpcs[vpc].vni

    def mac(self, vpc: str, name: str) -> str:
        return self.intent.endpoints[(vpc, name)].mac

    def vm(self, vpc: str, name: str) -> tuple[str, int, str, str]:
        """(host, ofport, ip, mac)"""
        e = self.intent.endpoints[(vpc, name)]
        assert e.host is not None
        return e.host, OFPORT[(vpc, name)], str(e.ip), e.mac

    def send(
        self, vpc: str, name: str, dst_ip: str, *, routed: bool = True, **over: Any
    ) -> TraceResult:
        """``name`` sends an IPv4 packet; to its gateway MAC when ``routed``."""
        host, port, ip, mac = self.vm(vpc, name)
        dst = next((e for e in self.intent.endpoints.values() if str(e.ip) == dst_ip), None)
        eth_dst = gateway_mac(self.vni(vpc)) if routed or dst is None else dst.mac
        pkt = {
            "eth_src": mac,
            "eth_dst": eth_dst,
            "eth_type": IPV4,
            "ipv4_src": ip,
            "ipv4_dst": dst_ip,
            "ip_proto": 6,
            "ip_ttl": 64,
        } | over
        return self.tables[host].trace(pkt, in_port=port)

    def arp(self, vpc: str, name: str, target: str, **over: Any) -> TraceResult:
        host, port, ip, mac = self.vm(vpc, name)
        pkt = {
            "eth_src": mac,
            "eth_dst": "ff:ff:ff:ff:ff:ff",
            "eth_type": ARP,
            "arp_op": 1,
            "arp_sha": mac,
            "arp_spa": ip,
            "arp_tha": "00:00:00:00:00:00",
            "arp_tpa": target,
        } | over
        return self.tables[host].trace(pkt, in_port=port)

    def arrive(self, out: Output, from_host: str, **over: Any) -> TraceResult:
        """Feed a packet that left ``from_host`` on the Geneve port into its receiving host."""
        assert out.port == TUNNEL_PORT
        pkt = {k: v for k, v in out.packet.items() if k not in ("in_port", "metadata")}
        remote = pkt.pop("tun_ipv4_dst")
        to = next(h for h in self.tables if self.ip(h) == remote)
        pkt = pkt | {"tun_ipv4_src": self.ip(from_host)} | over
        return self.tables[to].trace(pkt, in_port=TUNNEL_PORT)


def build_lab(i: Intent) -> Lab:
    pub = publish(i)
    vs = {h: host_view(i, pub, h)[0] for h in HOSTS if h in i.hosts}
    states = {h: compile_host(v) for h, v in vs.items()}
    return Lab(i, vs, states, {h: load(s) for h, s in states.items()})


@pytest.fixture(scope="module")
def lab() -> Lab:
    return build_lab(full_intent())


def only(result: TraceResult) -> Output:
    assert len(result.outputs) == 1, str(result)
    return result.outputs[0]


# --- own VPC --------------------------------------------------------------------------------


def test_own_vpc_same_host_is_delivered_to_the_local_port(lab: Lab) -> None:
    _, b2_port, _, b2_mac = lab.vm("blue", "b2")
    bridged = lab.send("blue", "b1", "10.1.0.12", routed=False)
    assert bridged.is_output(b2_port, eth_dst=b2_mac, eth_src=lab.mac("blue", "b1"), ip_ttl=64)
    assert bridged.ports() == {b2_port}


def test_own_vpc_other_host_goes_by_geneve_with_own_vni_and_is_delivered(lab: Lab) -> None:
    _, b3_port, _, b3_mac = lab.vm("blue", "b3")
    sent = lab.send("blue", "b1", "10.1.0.13", routed=False)
    assert sent.is_output(
        TUNNEL_PORT, tunnel_id=lab.vni("blue"), tun_ipv4_dst=lab.ip("hv2"), eth_dst=b3_mac
    ), str(sent)
    got = lab.arrive(only(sent), "hv1")
    assert got.ports() == {b3_port} and got.is_output(b3_port, eth_dst=b3_mac), str(got)


def test_routed_hop_decrements_ttl_and_rewrites_macs(lab: Lab) -> None:
    sent = lab.send("blue", "b1", "10.1.0.13", routed=True)
    gw = gateway_mac(lab.vni("blue"))
    assert sent.is_output(TUNNEL_PORT, ip_ttl=63, eth_src=gw, eth_dst=lab.mac("blue", "b3"))


def test_gateway_mac_is_fixed_per_vni() -> None:
    assert gateway_mac(0x123456) == "02:6d:70:12:34:56"
    assert gateway_mac(1) != gateway_mac(2)


def test_static_route_goes_to_its_next_hop_both_ways(lab: Lab) -> None:
    b2_port = OFPORT[("blue", "b2")]
    sent = lab.send("blue", "b3", "192.168.7.7")
    assert sent.is_output(TUNNEL_PORT, tunnel_id=lab.vni("blue"), tun_ipv4_dst=lab.ip("hv1"))
    assert lab.arrive(only(sent), "hv2").ports() == {b2_port}
    # the router answers for the on-prem address; b3's host accepts it from b2's host
    _, b3_port, b3_ip, _ = lab.vm("blue", "b3")
    reply = lab.send("blue", "b2", b3_ip, ipv4_src="192.168.7.7")
    assert lab.arrive(only(reply), "hv1").ports() == {b3_port}
    # but a VM that is no next hop may not use such a source
    assert lab.send("blue", "b1", b3_ip, ipv4_src="192.168.7.7").dropped


# --- peering --------------------------------------------------------------------------------


def test_peered_destination_goes_straight_to_the_peer_host_with_the_peer_vni(lab: Lab) -> None:
    _, r1_port, _, r1_mac = lab.vm("red", "r1")
    sent = lab.send("blue", "b1", "10.2.0.11")
    assert sent.is_output(
        TUNNEL_PORT,
        tunnel_id=lab.vni("red"),
        tun_ipv4_dst=lab.ip("hv2"),
        ip_ttl=63,
        eth_src=gateway_mac(lab.vni("blue")),
        eth_dst=r1_mac,
    ), str(sent)
    got = lab.arrive(only(sent), "hv1")
    assert got.ports() == {r1_port}, str(got)
    # and the reply finds its way back
    _, b1_port, b1_ip, _ = lab.vm("blue", "b1")
    back = lab.send("red", "r1", b1_ip)
    assert back.is_output(TUNNEL_PORT, tunnel_id=lab.vni("blue"), tun_ipv4_dst=lab.ip("hv1"))
    assert lab.arrive(only(back), "hv2").ports() == {b1_port}


def test_peer_endpoint_on_the_same_host_is_delivered_locally(lab: Lab) -> None:
    _, r4_port, _, r4_mac = lab.vm("red", "r4")
    sent = lab.send("blue", "b1", "10.2.0.14")
    assert sent.ports() == {r4_port} and sent.is_output(r4_port, eth_dst=r4_mac, ip_ttl=63)


def test_peer_destinations_need_the_routed_hop(lab: Lab) -> None:
    assert lab.send("blue", "b1", "10.2.0.11", routed=False).dropped


def test_destination_hidden_by_the_peer_policy_is_dropped(lab: Lab) -> None:
    assert lab.send("blue", "b1", "10.2.0.200").dropped  # r2: outside 10.2.0.0/25
    # blue exports everything, so red's host sends r2's packet, but blue's host refuses it:
    # r2 is not a destination red exported to blue
    sent = lab.send("red", "r2", "10.1.0.11")
    assert sent.is_output(TUNNEL_PORT, tunnel_id=lab.vni("blue"))
    assert lab.arrive(only(sent), "hv3").dropped


def test_not_peered_is_dropped_even_on_the_same_host(lab: Lab) -> None:
    assert lab.send("blue", "b1", "10.3.0.11").dropped
    assert lab.send("green", "g1", "10.1.0.11").dropped
    assert lab.send("green", "g1", "10.2.0.11").dropped


def test_ilb_vip_selects_weighted_backends(lab: Lab) -> None:
    _, r4_port, _, r4_mac = lab.vm("red", "r4")
    sent = lab.send("blue", "b1", "10.2.0.100")
    assert sent.weights_by_port() == {TUNNEL_PORT: 3, r4_port: 1}, str(sent)
    assert len(sent.selects) == 1 and sorted(w for _, w in sent.selects[0].buckets) == [1, 3]
    assert sent.is_output(r4_port, eth_dst=r4_mac, ipv4_dst="10.2.0.100")
    (remote,) = [o for o in sent.outputs if o.port == TUNNEL_PORT]
    assert remote.has(tunnel_id=lab.vni("red"), tun_ipv4_dst=lab.ip("hv2"), ipv4_dst="10.2.0.100")
    _, r1_port, _, _ = lab.vm("red", "r1")
    assert lab.arrive(remote, "hv1").ports() == {r1_port}  # by the backend's MAC
    # direct server return: r1 answers from the VIP, and blue's host takes it
    _, b1_port, b1_ip, _ = lab.vm("blue", "b1")
    reply = lab.send("red", "r1", b1_ip, ipv4_src="10.2.0.100")
    assert lab.arrive(only(reply), "hv2").ports() == {b1_port}
    # a VM that backs no ILB cannot use the VIP as a source
    assert lab.send("red", "r3", b1_ip, ipv4_src="10.2.0.100").dropped


def test_own_ilb_from_a_backend_host(lab: Lab) -> None:
    _, r4_port, _, _ = lab.vm("red", "r4")
    sent = lab.send("red", "r3", "10.2.0.100", routed=False)
    assert sent.weights_by_port() == {TUNNEL_PORT: 4}  # both backends are elsewhere
    by_host = {o.packet["tun_ipv4_dst"]: o.weight for o in sent.outputs}
    assert by_host == {lab.ip("hv2"): 3, lab.ip("hv1"): 1}
    to_r4 = next(o for o in sent.outputs if o.packet["tun_ipv4_dst"] == lab.ip("hv1"))
    assert lab.arrive(to_r4, "hv3").ports() == {r4_port}


def v6_intent() -> Intent:
    """IPv6-only blue (fd00:1::/64: b1 on hv1) and red (fd00:2::/64: r1, r2 on hv2), unpeered."""
    i = Intent()
    add_vpc(i, D, "ctl1", "blue", "fd00:1::/64")
    add_vpc(i, D, "ctl1", "red", "fd00:2::/64")
    add_vm(i, "blue", "b1", "fd00:1::11", "hv1")
    add_vm(i, "red", "r1", "fd00:2::11", "hv2")
    add_vm(i, "red", "r2", "fd00:2::ff:11", "hv2")
    return i


def test_ipv6_destinations_follow_the_same_rules() -> None:
    i = v6_intent()
    peer(i, "blue", "red")
    peer(i, "red", "blue", {"ranges": ["fd00:2::/112"]})
    v6 = build_lab(i)
    host, port, ip, mac = v6.vm("blue", "b1")
    pkt = {
        "eth_src": mac,
        "eth_dst": gateway_mac(v6.vni("blue")),
        "eth_type": 0x86DD,
        "ipv6_src": ip,
        "ipv6_dst": "fd00:2::11",
        "ip_ttl": 64,
    }
    sent = v6.tables[host].trace(pkt, in_port=port)
    assert sent.is_output(
        TUNNEL_PORT, tunnel_id=v6.vni("red"), tun_ipv4_dst=v6.ip("hv2"), ip_ttl=63
    )
    assert v6.arrive(only(sent), "hv1").ports() == {OFPORT[("red", "r1")]}
    assert v6.tables[host].trace(pkt | {"ipv6_dst": "fd00:2::ff:11"}, in_port=port).dropped
    assert v6.tables[host].trace(pkt | {"ipv6_src": "fd00:1::99"}, in_port=port).dropped


# --- anti-spoofing -------------------------------------------------------------------------


def test_anti_spoofing_drops_wrong_source_ip_or_mac(lab: Lab) -> None:
    assert not lab.send("blue", "b1", "10.1.0.13").dropped
    assert lab.send("blue", "b1", "10.1.0.13", ipv4_src="10.1.0.12").dropped
    assert lab.send("blue", "b1", "10.1.0.13", eth_src=lab.mac("blue", "b2")).dropped
    assert lab.send("blue", "b1", "10.2.0.11", ipv4_src="10.2.0.99").dropped
    assert lab.arp("blue", "b1", "10.1.0.1", arp_spa="10.1.0.12").dropped
    assert lab.arp("blue", "b1", "10.1.0.1", arp_sha=lab.mac("blue", "b2")).dropped


def test_a_vm_cannot_inject_tunnel_metadata(lab: Lab) -> None:
    _, port, ip, mac = lab.vm("blue", "b1")
    pkt = {
        "eth_src": mac,
        "eth_type": IPV4,
        "ipv4_src": "10.2.0.11",
        "ipv4_dst": ip,
        "tunnel_id": lab.vni("blue"),
        "tun_ipv4_src": lab.ip("hv2"),
    }
    assert lab.tables["hv1"].trace(pkt, in_port=OFPORT[("blue", "b2")]).dropped
    assert lab.tables["hv1"].trace(pkt, in_port=port).dropped


# --- ARP ----------------------------------------------------------------------------------


def test_arp_for_the_gateway_is_answered_out_the_in_port(lab: Lab) -> None:
    _, port, ip, mac = lab.vm("blue", "b1")
    gw = gateway_mac(lab.vni("blue"))
    got = lab.arp("blue", "b1", "10.1.0.1")
    assert got.ports() == {port}, str(got)
    assert got.is_output(
        port,
        arp_op=2,
        eth_src=gw,
        eth_dst=mac,
        arp_sha=gw,
        arp_spa="10.1.0.1",
        arp_tha=mac,
        arp_tpa=ip,
    )


def test_arp_for_peers_in_the_subnet_and_the_vip(lab: Lab) -> None:
    _, port, ip, _ = lab.vm("blue", "b1")
    b3_mac = lab.mac("blue", "b3")
    got = lab.arp("blue", "b1", "10.1.0.13")
    assert got.is_output(port, arp_op=2, arp_sha=b3_mac, arp_spa="10.1.0.13", arp_tpa=ip)
    lb = lab.intent.endpoints[("red", "lbin")]
    assert lab.arp("red", "r3", "10.2.0.100").is_output(
        OFPORT[("red", "r3")], arp_op=2, arp_sha=lb.mac
    )


def test_arp_is_never_flooded_or_answered_for_unknowns_or_other_vpcs(lab: Lab) -> None:
    assert lab.arp("blue", "b1", "10.1.0.77").dropped
    assert lab.arp("blue", "b1", "10.1.0.11").dropped  # its own address
    assert lab.arp("blue", "b1", "10.3.0.11").dropped  # green's VM on the same host
    assert lab.arp("blue", "b1", "10.2.0.11").dropped  # peers are reached via the gateway
    assert lab.arp("blue", "b1", "10.1.0.1", arp_op=2).dropped  # replies are not forwarded


# --- tunnel ingress -----------------------------------------------------------------------


def tunnel_packet(lab: Lab, vni: int, src: str, dst: str, from_host: str) -> dict[str, Any]:
    return {
        "eth_type": IPV4,
        "ipv4_src": src,
        "ipv4_dst": dst,
        "tunnel_id": vni,
        "tun_ipv4_src": lab.ip(from_host),
        "eth_dst": "02:00:00:00:00:01",
    }


def test_tunnel_ingress_rules(lab: Lab) -> None:
    hv1, blue, red, green = lab.tables["hv1"], lab.vni("blue"), lab.vni("red"), lab.vni("green")
    b1_port = OFPORT[("blue", "b1")]

    def deliver(vni: int, src: str, dst: str, from_host: str) -> set[Any]:
        return hv1.trace(tunnel_packet(lab, vni, src, dst, from_host), in_port=1).ports()

    assert deliver(blue, "10.1.0.13", "10.1.0.11", "hv2") == {b1_port}  # own VPC
    assert deliver(blue, "10.2.0.11", "10.1.0.11", "hv2") == {b1_port}  # exported by red
    assert deliver(blue, "10.2.0.12", "10.1.0.11", "hv3") == {b1_port}  # exported by red
    assert deliver(blue, "10.2.0.200", "10.1.0.11", "hv3") == set()  # hidden by red's policy
    assert deliver(blue, "10.2.0.11", "10.1.0.11", "hv3") == set()  # from the wrong host
    assert deliver(blue, "10.3.0.11", "10.1.0.11", "hv2") == set()  # green: not peered
    assert deliver(blue, "10.9.9.9", "10.1.0.11", "hv2") == set()  # unknown source
    assert deliver(red, "10.2.0.11", "10.1.0.11", "hv2") == set()  # wrong VNI for b1
    assert deliver(green, "10.2.0.11", "10.3.0.11", "hv2") == set()  # green does not peer red
    assert deliver(4242, "10.1.0.13", "10.1.0.11", "hv2") == set()  # no such VPC here
    assert deliver(blue, "10.1.0.13", "10.1.0.99", "hv2") == set()  # no such endpoint


# --- the registry, cookies, determinism ------------------------------------------------------


def test_every_compiled_flow_fits_the_pipeline_and_has_an_owner(lab: Lab) -> None:
    for state in lab.states.values():
        assert state.flows and state.groups is not None
        for flow in state.flows:
            assert check_flow(flow) is flow
            assert flow.table in PIPELINE
            assert cookies.kind_of(flow.cookie) is not None, flow.text()


def test_compiling_is_deterministic_and_order_independent(lab: Lab) -> None:
    pub = publish(lab.intent)
    for host in HOSTS:
        view, _ = host_view(lab.intent, pub, host)
        assert view == lab.views[host]
        again = compile_host(view)
        assert again == compile_host(view) == lab.states[host]
        assert again.text() == lab.states[host].text()
    # the same objects in another order give the same view
    shuffled = Publication(
        {
            k: dict(random.Random(7).sample(sorted(v.items()), len(v)))
            for k, v in pub.streams.items()
        }
    )
    for host in HOSTS:
        assert host_view(lab.intent, shuffled, host)[0] == lab.views[host]


def test_group_ids_are_stable_hashes_of_the_ilb(lab: Lab) -> None:
    before = {g.group_id for g in lab.states["hv1"].groups}
    i = full_intent()
    add_ilb(i, "blue", "lbb", "10.1.0.100", {"b1": 1, "b3": 2})
    after = {g.group_id for g in build_lab(i).states["hv1"].groups}
    # blue's own lbb, and red's view of it (blue exports everything to red); old ids unchanged
    assert before < after and len(after) == len(before) + 2


def test_peer_flows_are_deleted_by_cookie_kind(lab: Lab) -> None:
    table = lab.tables["hv1"].copy()
    for kind in (cookies.Kind.PEER_DEST, cookies.Kind.PEER_LB, cookies.Kind.PEER_ROUTE):
        table.apply(
            parser.OFPFlowMod(
                DP,
                command=ofp.OFPFC_DELETE,
                table_id=ofp.OFPTT_ALL,
                cookie=cookies.cookie_of_kind(kind),
                cookie_mask=cookies.kind_mask(),
                out_port=ofp.OFPP_ANY,
                out_group=ofp.OFPG_ANY,
            )
        )
    _, b1_port, _, mac = lab.vm("blue", "b1")
    pkt = {
        "eth_src": mac,
        "eth_dst": gateway_mac(lab.vni("blue")),
        "eth_type": IPV4,
        "ipv4_src": "10.1.0.11",
        "ip_ttl": 64,
    }
    assert table.trace(pkt | {"ipv4_dst": "10.2.0.11"}, in_port=b1_port).dropped
    assert table.trace(pkt | {"ipv4_dst": "10.2.0.100"}, in_port=b1_port).dropped
    assert not table.trace(pkt | {"ipv4_dst": "10.1.0.13"}, in_port=b1_port).dropped


def test_unpeering_removes_access_and_hosts_without_the_vpc_get_nothing(lab: Lab) -> None:
    i = full_intent()
    i.drop("peering", "red/to-blue")
    cut = build_lab(i)
    assert cut.send("blue", "b1", "10.2.0.11").dropped
    assert cut.send("blue", "b1", "10.2.0.100").dropped
    assert not cut.send("blue", "b1", "10.1.0.13").dropped
    hv3_vnis = {f.match.get("tunnel_id") for f in lab.states["hv3"].flows} - {None}
    assert hv3_vnis == {lab.vni("red")}  # hv3 has only red endpoints


# --- the model edge -------------------------------------------------------------------------


def test_bad_objects_are_skipped_and_reported(lab: Lab) -> None:
    pub = publish(lab.intent)
    streams = dict(pub.streams)
    red = StreamId(ServiceName.DESTINATION, "red", None)
    blue = StreamId(ServiceName.DESTINATION, "blue", None)
    good = streams[red]["r1"]
    streams[red] = {
        **streams[red],
        "badip": good | {"ip": "10.2.0.999"},
        "badmac": good | {"ip": "10.2.0.50", "mac": "ff:ff:ff:ff:ff:ff"},
        "badvni": good | {"ip": "10.2.0.51", "vni": 2**24},
        "boolvni": good | {"ip": "10.2.0.52", "vni": True},
        "v6host": good | {"ip": "10.2.0.53", "host_ip": "fd00::1"},
        "notobj": ["nope"],  # type: ignore[dict-item]  # untrusted input
    }
    pid = lab.views["hv1"].peers[0].policy_id
    peer_dest = StreamId(ServiceName.DESTINATION, "red", pid)
    streams[peer_dest] = {
        **streams[peer_dest],
        "ownvni": good | {"ip": "10.2.0.60", "vni": lab.vni("blue")},  # a peer claiming our VNI
    }
    streams[blue] = {**streams[blue], "dup": streams[blue]["b1"]}
    view, skipped = host_view(lab.intent, Publication(streams), "hv2")
    keys = {s.key for s in skipped}
    assert {"red/badip", "red/badmac", "red/badvni", "red/boolvni", "red/v6host"} <= keys
    assert {"red/notobj", "red/ownvni", "blue/dup"} <= keys
    assert view == lab.views["hv2"]  # nothing else changed


def test_peering_objects_cannot_claim_a_local_vni(lab: Lab) -> None:
    pub = publish(lab.intent)
    streams = dict(pub.streams)
    sid = StreamId(ServiceName.PEERING, "blue", None, "hv1")
    streams[sid] = {k: v | {"peer_vni": lab.vni("green")} for k, v in streams[sid].items()}
    view, skipped = host_view(lab.intent, Publication(streams), "hv1")
    assert not view.peers_of("blue")
    assert any(s.service == "peering" and "green" in s.reason for s in skipped)
    hv1 = load(compile_host(view))
    b1 = lab.vm("blue", "b1")
    pkt = {
        "eth_src": b1[3],
        "eth_dst": gateway_mac(lab.vni("blue")),
        "eth_type": IPV4,
        "ipv4_src": b1[2],
        "ipv4_dst": "10.3.0.11",
        "ip_ttl": 64,
    }
    assert hv1.trace(pkt, in_port=b1[1]).dropped


def test_unattached_endpoints_are_left_out() -> None:
    i = full_intent()
    pub = publish(i)
    endpoints = pub.streams[StreamId(ServiceName.ENDPOINT, "hv1")]
    view, skipped = HostView.from_service_objects(
        str(i.hosts["hv1"].underlay_ip), endpoints, {("blue", "b1"): 10}, {}, {}, {}
    )
    assert [p.name for p in view.local_ports] == ["b1"]
    assert {s.key for s in skipped} == {"blue.b2", "red.r4", "green.g1"}


# --- incremental == full recompute -----------------------------------------------------------


def sync(table: FakeOFTable, old: DesiredState, new: DesiredState) -> None:
    """A minimal diff-and-sync (what the flow syncer does), in one bundle."""
    old_gids = {g.group_id for g in old.groups}
    new_gids = {g.group_id for g in new.groups}
    new_keys = {f.key for f in new.flows}
    msgs = [
        group_mod(DP, g, "modify" if g.group_id in old_gids else "add")
        for g in sorted(new.groups - old.groups, key=lambda g: g.group_id)
    ]
    msgs += [
        flow_mod(DP, f, "delete")
        for f in sorted_flows(old.flows - new.flows)
        if f.key not in new_keys
    ]
    msgs += [flow_mod(DP, f) for f in sorted_flows(new.flows - old.flows)]
    msgs += [group_mod(DP, g, "delete") for g in old.groups if g.group_id not in new_gids]
    table.apply_bundle(msgs)


def apply_op(i: Intent, op: tuple[str, int]) -> None:
    kind, n = op
    if kind == "vm":
        vpc, name, ip, host = VMS[n % len(VMS)]
        backs = any(b.endpoint == name for e in i.endpoints.values() for b in e.backends)
        hop = any(str(r.next_hop) == ip for r in i.routes.values())
        if (vpc, name) not in i.endpoints:
            add_vm(i, vpc, name, ip, host)
        elif not backs and not hop:  # the controller refuses to delete those
            i.drop("endpoint", f"{vpc}/{name}")
    elif kind == "peer":
        a, b = [("blue", "red"), ("red", "blue"), ("green", "red"), ("red", "green")][n % 4]
        if (a, f"to-{b}") in i.peerings:
            i.drop("peering", f"{a}/to-{b}")
        else:
            export: dict[str, object] | None = None
            if (a, n % 3) == ("red", 0):
                export = {"ranges": ["10.2.0.0/25"]}
            peer(i, a, b, export)
    elif kind == "inbound":  # one side of a peering flips between all and replies
        a, b = [("blue", "red"), ("red", "blue"), ("green", "red"), ("red", "green")][n % 4]
        p = i.peerings.get((a, f"to-{b}"))
        if p is not None:
            i.put(dataclasses.replace(p, inbound="all" if p.inbound == "replies" else "replies"))
    elif kind == "forwarding":  # one side flips between direct and through the gateways
        a, b = [("blue", "red"), ("red", "blue"), ("green", "red"), ("red", "green")][n % 4]
        p = i.peerings.get((a, f"to-{b}"))
        if p is not None:
            fwd: Forwarding = (
                "direct" if p.forwarding != "direct" else ("gateway", "on-demand")[n % 2]
            )
            i.put(dataclasses.replace(p, forwarding=fwd))
    elif kind == "gateway":  # a gateway host registers, or goes
        name = ("gw1", "gw2")[n % 2]
        if name in i.hosts:
            i.drop("host", name)
        else:
            i.put(Host(name, ipaddress.ip_address(f"169.254.101.{51 + n % 2}"), "gateway"))
    elif kind == "ilb":
        if ("red", "lbin") in i.endpoints:
            i.drop("endpoint", "red/lbin")
        else:
            have = [nm for nm in ("r1", "r3", "r4") if ("red", nm) in i.endpoints]
            if have:
                add_ilb(i, "red", "lbin", "10.2.0.100", {nm: 1 + k for k, nm in enumerate(have)})
    elif kind == "spill":  # blue's ILB with spillover backends in red, or none
        if ("blue", "web") in i.endpoints:
            i.drop("endpoint", "blue/web")
        elif ("blue", "to-red") in i.peerings and ("red", "to-blue") in i.peerings:
            local = [nm for nm in ("b1", "b3") if ("blue", nm) in i.endpoints]
            back = i.peerings[("red", "to-blue")].export  # what the API accepts: exported ones
            spill = {
                ("red", nm): 1 + n % 2
                for nm in ("r1", "r3", "r4")
                if ("red", nm) in i.endpoints and back.exports_ip(i.endpoints[("red", nm)].ip)
            }
            if local:
                add_ilb(i, "blue", "web", "10.1.0.100", dict.fromkeys(local, 1), spill)
    elif kind == "route":
        if ("blue", "onprem") in i.routes:
            i.drop("route", "blue/onprem")
        elif ("blue", "b2") in i.endpoints:
            add_route(i, "blue", "onprem", "192.168.0.0/16", "10.1.0.12")


KINDS = ["vm", "peer", "inbound", "ilb", "route", "forwarding", "gateway", "spill"]
OPS = st.lists(
    st.tuples(st.sampled_from(KINDS), st.integers(0, 11)),
    min_size=1,
    max_size=12,
)


@settings(max_examples=40, deadline=None)
@given(OPS)
def test_synced_updates_equal_a_full_recompute_from_scratch(ops_seq: list[tuple[str, int]]) -> None:
    """A full compile per update, synced as deltas into FakeOFTable, ends where a full compile
    of the final intent rebuilt from scratch in another order does (the incremental engine is
    checked against ``compile_host`` in tests/unit/test_ohc_engine.py)."""
    i = base_intent()
    pub = publish(i)
    states = {h: compile_host(host_view(i, pub, h)[0]) for h in HOSTS}
    tables = {h: load(s) for h, s in states.items()}
    for op in ops_seq:
        apply_op(i, op)
        pub = publish(i)
        for h in HOSTS:
            new = compile_host(host_view(i, pub, h)[0])
            sync(tables[h], states[h], new)
            states[h] = new
    fresh = Intent.from_records(_records(i))  # rebuilt from scratch, in another order
    pub = publish(fresh)
    for h in HOSTS:
        full = compile_host(host_view(fresh, pub, h)[0])
        assert full == states[h]
        expect = load(full)
        assert tables[h].flows() == expect.flows(), h
        assert tables[h].groups() == expect.groups(), h


def _records(i: Intent) -> dict[tuple[str, str], dict[str, Any]]:
    """The intent as store records, inserted in reverse order."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for attr, kind in (
        ("vpcs", "vpc"),
        ("hosts", "host"),
        ("endpoints", "endpoint"),
        ("routes", "route"),
        ("peerings", "peering"),
    ):
        for n, r in enumerate(reversed(list(getattr(i, attr).values()))):
            out[(kind, str(n))] = r.to_json()
    return out


def test_packed_flow_mods_are_the_bytes_os_ken_would_send(lab: Lab) -> None:
    """ohc.wire packs the syncer's FlowMods itself: byte for byte os-ken's, for every flow of
    this world and of an IPv6 one (neighbour discovery, IPv6 matches), in a bundle add."""
    v6 = Intent()
    add_vpc(v6, D, "ctl1", "blue", "fd00:1::/64")
    add_vm(v6, "blue", "b1", "fd00:1::11", "hv1")
    add_vm(v6, "blue", "b3", "fd00:1::13", "hv2")
    states = [*lab.states.values(), *build_lab(v6).states.values()]
    flows = {f for state in states for f in canonical_state(state).flows}
    assert len(flows) > 100
    assert {n for f in flows for n, _ in f.match.fields} >= {"ipv6_nd_target", "tun_ipv4_src"}
    memo: wire.Memo = {}  # one for all, as a chunk of a sync shares one
    for f in flows:
        for command in ("add", "modify", "delete"):
            got = wire.bundled_flow_mod(9, 3, f, command, 77, memo)
            assert got == osken_bytes(f, command), (command, f.text())


def wire_bytes(f: Flow, command: str) -> bytes:
    return wire.bundled_flow_mod(9, 3, f, command, 77, {})


def osken_bytes(f: Flow, command: str) -> bytes:
    msg = flow_mod(DP, f, command)
    if command == "delete":
        msg.cookie_mask = (1 << 64) - 1
    outer = parser.ONFBundleAddMsg(DP, 9, 3, msg, [])
    outer.set_xid(77)
    outer.serialize()
    return bytes(outer.buf)


def test_ipv6_neighbour_solicitations_go_to_the_ohc_with_the_answer_mac() -> None:
    """Gateway and own addresses are answered (via the OHC: ohc/nd.py), with the router flag
    only for the gateway; a port's own address, unknown and peer addresses are not."""
    i = Intent()
    add_vpc(i, D, "ctl1", "blue", "fd00:1::/64")
    add_vpc(i, D, "ctl1", "red", "fd00:2::/64")
    add_vm(i, "blue", "b1", "fd00:1::11", "hv1")
    add_vm(i, "blue", "b3", "fd00:1::13", "hv2")
    add_vm(i, "red", "r1", "fd00:2::11", "hv2")
    peer(i, "blue", "red")
    peer(i, "red", "blue")
    v6 = build_lab(i)
    host, port, ip, mac = v6.vm("blue", "b1")
    ns = {
        "eth_src": mac,
        "eth_dst": "33:33:ff:00:00:01",
        "eth_type": 0x86DD,
        "ipv6_src": ip,
        "ipv6_dst": "ff02::1:ff00:1",
        "ip_proto": 58,
        "icmpv6_type": 135,
        "ip_ttl": 255,
    }
    table = v6.tables[host]

    def solicit(target: str, **over: object) -> TraceResult:
        return table.trace(ns | {"ipv6_nd_target": target} | over, in_port=port)

    gw = solicit("fd00:1::1")
    assert gw.is_output("controller", eth_dst=gateway_mac(v6.vni("blue")))
    assert cookies.kind_of(gw.flows[-1].cookie) == cookies.Kind.VPC  # the router flag
    b3 = solicit("fd00:1::13")
    assert b3.is_output("controller", eth_dst=v6.mac("blue", "b3"))
    assert cookies.kind_of(b3.flows[-1].cookie) == cookies.Kind.DEST
    assert solicit(ip).dropped  # never about itself
    assert solicit("fd00:1::99").dropped  # unknown
    assert solicit("fd00:2::11").dropped  # a peer's address: reached via the gateway
    assert solicit("fd00:1::1", ipv6_src="fd00:1::98").dropped  # spoofed source
    assert solicit("fd00:1::1", ipv6_src="::").dropped  # duplicate address detection
