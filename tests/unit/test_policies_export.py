"""Export policies: behaviour on IPv4 and IPv6, parsing errors by field path, identity."""

from __future__ import annotations

import json
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

import pytest
from hypothesis import given, reject
from hypothesis import strategies as st

from policies.export import (
    Address,
    ExportPolicy,
    PolicyError,
    parse_export_policy,
    ranges_outside,
)
from policies.overlap import Network, subnet_of


def nets(*cidrs: str) -> tuple[Network, ...]:
    return tuple(ip_network(c) for c in cidrs)


def parse(raw: object) -> ExportPolicy:
    return parse_export_policy(raw, "peerings[2].export")


# --- behaviour ---------------------------------------------------------------------------------


def test_default_exports_every_subnet_but_no_custom_route() -> None:
    for p in (ExportPolicy(), parse(None), parse({})):
        assert p.exports_ip(ip_address("8.8.8.8"))
        assert p.exports_ip(ip_address("2001:db8::1"))
        assert p.exported_subnets(nets("34.1.0.0/24", "fd00::/64")) == nets(
            "34.1.0.0/24", "fd00::/64"
        )
        assert p.exports_route(ip_network("10.0.0.0/8"), is_custom=False)
        assert not p.exports_route(ip_network("10.0.0.0/8"), is_custom=True)


@pytest.mark.parametrize(
    ("ip", "exported"),
    [
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("172.31.255.255", True),
        ("172.32.0.1", False),
        ("192.168.9.9", True),
        ("100.64.0.1", True),
        ("100.128.0.1", False),
        ("34.1.0.5", False),
        ("fd12::1", True),
        ("fc00::1", True),
        ("2001:db8::1", False),
    ],
)
def test_private_only(ip: str, exported: bool) -> None:
    assert ExportPolicy(private_only=True).exports_ip(ip_address(ip)) is exported


def test_private_only_hides_privately_used_public_subnets() -> None:
    p = ExportPolicy(private_only=True)
    subnets = nets("10.0.0.0/24", "34.1.0.0/24", "2001:db8:1::/64", "fd00:1::/64")
    assert p.exported_subnets(subnets) == nets("10.0.0.0/24", "fd00:1::/64")


def test_ipv6_only() -> None:
    p = ExportPolicy(ipv6_only=True)
    assert not p.exports_ip(ip_address("10.0.0.1"))
    assert p.exports_ip(ip_address("2001:db8::1"))
    assert p.exported_subnets(nets("10.0.0.0/24", "2001:db8::/64")) == nets("2001:db8::/64")
    assert not p.exports_prefix(ip_network("0.0.0.0/0"))


@pytest.mark.parametrize(
    ("subnet", "ranges", "expected"),
    [
        ("10.2.0.0/24", ["10.2.0.0/25"], ["10.2.0.0/25"]),
        ("10.2.0.0/24", ["10.0.0.0/8"], ["10.2.0.0/24"]),
        ("10.2.0.0/24", ["10.3.0.0/24"], []),
        ("10.2.0.0/24", ["10.2.0.0/26", "10.2.0.128/26"], ["10.2.0.0/26", "10.2.0.128/26"]),
        ("2001:db8::/64", ["2001:db8::/65"], ["2001:db8::/65"]),
        ("2001:db8::/64", ["2001:db8::/32"], ["2001:db8::/64"]),
        ("2001:db8::/64", ["10.2.0.0/24"], []),
    ],
)
def test_ranges_clip_subnets(subnet: str, ranges: list[str], expected: list[str]) -> None:
    p = parse({"ranges": ranges})
    assert p.exported_subnets(nets(subnet)) == nets(*expected)


def test_prefix_is_exported_only_whole() -> None:
    p = parse({"ranges": ["10.2.0.0/25", "10.2.0.128/25", "2001:db8::/48"]})
    assert p.exports_prefix(ip_network("10.2.0.0/24"))  # adjacent ranges cover it
    assert p.exports_prefix(ip_network("10.2.0.64/26"))
    assert not p.exports_prefix(ip_network("10.2.0.0/23"))
    assert p.exports_prefix(ip_network("2001:db8:0:1::/64"))
    assert not p.exports_prefix(ip_network("2001:db8::/32"))


def test_filters_combine_by_intersection() -> None:
    p = parse({"ranges": ["::/0"], "private_only": True, "ipv6_only": True})
    assert p.exports_ip(ip_address("fd00::1"))
    assert not p.exports_ip(ip_address("10.0.0.1"))  # private but not IPv6
    assert not p.exports_ip(ip_address("2001:db8::1"))  # IPv6 but not private
    q = parse({"ranges": ["10.0.0.0/7"], "private_only": True})  # 10/8 + public 11/8
    assert q.exports_ip(ip_address("10.9.9.9"))
    assert not q.exports_ip(ip_address("11.0.0.1"))


