"""BGP toward on-prem routers, the pure part (meshpeer.controller.bgp) and what it feeds: the
sessions the intent wants, the learned table, dynamic routes in the effective table and on the
switch (traced through a FakeOFTable), and the REST edge's validation of a ``bgp`` peer."""

from __future__ import annotations

import ipaddress
import json
import pathlib
from dataclasses import replace
from typing import Any

import pytest
from webob import Request

from meshpeer.controller import bgp
from meshpeer.controller import intent as ops
from meshpeer.controller.api import ControllerApi
from meshpeer.controller.intent import IntentError
from meshpeer.controller.model import BgpPeer, Endpoint, Intent
from meshpeer.controller.mux import desired_streams
from meshpeer.controller.peering import federation_view, statuses
from meshpeer.controller.routing import effective_routes
from meshpeer.rest import Api
from ohc.compiler import compile_host, gateway_mac
from ohc.pipeline import TUNNEL_PORT
from tests.unit.controller_fixtures import add_vm, add_vpc, directory, peer, views
from tests.unit.test_bgp_speaker import shard
from tests.unit.test_ohc_compiler import G, host_view, load

D = directory(ctl1=["blue", "green", "red", "aqua"])
OWNER = {"blue": "ctl1", "green": "ctl1"}
ONPREM = "192.168.10.0/24"
PEER = BgpPeer(
    65001, ipaddress.IPv4Address("169.254.250.2"), ipaddress.IPv4Address("169.254.250.1")
)
OFPORTS = {("blue", "v1"): 10, ("blue", "b1"): 11, ("green", "g1"): 12}


def world() -> Intent:
    """blue: v1 (vpn, on hv1) holds a session to dc1; b1 on hv2. green: g1 on hv3."""
    i = Intent()
    add_vpc(i, D, "ctl1", "blue", "10.1.0.0/24", "10.1.1.0/24", "fd00:1::/64")
    add_vpc(i, D, "ctl1", "green", "10.3.0.0/24")
    add_vm(i, "blue", "v1", "10.1.0.5", "hv1", kind="vpn")
    add_vm(i, "blue", "b1", "10.1.0.11", "hv2")
    add_vm(i, "green", "g1", "10.3.0.11", "hv3")
    i.put(ops.set_bgp(i, i.endpoints[("blue", "v1")], PEER))
    return i


def test_one_session_per_endpoint_announcing_the_vpcs_ipv4_subnets_via_its_gateway() -> None:
    (s,) = bgp.sessions(world()).values()
    assert (s.peer_ip, s.peer_asn, s.local_ip, s.local_asn) == (
        "169.254.250.2", 65001, "169.254.250.1", 64512,
    )  # fmt: skip
    assert (s.vpc, s.endpoint, s.next_hop) == ("blue", "v1", "10.1.0.5")
    assert s.announce == ("10.1.0.0/24", "10.1.1.0/24")  # no IPv6 over the IPv4 session
    assert s.announce_next_hop == "10.1.0.1"  # the gateway on v1's segment


def test_learned_routes_become_dynamic_routes_via_the_endpoint() -> None:
    wanted = bgp.sessions(world())
    table = bgp.learn({}, "169.254.250.2", ONPREM, withdraw=False)
    table = bgp.learn(table, "169.254.250.2", "172.16.0.0/16", withdraw=False, med=50)
    table = bgp.learn(table, "169.254.250.2", "0.0.0.0/0", withdraw=False)  # refused
    table = bgp.learn(table, "169.254.250.2", "10.1.1.128/25", withdraw=False)  # inside blue's
    table = bgp.learn(table, "169.254.250.2", "10.1.0.0/24", withdraw=False)  # blue's own
    table = bgp.learn(table, "169.254.250.9", "10.9.0.0/16", withdraw=False)  # no such session
    (blue,) = bgp.dynamic_routes(wanted, table).values()
    assert [(d.prefix, d.next_hop, d.endpoint, d.priority) for d in blue] == [
        ("172.16.0.0/16", "10.1.0.5", "v1", 50),
        (ONPREM, "10.1.0.5", "v1", 1000),
    ]
    after = bgp.learn(table, "169.254.250.2", ONPREM, withdraw=True)
    assert [d.prefix for d in bgp.dynamic_routes(wanted, after)["blue"]] == ["172.16.0.0/16"]
    assert bgp.dynamic_routes(wanted, bgp.forget_peer(table, "169.254.250.2")) == {}
    assert bgp.changed_vpcs(bgp.dynamic_routes(wanted, table), {}) == {"blue"}


