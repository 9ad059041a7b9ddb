"""meshpeer.cli.policydiff: what an export policy change would expose or hide, and where."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from meshpeer.cli.policydiff import diff, minus
from policies.export import PolicyError

SIDE: dict[str, Any] = {
    "name": "to-red", "vpc": "blue", "peer_vpc": "red", "state": "ACTIVE",
    "export": {"ranges": [], "private_only": False, "ipv6_only": False, "custom_routes": False},
}  # fmt: skip
VPC = {"name": "blue", "subnets": [{"cidr": "10.1.0.0/24"}, {"cidr": "fd00:1::/64"}]}
ENDPOINTS = [
    {"name": "b1", "ip": "10.1.0.11", "host": "hv1"},
    {"name": "b2", "ip": "10.1.0.200", "host": "hv2"},
    {"name": "b6", "ip": "fd00:1::6", "host": "hv2"},
]
ROUTES = [{"name": "onprem", "prefix": "192.168.5.0/24", "next_hop": "10.1.0.11"}]
PEER = [{"name": "r1", "host": "hv3"}, {"name": "r2", "host": "hv1"}, {"name": "r9", "host": None}]


def test_narrowing_hides_the_rest_of_the_subnet_and_its_endpoints() -> None:
    d = diff(SIDE, {"ranges": ["10.1.0.0/25"]}, VPC, ENDPOINTS, ROUTES, PEER)
    assert d.exposed == ()
    assert d.hidden == (
        "subnet range 10.1.0.128/25",
        "subnet range fd00:1::/64",
        "endpoint b2 10.1.0.200 (hv2)",
        "endpoint b6 fd00:1::6 (hv2)",
    )
    assert d.peer_hosts == ("hv1", "hv3")
    assert d.before != d.after
    assert "on the peer's hosts (now): hv1, hv3" in d.text()


def test_custom_routes_and_a_same_effect_policy() -> None:
    d = diff(SIDE, {"custom_routes": True}, VPC, ENDPOINTS, ROUTES, PEER)
    assert (d.exposed, d.hidden) == (("route onprem 192.168.5.0/24 via 10.1.0.11",), ())
    same = diff(SIDE, {"ranges": ["0.0.0.0/0", "::/0"]}, VPC, ENDPOINTS, ROUTES, PEER)
    assert (same.changes, same.before == same.after) == (False, True)
    assert same.text().splitlines()[1] == "same effect: nothing would change"
    inactive = diff({**SIDE, "state": "INACTIVE"}, {"ranges": ["10.1.0.0/25"]}, VPC,
                    ENDPOINTS, ROUTES, PEER)  # fmt: skip
    assert "(once the peering is ACTIVE)" in inactive.text()


def test_a_bad_proposal_is_refused_naming_the_field() -> None:
    with pytest.raises(PolicyError) as err:
        diff(SIDE, {"ranges": ["10.1.0.300/25"]}, VPC, ENDPOINTS, ROUTES, PEER)
    assert err.value.field.startswith("export.ranges")


def test_minus_cuts_ranges_out() -> None:
    n = ipaddress.ip_network
    assert minus([n("10.0.0.0/24")], [n("10.0.0.64/26")]) == [n("10.0.0.0/26"), n("10.0.0.128/25")]
    assert minus([n("10.0.0.0/24")], [n("10.0.0.0/16")]) == []
    assert minus([n("10.0.0.0/24")], [n("fd00::/8")]) == [n("10.0.0.0/24")]
