"""Bad input over real HTTP: the right status, a JSON {error, field, detail} naming the field,
and no change to what either shard serves afterwards.

One pair of controllers serves the whole module: nothing here may change state (that is what
every case checks), so the cases cannot disturb one another.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.api.ctlkit import HOST_STATUS, Cluster, Ctl, Reply, state_of, stream

JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def world(module_cluster: Cluster) -> Iterator[Cluster]:
    """blue (10.1.0.0/16), green, teal (overlaps blue) on ctl1; red, rose (overlaps blue) on
    ctl2; blue <-> red ACTIVE; blue has VMs, an ILB over b1 and a static route via b2."""
    c1, c2 = module_cluster["ctl1"], module_cluster["ctl2"]
    for ctl in (c1, c2):
        ctl.put("/v1/hosts/hv1", {"underlay_ip": "192.0.2.1"})
    c1.vpc("blue", "10.1.0.0/16")
    c1.vpc("green", "10.3.0.0/24")
    c1.vpc("teal", "10.1.5.0/24")
    c2.vpc("red", "10.2.0.0/24")
    c2.vpc("rose", "10.1.7.0/24")
    c1.vm("blue", "b1", "10.1.0.5")
    c1.post(
        "/v1/vpcs/blue/endpoints",
        {"name": "b2", "ip": "10.1.0.6", "host": "hv1", "mac": "02:aa:00:00:00:06"},
    )
    c1.post(
        "/v1/vpcs/blue/endpoints",
        {"name": "lb1", "ip": "10.1.0.100", "kind": "ilb", "backends": [{"endpoint": "b1"}]},
    )
    c1.post(
        "/v1/vpcs/blue/routes",
        {"name": "r1", "prefix": "192.168.10.0/24", "next_hop": "10.1.0.6"},
    )
    c2.vm("red", "r1", "10.2.0.5")
    c1.peer("blue", "red")
    c2.peer("red", "blue")
    c1.wait_state("blue", "to-red", "ACTIVE")
    c2.wait_state("red", "to-blue", "ACTIVE")
    yield module_cluster


ILB2 = {"name": "lb2", "ip": "10.1.0.101", "kind": "ilb", "backends": [{"endpoint": "b1"}]}


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    path: str
    body: Any = None  # JSON-encoded unless bytes
    status: int = 400
    field: str | None = None
    detail: tuple[str, ...] = ()  # substrings the detail must contain
    ctl: str = "ctl1"
    headers: dict[str, str] | None = None  # default: JSON content type


def send(ctl: Ctl, case: Case) -> Reply:
    if case.body is None:
        return ctl.raw(case.method, case.path)
    data = case.body if isinstance(case.body, bytes) else json.dumps(case.body).encode()
    headers = JSON if case.headers is None else case.headers
    return ctl.raw(case.method, case.path, data, headers)


CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
}

EP = "/v1/vpcs/blue/endpoints"
BATCH = "/v1/vpcs/blue/endpoints:batchCreate"
PEER = "/v1/vpcs/blue/peerings"


def vm(name: str, ip: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "ip": ip, "host": "hv1", **extra}


CASES = [
    # --- malformed bodies -------------------------------------------------------------
    Case("json-truncated", "POST", "/v1/vpcs", b'{"name": "amber",', detail=("malformed JSON",)),
    Case("json-dup-key", "POST", "/v1/vpcs", b'{"name":"amber","name":"lime"}', detail=("dup",)),
    Case("json-nan", "POST", "/v1/vpcs", b'{"name":"amber","vni":NaN}', detail=("NaN",)),
    Case("json-not-utf8", "POST", EP, b'{"name":"\xff"}', detail=("UTF-8",)),
    Case("json-array", "POST", "/v1/vpcs", b"[]", detail=("expected object",)),
    # Issue 17: 1,000 levels deep was an empty text/plain 500 (then on a path that needed no
    # token; since issue 16 every report comes with its host's credential).
    Case(
        "json-deep-applied",
        "PUT",
        "/v1/hosts/hv1/applied",
        b'{"streams":' + b"[" * 1000 + b"]" * 1000 + b"}",
        detail=("nested deeper than 32",),
    ),
    Case(
        "json-deep-vpc",
        "POST",
        "/v1/vpcs",
        b'{"name":' + b"[" * 40 + b"]" * 40 + b"}",
        detail=("nested deeper",),
    ),
    Case(
        "body-too-large",
        "POST",
        "/v1/vpcs",
        b'{"name": "' + b"a" * (1 << 20) + b'"}',
        status=413,
        detail=("1048576",),
    ),
    Case("url-too-long", "GET", "/v1/vpcs/" + "a" * 100_000, status=414, detail=("8192",)),
    Case("path-not-utf8", "GET", "/v1/vpcs/%ff", detail=("not UTF-8",)),
    Case("json-empty", "POST", "/v1/vpcs", b"", detail=("required",)),
    Case("body-on-get", "GET", "/v1/vpcs", b"{}", detail=("takes no request body",)),
    Case("missing-field", "POST", "/v1/vpcs", {}, field="name", detail=("missing",)),
    Case("wrong-type", "POST", "/v1/vpcs", {"name": "amber", "vni": "7"}, field="vni"),
    Case("bool-not-int", "POST", "/v1/vpcs", {"name": "amber", "vni": True}, field="vni"),
    Case("bad-name", "POST", "/v1/vpcs", {"name": "Amber"}, field="name"),
    Case("vni-range", "POST", "/v1/vpcs", {"name": "amber", "vni": 1 << 24}, field="vni"),
    Case("bad-path-param", "GET", "/v1/vpcs/Blue", field="vpc"),
    Case("unknown-query", "GET", "/v1/vpcs?bogus=1", field="bogus", detail=("unknown",)),
    # --- unknown fields, top level and nested ----------------------------------------------
    Case("unknown-top", "POST", "/v1/vpcs", {"name": "amber", "bogus": 1}, field="bogus"),
    Case(
        "unknown-subnet",
        "POST",
        "/v1/vpcs",
        {"name": "amber", "subnets": [{"cidr": "10.9.0.0/24"}, {"cidr": "10.9.1.0/24", "x": 1}]},
        field="subnets[1].x",
        detail=("unknown field",),
    ),
    Case(
        "unknown-backend",
        "POST",
        EP,
        {
            "name": "lb2",
            "ip": "10.1.0.101",
            "kind": "ilb",
            "backends": [{"endpoint": "b1", "x": 2}],
        },
        field="backends[0].x",
    ),
    Case(
        "unknown-export",
        "POST",
        PEER,
        {"name": "to-green", "peer_vpc": "green", "export": {"bogus": True}},
        field="export.bogus",
    ),
    Case(
        "unknown-export-put",
        "PUT",
        f"{PEER}/to-red",
        {"export": {"ranges": [], "bogus": 1}},
        field="export.bogus",
    ),
    Case(
        "bad-inbound",
        "POST",
        PEER,
        {"name": "to-green", "peer_vpc": "green", "inbound": "some"},
        field="inbound",
        detail=("all", "replies"),
    ),
    Case("bad-inbound-put", "PUT", f"{PEER}/to-red", {"inbound": True}, field="inbound"),
    Case(
        "bad-preference",
        "POST",
        PEER,
        {"name": "to-green", "peer_vpc": "green", "preference": -1},
        field="preference",
    ),
    Case("big-preference-put", "PUT", f"{PEER}/to-red", {"preference": 65536}, field="preference"),
    Case("text-preference-put", "PUT", f"{PEER}/to-red", {"preference": "100"}, field="preference"),
    Case("bool-preference-put", "PUT", f"{PEER}/to-red", {"preference": True}, field="preference"),
    Case("unknown-host", "PUT", "/v1/hosts/hv2", {"underlay_ip": "192.0.2.2", "x": 1}, field="x"),
    Case(
        "unknown-route",
        "POST",
        "/v1/vpcs/blue/routes",
        {"name": "r9", "prefix": "192.168.99.0/24", "next_hop": "10.1.0.6", "metric": 1},
        field="metric",
    ),
    # --- CIDRs and IPs ----------------------------------------------------------------------
    Case(
        "cidr-host-bits",
        "POST",
        "/v1/vpcs",
        {"name": "amber", "subnets": [{"cidr": "10.9.0.1/24"}]},
        field="subnets[0].cidr",
        detail=("host bits", "10.9.0.0/24"),
    ),
    Case(
        "cidr-host-bits-subnet",
        "POST",
        "/v1/vpcs/blue/subnets",
        {"cidr": "10.8.0.1/24"},
        field="cidr",
        detail=("host bits",),
    ),
    Case("cidr-no-len", "POST", "/v1/vpcs/blue/subnets", {"cidr": "10.8.0.0"}, field="cidr"),
    Case("cidr-garbage", "POST", "/v1/vpcs/blue/subnets", {"cidr": "10.8.0.0/33"}, field="cidr"),
    Case(
        "subnet-too-small", "POST", "/v1/vpcs/blue/subnets", {"cidr": "10.8.0.0/31"}, field="cidr"
    ),
    Case(
        "route-host-bits",
        "POST",
        "/v1/vpcs/blue/routes",
        {"name": "r9", "prefix": "192.168.99.1/24", "next_hop": "10.1.0.6"},
        field="prefix",
    ),
    Case(
        "export-range-host-bits",
        "POST",
        PEER,
        {"name": "to-green", "peer_vpc": "green", "export": {"ranges": ["10.1.0.1/16"]}},
        field="export.ranges[0]",
    ),
    Case("ip-bad", "POST", EP, vm("b9", "10.1.0.300"), field="ip"),
    Case("ip-zone", "POST", EP, vm("b9", "fe80::1%eth0"), field="ip", detail=("zone",)),
    Case("ip-cidr", "POST", EP, vm("b9", "10.1.0.9/32"), field="ip"),
    Case("underlay-bad", "PUT", "/v1/hosts/hv2", {"underlay_ip": "nope"}, field="underlay_ip"),
    Case(
        "next-hop-bad",
        "POST",
        "/v1/vpcs/blue/routes",
        {"name": "r9", "prefix": "192.168.99.0/24", "next_hop": "1.2.3"},
        field="next_hop",
    ),
    Case("mac-bad", "POST", EP, vm("b9", "10.1.0.9", mac="02:00:00:00:00"), field="mac"),
    # --- batch create: all or nothing, the refused item named -----------------------------
    Case("batch-empty", "POST", BATCH, {"endpoints": []}, field="endpoints"),
    Case(
        "batch-bad-ip",
        "POST",
        BATCH,
        {"endpoints": [vm("b8", "10.1.0.8"), vm("b9", "10.1.0.300")]},
        field="endpoints[1].ip",
    ),
    Case(
        "batch-name-twice",
        "POST",
        BATCH,
        {"endpoints": [vm("b8", "10.1.0.8"), vm("b8", "10.1.0.9")]},
        status=409,
        field="endpoints[1].name",
    ),
    Case(
        "batch-ip-twice",
        "POST",
        BATCH,
        {"endpoints": [vm("b8", "10.1.0.8"), vm("b9", "10.1.0.8")]},
        status=409,
        field="endpoints[1].ip",
    ),
    Case(
        "batch-ip-taken",
        "POST",
        BATCH,
        {"endpoints": [vm("b8", "10.1.0.8"), vm("b9", "10.1.0.5")]},
        status=409,
        field="endpoints[1].ip",
    ),
    Case(
        "batch-bgp-v6",
        "POST",
        BATCH,
        {
            "endpoints": [
                vm("b8", "10.1.0.8"),
                {
                    **vm("gw8", "10.1.0.9", kind="router"),
                    "bgp": {"peer_asn": 65001, "peer_ip": "fe80::1", "local_ip": "169.254.7.1"},
                },
            ]
        },
        field="endpoints[1].bgp.peer_ip",
    ),
    # Issue 17: what no OHC programs was a 201 (ohc/model.py skipped it afterwards).
    Case("mac-broadcast", "POST", EP, vm("b9", "10.1.0.9", mac="ff:ff:ff:ff:ff:ff"), field="mac"),
    Case("mac-multicast", "POST", EP, vm("b9", "10.1.0.9", mac="01:00:5e:00:00:01"), field="mac"),
    Case("mac-zero", "POST", EP, vm("b9", "10.1.0.9", mac="00:00:00:00:00:00"), field="mac"),
    Case("subnet-default-v6", "POST", "/v1/vpcs/blue/subnets", {"cidr": "::/0"}, field="cidr"),
    Case(
        "subnet-default-v4",
        "POST",
        "/v1/vpcs",
        {"name": "amber", "subnets": [{"cidr": "0.0.0.0/0"}]},
        field="subnets[0]",
        detail=("default route",),
    ),
    Case(
        "subnet-multicast",
        "POST",
        "/v1/vpcs/blue/subnets",
        {"cidr": "ff02::/64"},
        field="cidr",
        detail=("multicast",),
    ),
    Case(
        "ip-outside",
        "POST",
        EP,
        vm("b9", "10.99.0.5"),
        field="ip",
        detail=("outside every subnet", "10.1.0.0/16"),
    ),
    Case("ip-gateway", "POST", EP, vm("b9", "10.1.0.1"), field="ip", detail=("reserved",)),
    Case("ip-network", "POST", EP, vm("b9", "10.1.0.0"), field="ip", detail=("reserved",)),
    Case("ip-broadcast", "POST", EP, vm("b9", "10.1.255.255"), field="ip", detail=("reserved",)),
    Case(
        "next-hop-not-endpoint",
        "POST",
        "/v1/vpcs/blue/routes",
        {"name": "r9", "prefix": "192.168.99.0/24", "next_hop": "10.1.0.77"},
        field="next_hop",
    ),
    Case(
        "next-hop-ilb",
        "POST",
        "/v1/vpcs/blue/routes",
        {"name": "r9", "prefix": "192.168.99.0/24", "next_hop": "10.1.0.100"},
        field="next_hop",
    ),
    Case("vm-without-host", "POST", EP, {"name": "b9", "ip": "10.1.0.9"}, field="host"),
    Case(
        "ilb-unknown-backend",
        "POST",
        EP,
        {"name": "lb2", "ip": "10.1.0.101", "kind": "ilb", "backends": [{"endpoint": "zz"}]},
        field="backends[0].endpoint",
    ),
    # --- spillover backends (docs/gateways.md, overload shift) ------------------------------
    Case(
        "spillover-not-peered",
        "POST",
        EP,
        {**ILB2, "spillover": [{"vpc": "green", "endpoint": "g1"}]},
        field="spillover[0].vpc",
        detail=("does not peer with 'green'",),
    ),
    Case(
        "spillover-other-shard",
        "POST",
        EP,
        {**ILB2, "spillover": [{"vpc": "red", "endpoint": "r1"}]},
        field="spillover[0].vpc",
        detail=("not on this shard",),
    ),
    Case(
        "spillover-own-vpc",
        "POST",
        EP,
        {**ILB2, "spillover": [{"vpc": "blue", "endpoint": "b1"}]},
        field="spillover[0].vpc",
    ),
    Case(
        "spillover-no-endpoint",
        "POST",
        EP,
        {**ILB2, "spillover": [{"vpc": "red"}]},
        field="spillover[0].endpoint",
    ),
    Case(
        "spillover-bad-weight",
        "POST",
        EP,
        {**ILB2, "spillover": [{"vpc": "red", "endpoint": "r1", "weight": 0}]},
        field="spillover[0].weight",
    ),
    Case(
        "spillover-on-a-vm",
        "POST",
        EP,
        {**vm("b9", "10.1.0.9"), "spillover": [{"vpc": "red", "endpoint": "r1"}]},
        field="spillover",
    ),
    # --- duplicates ---------------------------------------------------------------------
    Case("dup-vpc", "POST", "/v1/vpcs", {"name": "blue"}, 409, "name", ("already exists",)),
    Case("dup-endpoint", "POST", EP, vm("b1", "10.1.0.9"), 409, "name", ("already exists",)),
    Case("dup-ip", "POST", EP, vm("b9", "10.1.0.5"), 409, "ip", ("'b1'",)),
    Case("dup-mac", "POST", EP, vm("b9", "10.1.0.9", mac="02:AA:00:00:00:06"), 409, "mac", ("b2",)),
    Case(
        "dup-peering-name",
        "POST",
        PEER,
        {"name": "to-red", "peer_vpc": "green"},
        409,
        "name",
        ("already exists",),
    ),
    Case(
        "dup-peer-vpc",
        "POST",
        PEER,
        {"name": "again", "peer_vpc": "red"},
        409,
        "peer_vpc",
        ("already peers", "to-red"),
    ),
    Case(
        "dup-route",
        "POST",
        "/v1/vpcs/blue/routes",
        {"name": "r1", "prefix": "192.168.11.0/24", "next_hop": "10.1.0.6"},
        409,
        "name",
    ),
    Case(
        "dup-subnet-name",
        "POST",
        "/v1/vpcs/blue/subnets",
        {"name": "s0", "cidr": "10.50.0.0/24"},
        409,
        "name",
    ),
    Case(
        "subnet-overlaps-own",
        "POST",
        "/v1/vpcs/blue/subnets",
        {"cidr": "10.1.9.0/24"},
        409,
        "cidr",
        ("10.1.9.0/24", "10.1.0.0/16"),
    ),
    # --- VNIs and the shard directory -------------------------------------------------------
    Case("vni-clash", "POST", "/v1/vpcs", {"name": "amber", "vni": 1000}, 409, "vni", ("blue",)),
    Case(
        "vni-other-shard",
        "POST",
        "/v1/vpcs",
        {"name": "amber", "vni": 2000},
        409,
        "vni",
        ("outside", "1000-1999"),
    ),
    Case("vpc-of-ctl2", "POST", "/v1/vpcs", {"name": "red"}, 409, "name", ("ctl2",)),
    Case("vpc-of-ctl1", "POST", "/v1/vpcs", {"name": "amber"}, 409, "name", ("ctl1",), "ctl2"),
    # unpinned: owned by the rendezvous hash of the shard names and the VPC name ("nowhere": ctl2)
    Case("vpc-hashed-elsewhere", "POST", "/v1/vpcs", {"name": "nowhere"}, 409, "name", ("ctl2",)),
    # --- peerings ------------------------------------------------------------------------
    Case(
        "overlap-same-shard",
        "POST",
        PEER,
        {"name": "to-teal", "peer_vpc": "teal"},
        409,
        "peer_vpc",
        ("10.1.0.0/16", "10.1.5.0/24", "teal"),
    ),
    Case(
        "overlap-other-shard",
        "POST",
        PEER,
        {"name": "to-rose", "peer_vpc": "rose"},
        409,
        "peer_vpc",
        ("10.1.0.0/16", "10.1.7.0/24", "rose"),
    ),
    Case(
        "overlap-other-shard-reverse",
        "POST",
        "/v1/vpcs/rose/peerings",
        {"name": "to-blue", "peer_vpc": "blue"},
        409,
        "peer_vpc",
        ("10.1.7.0/24", "10.1.0.0/16", "blue"),
        "ctl2",
    ),
    Case(
        "subnet-overlaps-peer",
        "POST",
        "/v1/vpcs/red/subnets",
        {"cidr": "10.1.200.0/24"},
        409,
        "cidr",
        ("10.1.200.0/24", "10.1.0.0/16", "blue"),
        "ctl2",
    ),
    Case(
        "peer-self", "POST", PEER, {"name": "me", "peer_vpc": "blue"}, 400, "peer_vpc", ("itself",)
    ),
    Case(
        "peer-unknown",
        "POST",
        PEER,
        {"name": "x", "peer_vpc": "nowhere"},
        404,
        "peer_vpc",
        ("'nowhere' does not exist",),
    ),
    Case(
        "peer-not-created-same-shard",
        "POST",
        PEER,
        {"name": "x", "peer_vpc": "cyan"},
        404,
        "peer_vpc",
        ("does not exist",),
    ),
    Case(
        "peer-not-created-other-shard",
        "POST",
        PEER,
        {"name": "x", "peer_vpc": "plum"},
        404,
        "peer_vpc",
        ("does not exist",),
    ),
    Case(
        "peer-on-unknown-vpc",
        "POST",
        "/v1/vpcs/nope/peerings",
        {"name": "x", "peer_vpc": "red"},
        404,
        "vpc",
    ),
    # --- deletes blocked by what still uses the object ------------------------------------
    Case(
        "delete-vpc-in-use",
        "DELETE",
        "/v1/vpcs/blue",
        status=409,
        field="vpc",
        detail=("peerings: to-red", "endpoints:", "b1", "b2", "lb1", "routes: r1"),
    ),
    Case(
        "delete-vpc-peered",
        "DELETE",
        "/v1/vpcs/red",
        status=409,
        field="vpc",
        detail=("to-blue",),
        ctl="ctl2",
    ),
    Case(
        "delete-ilb-backend",
        "DELETE",
        f"{EP}/b1",
        status=409,
        field="endpoint",
        detail=("backend", "lb1"),
    ),
    Case(
        "delete-next-hop",
        "DELETE",
        f"{EP}/b2",
        status=409,
        field="endpoint",
        detail=("next hop", "r1"),
    ),
    Case(
        "delete-used-subnet",
        "DELETE",
        "/v1/vpcs/blue/subnets/s0",
        status=409,
        field="subnet",
        detail=("b1",),
    ),
    # --- unknown things ---------------------------------------------------------------------
    Case("get-unknown-vpc", "GET", "/v1/vpcs/nope", status=404, field="vpc"),
    Case("get-remote-vpc", "GET", "/v1/vpcs/red", status=404, field="vpc"),
    Case("list-unknown-vpc", "GET", "/v1/vpcs/nope/endpoints", status=404, field="vpc"),
    Case("effective-unknown-vpc", "GET", "/v1/vpcs/nope/routes/effective", status=404, field="vpc"),
    Case(
        "create-in-unknown-vpc", "POST", "/v1/vpcs/nope/endpoints", vm("x", "10.1.0.9"), 404, "vpc"
    ),
    Case("delete-unknown-vpc", "DELETE", "/v1/vpcs/nope", status=404, field="vpc"),
    Case("get-unknown-endpoint", "GET", f"{EP}/nope", status=404, field="endpoint"),
    Case("delete-unknown-endpoint", "DELETE", f"{EP}/nope", status=404, field="endpoint"),
    Case("get-unknown-peering", "GET", f"{PEER}/nope", status=404, field="peering"),
    Case(
        "put-unknown-peering", "PUT", f"{PEER}/nope", {"import_custom_routes": True}, 404, "peering"
    ),
    Case("get-unknown-route", "GET", "/v1/vpcs/blue/routes/nope", status=404, field="route"),
    Case("get-unknown-subnet", "GET", "/v1/vpcs/blue/subnets/nope", status=404, field="subnet"),
    Case("get-unknown-host", "GET", "/v1/hosts/nope", status=404, field="host"),
    Case("unknown-path", "GET", "/v1/nope", status=404, field=None),
    # --- methods and media types ----------------------------------------------------------
    Case("405-collection", "PATCH", "/v1/vpcs", {"name": "amber"}, 405, None, ("GET", "POST")),
    Case("405-item", "PUT", "/v1/vpcs/blue", {"name": "blue"}, 405, None, ("DELETE", "GET")),
    Case("405-hosts", "DELETE", "/v1/hosts", status=405),
    Case("405-effective", "POST", "/v1/vpcs/blue/routes/effective", {}, 405),
    Case("405-healthz", "POST", "/healthz", {}, 405),
    Case(
        "415-text",
        "POST",
        "/v1/vpcs",
        b'{"name": "amber"}',
        415,
        None,
        ("application/json", "text/plain"),
        headers={"Content-Type": "text/plain"},
    ),
    Case("415-none", "POST", "/v1/vpcs", b'{"name": "amber"}', 415, headers={}),
    Case(
        "415-form",
        "PUT",
        "/v1/hosts/hv2",
        b"underlay_ip=192.0.2.2",
        415,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ),
]


def snapshot(cluster: Cluster, target: str) -> dict[str, Any]:
    """Full served state of the target shard and the store version of the others."""
    out: dict[str, Any] = {"target": state_of(cluster[target])}
    for ctl in cluster:
        out[ctl.name] = ctl.version()
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_rejected_without_change(world: Cluster, case: Case) -> None:
    ctl = world[case.ctl]
    before = snapshot(world, case.ctl)
    r = send(ctl, case)
    assert r.status == case.status, r.body
    assert r.headers.get("content-type", "").startswith("application/json")
    error, fld, detail = r.error()
    assert error == CODES[case.status]
    assert fld == case.field, detail
    for part in case.detail:
        assert part in detail, f"{part!r} not in {detail!r}"
    if case.status == 405:
        allow = r.headers.get("allow", "")
        assert allow and case.method not in allow.split(", ")
    assert snapshot(world, case.ctl) == before


# --- authentication ---------------------------------------------------------------------------

SAMPLE = {
    "{vpc}": "blue",
    "subnets/{name}": "subnets/s0",
    "endpoints/{name}": "endpoints/b1",
    "peerings/{name}": "peerings/to-red",
    "routes/{name}": "routes/r1",
    "hosts/{name}": "hosts/hv1",
    "{channel}": "c" * 24,
}
PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/ui"),
    ("GET", "/ui/app.js"),
    ("GET", "/ui/style.css"),
    ("GET", "/v1/openapi.json"),
}


def concrete(path: str) -> str:
    for template, value in SAMPLE.items():
        path = path.replace(template, value)
    assert "{" not in path, path
    if path == "/v1/subscribe":
        path += "?service=destination&key=blue"
    return path


def operations(ctl: Ctl) -> list[tuple[str, str]]:
    doc = ctl.get("/v1/openapi.json")
    return [(m.upper(), p) for p, ops in doc["paths"].items() for m in ops]


def bad_tokens(token: str) -> dict[str, dict[str, str]]:
    return {
        "missing": {},
        "wrong": {"Authorization": "Bearer not-the-token"},
        "prefix": {"Authorization": f"Bearer {token[:-1]}"},
        "longer": {"Authorization": f"Bearer {token}x"},
    }


def bad_schemes(token: str) -> dict[str, dict[str, str]]:
    return {
        "basic": {"Authorization": f"Basic {token}"},
        "bare": {"Authorization": token},
        "empty": {"Authorization": "Bearer "},
    }


def test_every_route_but_health_and_openapi_needs_the_token(world: Cluster) -> None:
    ctl = world["ctl1"]
    ops = operations(ctl)
    assert len(ops) > 20
    before = snapshot(world, "ctl1")
    for method, path in ops:
        url = concrete(path)
        data = b'{"name": "amber"}' if method in ("POST", "PUT") else None
        if path == "/v1/hosts/{name}/applied":  # a well-formed body: only the credential fails
            data = b'{"streams": []}'
        if path == "/v1/channels/{channel}":  # the same
            data = b"{}"
        if (method, path) in PUBLIC:
            r = ctl.raw(method, url, data, {}, token=None)
            assert r.status == 200, (method, path, r.body)
            continue
        variants = bad_tokens(world.token)
        variants.update(bad_schemes(world.token))
        for why, headers in variants.items():
            r = ctl.raw(method, url, data, {**JSON, **headers}, token=None)
            assert r.status == 401, (method, path, why, r.status, r.body)
            assert r.error()[0] == "unauthorized"
    assert snapshot(world, "ctl1") == before


def test_subscribe_answers_other_schemes_with_401(world: Cluster) -> None:
    ctl = world["ctl1"]
    for why, headers in bad_schemes(world.token).items():
        r = ctl.raw("GET", concrete("/v1/subscribe"), None, headers, token=None)
        assert r.status == 401, (why, r.status, r.body)


def test_each_credential_opens_its_own_share(world: Cluster) -> None:
    """A shard's credential opens federation views only; the API token (the operator's)
    everything else; the federation secret itself is no credential (issue 16)."""
    ctl = world["ctl1"]
    shard = world.shard_token("ctl2")
    r = ctl.raw("GET", "/v1/vpcs", token=shard)
    assert r.status == 403
    r = ctl.raw("GET", "/v1/federation/vpcs/blue", token=shard)
    assert r.status == 200 and r.body["vpc"] == "blue"
    assert r.body["view"]["vpc"]["subnets"] == ["10.1.0.0/16"]
    r = ctl.raw("GET", "/v1/federation/vpcs/red", token=shard)
    assert r.status == 404  # not owned here: ask ctl2
    assert ctl.raw("GET", "/v1/federation/vpcs/blue", token=world.federation_token).status == 401
    assert ctl.raw("GET", "/v1/federation/vpcs/blue").status == 403  # an operator, no shard
    assert ctl.raw("GET", "/v1/federation/vpcs/blue", token=world.host_token("hv1")).status == 403
    r = ctl.raw("GET", "/v1/vpcs", headers={"Authorization": f"bearer {world.token}"}, token=None)
    assert r.status == 200  # the scheme is case-insensitive


def test_every_401_carries_www_authenticate(world: Cluster) -> None:
    ctl = world["ctl1"]
    answers: list[tuple[str, Reply]] = []
    for method, path in operations(ctl):
        if (method, path) in PUBLIC:
            continue
        data = b'{"name": "amber"}' if method in ("POST", "PUT") else None
        if path == "/v1/hosts/{name}/applied":  # a well-formed body: only the credential fails
            data = b'{"streams": []}'
        if path == "/v1/channels/{channel}":  # the same
            data = b"{}"
        answers.append((path, ctl.raw(method, concrete(path), data, dict(JSON), token=None)))
    policy = world["ctl2"].get("/v1/vpcs/red/peerings/to-blue")["export_policy_id"]
    peer = f"/v1/subscribe?service=destination&key=red&policy={policy}&host=hv1"
    answers.append(("grant", world["ctl2"].raw("GET", peer, token="mpg1.k1.bad.grant")))
    for what, r in answers:
        assert r.status == 401, (what, r.body)
    missing = [what for what, r in answers if not r.headers.get("www-authenticate")]
    assert not missing, f"401 without WWW-Authenticate: {missing}"


def test_api_token_with_base64_characters_opens_own_streams(
    make_cluster: Callable[..., Cluster],
) -> None:
    token = "c2VjcmV0/dG9rZW4+Zm9yL21lc2hwZWVy=="
    cluster = make_cluster(token=token, layout={"ctl1": ((1, 99), ("blue",))})
    ctl = cluster["ctl1"]
    ctl.vpc("blue", "10.1.0.0/24")
    assert ctl.raw("GET", "/v1/vpcs").status == 200  # the REST API takes it
    with stream(ctl, token, "destination", "blue") as s:
        assert s.status == 200, s.body
        assert s.next()["type"] == "snapshot"


def test_a_host_status_report_is_kept_for_registered_hosts_only(world: Cluster) -> None:
    """PUT /v1/hosts/{name}/status: the API token, a registered host, a valid body; GET shows
    the last one, stamped with when this shard received it."""
    c1 = world["ctl1"]
    assert c1.req("PUT", "/v1/hosts/nohost/status", HOST_STATUS).status == 404
    assert c1.req("PUT", "/v1/hosts/hv1/status", HOST_STATUS, token=None).status == 401
    bad = c1.req("PUT", "/v1/hosts/hv1/status", {**HOST_STATUS, "syncs": -1})
    assert (bad.status, bad.body["field"]) == (400, "syncs"), bad.body
    c1.put("/v1/hosts/hv1/status", HOST_STATUS)
    got = c1.get("/v1/hosts/hv1")
    assert {k: v for k, v in got["status"].items() if k != "reported_at"} == HOST_STATUS
    assert got["status"]["reported_at"] > 1.5e9