def test_two_vpcs_announcing_one_prefix_keep_the_first_by_name() -> None:
    """One speaker, one table per shard: a prefix has one next hop; the clash is reported."""
    i = world()
    add_vpc(i, D, "ctl1", "aqua", "10.1.1.0/24", "10.1.2.0/24")  # overlaps blue's 10.1.1.0/24
    add_vm(i, "aqua", "a1", "10.1.2.5", "hv1", kind="router")
    other = BgpPeer(65002, ipaddress.IPv4Address("169.254.250.6"), PEER.local_ip)
    i.put(ops.set_bgp(i, i.endpoints[("aqua", "a1")], other))
    announce, conflicts = bgp.announcements(bgp.sessions(i))
    assert announce == {
        "10.1.0.0/24": "10.1.0.1",
        "10.1.1.0/24": "10.1.2.1",
        "10.1.2.0/24": "10.1.2.1",
    }
    assert conflicts == [
        "10.1.1.0/24: announced for VPC 'aqua', not also for 'blue' (one table per shard)"
    ]
    # each router is sent what its VPC won only (found by a review: blue's got aqua's route)
    wanted = bgp.sessions(i)
    blue, aqua = (wanted[ip] for ip in ("169.254.250.2", "169.254.250.6"))
    assert bgp.permitted(blue, announce) == ("10.1.0.0/24",)
    assert bgp.permitted(aqua, announce) == ("10.1.1.0/24", "10.1.2.0/24")


def effective(i: Intent, vpc: str, table: bgp.LearnedTable) -> list[dict[str, Any]]:
    vs = views(i, OWNER)
    dynamic = bgp.dynamic_routes(bgp.sessions(i), table).get(vpc, ())
    return effective_routes(i, vpc, statuses(i, vs, OWNER), vs, dynamic)


def test_effective_routes_show_a_learned_route_as_dynamic_and_installed() -> None:
    i = world()
    table = bgp.learn({}, "169.254.250.2", ONPREM, withdraw=False)
    (route,) = [r for r in effective(i, "blue", table) if r["prefix"] == ONPREM]
    assert route == {
        "prefix": ONPREM,
        "kind": "dynamic",
        "origin": "local",
        "next_hop": "10.1.0.5",
        "priority": 1000,
        "installed": True,
    }
    assert [r for r in effective(i, "green", table) if r["prefix"] == ONPREM] == []


def send(i: Intent, table: bgp.LearnedTable, src: Endpoint, dst: str) -> Any:
    """Trace an IPv4 packet from ``src`` to ``dst`` on its host's switch, compiled from the
    shard's publication with the learned routes."""
    assert src.host is not None
    dynamic = bgp.dynamic_routes(bgp.sessions(i), table)
    pub = desired_streams(i, statuses(i, views(i, OWNER), OWNER), G, 0.0, dynamic=dynamic)
    switch = load(compile_host(host_view(i, pub, src.host, OFPORTS)[0]))
    pkt = {
        "eth_src": src.mac,
        "eth_dst": gateway_mac(i.vpcs[src.vpc].vni),
        "eth_type": 0x0800,
        "ipv4_src": str(src.ip),
        "ipv4_dst": dst,
        "ip_proto": 6,
        "ip_ttl": 64,
    }
    return switch.trace(pkt, in_port=OFPORTS[(src.vpc, src.name)])


def test_a_learned_route_forwards_to_the_endpoints_host_and_its_withdrawal_drops() -> None:
    i = world()
    b1, v1, g1 = (i.endpoints[k] for k in (("blue", "b1"), ("blue", "v1"), ("green", "g1")))
    table = bgp.learn({}, "169.254.250.2", ONPREM, withdraw=False)
    got = send(i, table, b1, "192.168.10.10")
    (out,) = got.outputs
    assert out.port == TUNNEL_PORT
    assert out.packet["tun_ipv4_dst"] == str(i.hosts["hv1"].underlay_ip)
    assert (out.packet["tunnel_id"], out.packet["eth_dst"]) == (i.vpcs["blue"].vni, v1.mac)
    assert send(i, table, g1, "192.168.10.10").dropped  # green learned nothing
    gone = bgp.learn(table, "169.254.250.2", ONPREM, withdraw=True)
    assert send(i, gone, b1, "192.168.10.10").dropped


