"""The destination, forwarding, load-balancer and endpoint objects: what the shard writes
parses back equal, the shard writes exactly what the types write, and a bad field is refused
by its name (meshpeer/protocol/objects.py)."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshpeer.protocol.codec import decode_line
from meshpeer.protocol.messages import Delta, ServiceName, Snapshot
from meshpeer.protocol.objects import (
    MAX_PRIORITY,
    MAX_VNI,
    MAX_WEIGHT,
    Address,
    BackendObject,
    BadObject,
    DestinationObject,
    EndpointObject,
    LoadBalancerObject,
    RouteObject,
    SpilloverObject,
)
from tests.unit.test_ohc_compiler import full_intent, publish

PARSERS: dict[ServiceName, Any] = {
    ServiceName.DESTINATION: DestinationObject.parse,
    ServiceName.FORWARDING: RouteObject.parse,
    ServiceName.LOADBALANCER: LoadBalancerObject.parse,
    ServiceName.ENDPOINT: EndpointObject.parse,
}

# --- strategies: valid objects ---------------------------------------------------------------

macs = st.builds(
    lambda first, rest: ":".join(f"{b:02x}" for b in (first, *rest)),
    st.integers(0, 255).map(lambda b: b & 0xFE),  # unicast
    st.lists(st.integers(0, 255), min_size=5, max_size=5),
).filter(lambda m: m != "00:00:00:00:00:00")
vnis = st.integers(1, MAX_VNI)
texts = st.none() | st.text(min_size=1, max_size=8)
v4 = st.integers(0x0A000000, 0x0AFFFFFF).map(ipaddress.IPv4Address)  # 10/8
v6 = st.integers(1, 2**64).map(lambda n: ipaddress.IPv6Address((0xFD << 120) | n))
underlay = st.integers(0xA9FE0001, 0xA9FEFFFE).map(ipaddress.IPv4Address)  # 169.254/16


def destinations(ips: st.SearchStrategy[Address] = v4 | v6) -> st.SearchStrategy[DestinationObject]:
    return st.builds(DestinationObject, ips, macs, vnis, st.none() | underlay, texts, texts)


def networks(version: int) -> st.SearchStrategy[Any]:
    if version == 4:
        return st.builds(
            lambda n, plen: ipaddress.ip_network((n >> (32 - plen) << (32 - plen), plen)),
            st.integers(0x0A000000, 0x0AFFFFFF),
            st.integers(8, 30),
        )
    return st.builds(
        lambda n, plen: ipaddress.ip_network(
            ((0xFD << 120 | n) >> (128 - plen) << (128 - plen), plen)
        ),
        st.integers(0, 2**64),
        st.integers(8, 126),
    )


@st.composite
def routes(draw: st.DrawFn) -> RouteObject:
    prefix = draw(networks(draw(st.sampled_from([4, 6]))))
    vni = draw(vnis)
    if draw(st.booleans()):
        return RouteObject(prefix, "subnet", vni, draw(st.none() | st.just(prefix[1])))
    ips = v4 if prefix.version == 4 else v6
    hop = draw(st.none() | destinations(ips))
    kind = draw(st.sampled_from(["static", "dynamic"]))
    return RouteObject(prefix, kind, vni, None, draw(st.integers(0, MAX_PRIORITY)), hop)


@st.composite
def load_balancers(draw: st.DrawFn) -> LoadBalancerObject:
    vip = draw(v4 | v6)
    vni = draw(vnis)
    ips = v4 if vip.version == 4 else v6
    names = draw(st.lists(st.text(min_size=1, max_size=6), max_size=4, unique=True))
    backends = tuple(
        BackendObject(
            name,
            draw(st.integers(0, MAX_WEIGHT)),
            DestinationObject(draw(ips), draw(macs), vni, draw(underlay), draw(texts), draw(texts)),
            draw(st.booleans()),
        )
        for name in names
    )
    peers = draw(
        st.lists(
            st.tuples(st.sampled_from(["red", "green"]), st.text(min_size=1, max_size=6)),
            max_size=3,
            unique=True,
        )
    )
    spillover = tuple(
        SpilloverObject(vpc, name)  # named only, as a peer stream carries it
        if draw(st.booleans())
        else SpilloverObject(
            vpc,
            name,
            draw(st.integers(0, MAX_WEIGHT)),
            DestinationObject(
                draw(ips), draw(macs), draw(vnis), draw(underlay), draw(texts), draw(texts)
            ),
            draw(st.booleans()),
        )
        for vpc, name in peers
    )
    return LoadBalancerObject(vip, draw(macs), vni, backends, spillover)


@st.composite
def endpoints(draw: st.DrawFn) -> EndpointObject:
    prefix = draw(st.none() | networks(draw(st.sampled_from([4, 6]))))
    if prefix is None:
        return EndpointObject(
            draw(st.text(min_size=1)), "e1", draw(v4 | v6), draw(macs), draw(vnis)
        )
    ip = prefix[draw(st.integers(2, min(prefix.num_addresses - 2, 2**20)))]
    gateway = draw(st.none() | st.just(prefix[1]))
    kind = draw(texts)
    return EndpointObject(
        "blue", draw(st.text(min_size=1)), ip, draw(macs), draw(vnis), prefix, gateway, kind
    )


def _wire(obj: dict[str, Any]) -> Any:
    return json.loads(json.dumps(obj))  # as the OHC gets it: JSON types only


@given(destinations())
def test_a_destination_parses_back_equal(x: DestinationObject) -> None:
    assert DestinationObject.parse(_wire(x.to_json())) == x


@given(routes())
def test_a_route_parses_back_equal(x: RouteObject) -> None:
    assert RouteObject.parse(_wire(x.to_json())) == x


@given(load_balancers())
def test_a_load_balancer_parses_back_equal(x: LoadBalancerObject) -> None:
    assert LoadBalancerObject.parse(_wire(x.to_json())) == x


@given(endpoints())
def test_an_endpoint_parses_back_equal(x: EndpointObject) -> None:
    assert EndpointObject.parse(_wire(x.to_json())) == x


def test_the_shard_writes_what_the_types_write() -> None:
    """Every object of a publication with ILBs, static routes, subnets and peers is one the
    types parse and write back byte for byte: the writer and the reader share the shapes."""
    seen = set()
    for sid, objs in publish(full_intent()).streams.items():
        parse = PARSERS.get(sid.service)
        if parse is None:
            continue
        for obj in objs.values():
            assert parse(obj).to_json() == obj, (sid, obj)
            seen.add(sid.service)
    assert seen == set(PARSERS)


# --- a bad field is refused by its name --------------------------------------------------------

DEST = DestinationObject(
    ipaddress.ip_address("10.2.0.11"),
    "02:00:00:00:02:0b",
    1002,
    ipaddress.IPv4Address("169.254.0.12"),
    "vm",
    "hv2",
).to_json()
ROUTE = RouteObject(
    ipaddress.ip_network("192.168.0.0/16"),
    "static",
    1001,
    None,
    1000,
    DestinationObject.parse(DEST | {"vni": 1001}),
).to_json()
SUBNET = RouteObject(
    ipaddress.ip_network("10.1.0.0/24"), "subnet", 1001, ipaddress.ip_address("10.1.0.1")
).to_json()
BACKEND = {"endpoint": "r1", "weight": 3, "healthy": True, **DEST}
LB = {"vip": "10.2.0.100", "mac": "02:00:00:00:02:64", "vni": 1002, "backends": [BACKEND]}
ENDPOINT = EndpointObject(
    "blue",
    "b1",
    ipaddress.ip_address("10.1.0.11"),
    "02:00:00:00:01:0b",
    1001,
    ipaddress.ip_network("10.1.0.0/24"),
    ipaddress.ip_address("10.1.0.1"),
    "vm",
).to_json()


@pytest.mark.parametrize(
    ("parse", "obj", "field", "value"),
    [
        (DestinationObject.parse, DEST, "ip", "10.2.0.999"),
        (DestinationObject.parse, DEST, "ip", "224.0.0.1"),
        (DestinationObject.parse, DEST, "ip", 5),
        (DestinationObject.parse, DEST, "mac", "ff:ff:ff:ff:ff:ff"),
        (DestinationObject.parse, DEST, "mac", "02:00:00:00:00:01 "),
        (DestinationObject.parse, DEST, "vni", 0),
        (DestinationObject.parse, DEST, "vni", True),
        (DestinationObject.parse, DEST, "host_ip", "fd00::1"),
        (DestinationObject.parse, DEST, "host_ip", "127.0.0.1"),
        (RouteObject.parse, ROUTE, "prefix", "192.168.0.1/16"),
        (RouteObject.parse, ROUTE, "kind", "bgp"),
        (RouteObject.parse, ROUTE, "vni", 1 << 24),
        (RouteObject.parse, ROUTE, "priority", 65536),
        (RouteObject.parse, ROUTE, "next_hop", ["10.1.0.12"]),
        (RouteObject.parse, ROUTE, "next_hop.ip", "fd00::12"),
        (RouteObject.parse, ROUTE, "next_hop.mac", "01:00:00:00:00:01"),
        (RouteObject.parse, SUBNET, "gateway", "10.9.0.1"),
        (LoadBalancerObject.parse, LB, "vip", "0.0.0.0"),
        (LoadBalancerObject.parse, LB, "mac", None),
        (LoadBalancerObject.parse, LB, "vni", -1),
        (LoadBalancerObject.parse, LB, "backends", {"r1": BACKEND}),
        (LoadBalancerObject.parse, LB, "backends[0].endpoint", ""),
        (LoadBalancerObject.parse, LB, "backends[0].weight", MAX_WEIGHT + 1),
        (LoadBalancerObject.parse, LB, "backends[0].vni", 1001),
        (LoadBalancerObject.parse, LB, "backends[0].ip", "fd00::11"),
        (LoadBalancerObject.parse, LB, "backends[0].host_ip", None),
        (LoadBalancerObject.parse, LB, "backends[1].endpoint", "r1"),
        (EndpointObject.parse, ENDPOINT, "vpc", ""),
        (EndpointObject.parse, ENDPOINT, "name", 7),
        (EndpointObject.parse, ENDPOINT, "ip", "10.9.0.11"),
        (EndpointObject.parse, ENDPOINT, "gateway", "10.1.0.11"),
        (EndpointObject.parse, ENDPOINT, "prefix", "10.1.0.0/33"),
        (EndpointObject.parse, ENDPOINT, "mac", "02-00-00-00-01-0b"),
        (EndpointObject.parse, ENDPOINT, "vni", "1001"),
    ],
)
def test_a_bad_field_is_refused_by_name(parse: Any, obj: Any, field: str, value: Any) -> None:
    bad = _with(obj, field, value)
    with pytest.raises(BadObject) as e:
        parse(bad)
    assert e.value.field == field
    parse(obj)  # the object itself is good


def _with(obj: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    """``obj`` with ``field`` (``a.b``, ``backends[i].b``) set to ``value``."""
    head, _, rest = field.partition(".")
    if not rest:
        return obj | {field: value}
    if head.startswith("backends["):
        i = int(head[len("backends[") : -1])
        items = list(obj["backends"]) + [BACKEND] * (i + 1 - len(obj["backends"]))
        items[i] = _with(items[i], rest, value)
        return obj | {"backends": items}
    return obj | {head: _with(obj[head], rest, value)}


def test_a_load_balancer_keeps_its_good_backends_and_hands_over_the_bad() -> None:
    bad: list[tuple[str, str]] = []
    lb = LoadBalancerObject.parse(
        LB | {"backends": [BACKEND | {"weight": -1}, BACKEND | {"endpoint": "r2"}, "x"]},
        lambda i, e: bad.append((i, e.field)),
    )
    assert [b.endpoint for b in lb.backends] == ["r2"]
    assert bad == [("backends[0]", "weight"), ("backends[2]", "backend")]


SPILL = BACKEND | {"vpc": "blue", "endpoint": "b1", "vni": 1000}


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({k: v for k, v in SPILL.items() if k != "vpc"}, "spillover[1].vpc"),
        (SPILL | {"vpc": 3}, "spillover[1].vpc"),
        (SPILL | {"weight": 70000}, "spillover[1].weight"),
        (SPILL | {"ip": "fd00::5"}, "spillover[1].ip"),
        (SPILL | {"host_ip": None}, "spillover[1].host_ip"),
        (SPILL, "spillover[1].endpoint"),  # listed twice
        ("x", "spillover[1].spillover"),
    ],
)
def test_a_bad_spillover_entry_is_named_by_its_place(entry: Any, field: str) -> None:
    obj = LB | {"spillover": [SPILL, entry]}
    with pytest.raises(BadObject) as e:
        LoadBalancerObject.parse(obj)
    assert e.value.field == field
    bad: list[tuple[str, str]] = []
    lb = LoadBalancerObject.parse(obj, lambda place, e: bad.append((place, e.field)))
    assert [(s.vpc, s.endpoint) for s in lb.spillover] == [("blue", "b1")]
    assert [f"{place}.{f}" for place, f in bad] == [field]


def test_informational_fields_that_are_not_text_read_as_absent() -> None:
    d = DestinationObject.parse(DEST | {"kind": 5, "host": ["hv2"]})
    assert (d.kind, d.host) == (None, None)
    assert (
        DestinationObject.parse({k: v for k, v in DEST.items() if k not in ("kind", "host")}) == d
    )


def test_the_documented_objects_parse_and_write_back() -> None:
    """docs/protocol.md shows each object as it is on the wire: every example message there
    decodes, and each object in it parses with its type and writes back equal."""
    doc = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    seen = set()
    for line in doc.splitlines():
        if not re.match(r'\{"(key|deletes)":', line):  # a message (not a channel frame)
            continue
        msg = decode_line(line.encode())
        if not isinstance(msg, Snapshot | Delta) or msg.service not in PARSERS:
            continue
        objs = msg.objects if isinstance(msg, Snapshot) else msg.upserts
        for obj in objs.values():
            assert PARSERS[msg.service](obj).to_json() == obj, line
            seen.add(msg.service)
    assert seen == set(PARSERS)
