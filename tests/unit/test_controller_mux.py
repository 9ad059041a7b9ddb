"""Peering manager and multiplexer: ACTIVE needs both sides; one service set per policy."""

from __future__ import annotations

import ipaddress
import json

from meshpeer.controller import intent as ops
from meshpeer.controller.model import Intent
from meshpeer.controller.mux import GrantSettings, desired_streams, must_apply
from meshpeer.controller.peering import ACTIVE, INACTIVE, federation_view, statuses
from meshpeer.protocol import ServiceName
from meshpeer.protocol.grants import verify
from meshpeer.protocol.messages import StreamId
from tests.unit.controller_fixtures import add_ilb, add_vm, add_vpc, directory, peer, views

D = directory(ctl1=["blue", "red", "green"] + [f"p{i}" for i in range(100)])
G = GrantSettings(D, ttl=600)
OWNER = dict.fromkeys(D.shards["ctl1"].vpcs, "ctl1")


def world() -> Intent:
    i = Intent()
    add_vpc(i, D, "ctl1", "blue", "10.1.0.0/24")
    add_vpc(i, D, "ctl1", "red", "10.2.0.0/24", "fd00:2::/64")
    add_vpc(i, D, "ctl1", "green", "10.3.0.0/24")
    add_vm(i, "blue", "b1", "10.1.0.11", "hv1")
    add_vm(i, "red", "r1", "10.2.0.11", "hv2")
    add_vm(i, "red", "r2", "10.2.0.200", "hv3")
    add_vm(i, "red", "r6", "fd00:2::11", "hv3")
    add_vm(i, "green", "g1", "10.3.0.11", "hv1")
    return i


def state_of(i: Intent) -> dict[tuple[str, str], str]:
    return {k: s.state for k, s in statuses(i, views(i, OWNER), OWNER).items()}


def test_active_only_when_both_sides_configured() -> None:
    i = world()
    peer(i, "blue", "red")
    st = statuses(i, views(i, OWNER), OWNER)[("blue", "to-red")]
    assert st.state == INACTIVE and "has not configured a peering to 'blue'" in st.details
    peer(i, "red", "blue", {"ranges": ["10.2.0.0/25"]})
    assert state_of(i) == {("blue", "to-red"): ACTIVE, ("red", "to-blue"): ACTIVE}
    i.drop("peering", "red/to-blue")
    assert state_of(i) == {("blue", "to-red"): INACTIVE}


def test_unknown_peer_view_is_inactive_and_says_why() -> None:
    i = world()
    peer(i, "blue", "red")
    st = statuses(i, {}, {"red": "ctl2"})[("blue", "to-red")]
    assert st.state == INACTIVE and "shard 'ctl2'" in st.details


def test_not_transitive() -> None:
    i = world()
    for a, b in (("blue", "red"), ("red", "blue"), ("red", "green"), ("green", "red")):
        peer(i, a, b)
    pub = desired_streams(i, statuses(i, views(i, OWNER), OWNER), G, now=0.0)
    peers_of_blue = pub.streams[StreamId(ServiceName.PEERING, "blue", None, "hv1")]
    assert set(peers_of_blue) == {"red"}  # green is reachable from red, never from blue


def test_policy_filters_destinations_forwarding_and_ilbs() -> None:
    i = world()
    add_ilb(i, "red", "lbin", "10.2.0.100", {"r1": 3, "r2": 1})
    add_ilb(i, "red", "lbout", "10.2.0.150", {"r1": 1})
    peer(i, "blue", "red")
    peer(i, "red", "blue", {"ranges": ["10.2.0.0/25"]})
    st = statuses(i, views(i, OWNER), OWNER)
    pub = desired_streams(i, st, G, now=0.0)
    pid = st[("blue", "to-red")].peer_policy_id
    assert pid == i.peerings[("red", "to-blue")].export.policy_id
    dest = pub.streams[StreamId(ServiceName.DESTINATION, "red", pid)]
    assert set(dest) == {"r1"}  # r2 (.200) and the IPv6 r6 are outside 10.2.0.0/25
    assert dest["r1"]["vni"] == i.vpcs["red"].vni and dest["r1"]["host_ip"]
    fwd = pub.streams[StreamId(ServiceName.FORWARDING, "red", pid)]
    assert [o["prefix"] for o in fwd.values()] == ["10.2.0.0/25"]
    lbs = pub.streams[StreamId(ServiceName.LOADBALANCER, "red", pid)]
    assert set(lbs) == {"lbin"}
    assert {b["endpoint"]: b["weight"] for b in lbs["lbin"]["backends"]} == {"r1": 3, "r2": 1}
    own = pub.streams[StreamId(ServiceName.DESTINATION, "red", None)]
    assert set(own) == {"r1", "r2", "r6"}