@pytest.mark.parametrize(
    ("endpoint", "peer", "field", "status"),
    [
        (("blue", "b1"), PEER, "bgp", 400),  # a vm holds no session
        (
            ("blue", "v1"),
            replace(PEER, peer_ip=ipaddress.IPv4Address("10.0.0.1")),
            "bgp.peer_ip",
            400,
        ),
        (("blue", "v1"), replace(PEER, local_ip=PEER.peer_ip), "bgp.local_ip", 400),
        (("blue", "v1"), replace(PEER, peer_asn=64512), "bgp.peer_asn", 400),  # the VPC's own
        # reserved AS numbers (found by a review): 0, AS_TRANS, 65535
        (("blue", "v1"), replace(PEER, peer_asn=0), "bgp.peer_asn", 400),
        (("blue", "v1"), replace(PEER, peer_asn=23456), "bgp.peer_asn", 400),
        (("blue", "v1"), replace(PEER, peer_asn=65535), "bgp.peer_asn", 400),
    ],
)
def test_a_bad_bgp_peer_names_its_field(
    endpoint: tuple[str, str], peer: BgpPeer, field: str, status: int
) -> None:
    i = world()
    with pytest.raises(IntentError) as info:
        ops.set_bgp(i, i.endpoints[endpoint], peer)
    assert (info.value.field, info.value.status) == (field, status)


def test_a_router_address_serves_one_endpoint_of_the_shard() -> None:
    i = world()
    add_vm(i, "green", "v3", "10.3.0.5", "hv1", kind="interconnect")
    with pytest.raises(IntentError) as info:
        ops.set_bgp(i, i.endpoints[("green", "v3")], PEER)
    assert (info.value.field, info.value.status) == ("bgp.peer_ip", 409)
    v1 = i.endpoints[("blue", "v1")]
    assert ops.set_bgp(i, v1, PEER) == v1  # its own address again: fine
    assert ops.set_bgp(i, v1, None).bgp is None


def test_a_router_address_is_never_the_shards_side_of_another_session() -> None:
    """Found by a review: a session whose shard address was another session's router (or
    the reverse) was taken; the speaker would answer for the router's address."""
    i = world()
    add_vm(i, "green", "v3", "10.3.0.5", "hv1", kind="interconnect")
    v3 = i.endpoints[("green", "v3")]
    mine = ipaddress.IPv4Address("169.254.250.5")
    for bad_peer, field in (
        (BgpPeer(65002, mine, PEER.peer_ip), "bgp.local_ip"),  # its shard side: v1's router
        (BgpPeer(65002, PEER.local_ip, mine), "bgp.peer_ip"),  # its router: v1's shard side
    ):
        with pytest.raises(IntentError) as info:
            ops.set_bgp(i, v3, bad_peer)
        assert (info.value.field, info.value.status) == (field, 409)
        assert i.endpoints[("green", "v3")].bgp is None
    shared = BgpPeer(65002, ipaddress.IPv4Address("169.254.250.6"), PEER.local_ip)
    assert ops.set_bgp(i, v3, shared).bgp == shared  # one shard address for many: fine


@pytest.mark.parametrize("asn", [0, 23456, 65535])
def test_a_vpc_with_a_reserved_as_number_is_refused(asn: int) -> None:
    i = world()
    with pytest.raises(IntentError) as info:
        ops.new_vpc(i, D, "ctl1", "aqua", [], None, asn)
    assert (info.value.field, info.value.status) == ("asn", 400)
    assert "aqua" not in i.vpcs


def test_the_rest_edge_answers_a_reserved_as_number_with_a_400_naming_the_field(
    tmp_path: pathlib.Path,
) -> None:
    s = shard(tmp_path)
    handlers = ControllerApi(s, "t", lambda vpc: None)
    api = Api(handlers.routes(), handlers.guard)

    def call(method: str, path: str, body: dict[str, Any]) -> Any:
        headers = {"Authorization": "Bearer t", "Content-Type": "application/json"}
        req = Request.blank(path, method=method, headers=headers, body=json.dumps(body).encode())
        return req.get_response(api)

    before = s.intent.endpoints[("blue", "v1")]
    bad_peer = {"peer_asn": 23456, "peer_ip": "169.254.250.2", "local_ip": "169.254.250.1"}
    answer = call("PUT", "/v1/vpcs/blue/endpoints/v1/bgp", bad_peer)
    assert (answer.status_int, answer.json["field"]) == (400, "bgp.peer_asn"), answer.json
    answer = call("POST", "/v1/vpcs", {"name": "aqua", "asn": 65535})
    assert (answer.status_int, answer.json["field"]) == (400, "asn"), answer.json
    assert s.intent.endpoints[("blue", "v1")] == before and "aqua" not in s.intent.vpcs


