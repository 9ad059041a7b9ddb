"""Semantic checks on intent changes: each bad request names its field and status."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshpeer.controller import intent as ops
from meshpeer.controller.intent import IntentError, PeerFacts
from meshpeer.controller.model import Backend, Endpoint, Intent, Spillover, Subnet, Vpc
from policies.export import ExportPolicy
from tests.unit.controller_fixtures import add_ilb, add_vm, add_vpc, directory, peer, subnets

D = directory()


def world() -> Intent:
    i = Intent()
    add_vpc(i, D, "ctl1", "blue", "10.1.0.0/24", "fd00:1::/64")
    add_vpc(i, D, "ctl1", "green", "10.3.0.0/24")
    add_vm(i, "blue", "b1", "10.1.0.11")
    return i


def rejects(status: int, field: str, fn: object, *args: object) -> str:
    with pytest.raises(IntentError) as info:
        fn(*args)  # type: ignore[operator]
    assert (info.value.status, info.value.field) == (status, field), info.value
    return info.value.detail


def ip(s: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(s)


def test_vni_allocated_in_shard_range_and_unique() -> None:
    i = world()
    assert (i.vpcs["blue"].vni, i.vpcs["green"].vni) == (1000, 1001)
    rejects(409, "vni", ops.new_vpc, i, directory(ctl1=["pink"]), "ctl1", "pink", [], 1000)
    rejects(409, "vni", ops.new_vpc, i, directory(ctl1=["pink"]), "ctl1", "pink", [], 5000)


def test_vpc_must_belong_to_this_shard() -> None:
    detail = rejects(409, "name", ops.new_vpc, Intent(), D, "ctl1", "red", [], None)
    assert "belongs to shard 'ctl2' (http://169.254.9.11:8080), not 'ctl1'" in detail
    rejects(409, "name", ops.new_vpc, world(), D, "ctl1", "blue", [], None)
    # an unpinned name is created at the shard its hash picks, and refused elsewhere
    other = {"ctl1": "ctl2", "ctl2": "ctl1"}
    for name in ("purple", "teal", "amber"):
        owner = D.owner_of(name)
        assert ops.new_vpc(Intent(), D, owner, name, [], None).name == name
        rejects(409, "name", ops.new_vpc, Intent(), D, other[owner], name, [], None)


def test_owner_is_the_pin_else_the_same_hash_everywhere() -> None:
    d = directory(ctl1=["blue"], ctl2=[], ctl3=[])
    names = [f"v{i}" for i in range(300)]
    owners = {n: d.owner_of(n) for n in names}
    assert d.owner_of("blue") == "ctl1"
    assert owners == {n: directory(ctl3=[], ctl1=["blue"], ctl2=[]).owner_of(n) for n in names}
    counts = {s: list(owners.values()).count(s) for s in ("ctl1", "ctl2", "ctl3")}
    assert all(60 <= c <= 140 for c in counts.values()), counts  # spread, not all on one
    # pinning a name moves only that name; a fourth shard takes only names it now wins
    assert directory(ctl1=["blue"], ctl2=["v0"], ctl3=[]).owner_of("v0") == "ctl2"
    d4 = directory(ctl1=["blue"], ctl2=[], ctl3=[], ctl4=[])
    moved = [n for n in names if d4.owner_of(n) != owners[n]]
    assert moved and all(d4.owner_of(n) == "ctl4" for n in moved)


def test_subnet_overlap_within_vpc() -> None:
    detail = rejects(
        409, "subnets[1]", ops.new_vpc, Intent(), D, "ctl1", "blue",
        subnets("10.1.0.0/16", "10.1.4.0/24"), None,
    )  # fmt: skip
    assert "10.1.4.0/24 fits inside 10.1.0.0/16" in detail
    i = world()
    new = Subnet("x", ipaddress.ip_network("10.1.0.0/25"))
    rejects(409, "cidr", ops.add_subnet, i, i.vpcs["blue"], new, {})


@pytest.mark.parametrize(
    ("cidr", "words"),
    [
        ("0.0.0.0/0", "a default route"),
        ("::/0", "a default route"),
        ("127.0.0.0/24", "overlaps 127.0.0.0/8 (loopback)"),
        ("64.0.0.0/2", "overlaps 127.0.0.0/8 (loopback)"),
        ("0.0.0.0/8", "overlaps 0.0.0.0/32 (unspecified)"),
        ("224.0.0.0/24", "overlaps 224.0.0.0/4 (multicast)"),
        ("255.255.255.0/24", "overlaps 255.255.255.255/32 (broadcast)"),
        ("ff02::/64", "overlaps ff00::/8 (multicast)"),
        ("::/64", "overlaps ::/128 (unspecified)"),
    ],
)
def test_a_subnet_holds_only_addresses_an_ohc_programs(cidr: str, words: str) -> None:
    """The OHC (protocol/objects.py parse_ip) skips unspecified, loopback, multicast and
    broadcast addresses, and a /0 subnet would be a default route: refused, whether added or
    given at create."""
    i = world()
    new = Subnet("x", ipaddress.ip_network(cidr))
    assert words in rejects(400, "cidr", ops.add_subnet, i, i.vpcs["green"], new, {})
    detail = rejects(
        400, "subnets[0]", ops.new_vpc, Intent(), D, "ctl1", "blue", subnets(cidr), None
    )
    assert words in detail


def test_subnet_overlapping_a_peer_names_both_ranges() -> None:
    i = world()
    new = Subnet("x", ipaddress.ip_network("10.2.0.0/16"))
    detail = rejects(
        409,
        "cidr",
        ops.add_subnet,
        i,
        i.vpcs["blue"],
        new,
        {"red": [ipaddress.ip_network("10.2.0.0/24")]},
    )
    assert "10.2.0.0/16 contains 10.2.0.0/24 of peer VPC 'red'" in detail


def test_endpoint_checks() -> None:
    i = world()
    new = ops.new_endpoint
    rejects(404, "vpc", new, i, "nope", "x", "vm", ip("10.1.0.5"), None, "hv1", [])
    rejects(409, "name", new, i, "blue", "b1", "vm", ip("10.1.0.5"), None, "hv1", [])
    assert "outside every subnet" in rejects(
        400, "ip", new, i, "blue", "x", "vm", ip("10.9.0.5"), None, "hv1", []
    )
    rejects(400, "ip", new, i, "blue", "x", "vm", ip("10.1.0.1"), None, "hv1", [])
    rejects(400, "ip", new, i, "blue", "x", "vm", ip("10.1.0.255"), None, "hv1", [])
    rejects(409, "ip", new, i, "blue", "x", "vm", ip("10.1.0.11"), None, "hv1", [])
    rejects(400, "host", new, i, "blue", "x", "vm", ip("10.1.0.5"), None, None, [])
    rejects(400, "host", new, i, "blue", "x", "ilb", ip("10.1.0.5"), None, "hv1", [Backend("b1")])
    rejects(400, "backends", new, i, "blue", "x", "ilb", ip("10.1.0.5"), None, None, [])
    rejects(
        400,
        "backends[0].endpoint",
        new,
        i,
        "blue",
        "x",
        "ilb",
        ip("10.1.0.5"),
        None,
        None,
        [Backend("zz")],
    )
    mac = i.endpoints[("blue", "b1")].mac
    rejects(409, "mac", new, i, "blue", "x", "vm", ip("10.1.0.5"), mac, "hv1", [])
    v6 = new(i, "blue", "b6", "vm", ip("fd00:1::5"), None, "hv2", [])
    assert v6.mac != mac and int(v6.mac[:2], 16) & 3 == 2


def test_delete_guards() -> None:
    i = world()
    add_ilb(i, "blue", "lb", "10.1.0.100", {"b1": 1})
    peer(i, "blue", "green")
    assert "peerings: to-green" in rejects(409, "vpc", ops.check_vpc_delete, i, "blue")
    assert "backend of ILB lb" in rejects(
        409, "endpoint", ops.check_endpoint_delete, i, "blue", "b1"
    )
    rejects(404, "endpoint", ops.check_endpoint_delete, i, "blue", "zz")
    assert "still has endpoints" in rejects(
        409, "subnet", ops.remove_subnet, i, i.vpcs["blue"], "s0"
    )
    assert ops.remove_subnet(i, i.vpcs["blue"], "s1").subnets == (i.vpcs["blue"].subnets[0],)


def test_peering_checks() -> None:
    i = world()
    new = ops.new_peering
    pol = ExportPolicy()
    rejects(400, "peer_vpc", new, i, "blue", "p", "blue", pol, False, None)
    rejects(404, "peer_vpc", new, i, "blue", "p", "mars", pol, False, PeerFacts(False))
    rejects(404, "peer_vpc", new, i, "blue", "p", "red", pol, False, PeerFacts(False))
    overlap = PeerFacts(True, (ipaddress.ip_network("10.1.0.0/16"),))
    detail = rejects(409, "peer_vpc", new, i, "blue", "p", "red", pol, False, overlap)
    assert "10.1.0.0/24 fits inside 10.1.0.0/16 of peer VPC 'red'" in detail
    made = new(i, "blue", "p", "red", pol, False, None)  # peer shard unreachable: accepted
    i.put(made)
    rejects(409, "name", new, i, "blue", "p", "green", pol, False, None)
    rejects(409, "peer_vpc", new, i, "blue", "q", "red", pol, False, None)


def test_route_checks() -> None:
    i = world()
    new = ops.new_route
    net = ipaddress.ip_network
    r = new(i, "blue", "r1", net("192.168.0.0/16"), ip("10.1.0.11"), 100)
    assert r.priority == 100
    rejects(400, "next_hop", new, i, "blue", "r2", net("192.168.0.0/16"), ip("10.1.0.99"), 1)
    rejects(400, "next_hop", new, i, "blue", "r2", net("fd10::/64"), ip("10.1.0.11"), 1)
    rejects(409, "prefix", new, i, "blue", "r2", net("10.1.0.0/25"), ip("10.1.0.11"), 1)


def test_spillover_checks() -> None:
    """An ILB's spillover backends: in a peered VPC of this shard, existing, no ILB, once."""
    i = world()
    add_vm(i, "green", "g1", "10.3.0.11")
    new, s = ops.new_endpoint, Spillover
    args = ("blue", "lb", "ilb", ip("10.1.0.100"), None, None, [Backend("b1")], None)
    detail = rejects(400, "spillover[0].vpc", new, i, *args, [s("green", "g1")])
    assert "does not peer with 'green'" in detail
    peer(i, "blue", "green")
    peer(i, "green", "blue")
    add_ilb(i, "green", "glb", "10.3.0.100", {"g1": 1})
    rejects(400, "spillover[0].vpc", new, i, *args, [s("blue", "b1")])
    rejects(400, "spillover[0].endpoint", new, i, *args, [s("green", "g9")])
    rejects(400, "spillover[0].endpoint", new, i, *args, [s("green", "glb")])
    rejects(400, "spillover", new, i, *args, [s("green", "g1"), s("green", "g1", 2)])
    vm_args = ("blue", "v", "vm", ip("10.1.0.12"), None, "hv1", [], None)
    rejects(400, "spillover", new, i, *vm_args, [s("green", "g1")])
    ep = new(i, *args, [s("green", "g1", 3)])
    assert ep.spillover == (s("green", "g1", 3),)
    assert Endpoint.from_json(ep.to_json()) == ep  # stored and loaded as it was
    i.put(ep)
    assert i.spilling_into("green") == {"blue"} and i.spilling_into("blue") == set()


