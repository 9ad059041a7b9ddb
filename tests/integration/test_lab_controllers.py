"""The lab runs controller shards in their namespaces and applies the topology's intent."""

from __future__ import annotations

import json
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshpeer import pki, tls
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
        assert c["running"] and c["rest_url"].startswith("https://169.254.")
        client = Client(c["rest_url"], c["api_token"], ca_file=st["ca_file"])
        assert client.get("/v1/vpcs")["vpcs"]
    assert st["tls"] is True and os.path.exists(st["ca_file"])


def test_a_tls_shard_does_not_answer_plain_http(shards: Lab) -> None:
    for c in shards.plan.controllers:
        with pytest.raises(OSError):  # the shard closes: a request is not a TLS handshake
            Client(f"http://{c.mgmt_ip}:{c.rest_port}", None, timeout=10).request("GET", "/healthz")
        https = controllers.client(shards.plan, c, None, timeout=10)
        assert https.request("GET", "/healthz")[0] == 200


def test_a_client_with_another_ca_refuses_the_shard(shards: Lab, tmp_path: Path) -> None:
    other = pki.make_ca(str(tmp_path), "not the lab's CA")
    c = shards.plan.controllers[0]
    client = Client(controllers.url(shards.plan, c), None, timeout=10, ca_file=other.cert_file)
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        client.request("GET", "/healthz")


def test_a_certificate_for_another_name_is_refused(shards: Lab) -> None:
    """ctl1's certificate is valid (the lab CA signed it) but names ctl1: a client that
    wants ctl2 and reaches ctl1's address refuses it."""
    ctl1, ctl2 = shards.plan.controllers[:2]
    context = tls.client_context(shards.plan.ca_file)
    address = (ctl1.mgmt_ip, ctl1.rest_port)
    with (
        socket.create_connection(address, timeout=10) as sock,
        pytest.raises(ssl.SSLCertVerificationError, match="mismatch"),
    ):
        context.wrap_socket(sock, server_hostname=ctl2.mgmt_ip)
    with (
        socket.create_connection(address, timeout=10) as sock,
        context.wrap_socket(sock, server_hostname=ctl1.mgmt_ip) as secure,
    ):
        assert secure.version() in {"TLSv1.2", "TLSv1.3"}


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