def test_hundred_peers_three_policies_three_service_sets() -> None:
    i = world()
    exports = [None, {"ranges": ["10.1.0.0/25"]}, {"private_only": True, "ranges": ["10.1.0.0/26"]}]
    for n in range(100):
        name = f"p{n}"
        add_vpc(i, D, "ctl1", name, f"10.{100 + n // 200}.{n % 200}.0/24")
        peer(i, "blue", name, exports[n % 3])
        peer(i, name, "blue")
    st = statuses(i, views(i, OWNER), OWNER)
    pub = desired_streams(i, st, G, now=0.0)
    blue_sets = {k: v for k, v in pub.service_sets.items() if k[0] == "blue"}
    assert len(blue_sets) == 3
    assert sorted(len(v) for v in blue_sets.values()) == [33, 33, 34]
    blue_peer_streams = [s for s in pub.streams if s.key == "blue" and s.policy is not None]
    assert len(blue_peer_streams) == 3 * 3  # destination, forwarding, load balancer per policy


def test_peering_stream_grants_verify_for_that_host_only() -> None:
    i = world()
    peer(i, "blue", "red")
    peer(i, "red", "blue")
    st = statuses(i, views(i, OWNER), OWNER)
    pub = desired_streams(i, st, G, now=1000.0)
    entry = pub.streams[StreamId(ServiceName.PEERING, "blue", None, "hv1")]["red"]
    assert entry["controller"] == D.url_of("red") and entry["peer_vni"] == i.vpcs["red"].vni
    g = verify(
        entry["grant"],
        D.grant_keys,
        1000.0,
        target_vpc="red",
        policy_id=entry["policy_id"],
        host="hv1",
    )
    assert g.subscriber_vpc == "blue" and g.expires_at >= 1000.0 + 600
    again = desired_streams(i, st, G, now=1100.0)
    assert again.streams == pub.streams  # same ttl bucket: no churn


def test_endpoint_meta_service_lists_what_is_on_a_host() -> None:
    pub = desired_streams(world(), {}, G, now=0.0)
    hv1 = pub.streams[StreamId(ServiceName.ENDPOINT, "hv1")]
    assert {o["name"] for o in hv1.values()} == {"b1", "g1"}
    assert hv1["blue.b1"]["gateway"] == "10.1.0.1" and hv1["blue.b1"]["prefix"] == "10.1.0.0/24"
    assert ipaddress.ip_address(hv1["blue.b1"]["ip"]) in ipaddress.ip_network("10.1.0.0/24")


def test_effective_routes_with_origins_and_reasons() -> None:
    from meshpeer.controller import intent as ops
    from meshpeer.controller.routing import effective_routes

    i = world()
    i.put(
        ops.new_route(
            i,
            "red",
            "onprem",
            ipaddress.ip_network("192.168.0.0/16"),
            ipaddress.ip_address("10.2.0.11"),
            100,
        )
    )
    i.put(
        ops.new_route(
            i,
            "blue",
            "onprem",
            ipaddress.ip_network("192.168.0.0/16"),
            ipaddress.ip_address("10.1.0.11"),
            100,
        )
    )
    peer(i, "blue", "red")
    peer(i, "red", "blue", {"custom_routes": True})
    vs = views(i, OWNER)
    st = statuses(i, vs, OWNER)
    routes = {(r["prefix"], r["origin"]): r for r in effective_routes(i, "blue", st, vs)}
    assert routes[("10.1.0.0/24", "local")]["installed"]
    assert routes[("10.2.0.0/24", "peer:red")]["imported"] is True
    assert routes[("fd00:2::/64", "peer:red")]["imported"] is True
    onprem = routes[("192.168.0.0/16", "peer:red")]
    assert onprem["imported"] is False and "import_custom_routes" in onprem["reason"]
    blue_peering = i.peerings[("blue", "to-red")]
    i.put(type(blue_peering)(blue_peering.vpc, blue_peering.name, "red", blue_peering.export, True))
    routes = {(r["prefix"], r["origin"]): r for r in effective_routes(i, "blue", st, vs)}
    onprem = routes[("192.168.0.0/16", "peer:red")]
    assert onprem["imported"] is False and "local route to the same prefix wins" in onprem["reason"]


def test_who_must_apply_a_write_before_it_is_programmed() -> None:
    """An endpoint: its own host (registered or not). An ACTIVE peering blue -> red: blue's
    hosts through their peering stream and red's hosts through blue's services under blue's
    policy (the way back); an INACTIVE one or a deleted one: blue's hosts only."""
    i = world()
    r7 = ops.new_endpoint(i, "red", "r7", "vm", ipaddress.ip_address("10.2.0.77"), None, "hv7", [])
    i.put(r7)
    vs = views(i, OWNER)
    assert must_apply(i, {}, vs, r7, deleted=False) == {
        StreamId(ServiceName.ENDPOINT, "hv7"): frozenset({"hv7"})
    }
    assert must_apply(i, {}, vs, r7, deleted=True) == {}  # hv7 never registered
    peer(i, "blue", "red")
    blue_red = i.peerings[("blue", "to-red")]
    own = {StreamId(ServiceName.PEERING, "blue", None, "hv1"): frozenset({"hv1"})}
    states = statuses(i, views(i, OWNER), OWNER)
    assert must_apply(i, states, vs, blue_red, deleted=False) == own  # INACTIVE
    peer(i, "red", "blue")
    vs = views(i, OWNER)
    states = statuses(i, vs, OWNER)
    back = {
        StreamId(s, "blue", blue_red.export.policy_id): frozenset({"hv2", "hv3", "hv7"})
        for s in (ServiceName.DESTINATION, ServiceName.FORWARDING, ServiceName.LOADBALANCER)
    }
    assert must_apply(i, states, vs, blue_red, deleted=False) == own | back
    assert must_apply(i, states, vs, blue_red, deleted=True) == own
    # A shard that does not own red reads red's hosts from red's federation view.
    assert federation_view(i, "ctl2", "red")["vpc"]["hosts"] == ["hv2", "hv3", "hv7"]


