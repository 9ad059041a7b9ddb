"""Per peering side ``forwarding`` (issue 14): REST, topology files and the peering stream."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
from webob import Request

from meshpeer.controller.api import ControllerApi
from meshpeer.controller.model import Peering
from meshpeer.lab.topology import parse
from meshpeer.protocol import ServiceName
from meshpeer.protocol.messages import ProtocolError, StreamId
from meshpeer.protocol.peering import PeeringObject
from meshpeer.rest import Api
from tests.unit.test_controller_shard import build, shard
from tests.unit.test_protocol_peering import GOOD
from tests.unit.test_topology import errors_of, sample


def call(api: Api, method: str, path: str, body: object) -> Any:
    return Request.blank(
        path,
        method=method,
        headers={"Authorization": "Bearer t", "Content-Type": "application/json"},
        body=json.dumps(body).encode(),
    ).get_response(api)


def test_a_side_says_forwarding_over_rest_and_its_hosts_get_it(tmp_path: pathlib.Path) -> None:
    s = shard(tmp_path)
    build(s)  # red <-> blue ACTIVE, red's r1 on hv2
    handlers = ControllerApi(s, "t", lambda vpc: None)
    api = Api(handlers.routes(), handlers.guard)
    on_hv2 = StreamId(ServiceName.PEERING, "red", None, "hv2")
    assert s.hub.objects(on_hv2)["blue"]["forwarding"] == "direct"
    answer = call(api, "PUT", "/v1/vpcs/red/peerings/to-blue", {"forwarding": "gateway"})
    assert (answer.status_int, answer.json["forwarding"]) == (200, "gateway"), answer.json
    assert PeeringObject.parse(s.hub.objects(on_hv2)["blue"]).forwarding == "gateway"
    answer = call(api, "PUT", "/v1/vpcs/red/peerings/to-blue", {"forwarding": "sideways"})
    assert (answer.status_int, answer.json["field"]) == (400, "forwarding")
    assert s.intent.peerings[("red", "to-blue")].forwarding == "gateway"  # unchanged
    body = {"name": "to-red2", "peer_vpc": "red", "forwarding": "on-demand"}
    answer = call(api, "POST", "/v1/vpcs/green/peerings", body)
    assert answer.status_int == 409  # green already peers with red: refused, whatever it says
    answer = call(api, "POST", "/v1/vpcs/green/peerings", {**body, "forwarding": 1})
    assert (answer.status_int, answer.json["field"]) == (400, "forwarding")


def test_a_stored_side_and_a_stream_object_without_forwarding_are_direct() -> None:
    stored = {"vpc": "a", "name": "p", "peer_vpc": "b", "export": None}
    assert Peering.from_json(stored).forwarding == "direct"
    old = {k: v for k, v in GOOD.to_json().items() if k != "forwarding"}
    assert PeeringObject.parse(old).forwarding == "direct"
    with pytest.raises(ProtocolError) as info:
        PeeringObject.parse({**GOOD.to_json(), "forwarding": "fast"})
    assert info.value.field == "forwarding"


def test_topology_peerings_say_forwarding() -> None:
    doc = sample()
    doc["peerings"][0]["forwarding"] = "gateway"
    assert [p.forwarding for p in parse(doc).peerings] == ["gateway", "direct"]
    doc["peerings"][1]["forwarding"] = "nearby"
    assert errors_of(doc) == [
        "peerings[1].forwarding: expected one of direct, gateway, on-demand, got 'nearby'"
    ]


def test_a_gateway_registering_is_listed_in_every_hosts_peering_objects(
    tmp_path: pathlib.Path,
) -> None:
    s = shard(tmp_path)
    build(s)
    handlers = ControllerApi(s, "t", lambda vpc: None)
    api = Api(handlers.routes(), handlers.guard)
    on_hv2 = StreamId(ServiceName.PEERING, "red", None, "hv2")
    assert PeeringObject.parse(s.hub.objects(on_hv2)["blue"]).gateways == ()
    assert call(api, "PUT", "/v1/hosts/gw1", {"underlay_ip": "192.0.2.9", "role": "gateway"})
    hops = PeeringObject.parse(s.hub.objects(on_hv2)["blue"]).gateways
    assert [(g.host, g.underlay_ip, g.weight) for g in hops] == [("gw1", "192.0.2.9", 1)]
    call(api, "PUT", "/v1/hosts/gw1", {"underlay_ip": "192.0.2.9", "role": "hypervisor"})
    assert PeeringObject.parse(s.hub.objects(on_hv2)["blue"]).gateways == ()


@pytest.mark.parametrize(
    ("gateways", "field"),
    [
        ("gw1", "gateways"),
        ([{"host": "gw1", "underlay_ip": "::1"}], "gateways[0].underlay_ip"),
        ([{"host": "gw1", "underlay_ip": "192.0.2.9", "weight": 0}], "gateways[0].weight"),
        ([{"host": "gw 1", "underlay_ip": "192.0.2.9"}], "gateways[0].host"),
        ([{"host": "gw1", "underlay_ip": "192.0.2.9"}] * 2, "gateways"),
    ],
)
def test_a_bad_gateway_list_is_refused_by_name(gateways: object, field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        PeeringObject.parse({**GOOD.to_json(), "gateways": gateways})
    assert info.value.field == field
