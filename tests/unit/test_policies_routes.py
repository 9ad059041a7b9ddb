"""Route conflict rules: local wins, nothing imported lands inside a local subnet, then the
peering preference, priority, peer id, next hop and the routing-policy hook; determinism."""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.overlap import Network, subnet_of
from policies.routes import (
    DEFAULT_PREFERENCE,
    RULE_OF_RANK,
    Candidate,
    Lookup,
    PeerRoutes,
    Route,
    RouteDecision,
    RouteKind,
    decide_routes,
    installed_routes,
    resolve_routes,
    routing_policy,
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
    assert (decision(out, a).reason, decision(out, a).winner) == ("priority", c)
    assert (decision(out, b).reason, decision(out, b).winner) == ("lower-peer-id", c)
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


def peers(*sides: tuple[int, Route]) -> list[PeerRoutes]:
    """One peer per route, importing its custom routes, at the given preference."""
    return [PeerRoutes((route,), True, pref) for pref, route in sides]


def test_the_higher_peering_preference_wins_over_priority_and_peer_id() -> None:
    cheap = r("192.168.10.0/24", "static", "amber", priority=10, hop="10.1.0.5")
    subnet = r("192.168.10.0/24", "subnet", "beech")
    preferred = r("192.168.10.0/24", "dynamic", "zinc", priority=5000, hop="10.3.0.5")
    out = decide_routes([], peers((100, cheap), (100, subnet), (200, preferred)))
    assert installed_routes(out) == (preferred,)
    for loser in (cheap, subnet):
        d = decision(out, loser)
        assert (d.reason, d.winner, d.preference) == ("peering-preference", preferred, 100)
        assert (d.winner_from_peer, d.winner_preference) == (True, 200)
    assert decision(out, preferred).preference == 200


def test_at_equal_preference_today_s_rules_decide() -> None:
    """The default preference changes nothing: every peer at 100 is what resolve_routes did."""
    a = r("10.9.0.0/24", "static", "teak", priority=100, hop="10.128.0.10")
    b = r("10.9.0.0/24", "static", "vine", priority=100, hop="10.132.0.10")
    c = r("10.9.0.0/24", "static", "alder", priority=1000, hop="10.133.0.10")
    out = decide_routes([], [PeerRoutes((x,), True) for x in (a, b, c)])
    assert out == resolve_routes([], [a, b, c])
    assert installed_routes(out) == (a,)
    assert (decision(out, b).reason, decision(out, c).reason) == ("lower-peer-id", "priority")
    assert PeerRoutes(()).preference == DEFAULT_PREFERENCE


def test_a_local_route_beats_a_peer_at_any_preference() -> None:
    local = r("10.9.0.0/24", "static", "sage", priority=65535, hop="10.131.0.10")
    peer_subnet = r("10.9.0.0/24", "subnet", "teak")
    out = decide_routes([local], peers((65535, peer_subnet)))
    d = decision(out, peer_subnet)
    assert (d.reason, d.winner, d.winner_from_peer, d.winner_preference) == (
        "local-preferred",
        local,
        False,
        None,
    )


def test_subnet_then_priority_then_static_before_dynamic_is_one_rule() -> None:
    subnet = r("10.9.0.0/24", "subnet", "teak")
    static = r("10.9.0.0/24", "static", "alder", priority=0, hop="x")
    dynamic = r("10.9.0.0/24", "dynamic", "alder", priority=0, hop="x")
    out = decide_routes([], peers((100, subnet), (100, static), (100, dynamic)))
    assert installed_routes(out) == (subnet,)
    assert {decision(out, x).reason for x in (static, dynamic)} == {"priority"}
    out = decide_routes([], peers((100, static), (100, dynamic)))
    assert decision(out, dynamic).reason == "priority"


def test_within_one_vpc_the_lower_next_hop_wins() -> None:
    a = r("10.9.0.0/24", "static", "sage", hop="10.131.0.10")
    b = r("10.9.0.0/24", "static", "sage", hop="10.131.0.20")
    out = decide_routes([b, a], [])
    assert installed_routes(out) == (a,)
    assert (decision(out, b).reason, decision(out, b).winner) == ("lower-next-hop", a)
    out = decide_routes([], peers((100, b), (100, a)))
    assert (decision(out, b).reason, decision(out, b).winner) == ("lower-next-hop", a)


def last_one(prefix: Network, ranked: Sequence[Candidate]) -> Candidate:
    return ranked[-1]


def test_the_routing_policy_hook_picks_among_the_winner_s_side() -> None:
    teak = r("10.9.0.0/24", "static", "teak", hop="10.128.0.10")
    vine = r("10.9.0.0/24", "static", "vine", hop="10.132.0.10")
    wren = r("10.9.0.0/24", "static", "wren", priority=2000, hop="10.134.0.10")
    sides = peers((100, teak), (100, vine), (100, wren))
    assert decide_routes([], sides) == decide_routes([], sides, routing_policy)
    out = decide_routes([], sides, last_one)
    assert installed_routes(out) == (wren,)
    for loser in (teak, vine):  # the rules put them above wren: the hook decided
        assert (decision(out, loser).reason, decision(out, loser).winner) == (
            "routing-policy",
            wren,
        )
    # a local route: the hook sees only the local side, local still beats peer
    local = r("10.9.0.0/24", "static", "sage", hop="10.131.0.10")
    out = decide_routes([local], sides, last_one)
    assert installed_routes(out) == (local,)
    assert {decision(out, x).reason for x in (teak, vine, wren)} == {"local-preferred"}


def test_a_routing_policy_must_pick_a_candidate() -> None:
    teak = r("10.9.0.0/24", "static", "teak", hop="10.128.0.10")

    def elsewhere(prefix: Network, ranked: Sequence[Candidate]) -> Candidate:
        return Candidate(r("10.9.0.0/24", "static", "nowhere"), True, 100)

    with pytest.raises(ValueError, match="not a candidate"):
        decide_routes([], peers((100, teak)), elsewhere)


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


# Every peer with a random preference (and import flag); local routes on their own.
peer_sides = st.lists(
    st.tuples(
        st.lists(routes(ALL), max_size=4),
        st.booleans(),
        st.sampled_from([0, DEFAULT_PREFERENCE, 200]),
    ),
    max_size=4,
)


def by_origin(sides: list[tuple[list[Route], bool, int]]) -> list[PeerRoutes]:
    """One PeerRoutes per origin VPC, as the callers build them (a peer's routes are its own)."""
    out: dict[str, PeerRoutes] = {}
    for n, (rs, imports, pref) in enumerate(sides):
        for x in rs:
            origin = f"p{n}{x.origin}"
            y = Route(x.prefix, x.kind, origin, x.next_hop, x.priority)
            old = out.get(origin, PeerRoutes((), imports, pref))
            out[origin] = PeerRoutes((*old.routes, y), old.import_custom_routes, old.preference)
    return list(out.values())


def by_hop(prefix: Network, ranked: Sequence[Candidate]) -> Candidate:
    """A deployment's policy: the last next hop by text, whatever the rules said."""
    return max(ranked, key=lambda c: (c.route.next_hop, c.rank()))


@given(local_routes, peer_sides, st.data(), st.sampled_from([None, by_hop]))
def test_decisions_do_not_depend_on_input_order(
    local: list[Route],
    sides: list[tuple[list[Route], bool, int]],
    data: st.DataObject,
    policy: object,
) -> None:
    hook = by_hop if policy is by_hop else None
    imports = by_origin(sides)
    expected = decide_routes(local, imports, hook)
    shuffled = [
        PeerRoutes(tuple(data.draw(st.permutations(p.routes))), p.import_custom_routes,
                   p.preference)
        for p in data.draw(st.permutations(imports))
    ]  # fmt: skip
    assert decide_routes(data.draw(st.permutations(local + local)), shuffled, hook) == expected


@given(local_routes, peer_sides)
def test_each_loser_names_its_winner_and_the_rule_that_decided(
    local: list[Route], sides: list[tuple[list[Route], bool, int]]
) -> None:
    out = decide_routes(local, by_origin(sides))
    installed = {d.route.prefix: d for d in out if d.installed}
    for d in out:
        if d.installed or d.reason in ("not-imported", "inside-local-subnet"):
            continue
        assert d.winner is not None and d.reason in RULE_OF_RANK
        w = installed[d.route.prefix]  # the winner is the installed route of the prefix
        assert (w.route, w.from_peer, w.preference) == (
            d.winner,
            d.winner_from_peer,
            d.winner_preference,
        )
        lose = Candidate(d.route, d.from_peer, d.preference).rank()
        win = Candidate(w.route, w.from_peer, w.preference).rank()
        first = RULE_OF_RANK.index(d.reason)
        last = len(RULE_OF_RANK) - RULE_OF_RANK[::-1].index(d.reason)
        assert lose[:first] == win[:first]  # tied on every earlier rule
        assert lose[first:last] > win[first:last]  # worse on this one