def test_custom_routes_also_pass_range_filters() -> None:
    p = parse({"ranges": ["10.0.0.0/8"], "custom_routes": True})
    assert p.exports_route(ip_network("10.5.0.0/16"), is_custom=True)
    assert not p.exports_route(ip_network("0.0.0.0/0"), is_custom=True)
    assert not p.exports_route(ip_network("192.168.0.0/16"), is_custom=False)


# --- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ("everything", "peerings[2].export"),
        (["10.0.0.0/8"], "peerings[2].export"),
        ({"range": []}, "peerings[2].export.range"),
        ({"private_only": "true"}, "peerings[2].export.private_only"),
        ({"ipv6_only": 1}, "peerings[2].export.ipv6_only"),
        ({"custom_routes": None}, "peerings[2].export.custom_routes"),
        ({"ranges": "10.0.0.0/8"}, "peerings[2].export.ranges"),
        ({"ranges": None}, "peerings[2].export.ranges"),
        ({"ranges": ["10.0.0.0/8", 10]}, "peerings[2].export.ranges[1]"),
        ({"ranges": ["10.0.0.1/8"]}, "peerings[2].export.ranges[0]"),
        ({"ranges": ["10.0.0.1"]}, "peerings[2].export.ranges[0]"),
        ({"ranges": ["fd00::/7"]}, "peerings[2].export.ranges[0]"),
        ({"ranges": ["10.0.0.0/33"]}, "peerings[2].export.ranges[0]"),
        ({"ranges": ["::/0", "10.0.0.0/8"], "ipv6_only": True}, "peerings[2].export.ranges[1]"),
        (
            {"ranges": ["10.0.0.0/8", "8.8.0.0/16"], "private_only": True},
            "peerings[2].export.ranges[1]",
        ),
        ({"ranges": ["2001:db8::/32"], "private_only": True}, "peerings[2].export.ranges[0]"),
    ],
)
def test_invalid_policy_names_the_field(raw: object, field: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse(raw)
    assert info.value.field == field
    assert str(info.value).startswith(field + ": ")


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(PolicyError) as info:
        ExportPolicy(nets("2001:db8::/32", "10.0.0.0/8"), ipv6_only=True)
    assert info.value.field == "ranges[1]"


def test_ranges_are_normalised() -> None:
    p = parse({"ranges": ["fd00::/8", "10.1.0.0/16", "10.0.0.0/16", "10.0.5.0/24", "10.1.0.0/16"]})
    assert p.ranges == nets("10.0.0.0/15", "fd00::/8")
    assert p == parse({"ranges": ["10.0.0.0/15", "fd00::/8"]})


# --- identity ----------------------------------------------------------------------------------


def test_policy_id_follows_effect() -> None:
    default = ExportPolicy()
    assert default.policy_id == parse({"ranges": ["::/0", "0.0.0.0/0"]}).policy_id
    assert default.policy_id != ExportPolicy(custom_routes=True).policy_id
    assert default.policy_id != parse({"ranges": ["0.0.0.0/0"]}).policy_id
    private = ExportPolicy(private_only=True)
    spelled_out = parse(
        {"ranges": ["10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]}
    )
    assert private != spelled_out  # different declarations ...
    assert private.policy_id == spelled_out.policy_id  # ... same effect, one service
    assert ExportPolicy(ipv6_only=True).policy_id == parse({"ranges": ["::/0"]}).policy_id


def test_canonical_is_json_and_id_is_short_hex() -> None:
    p = parse({"ranges": ["10.0.0.0/8"], "custom_routes": True})
    assert json.loads(json.dumps(p.canonical())) == p.canonical()
    assert p.policy_id.startswith("p-")
    assert len(p.policy_id) == 18
    int(p.policy_id[2:], 16)


# --- properties --------------------------------------------------------------------------------


@st.composite
def small_nets(draw: st.DrawFn) -> Network:
    """Ranges crowded into a few small blocks (private, public, ULA, global) so they collide."""
    base, bits = draw(
        st.sampled_from(
            [
                ("10.0.0.0", 32),
                ("11.0.0.0", 32),
                ("100.64.0.0", 32),
                ("fd00::", 128),
                ("2001:db8::", 128),
            ]
        )
    )
    plen = draw(st.integers(bits - 6, bits))
    offset = draw(st.integers(0, 63))
    net_cls = IPv4Network if bits == 32 else IPv6Network
    return net_cls((int(ip_address(base)) + offset, plen), strict=False)


@st.composite
def export_policies(draw: st.DrawFn) -> ExportPolicy:
    ranges = draw(st.lists(small_nets(), max_size=4))
    flags = draw(st.tuples(st.booleans(), st.booleans(), st.booleans()))
    try:
        return ExportPolicy(tuple(ranges), *flags)
    except PolicyError:
        reject()


@given(export_policies())
def test_config_round_trips(p: ExportPolicy) -> None:
    again = parse(json.loads(json.dumps(p.as_config())))
    assert again == p
    assert again.policy_id == p.policy_id


@given(st.lists(small_nets(), min_size=1, max_size=5), st.booleans(), st.data())
def test_policy_id_ignores_order_duplicates_and_nested_ranges(
    ranges: list[Network], custom: bool, data: st.DataObject
) -> None:
    shuffled: list[Network] = list(data.draw(st.permutations(ranges)))
    first = ranges[0]
    nested = ip_network((first.network_address, min(first.prefixlen + 1, first.max_prefixlen)))
    variants: list[list[Network]] = [ranges, shuffled, shuffled + ranges, [*ranges, nested]]
    ps = [ExportPolicy(tuple(v), custom_routes=custom) for v in variants]
    assert len({p.policy_id for p in ps}) == 1
    assert len(set(ps)) == 1


def _probe_points(*ps: ExportPolicy) -> set[Address]:
    """Every boundary of allowed space: any difference between two spaces starts at one."""
    points: set[Address] = set()
    for p in ps:
        for n in p.allowed:
            points.add(n.network_address)
            if int(n.broadcast_address) < (2**n.max_prefixlen) - 1:
                points.add(n.broadcast_address + 1)
    return points


@given(export_policies(), export_policies())
def test_same_id_iff_same_behaviour(p: ExportPolicy, q: ExportPolicy) -> None:
    same = p.custom_routes == q.custom_routes and all(
        p.exports_ip(ip) == q.exports_ip(ip) for ip in _probe_points(p, q)
    )
    assert (p.policy_id == q.policy_id) is same


@given(export_policies(), st.lists(small_nets(), max_size=4), st.data())
def test_exports_ip_iff_in_exported_subnet(
    p: ExportPolicy, subnets: list[Network], data: st.DataObject
) -> None:
    exported = p.exported_subnets(subnets)
    for piece in exported:
        assert p.exports_prefix(piece)
        assert any(subnet_of(piece, s) for s in subnets)
    for s in subnets:
        ip = s.network_address + data.draw(st.integers(0, s.num_addresses - 1))
        assert p.exports_ip(ip) is any(ip in e for e in exported)


@given(export_policies(), small_nets())
def test_prefix_exported_iff_every_address_is(p: ExportPolicy, prefix: Network) -> None:
    if prefix.num_addresses <= 64:
        assert p.exports_prefix(prefix) is all(p.exports_ip(ip) for ip in prefix)


# --- ranges that export nothing of the VPC (issue 17: accepted, warned) ------------------------


def test_ranges_outside_the_vpc_are_named_by_request_index() -> None:
    subnets = nets("10.1.0.0/24", "fd00:1::/64")
    routes = nets("192.168.50.0/24")
    raw = {
        "ranges": ["10.9.0.0/16", "10.0.0.0/8", "10.1.0.128/25", "192.168.50.0/24", "fd00:2::/48"]
    }
    found = ranges_outside(raw, "export", subnets, routes)
    assert [(w.field, str(w.detail)) for w in found] == [
        ("export.ranges[0]", "10.9.0.0/16 overlaps no subnet of this VPC: it exports nothing now"),
        (
            "export.ranges[3]",
            "192.168.50.0/24 overlaps no subnet of this VPC: it exports nothing now",
        ),
        ("export.ranges[4]", "fd00:2::/48 overlaps no subnet of this VPC: it exports nothing now"),
    ]
    # With custom routes exported, a range over a custom route exports that route.
    with_routes = {**raw, "custom_routes": True}
    fields = [w.field for w in ranges_outside(with_routes, "export", subnets, routes)]
    assert fields == ["export.ranges[0]", "export.ranges[4]"]


def test_no_ranges_no_warnings() -> None:
    for raw in (None, {}, {"ranges": []}, {"private_only": True}):
        assert ranges_outside(raw, "export", nets("10.1.0.0/24"), ()) == []