def test_a_spillover_backend_must_be_usable_both_ways() -> None:
    """The backend's VPC peers back and exports the endpoint, else 400 naming the field rather
    than 201 for a backend the hosts would never get (review S3)."""
    i = world()
    add_vm(i, "green", "g1", "10.3.0.11")
    add_vm(i, "green", "g2", "10.3.0.200")
    args = ("blue", "lb", "ilb", ip("10.1.0.100"), None, None, [Backend("b1")], None)
    peer(i, "blue", "green")  # green does not peer back
    detail = rejects(
        400, "spillover[0].vpc", ops.new_endpoint, i, *args, [Spillover("green", "g1")]
    )
    assert "'green' does not peer back" in detail
    peer(i, "green", "blue", {"ranges": ["10.3.0.0/25"]})  # g2 (.200) is not exported
    detail = rejects(
        400, "spillover[0].endpoint", ops.new_endpoint, i, *args, [Spillover("green", "g2")]
    )
    assert "does not export" in detail
    assert ops.new_endpoint(i, *args, [Spillover("green", "g1")]).spillover


def test_an_ipv6_ilb_takes_no_spillover_backend() -> None:
    """Spillover is IPv4 only (the affinity tables match ipv4): 400 rather than accepted and
    ignored (review S7)."""
    i = world()
    add_vm(i, "blue", "b6", "fd00:1::11")
    add_vm(i, "green", "g1", "10.3.0.11")
    peer(i, "blue", "green")
    peer(i, "green", "blue")
    args = ("blue", "lb6", "ilb", ip("fd00:1::100"), None, None, [Backend("b6")], None)
    detail = rejects(400, "spillover", ops.new_endpoint, i, *args, [Spillover("green", "g1")])
    assert "IPv4" in detail