def test_the_bgp_peer_and_asn_survive_the_store_form() -> None:
    i = world()
    v1 = i.endpoints[("blue", "v1")]
    assert Endpoint.from_json(v1.to_json()) == v1
    assert v1.to_json()["bgp"] == {
        "peer_asn": 65001, "peer_ip": "169.254.250.2", "local_ip": "169.254.250.1",
    }  # fmt: skip
    assert "bgp" not in i.endpoints[("blue", "b1")].to_json()
    assert i.vpcs["blue"].to_json()["asn"] == 64512
    assert [e.name for e in i.bgp_endpoints()] == ["v1"]
    i.drop("endpoint", "blue/v1")
    assert i.bgp_endpoints() == []


def test_a_restarted_shard_keeps_its_learned_routes_stale_until_announced_again() -> None:
    wanted = bgp.sessions(world())
    table = bgp.learn({}, "169.254.250.2", ONPREM, withdraw=False)
    table = bgp.learn(table, "169.254.250.2", "172.16.0.0/16", withdraw=False, med=50)
    kept = bgp.restored(bgp.to_text(table))
    assert {p: (r.med, r.stale) for p, r in kept["169.254.250.2"].items()} == {
        ONPREM: (None, True),
        "172.16.0.0/16": (50, True),
    }
    # still published while stale: the hosts keep forwarding
    assert bgp.dynamic_routes(wanted, kept) == bgp.dynamic_routes(wanted, table)
    again = bgp.learn(kept, "169.254.250.2", ONPREM, withdraw=False)  # the router is back
    swept = bgp.sweep(again)
    assert [d.prefix for d in bgp.dynamic_routes(wanted, swept)["blue"]] == [ONPREM]
    assert bgp.sweep(kept) == {}
    assert bgp.restored("not json") == bgp.restored('{"x": 1}') == bgp.restored(None) == {}


def peered(imports: bool) -> Intent:
    """world() plus red (r1 on hv3), peered with blue: blue exports its custom routes, red
    imports them if ``imports``."""
    i = world()
    add_vpc(i, D, "ctl1", "red", "10.2.0.0/24")
    add_vm(i, "red", "r1", "10.2.0.11", "hv3")
    peer(i, "blue", "red", {"custom_routes": True})
    peer(i, "red", "blue", import_custom_routes=imports)
    return i


def published(i: Intent, table: bgp.LearnedTable) -> tuple[Any, Any, Any]:
    """(federation views, peering states, dynamic routes) as a shard holding ``i`` has them."""
    owner = dict.fromkeys(i.vpcs, "ctl1")
    dynamic = bgp.dynamic_routes(bgp.sessions(i), table)
    vs = {v: federation_view(i, "ctl1", v, dynamic.get(v, ())) for v in i.vpcs}
    return vs, statuses(i, vs, owner), dynamic


def test_a_peer_importing_custom_routes_takes_the_dynamic_route_straight_to_its_host() -> None:
    i = peered(imports=True)
    table = bgp.learn({}, "169.254.250.2", ONPREM, withdraw=False)
    vs, st, dynamic = published(i, table)
    (exported,) = vs["blue"]["peering/red"]["custom_routes"]
    assert exported == {
        "prefix": ONPREM,
        "priority": 1000,
        "next_hop": "10.1.0.5",
        "kind": "dynamic",
    }
    (route,) = [r for r in effective_routes(i, "red", st, vs) if r["prefix"] == ONPREM]
    assert (route["kind"], route["origin"], route["next_hop"], route["installed"]) == (
        "dynamic", "peer:blue", "10.1.0.5", True,
    )  # fmt: skip
    # red's host sends to v1's host with blue's VNI, no hop in between
    pub = desired_streams(i, st, G, 0.0, dynamic=dynamic)
    ofports = {**OFPORTS, ("red", "r1"): 13}
    r1, v1 = i.endpoints[("red", "r1")], i.endpoints[("blue", "v1")]
    switch = load(compile_host(host_view(i, pub, "hv3", ofports)[0]))
    pkt = {
        "eth_src": r1.mac,
        "eth_dst": gateway_mac(i.vpcs["red"].vni),
        "eth_type": 0x0800,
        "ipv4_src": str(r1.ip),
        "ipv4_dst": "192.168.10.10",
        "ip_proto": 6,
        "ip_ttl": 64,
    }
    (out,) = switch.trace(pkt, in_port=13).outputs
    assert (out.port, out.packet["tun_ipv4_dst"]) == (TUNNEL_PORT, str(i.hosts["hv1"].underlay_ip))
    assert (out.packet["tunnel_id"], out.packet["eth_dst"]) == (i.vpcs["blue"].vni, v1.mac)
    # and blue's router learns red's subnet, so that replies find their way back
    (s,) = bgp.sessions(i, st, vs).values()
    assert s.announce == ("10.1.0.0/24", "10.1.1.0/24", "10.2.0.0/24")


