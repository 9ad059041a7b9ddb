"""An OHC follows only what its local endpoints need (limited connectivity information)."""

from __future__ import annotations

from ipaddress import ip_address

from meshpeer.protocol import ServiceName
from meshpeer.protocol.messages import MAX_DST, parse_channel_subscribe
from ohc.offload import busy_sides
from ohc.subscriptions import Sub, wanted
from tests.support.peering import peering_object

CTL1, CTL2 = "http://ctl1:8080", "http://ctl2:8080"
URLS = {"blue": CTL1, "green": CTL1, "red": CTL2}


def ep(vpc: str, name: str) -> dict[str, object]:
    return {"vpc": vpc, "name": name}


peer = peering_object


def test_only_local_vpcs_and_their_active_peers() -> None:
    endpoints = [{"blue.b1": ep("blue", "b1")}, {}]
    peerings = {
        "blue": {"red": peer("red", CTL2, "p-1", "g-blue-red")},
        "green": {"red": peer("red", CTL2, "p-9", "g-green-red")},  # no green endpoint here
    }
    subs = wanted("hv1", [CTL1, CTL2], URLS, endpoints, peerings, "tok")
    assert subs[Sub(CTL2, ServiceName.DESTINATION, "red", "p-1", "hv1")] == "g-blue-red"
    assert {s.key for s in subs if s.is_peer} == {"red"}
    assert all(s.policy != "p-9" for s in subs)  # green's peer is never asked for
    assert {(s.service, s.key) for s in subs if not s.is_peer} == {
        (ServiceName.ENDPOINT, "hv1"),
        (ServiceName.PEERING, "blue"),
        (ServiceName.DESTINATION, "blue"),
        (ServiceName.FORWARDING, "blue"),
        (ServiceName.LOADBALANCER, "blue"),
    }
    assert sum(1 for s in subs if s.service == ServiceName.ENDPOINT) == 2  # one per shard


def test_last_endpoint_gone_drops_the_vpc_and_its_peers() -> None:
    peerings = {"blue": {"red": peer("red", CTL2, "p-1", "g")}}
    subs = wanted("hv1", [CTL1, CTL2], URLS, [{}], peerings, "tok")
    assert {s.service for s in subs} == {ServiceName.ENDPOINT}


def test_malformed_peer_entry_is_ignored() -> None:
    peerings = {"blue": {"red": {"peer_vpc": "red"}, "pink": peer("pink", CTL2, "p-2", "g")}}
    subs = wanted("hv1", [CTL1], URLS, [{"x": ep("blue", "b1")}], peerings, "tok")
    assert {s.key for s in subs if s.is_peer} == {"pink"}


def test_a_side_through_gateways_follows_no_peer_destinations() -> None:
    endpoints = [{"blue.b1": ep("blue", "b1"), "green.g1": ep("green", "g1")}]
    via = peer("red", CTL2, "p-1", "g-blue-red") | {"forwarding": "gateway"}
    peerings = {"blue": {"red": via}}
    subs = wanted("hv1", [CTL1], URLS, endpoints, peerings, "tok")
    assert {s.service for s in subs if s.is_peer} == {
        ServiceName.FORWARDING,
        ServiceName.LOADBALANCER,
    }
    # green follows the same service set directly: the destinations are needed after all
    peerings["green"] = {"red": peer("red", CTL2, "p-1", "g-green-red")}
    subs = wanted("hv1", [CTL1], URLS, endpoints, peerings, "tok")
    assert Sub(CTL2, ServiceName.DESTINATION, "red", "p-1", "hv1") in subs


def test_a_gateway_follows_what_it_relays_for_and_nothing_else() -> None:
    endpoints = [{"relay/blue": {"vpc": "blue", "relay": True}}]
    via = peer("red", CTL2, "p-1", "g-blue-red") | {"forwarding": "gateway"}
    subs = wanted("gw1", [CTL1], URLS, endpoints, {"blue": {"red": via}}, "tok")
    assert set(subs) == {
        Sub(CTL1, ServiceName.ENDPOINT, "gw1"),
        Sub(CTL1, ServiceName.PEERING, "blue", None, "gw1"),
        Sub(CTL2, ServiceName.DESTINATION, "red", "p-1", "gw1"),
    }
    assert subs[Sub(CTL2, ServiceName.DESTINATION, "red", "p-1", "gw1")] == "g-blue-red"


