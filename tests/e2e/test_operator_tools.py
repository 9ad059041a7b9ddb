"""Operator tools on a real lab (mesh.yaml: blue <-> red across shards, red <-> green with
green exporting 10.3.0.0/25 only, blue - green not peered, r3 deferred).

- the ``meshpeer`` CLI with nothing but the config file ``scripts/lab up`` wrote;
- each OHC's ``/metrics`` on its host's loopback, and the shards' over the lab's HTTPS:
  values follow an endpoint created with ``--wait`` (docs/metrics.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshpeer.lab import controllers, ohcs
from tests.integration.labkit import E2E_TOPOLOGIES, Lab, running
from tests.support.metrics import Samples, parse, value
from tests.support.wait import wait_for

MESH = "mesh.yaml"
MESHPEER = str(Path(sys.executable).with_name("meshpeer"))


@pytest.fixture(scope="module")
def cli_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Where ``scripts/lab up`` (run by the fixture below, in a child) writes the CLI config."""
    path = str(tmp_path_factory.mktemp("cli") / "cli.json")
    old = os.environ.get("MESHPEER_CONFIG")
    os.environ["MESHPEER_CONFIG"] = path
    try:
        yield path
    finally:
        if old is None:
            del os.environ["MESHPEER_CONFIG"]
        else:
            os.environ["MESHPEER_CONFIG"] = old


@pytest.fixture(scope="module")
def lab(cli_config: str) -> Iterator[Lab]:
    with running(MESH, E2E_TOPOLOGIES) as the_lab:
        yield the_lab


def meshpeer(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHPEER_")}
    env["MESHPEER_CONFIG"] = os.environ["MESHPEER_CONFIG"]
    done = subprocess.run(
        [MESHPEER, *argv], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if check:
        assert done.returncode == 0, f"meshpeer {' '.join(argv)}: {done.stdout}{done.stderr}"
    return done


def ohc_metrics(lab: Lab, host: str) -> Samples:
    url = f"http://127.0.0.1:{ohcs.METRICS_PORT}/metrics"
    return parse(lab.sh(host, "curl", "-sS", "--fail", url))


def shard_metrics(lab: Lab, ctl: str) -> Samples:
    c = next(x for x in lab.plan.controllers if x.name == ctl)
    status, _ = controllers.client(lab.plan, c, None).request("GET", "/healthz")
    assert status == 200
    url = f"{controllers.url(lab.plan, c)}/metrics"
    cmd = ["curl", "-sS", "--fail", "--cacert", str(lab.plan.ca_file), url]
    return parse(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def test_the_cli_needs_only_the_config_the_lab_wrote(lab: Lab, cli_config: str) -> None:
    with open(cli_config, encoding="utf-8") as f:
        written: dict[str, Any] = json.load(f)
    assert {n: c["lab"] for n, c in written["controllers"].items()} == {
        "ctl1": lab.name,
        "ctl2": lab.name,
    }
    out = meshpeer("--controller", "ctl1", "vpcs", "list").stdout
    assert {line.split()[0] for line in out.splitlines()[1:]} == {"blue", "green"}
    out = meshpeer("--controller", "ctl2", "peerings", "list", "red").stdout
    rows = {r[1]: r for r in (line.split() for line in out.splitlines()[1:])}
    assert set(rows) == {"blue", "green"}, out
    for peer, r in rows.items():  # both sides ACTIVE, the peer's read from its own shard
        assert (r[2], r[3].split("/")[0], r[4]) == ("ACTIVE", peer, "ACTIVE"), out


def test_metrics_follow_an_endpoint_programmed_on_its_host(lab: Lab) -> None:
    before = ohc_metrics(lab, "hv3")
    assert value(before, "meshpeer_ohc_fail_static") == 0
    assert value(before, "meshpeer_ohc_streams", state="waiting") == 0
    assert value(before, "meshpeer_ohc_flows_installed") > 0
    shard_before = shard_metrics(lab, "ctl2")
    subscribers = sum(
        v for (n, _), v in shard_before.items() if n == "meshpeer_shard_stream_subscribers"
    )
    assert subscribers > 0  # the OHCs follow ctl2's streams

    # r3 is plumbed on hv3 but deferred: its endpoint, created and waited for, adds flows.
    out = meshpeer("-c", "ctl2", "endpoints", "create", "red", "r3", "--ip", "10.2.0.13",
                   "--host", "hv3", "--mac", lab.vm("r3").mac, "--wait").stdout  # fmt: skip
    assert out.strip().endswith("; programmed"), out

    def synced() -> Samples | None:
        m = ohc_metrics(lab, "hv3")
        ok = "meshpeer_ohc_syncs_total"
        return m if value(m, ok, result="ok") > value(before, ok, result="ok") else None

    after = wait_for(synced, 30.0, what="a sync counted on hv3")
    assert value(after, "meshpeer_ohc_flows_installed") > value(
        before, "meshpeer_ohc_flows_installed"
    )
    assert value(after, "meshpeer_ohc_sync_duration_seconds_count") > value(
        before, "meshpeer_ohc_sync_duration_seconds_count"
    )
    assert value(after, "meshpeer_ohc_switch_changes_total", kind="flow_add") > value(
        before, "meshpeer_ohc_switch_changes_total", kind="flow_add"
    )
    shard_after = shard_metrics(lab, "ctl2")
    route = "/v1/vpcs/{vpc}/endpoints"
    key = {"method": "POST", "route": route, "code": "201"}
    assert value(shard_after, "meshpeer_http_requests_total", **key) == (
        value(shard_before, "meshpeer_http_requests_total", **key) + 1
    )
    assert value(shard_after, "meshpeer_shard_deltas_published_total") > value(
        shard_before, "meshpeer_shard_deltas_published_total"
    )
    assert lab.ping("r3", "b1")
    meshpeer("-c", "ctl2", "endpoints", "delete", "red", "r3", "--wait")
