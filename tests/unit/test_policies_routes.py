"""Route conflict rules: local wins, nothing imported lands inside a local subnet, determinism."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.overlap import Network, subnet_of
from policies.routes import (
    Lookup,
    PeerRoutes,
    Route,
    RouteDecision,
    RouteKind,
    decide_routes,
    installed_routes,
    resolve_routes,
)


def r(prefix: str, kind: RouteKind, origin: str, priority: int = 1000, hop: str = "") -> Route:
    return Route(ip_network(prefix), kind, origin, hop, priority)


def decision(decisions: tuple[RouteDecision, ...], route: Route) -> RouteDecision:
    (found,) = [d for d in decisions if d.route == route]
    return found


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_imported_route_inside_local_subnet_is_not_imported(family: str) -> None:
    subnet, inner, outer = (
        ("10.0.0.0/16", "10.0.5.0/24", "10.0.0.0/8")
        if family == "v4"
        else ("fd00:1::/48", "fd00:1:0:5::/64", "fd00::/16")
    )
    local = [r(subnet, "subnet", "blue")]
    same = r(subnet, "static", "red", priority=0)
    inside = r(inner, "dynamic", "red")
    wider = r(outer, "static", "green")
    out = resolve_routes(local, [same, inside, wider])
    for route in (same, inside):
        d = decision(out, route)
        assert (d.installed, d.imported, d.reason, d.winner) == (
            False,
            False,
            "inside-local-subnet",
            local[0],
        )
    assert decision(out, wider).imported  # wider routes coexist: longest prefix match decides
    assert decision(out, local[0]).installed
    assert not decision(out, local[0]).imported


def test_local_custom_route_beats_imported_of_same_prefix() -> None:
    onprem = r("192.168.0.0/16", "dynamic", "blue", priority=5000, hop="router:onprem-blue")
    peer_subnet = r("192.168.0.0/16", "subnet", "red")
    out = resolve_routes([onprem], [peer_subnet])
    assert decision(out, onprem).installed
    d = decision(out, peer_subnet)
    assert (d.installed, d.reason, d.winner) == (False, "local-preferred", onprem)


def test_between_imported_routes_priority_then_origin_name() -> None:
    a = r("2001:db8::/32", "dynamic", "red", priority=200)
    b = r("2001:db8::/32", "static", "green", priority=100)
    c = r("2001:db8::/32", "static", "amber", priority=100)
    subnet = r("2001:db8::/32", "subnet", "zebra")
    out = resolve_routes([], [a, b, c])
    assert installed_routes(out) == (c,)
    assert {decision(out, x).reason for x in (a, b)} == {"lower-preference"}
    assert installed_routes(resolve_routes([], [a, b, c, subnet])) == (subnet,)


def test_between_local_routes_subnet_then_priority_then_static_before_dynamic() -> None:
    subnet = r("10.0.0.0/24", "subnet", "blue")
    static = r("10.0.0.0/24", "static", "blue", priority=100)
    dynamic = r("10.0.0.0/24", "dynamic", "blue", priority=100)
    cheap = r("10.0.0.0/24", "dynamic", "blue", priority=10)
    assert installed_routes(resolve_routes([static, dynamic, subnet], [])) == (subnet,)
    assert installed_routes(resolve_routes([static, dynamic], [])) == (static,)
    assert installed_routes(resolve_routes([static, dynamic, cheap], [])) == (cheap,)


def test_different_prefixes_and_families_coexist() -> None:
    routes = [
        r("0.0.0.0/0", "static", "blue", hop="igw"),
        r("::/0", "static", "blue", hop="igw"),
        r("10.0.0.0/16", "subnet", "blue"),
    ]
    imported = [r("10.1.0.0/16", "subnet", "red"), r("fd00:2::/48", "subnet", "red")]
    out = resolve_routes(routes, imported)
    assert all(d.installed for d in out)
    assert [d.route.prefix.version for d in out] == [4, 4, 4, 6, 6]


def test_a_peers_custom_routes_are_imported_only_with_the_flag() -> None:
    local = [r("10.1.0.0/24", "subnet", "plum")]
    subnet = r("10.128.0.0/24", "subnet", "teak")
    onprem = r("10.129.0.0/24", "static", "teak", hop="10.128.0.10")
    out = decide_routes(local, [PeerRoutes((subnet, onprem), import_custom_routes=False)])
    assert installed_routes(out) == (local[0], subnet)
    d = decision(out, onprem)
    assert (d.installed, d.imported, d.reason, d.winner) == (False, False, "not-imported", None)
    out = decide_routes(local, [PeerRoutes((subnet, onprem), import_custom_routes=True)])
    assert installed_routes(out) == (local[0], subnet, onprem)
    assert decide_routes(local, []) == resolve_routes(local, [])


def test_lookup_is_longest_prefix_first() -> None:
    wide = r("10.0.0.0/8", "static", "blue", hop="a")
    narrow = r("10.2.0.0/24", "subnet", "red")
    table = Lookup((wide, narrow))
    assert table.find(ip_address("10.2.0.7")) == narrow
    assert table.find(ip_address("10.3.0.7")) == wide
    assert table.find(ip_address("11.0.0.1")) is None
    assert table.find(ip_address("fd00::1")) is None
    assert table.around([ip_network("10.2.0.0/25")]) == Lookup((wide, narrow))
    assert table.around([ip_network("10.3.0.0/24")]) == Lookup((wide,))


# --- properties --------------------------------------------------------------------------------


@st.composite
def routes(draw: st.DrawFn, kinds: tuple[RouteKind, ...]) -> Route:
    if draw(st.booleans()):
        prefix: Network = IPv4Network(
            (int(ip_address("10.0.0.0")) + draw(st.integers(0, 255)), draw(st.integers(24, 28))),
            False,
        )
    else:
        prefix = IPv6Network(
            (int(ip_address("fd00::")) + draw(st.integers(0, 255)), draw(st.integers(120, 124))),
            False,
        )
    return Route(
        prefix,
        draw(st.sampled_from(kinds)),
        draw(st.sampled_from(["blue", "red", "green"])),
        draw(st.sampled_from(["", "a", "b"])),
        draw(st.sampled_from([0, 100, 1000])),
    )


ALL: tuple[RouteKind, ...] = ("subnet", "static", "dynamic")
local_routes = st.lists(routes(ALL), max_size=6)
peer_routes = st.lists(routes(ALL), max_size=8)


@given(local_routes, peer_routes, st.data())
def test_order_and_duplicates_do_not_matter(
    local: list[Route], imported: list[Route], data: st.DataObject
) -> None:
    expected = resolve_routes(local, imported)
    shuffled_local = data.draw(st.permutations(local + local))
    shuffled_peer = data.draw(st.permutations(imported))
    assert resolve_routes(shuffled_local, shuffled_peer) == expected


@given(local_routes, peer_routes)
def test_effective_table_invariants(local: list[Route], imported: list[Route]) -> None:
    out = resolve_routes(local, imported)
    table = installed_routes(out)
    assert len({x.prefix for x in table}) == len(table)  # one route per prefix
    assert {x.prefix for x in local} <= {x.prefix for x in table}  # local prefixes stay local
    local_subnets = [x.prefix for x in local if x.kind == "subnet"]
    for d in out:
        assert d.installed is (d.reason is None) is (d.winner is None)
        if d.imported:
            assert d.route.prefix not in {x.prefix for x in local}
            assert not any(subnet_of(d.route.prefix, s) for s in local_subnets)
    for x in local:
        if x.kind == "subnet" and not any(
            y.kind == "subnet" and y.prefix == x.prefix and y != x for y in local
        ):
            assert x in table