def test_a_peer_not_importing_sees_the_route_refused_and_is_not_announced() -> None:
    i = peered(imports=False)
    table = bgp.learn({}, "169.254.250.2", ONPREM, withdraw=False)
    vs, st, _ = published(i, table)
    (route,) = [r for r in effective_routes(i, "red", st, vs) if r["prefix"] == ONPREM]
    assert (route["installed"], route["imported"]) == (False, False)
    (s,) = bgp.sessions(i, st, vs).values()
    assert s.announce == ("10.1.0.0/24", "10.1.1.0/24")


def test_the_bgp_status_of_a_vpc() -> None:
    i = world()
    table = bgp.learn({}, "169.254.250.2", ONPREM, withdraw=False, med=7)
    wanted = bgp.sessions(i)

    def routes(t: bgp.LearnedTable) -> tuple[bgp.DynamicRoute, ...]:
        return bgp.dynamic_routes(wanted, t).get("blue", ())

    (s,) = bgp.status("blue", wanted, table, {"169.254.250.2"}, routes(table))
    assert (s["endpoint"], s["established"], s["announced_next_hop"]) == ("v1", True, "10.1.0.1")
    assert s["learned"] == [{"prefix": ONPREM, "med": 7, "stale": False, "accepted": True}]
    assert bgp.status("green", wanted, table, (), ()) == []
    inside = bgp.learn(table, "169.254.250.2", "10.1.0.128/25", withdraw=False)
    (s,) = bgp.status("blue", wanted, inside, (), routes(inside))
    assert [(r["prefix"], r["accepted"]) for r in s["learned"]] == [
        ("10.1.0.128/25", False), (ONPREM, True),
    ]  # fmt: skip


def test_a_burst_of_updates_is_one_table_change_in_order() -> None:
    burst = [
        bgp.Update("169.254.250.2", ONPREM, withdraw=False),
        bgp.Update("169.254.250.2", "172.16.0.0/16", withdraw=False, med=5),
        bgp.Update("169.254.250.2", ONPREM, withdraw=True),
    ]
    table = bgp.apply({}, burst)
    assert table == {"169.254.250.2": {"172.16.0.0/16": bgp.Learned("172.16.0.0/16", 5)}}
    assert bgp.apply(table, [bgp.Update("169.254.250.2", "172.16.0.0/16", True)]) == {}


def test_a_router_cannot_take_a_peers_subnets_special_ranges_or_the_default_in_halves() -> None:
    """Found by a review: only 0.0.0.0/0 and the VPC's own subnets were refused, so a router
    announcing a peer VPC's subnet (or a more specific one) won as a local route and took the
    VPC's traffic to that peer on-prem."""
    wanted = bgp.sessions(world())
    announced = [
        "10.2.0.0/24", "10.2.0.128/25",  # what the peer exports to blue: refused
        "0.0.0.0/1", "128.0.0.0/1", "169.254.169.254/32", "224.0.0.0/4", "127.0.0.0/8",
        ONPREM, "10.2.1.0/24",  # on-prem's own, beside the peer's: kept
    ]  # fmt: skip
    table = bgp.apply({}, [bgp.Update("169.254.250.2", p, False) for p in announced])
    peers = {"blue": ["10.2.0.0/24"]}
    (blue,) = bgp.dynamic_routes(wanted, table, peers).values()
    assert sorted(d.prefix for d in blue) == ["10.2.1.0/24", ONPREM]


def test_a_router_announcing_more_than_the_limit_is_cut_at_it() -> None:
    limit = bgp.MAX_ROUTES_PER_ROUTER
    flood = [
        bgp.Update("169.254.250.2", f"{11 + k // 65536}.{k // 256 % 256}.{k % 256}.0/24", False)
        for k in range(limit + 50)
    ]
    table = bgp.apply({}, flood)
    assert len(table["169.254.250.2"]) == limit
    # a withdrawal makes room, and a known prefix is still updated at the limit
    first, late = flood[0].prefix, flood[-1].prefix
    table = bgp.apply(table, [bgp.Update("169.254.250.2", first, False, med=5)])
    assert table["169.254.250.2"][first].med == 5
    table = bgp.apply(table, [bgp.Update("169.254.250.2", first, True)])
    table = bgp.apply(table, [bgp.Update("169.254.250.2", late, False)])
    assert late in table["169.254.250.2"] and len(table["169.254.250.2"]) == limit
