"""Gateway hosts (issue 14): ``role`` in topology files, on the host REST resource, in the lab
plan and in ``scripts/lab status --json``."""

from __future__ import annotations

import ipaddress
import json
import pathlib
from typing import Any

import pytest
import yaml
from webob import Request

from meshpeer.controller.api import ControllerApi
from meshpeer.controller.model import Host
from meshpeer.lab import cli
from meshpeer.lab.plan import LabPlan, make_plan
from meshpeer.lab.topology import parse
from meshpeer.rest import Api
from tests.unit.test_controller_shard import shard
from tests.unit.test_topology import SAMPLE, errors_of, sample


def with_gateway() -> dict[str, Any]:
    doc = sample()
    doc["hosts"].append({"name": "gw1", "role": "gateway"})
    return doc


def test_a_topology_host_is_a_hypervisor_unless_it_says_gateway() -> None:
    topo = parse(with_gateway())
    assert {h.name: h.role for h in topo.hosts} == {
        "hv1": "hypervisor",
        "hv2": "hypervisor",
        "hv3": "hypervisor",
        "gw1": "gateway",
    }


def test_a_bad_role_and_an_endpoint_on_a_gateway_are_named() -> None:
    doc = with_gateway()
    doc["hosts"][0]["role"] = "router"
    doc["endpoints"][1]["host"] = "gw1"
    errors = errors_of(doc)
    assert "hosts[0].role: expected one of hypervisor, gateway, got 'router'" in errors
    assert "endpoints[1].host: 'gw1' is a gateway host: it runs no endpoints" in errors


def test_the_plan_and_lab_status_carry_each_hosts_role(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = make_plan(parse(with_gateway()), "gw", 7)
    assert LabPlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    old = plan.to_json()  # a state file written before the field: hypervisors
    for h in old["hosts"]:
        del h["role"]
    assert {h.role for h in LabPlan.from_json(old).hosts} == {"hypervisor"}
    monkeypatch.setattr(cli.ovs, "pids", lambda h: [])
    monkeypatch.setattr(cli.controllers, "running", lambda plan, c: False)
    monkeypatch.setattr(cli, "host_report", lambda plan, name: None)
    doc = cli.status(plan)
    assert {h["name"]: h["role"] for h in doc["hosts"]} == {
        "hv1": "hypervisor",
        "hv2": "hypervisor",
        "hv3": "hypervisor",
        "gw1": "gateway",
    }
    assert yaml.safe_load(SAMPLE)  # the sample itself is untouched


def put_host(api: Api, name: str, body: object) -> Any:
    return Request.blank(
        f"/v1/hosts/{name}",
        method="PUT",
        headers={"Authorization": "Bearer t", "Content-Type": "application/json"},
        body=json.dumps(body).encode(),
    ).get_response(api)


def test_a_host_registers_with_a_role_and_a_bad_one_is_refused(tmp_path: pathlib.Path) -> None:
    s = shard(tmp_path)
    handlers = ControllerApi(s, "t", lambda vpc: None)
    api = Api(handlers.routes(), handlers.guard)
    answer = put_host(api, "hv1", {"underlay_ip": "192.0.2.1"})
    assert (answer.status_int, answer.json["role"]) == (200, "hypervisor")
    answer = put_host(api, "gw1", {"underlay_ip": "192.0.2.9", "role": "gateway"})
    assert (answer.status_int, answer.json["role"]) == (200, "gateway")
    assert s.intent.hosts["gw1"] == Host("gw1", ipaddress.ip_address("192.0.2.9"), "gateway")
    answer = put_host(api, "gw1", {"underlay_ip": "192.0.2.9", "role": "router"})
    assert (answer.status_int, answer.json["field"]) == (400, "role")
    assert s.intent.hosts["gw1"].role == "gateway"  # unchanged
    listed = Request.blank("/v1/hosts", headers={"Authorization": "Bearer t"}).get_response(api)
    assert {h["name"]: h["role"] for h in listed.json["hosts"]} == {
        "hv1": "hypervisor",
        "gw1": "gateway",
    }


def test_a_host_record_written_before_roles_is_a_hypervisor() -> None:
    assert Host.from_json({"name": "hv1", "underlay_ip": "192.0.2.1"}).role == "hypervisor"
