"""Peering-time overlap check on IPv4 and IPv6."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.overlap import Network, Overlap, find_overlaps, relation


def nets(*cidrs: str) -> list[Network]:
    return [ip_network(c) for c in cidrs]


@pytest.mark.parametrize(
    ("local", "peer", "rel"),
    [
        ("10.0.0.0/16", "10.0.0.0/16", "matches"),
        ("10.0.0.0/16", "10.0.1.0/24", "contains"),
        ("10.0.1.0/24", "10.0.0.0/16", "fits inside"),
        ("10.0.0.0/16", "10.1.0.0/16", None),
        ("2001:db8::/48", "2001:db8::/48", "matches"),
        ("2001:db8::/48", "2001:db8:0:5::/64", "contains"),
        ("fd00:1::/64", "fd00::/16", "fits inside"),
        ("fd00:1::/64", "fd00:2::/64", None),
        ("0.0.0.0/0", "::/0", None),
        ("::ffff:0:0/96", "10.0.0.0/8", None),
    ],
)
def test_relation(local: str, peer: str, rel: str | None) -> None:
    assert relation(ip_network(local), ip_network(peer)) == rel
    found = find_overlaps(nets(local), nets(peer))
    assert [o.relation for o in found] == ([rel] if rel else [])


def test_finds_every_pair_sorted_and_once() -> None:
    local = nets("10.1.0.0/16", "10.0.0.0/16", "fd00::/48", "10.0.0.0/16", "192.168.0.0/24")
    peer = nets("10.0.5.0/24", "10.0.0.0/8", "fd00::/48", "172.16.0.0/12")
    assert find_overlaps(local, peer) == [
        Overlap(ip_network("10.0.0.0/16"), ip_network("10.0.0.0/8"), "fits inside"),
        Overlap(ip_network("10.0.0.0/16"), ip_network("10.0.5.0/24"), "contains"),
        Overlap(ip_network("10.1.0.0/16"), ip_network("10.0.0.0/8"), "fits inside"),
        Overlap(ip_network("fd00::/48"), ip_network("fd00::/48"), "matches"),
    ]


def test_disjoint_vpcs_may_peer() -> None:
    assert (
        find_overlaps(nets("10.0.0.0/16", "fd00:a::/48"), nets("10.1.0.0/16", "fd00:b::/48")) == []
    )
    assert find_overlaps([], nets("10.0.0.0/8")) == []


@st.composite
def small_nets(draw: st.DrawFn) -> Network:
    v6 = draw(st.booleans())
    addr = draw(st.integers(0, 255))
    if v6:
        return IPv6Network((int(ip_address("fd00::")) + addr, draw(st.integers(120, 128))), False)
    return IPv4Network((int(ip_address("10.0.0.0")) + addr, draw(st.integers(24, 32))), False)


@given(st.lists(small_nets(), max_size=6), st.lists(small_nets(), max_size=6))
def test_overlap_is_symmetric(a: list[Network], b: list[Network]) -> None:
    forward = find_overlaps(a, b)
    backward = find_overlaps(b, a)
    assert sorted(backward, key=str) == sorted((o.reversed() for o in forward), key=str)


@given(small_nets(), small_nets())
def test_relation_iff_shared_address(a: Network, b: Network) -> None:
    shares = a.version == b.version and bool(set(a) & set(b))
    assert (relation(a, b) is not None) is shares