def test_an_endpoint_an_ilb_spills_into_cannot_be_deleted() -> None:
    """409 naming the ILB, as for a plain backend: no dangling reference that a new endpoint
    of that name would silently fill (review S4)."""
    i = world()
    add_vm(i, "green", "g1", "10.3.0.11")
    peer(i, "blue", "green")
    peer(i, "green", "blue")
    add_ilb(i, "blue", "web", "10.1.0.100", {"b1": 1}, {("green", "g1"): 1})
    detail = rejects(409, "endpoint", ops.check_endpoint_delete, i, "green", "g1")
    assert "blue/web" in detail
    i.drop("endpoint", "blue/web")
    assert ops.check_endpoint_delete(i, "green", "g1").name == "g1"


NETWORKS = st.one_of(
    st.builds(
        lambda a, n: ipaddress.ip_network(f"{a}/{n}", strict=False),
        st.ip_addresses(v=v),
        st.integers(0, 32 if v == 4 else 128),
    )
    for v in (4, 6)
)


@given(st.ip_addresses(), st.lists(NETWORKS, max_size=4))
def test_a_vpcs_subnet_for_an_address_is_the_first_that_holds_it(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> None:
    """``Vpc.subnet_for`` compares integers: the same answer as ``ip in cidr``."""
    vpc = Vpc("v", 1000, tuple(Subnet(f"s{i}", n) for i, n in enumerate(nets)))
    expected = next((s for s in vpc.subnets if s.cidr.version == ip.version and ip in s.cidr), None)
    assert vpc.subnet_for(ip) == expected