def test_a_peer_views_host_list_is_names_only_and_bounded() -> None:
    from meshpeer.controller.peering import MAX_VIEW_HOSTS, VPC_OBJ, view_hosts

    view = {VPC_OBJ: {"hosts": ["hv1", 7, "bad name", {"x": 1}, "hv2"]}}
    assert view_hosts(view) == ["hv1", "hv2"]
    assert view_hosts({VPC_OBJ: {"hosts": "hv1"}}) == []
    many = {VPC_OBJ: {"hosts": [f"h{i}" for i in range(MAX_VIEW_HOSTS + 10)]}}
    assert len(view_hosts(many)) == MAX_VIEW_HOSTS


def test_an_ilbs_spillover_backends_travel_as_the_peer_exports_them() -> None:
    """Blue's ILB lists red's r1 and r2; red exports 10.2.0.0/25 to blue: only r1 (.11) is in
    the load-balancer object, with its own VPC's VNI and host, and an export change of red's
    side reaches it (a write in red touches blue's streams too)."""
    i = world()
    peer(i, "blue", "red")
    peer(i, "red", "blue")
    add_ilb(i, "blue", "web", "10.1.0.100", {"b1": 1}, {("red", "r1"): 2, ("red", "r2"): 1})
    i.drop("peering", "red/to-blue")  # a later change of red's export: r2 left out
    peer(i, "red", "blue", {"ranges": ["10.2.0.0/25"]})
    pub = desired_streams(i, statuses(i, views(i, OWNER), OWNER), G, now=0.0)
    web = pub.streams[StreamId(ServiceName.LOADBALANCER, "blue", None)]["web"]
    (r1,) = web["spillover"]
    assert (r1["vpc"], r1["endpoint"], r1["weight"]) == ("red", "r1", 2)
    assert r1["vni"] == i.vpcs["red"].vni and r1["host_ip"] and r1["healthy"] is True
    assert i.spilling_into("red") == {"blue"}
    # blue no longer exports the VIP to red: red's hosts would not know it, so none is listed
    i.drop("peering", "blue/to-red")
    peer(i, "blue", "red", {"ranges": ["10.1.0.128/25"]})
    pub = desired_streams(i, statuses(i, views(i, OWNER), OWNER), G, now=0.0)
    web = pub.streams[StreamId(ServiceName.LOADBALANCER, "blue", None)]["web"]
    assert web.get("spillover", []) == []


def test_a_third_vpcs_hosts_get_no_address_of_a_spillover_backend() -> None:
    """Blue's ILB spills into red's r1; green peers with blue only. What green's hosts follow
    of blue (one stream per export policy, shared by every peer under it) has no IP, MAC, VNI
    or host of r1; red's hosts get r1's name only (they know their own endpoints); blue's own
    stream keeps the full entry (review S2)."""
    i = world()
    for a, b in (("blue", "red"), ("red", "blue"), ("blue", "green"), ("green", "blue")):
        peer(i, a, b)
    add_ilb(i, "blue", "web", "10.1.0.100", {"b1": 1}, {("red", "r1"): 2})
    r1 = i.endpoints[("red", "r1")]
    pub = desired_streams(i, statuses(i, views(i, OWNER), OWNER), G, now=0.0)
    own = pub.streams[StreamId(ServiceName.LOADBALANCER, "blue", None)]["web"]
    assert own["spillover"][0]["mac"] == r1.mac
    to_green = next(p for p in i.peerings_of("blue") if p.peer_vpc == "green")
    shared = pub.streams[StreamId(ServiceName.LOADBALANCER, "blue", to_green.export.policy_id)]
    assert shared["web"]["spillover"] == [{"vpc": "red", "endpoint": "r1"}]
    # green under a policy of its own (a red peer under none of it): nothing of red at all
    i.drop("peering", "blue/to-green")
    peer(i, "blue", "green", {"ranges": ["10.1.0.0/25"]})
    to_green = next(p for p in i.peerings_of("blue") if p.peer_vpc == "green")
    pub = desired_streams(i, statuses(i, views(i, OWNER), OWNER), G, now=0.0)
    alone = pub.streams[StreamId(ServiceName.LOADBALANCER, "blue", to_green.export.policy_id)]
    assert "spillover" not in alone["web"]
    for lbs in (shared, alone):
        text = json.dumps(lbs)
        assert str(r1.ip) not in text and r1.mac not in text and '"hv2"' not in text