def test_a_peer_shards_streams_keep_their_name_when_its_leader_moves() -> None:
    """A peering names where the peer's shard leads now (a replica's URL); the host follows
    the same streams under the directory's URL, so a failover changes no subscription (its
    objects stay: fail static) and the channel finds the leader (docs/decisions.md)."""
    from meshpeer.directory import parse_directory

    b = "http://ctl2:8081"
    directory = parse_directory(
        {
            "shards": {
                "ctl1": {"url": CTL1, "vni_range": [1, 9]},
                "ctl2": {"url": CTL2, "vni_range": [10, 19], "replicas": [CTL2, b]},
            }
        },
        secrets=False,
    )
    assert directory.replica_urls(b) == directory.replica_urls(CTL2) == (CTL2, b)
    assert directory.replica_urls(CTL1) == (CTL1,) and directory.canonical_url(b) == CTL2
    endpoints = [{"blue.b1": ep("blue", "b1")}]

    def subs(at: str) -> set[Sub]:
        peerings = {"blue": {"red": peer("red", at, "p-1", "g-blue-red")}}
        found = wanted(
            "hv1", [CTL1, CTL2], URLS, endpoints, peerings, "tok", directory.canonical_url
        )
        return set(found)

    assert subs(b) == subs(CTL2)
    assert Sub(CTL2, ServiceName.DESTINATION, "red", "p-1", "hv1") in subs(b)


def test_an_on_demand_side_follows_its_busy_pairs_destinations_only() -> None:
    """docs/gateways.md, on-demand: no peer destination while no pair is busy; then the
    peer's destination stream narrowed to the busy addresses with the grant the host's shard
    minted for them (never the peering's), whole again if another local side follows the peer
    directly."""
    endpoints = [{"blue.b1": ep("blue", "b1"), "green.g1": ep("green", "g1")}]
    on_demand = peer("red", CTL2, "p-1", "g-blue-red") | {"forwarding": "on-demand"}
    peerings = {"blue": {"red": on_demand}}
    dest = Sub(CTL2, ServiceName.DESTINATION, "red", "p-1", "hv1")
    subs = wanted("hv1", [CTL1], URLS, endpoints, peerings, "tok")
    assert dest not in subs and Sub(CTL2, ServiceName.FORWARDING, "red", "p-1", "hv1") in subs
    busy = {("blue", "red"): ({ip_address("10.2.0.5"), ip_address("10.2.0.9")}, "g-dst")}
    subs = wanted("hv1", [CTL1], URLS, endpoints, peerings, "tok", offloaded=busy)
    assert subs[dest] == "g-dst"
    (got,) = (s for s in subs if s == dest)
    assert got.only == frozenset({"10.2.0.5", "10.2.0.9"})
    # another local VPC sends to red directly: the whole stream
    peerings["green"] = {"red": peer("red", CTL2, "p-1", "g-green-red")}
    subs = wanted("hv1", [CTL1], URLS, endpoints, peerings, "tok", offloaded=busy)
    (got,) = (s for s in subs if s == dest)
    assert got.only is None and subs[dest] == "g-green-red"


def test_an_on_demand_side_with_more_busy_pairs_than_a_filter_names_follows_max_dst() -> None:
    """Review gw2, G1: 257 busy addresses made a destination filter the shard refuses (400),
    which sank every subscription of the same channel request. The filter, the report and so
    the grant name at most MAX_DST of them (the first in address order); the rest stay on the
    gateways."""
    endpoints = [{"blue.b1": ep("blue", "b1")}]
    peerings = {"blue": {"red": peer("red", CTL2, "p-1", "g") | {"forwarding": "on-demand"}}}
    busy = [f"10.2.{i // 250}.{i % 250 + 1}" for i in range(MAX_DST + 44)]
    offloaded = {("blue", "red"): ({ip_address(a) for a in busy}, "g-dst")}
    subs = wanted("hv1", [CTL1], URLS, endpoints, peerings, "tok", offloaded=offloaded)
    (dest,) = (s for s in subs if s.service == ServiceName.DESTINATION and s.key == "red")
    assert dest.only is not None and len(dest.only) == MAX_DST
    entry = {"sub": 1, "service": "destination", "key": "red", "policy": "p-1", "host": "hv1"}
    parse_channel_subscribe({**entry, "dst": sorted(dest.only)}, "subscribe[0]")  # taken
    pairs = frozenset(("blue", "red", a) for a in busy)
    (reported,) = busy_sides(pairs).values()
    assert len(reported) == MAX_DST and reported <= {str(ip_address(a)) for a in busy}
