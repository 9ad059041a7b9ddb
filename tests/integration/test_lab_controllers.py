"""The lab runs controller shards in their namespaces and applies the topology's intent."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from meshpeer.client import Client
from meshpeer.lab import controllers
from meshpeer.lab.procs import alive, read_pidfile
from tests.integration.labkit import Lab, bring_up, lab_cli, running


@pytest.fixture(scope="module")
def shards() -> Iterator[Lab]:
    with running("shards.yaml") as lab:
        yield lab


def client(lab: Lab, name: str) -> Client:
    return controllers.client_for(lab.plan, name)


def test_status_lists_running_controllers_with_rest_url_and_token(shards: Lab) -> None:
    st = json.loads(lab_cli(shards.name, "status", "--json").stdout)
    ctl = {c["name"]: c for c in st["controllers"]}
    assert set(ctl) == {"ctl1", "ctl2"}
    for c in ctl.values():
        assert c["running"] and c["rest_url"].startswith("http://169.254.")
        assert Client(c["rest_url"], c["api_token"]).get("/v1/vpcs")["vpcs"]


def test_topology_intent_is_applied_on_the_owning_shard(shards: Lab) -> None:
    blue = client(shards, "ctl1").get("/v1/vpcs/blue")
    red = client(shards, "ctl2").get("/v1/vpcs/red")
    assert (blue["vni"], red["vni"]) == (shards.plan.vnis["blue"], shards.plan.vnis["red"])
    eps = {e["name"]: e for e in client(shards, "ctl2").get("/v1/vpcs/red/endpoints")["endpoints"]}
    assert eps["r1"]["mac"] == shards.vm("r1").mac and eps["r1"]["host"] == "hv2"
    hosts = client(shards, "ctl1").get("/v1/hosts")["hosts"]
    assert {h["name"]: h["underlay_ip"] for h in hosts} == {
        h.name: h.underlay_ip for h in shards.plan.hosts
    }


def test_cross_shard_peering_is_active_over_the_management_network(shards: Lab) -> None:
    blue = client(shards, "ctl1").get("/v1/vpcs/blue/peerings/blue-red")
    red = client(shards, "ctl2").get("/v1/vpcs/red/peerings/red-blue")
    assert blue["state"] == red["state"] == "ACTIVE", (blue, red)
    routes = client(shards, "ctl1").get("/v1/vpcs/blue/routes/effective")["routes"]
    assert {(r["prefix"], r["origin"]) for r in routes if r.get("imported")} == {
        ("10.2.0.0/25", "peer:red")
    }


def test_down_stops_the_controllers() -> None:
    lab = bring_up("shards.yaml")
    pids = [
        read_pidfile(f"{controllers.rundir(lab.plan, c)}/controller.pid")
        for c in lab.plan.controllers
    ]
    assert all(p is not None and alive(p) for p in pids)
    lab_cli(lab.name, "down")
    assert not any(p is not None and alive(p) for p in pids)
