"""Spillover backends of an ILB (issue 14, overload shift; docs/gateways.md) over real REST
against real shards: what a create publishes, every refusal (a 400 or 409 JSON naming the
field, and nothing changed on either shard), a peering change that makes an entry unusable,
and the OpenAPI document.

blue (10.1.0.0/16), green (10.3.0.0/24) and lime (10.4.0.0/24, peered one way only) are on
ctl1, red on ctl2; blue <-> green and blue <-> red are ACTIVE both ways; green's side exports
10.3.0.0/25 only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest

from tests.api.ctlkit import Cluster, Ctl, register, state_of, stream

EP = "/v1/vpcs/blue/endpoints"
LB = {"name": "lb", "ip": "10.1.0.100", "kind": "ilb", "backends": [{"endpoint": "b1"}]}
G1 = {"vpc": "green", "endpoint": "g1"}  # exported by green's side
G2 = {"vpc": "green", "endpoint": "g2"}  # 10.3.0.200: outside green's export


@pytest.fixture(scope="module")
def world(module_cluster: Cluster) -> Iterator[Cluster]:
    c1, c2 = module_cluster["ctl1"], module_cluster["ctl2"]
    register(module_cluster, "hv1", "hv2")
    c1.vpc("blue", "10.1.0.0/16", "fd00:1::/64")
    c1.vpc("green", "10.3.0.0/24", "fd00:3::/64")
    c1.vpc("lime", "10.4.0.0/24")
    c2.vpc("red", "10.2.0.0/24")
    c1.vm("blue", "b1", "10.1.0.5")
    c1.vm("green", "g1", "10.3.0.5", host="hv2")
    c1.vm("green", "g2", "10.3.0.200", host="hv2")
    c1.vm("green", "g6", "fd00:3::5", host="hv2")
    c1.post("/v1/vpcs/green/endpoints", {**LB, "name": "glb", "ip": "10.3.0.100",
                                         "backends": [{"endpoint": "g1"}]})  # fmt: skip
    c1.vm("lime", "l1", "10.4.0.5", host="hv2")
    c2.vm("red", "r1", "10.2.0.5", host="hv2")
    c1.peer("blue", "green")
    c1.peer("green", "blue", export={"ranges": ["10.3.0.0/25", "fd00:3::/64"]})
    c1.peer("blue", "lime")  # lime has no side back
    c1.peer("blue", "red")
    c2.peer("red", "blue")
    c1.wait_state("blue", "to-green", "ACTIVE")
    c1.wait_state("blue", "to-red", "ACTIVE")
    yield module_cluster


def states(c: Cluster) -> dict[str, Any]:
    return {ctl.name: state_of(ctl) for ctl in c}


def lb_object(ctl: Ctl, vpc: str, vip: str) -> dict[str, Any]:
    """The load-balancer object of ``vip`` the hosts of ``vpc`` get (its own stream)."""
    with stream(ctl, ctl.token, "loadbalancer", vpc, host="hv1") as s:
        msg = s.next()
    assert msg["type"] == "snapshot", msg
    found = [o for o in msg["objects"].values() if o.get("vip") == vip]
    assert len(found) == 1, msg["objects"]
    obj: dict[str, Any] = found[0]
    return obj


def test_an_ilb_with_spillover_backends_is_stored_served_and_published(world: Cluster) -> None:
    c1 = world["ctl1"]
    made = c1.post(EP, {**LB, "spillover": [{**G1, "weight": 3}]})
    try:
        assert made["spillover"] == [{"vpc": "green", "endpoint": "g1", "weight": 3}]
        got = c1.get(f"{EP}/lb")
        assert got["spillover"] == [{"vpc": "green", "endpoint": "g1", "weight": 3}]
        obj = lb_object(c1, "blue", "10.1.0.100")
        (spill,) = obj["spillover"]
        assert (spill["vpc"], spill["endpoint"], spill["weight"]) == ("green", "g1", 3)
        assert spill["ip"] == "10.3.0.5" and spill["host_ip"] == "192.0.2.2"
    finally:
        c1.delete(f"{EP}/lb")


def test_a_batch_create_takes_spillover_and_the_default_weight(world: Cluster) -> None:
    c1 = world["ctl1"]
    c1.ok("POST", f"{EP}:batchCreate", {"endpoints": [{**LB, "spillover": [G1]}]}, 201)
    try:
        assert c1.get(f"{EP}/lb")["spillover"] == [{**G1, "weight": 1}]
    finally:
        c1.delete(f"{EP}/lb")


def spill(*entries: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**LB, **extra, "spillover": list(entries)}


REFUSED = [
    ("not-peered", spill({"vpc": "teal", "endpoint": "t1"}), "spillover[0].vpc", "does not peer"),
    ("one-way", spill({"vpc": "lime", "endpoint": "l1"}), "spillover[0].vpc", "peer back"),
    ("other-shard", spill({"vpc": "red", "endpoint": "r1"}), "spillover[0].vpc", "this shard"),
    ("own-vpc", spill({"vpc": "blue", "endpoint": "b1"}), "spillover[0].vpc", "peered VPC"),
    ("no-endpoint", spill({"vpc": "green", "endpoint": "zz"}), "spillover[0].endpoint", "not an"),
    ("an-ilb", spill({"vpc": "green", "endpoint": "glb"}), "spillover[0].endpoint", "an ILB"),
    ("not-exported", spill(G1, G2), "spillover[1].endpoint", "does not export 10.3.0.200"),
    ("ipv6-backend", spill({"vpc": "green", "endpoint": "g6"}), "spillover[0].endpoint", "IP"),
    ("ipv6-vip", spill(G1, ip="fd00:1::100"), "spillover", "IPv4 VIPs only"),
    ("twice", spill(G1, {**G1, "weight": 2}), "spillover", "listed twice"),
    ("weight-0", spill({**G1, "weight": 0}), "spillover[0].weight", ""),
    ("weight-65536", spill({**G1, "weight": 65536}), "spillover[0].weight", ""),
    ("weight-text", spill({**G1, "weight": "2"}), "spillover[0].weight", ""),
    ("no-vpc", spill({"endpoint": "g1"}), "spillover[0].vpc", ""),
    ("unknown-field", spill({**G1, "share": 50}), "spillover[0].share", ""),
    ("too-many", spill(*[G1] * 257), "spillover", ""),
    ("on-a-vm", {"name": "b9", "ip": "10.1.0.9", "host": "hv1", "spillover": [G1]}, "spillover",
     "only an ILB"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "field", "detail"), [r[1:] for r in REFUSED],
                         ids=[r[0] for r in REFUSED])  # fmt: skip
def test_a_bad_spillover_is_a_400_naming_the_field_and_changes_nothing(
    world: Cluster, body: dict[str, Any], field: str, detail: str
) -> None:
    before = states(world)
    for path, sent in ((EP, body), (f"{EP}:batchCreate", {"endpoints": [body]})):
        r = world["ctl1"].req("POST", path, sent)
        assert r.status == 400, (path, r.status, r.body)
        error, named, text = r.error()
        assert error == "bad_request"
        assert named in (field, f"endpoints[0].{field}"), r.body
        assert detail in text, r.body
    assert states(world) == before


def test_deleting_an_endpoint_an_ilb_spills_into_is_a_409_naming_the_ilb(world: Cluster) -> None:
    c1 = world["ctl1"]
    c1.post(EP, spill(G1))
    try:
        before = states(world)
        r = c1.req("DELETE", "/v1/vpcs/green/endpoints/g1")
        assert r.status == 409, r.body
        error, _, text = r.error()
        assert error == "conflict" and "lb" in text, r.body
        assert states(world) == before
    finally:
        c1.delete(f"{EP}/lb")
    assert c1.get("/v1/vpcs/green/endpoints/g1")["name"] == "g1"  # deletable now, kept


def test_a_peering_change_that_makes_an_entry_unusable_drops_it_until_allowed(
    world: Cluster,
) -> None:
    c1 = world["ctl1"]
    c1.post(EP, spill(G1))
    side = "/v1/vpcs/green/peerings/to-blue"
    try:
        assert [s["endpoint"] for s in lb_object(c1, "blue", "10.1.0.100")["spillover"]] == ["g1"]
        c1.put(side, {"export": {"ranges": ["10.3.0.128/25"]}})  # g1 no longer exported
        assert c1.get(f"{EP}/lb")["spillover"] == [{**G1, "weight": 1}]  # the reference stays
        assert "spillover" not in lb_object(c1, "blue", "10.1.0.100")
        c1.put(side, {"export": {"ranges": ["10.3.0.0/25", "fd00:3::/64"]}})
        assert [s["endpoint"] for s in lb_object(c1, "blue", "10.1.0.100")["spillover"]] == ["g1"]
    finally:
        c1.put(side, {"export": {"ranges": ["10.3.0.0/25", "fd00:3::/64"]}})
        c1.delete(f"{EP}/lb")


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_the_openapi_document_describes_spillover_and_real_answers_match(world: Cluster) -> None:
    c1 = world["ctl1"]
    doc = c1.raw("GET", "/v1/openapi.json", token=None).body
    create = doc["paths"]["/v1/vpcs/{vpc}/endpoints"]["post"]
    body = resolve(doc, create["requestBody"]["content"]["application/json"]["schema"])
    entries = resolve(doc, body["properties"]["spillover"])
    item = resolve(doc, entries["items"])
    assert entries["maxItems"] == 256
    assert set(item["required"]) == {"vpc", "endpoint"}
    assert item["additionalProperties"] is False
    weight = item["properties"]["weight"]
    assert (weight["minimum"], weight["maximum"]) == (1, 65535)
    delete = doc["paths"]["/v1/vpcs/{vpc}/endpoints/{name}"]["delete"]
    assert "409" in delete["responses"] and "spillover" in delete["summary"]

    def check(method: str, template: str, path: str, body: Any = None) -> int:
        """Send; the answer must match the document's schema for its status."""
        r = c1.req(method, path, body)
        op = doc["paths"][template][method.lower()]
        schema = op["responses"][str(r.status)]["content"]["application/json"]["schema"]
        jsonschema_rs.Draft202012Validator({**schema, "components": doc["components"]}).validate(
            r.body
        )
        return r.status

    item_path = "/v1/vpcs/{vpc}/endpoints/{name}"
    assert check("POST", "/v1/vpcs/{vpc}/endpoints", EP, spill(G1)) == 201
    try:
        assert check("GET", item_path, f"{EP}/lb") == 200
        bad = {**spill(G2), "name": "lb2", "ip": "10.1.0.101"}
        assert check("POST", "/v1/vpcs/{vpc}/endpoints", EP, bad) == 400
        assert check("DELETE", item_path, "/v1/vpcs/green/endpoints/g1") == 409
    finally:
        c1.delete(f"{EP}/lb")


def test_a_spillover_backends_host_registering_later_republishes_the_ilb(world: Cluster) -> None:
    """The lab's race (benchmarks/gateway_spillover.py's 30 s shifts): b1's host registered
    after the ILB was created, and the ILB's object kept ``host_ip: null`` for b1 (every host
    left it out) until some other write republished the ILB's VPC."""
    c1 = world["ctl1"]
    c1.vm("green", "g7", "10.3.0.7", host="hv7")  # hv7 has not registered yet
    c1.post(EP, spill({"vpc": "green", "endpoint": "g7"}))
    try:
        (entry,) = lb_object(c1, "blue", "10.1.0.100")["spillover"]
        assert entry["host_ip"] is None
        c1.put("/v1/hosts/hv7", {"underlay_ip": "192.0.2.7"})  # committed when it answers
        (entry,) = lb_object(c1, "blue", "10.1.0.100")["spillover"]
        assert entry["host_ip"] == "192.0.2.7"
    finally:
        c1.delete(f"{EP}/lb")
        c1.delete("/v1/vpcs/green/endpoints/g7")
