"""Per peering side ``forwarding`` (issue 14): REST, topology files and the peering stream."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import pathlib
from typing import Any

import pytest
from webob import Request

from meshpeer.controller.api import ControllerApi
from meshpeer.controller.model import Host, Peering
from meshpeer.controller.mux import must_apply
from meshpeer.controller.peering import federation_view, view_hosts
from meshpeer.lab.topology import parse
from meshpeer.protocol import ServiceName
from meshpeer.protocol.messages import ProtocolError, Snapshot, StreamId
from meshpeer.protocol.peering import PeeringObject
from meshpeer.rest import Api
from tests.unit.test_controller_shard import blue_on_hosts, build, follow, next_message, shard
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


def test_a_gateway_may_follow_only_what_it_relays_for(tmp_path: pathlib.Path) -> None:
    """Grants scoped to the gateway role: gw1 has no endpoint in blue, yet, once blue's side
    toward red sends through the gateways, it follows blue's peering stream (which lists only
    that side) and, with the grant there, red's destinations; never blue's own services."""
    s, _, api = blue_on_hosts(tmp_path)
    s.commit([Host("gw1", ipaddress.ip_address("169.254.101.51"), "gateway")])
    assert follow(api, "gw1", "peering", "blue").status_int == 403  # blue says direct
    side = s.intent.peerings[("blue", "to-red")]
    s.commit([dataclasses.replace(side, forwarding="gateway")])
    mine = s.hub.objects(StreamId(ServiceName.ENDPOINT, "gw1"))
    assert mine == {"relay/blue": {"vpc": "blue", "relay": True}}
    relay = s.hub.objects(StreamId(ServiceName.PEERING, "blue", None, "gw1"))
    assert set(relay) == {"red"}  # blue's side toward green (if any) is not listed
    answers = [
        follow(api, "gw1", "peering", "blue"),
        follow(api, "gw1", "destination", "red", relay["red"]["grant"]),
    ]
    denied = follow(api, "gw1", "destination", "blue")
    try:
        assert [a.status_int for a in answers] == [200, 200]
        assert isinstance(next_message(answers[0]), Snapshot)
        assert denied.status_int == 403
    finally:
        for a in answers:
            a.app_iter.close()


def test_who_must_apply_a_peering_write_when_the_peer_side_uses_gateways(
    tmp_path: pathlib.Path,
) -> None:
    """?wait=programmed on red's side: blue's side sends through the gateways, so red's
    destinations must reach blue's gateways (not blue's hypervisors, which do not follow
    them) and red's other services blue's hypervisors."""
    s, _, _ = blue_on_hosts(tmp_path)  # blue: b1 on hv1, b3 on hv3
    s.commit([Host("gw1", ipaddress.ip_address("169.254.101.51"), "gateway")])
    side = s.intent.peerings[("blue", "to-red")]
    red = s.intent.peerings[("red", "to-blue")]
    pid = red.export.policy_id

    def must() -> dict[str, set[str]]:
        views = s.views()
        got = must_apply(s.intent, s.states, views, red, False)
        return {sid.service.value: set(h) for sid, h in got.items() if sid.policy == pid}

    assert must() == {
        "destination": {"hv1", "hv3"},
        "forwarding": {"hv1", "hv3"},
        "loadbalancer": {"hv1", "hv3"},
    }
    s.commit([dataclasses.replace(side, forwarding="gateway")])
    assert must() == {
        "destination": {"gw1"},
        "forwarding": {"hv1", "hv3"},
        "loadbalancer": {"hv1", "hv3"},
    }
    view = federation_view(s.intent, "ctl1", "blue")
    assert view["vpc"]["relay_hosts"] == ["gw1"]
    assert view["peering/red"]["forwarding"] == "gateway"
    assert view_hosts(view, "relay_hosts") == ["gw1"]
