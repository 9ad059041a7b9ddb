"""Operator tools on a real lab (mesh.yaml: blue <-> red across shards, red <-> green with
green exporting 10.3.0.0/25 only, blue - green not peered, r3 deferred).

- the ``meshpeer`` CLI with nothing but the config file ``scripts/lab up`` wrote;
- each OHC's ``/metrics`` on its host's loopback, and the shards' over the lab's HTTPS:
  values follow an endpoint created with ``--wait`` (docs/metrics.md);
- ``meshpeer why``: its verdict agrees with ping for reachable and blocked pairs, names the
  first blocking step, and finds a flow missing from a switch when the intent is fine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshpeer.lab import controllers, ohcs, ovs
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


def why(*pair: str) -> tuple[int, list[str]]:
    done = meshpeer("-c", "ctl1", "why", *pair, "--port", "80", check=False)
    assert done.returncode in (0, 4), done.stderr
    return done.returncode, done.stdout.splitlines()


def test_why_agrees_with_ping_and_names_the_first_blocking_step(lab: Lab) -> None:
    cases = {
        ("blue/b1", "blue/b2"): None,  # same VPC, across hosts
        ("blue/b1", "red/r1"): None,  # peered across shards and hosts
        ("blue/b2", "red/r1"): None,  # peered, on one host
        ("blue/b1", "green/g1"): "peered",  # peering is not transitive
        ("red/r1", "green/g2"): "exported",  # green exports 10.3.0.0/25 only
    }
    timings = []
    for (src, dst), blocker in cases.items():
        t0 = time.monotonic()
        code, lines = why(src, dst)
        timings.append(time.monotonic() - t0)
        text = "\n".join(lines)
        if blocker is None:
            assert (code, lines[-1]) == (0, "REACHABLE"), text
            assert not [x for x in lines if x.lstrip().startswith(("BLOCKED ", "- "))], text
            # the source host's pipeline delivers it, locally or through DST's host's
            assert lines[-2].split()[1] == "trace" and "output to port" in lines[-2], text
        else:
            assert code == 4, text
            assert lines[-1].startswith(f"BLOCKED at {blocker}: "), text
            # the data plane agrees: the source host's pipeline drops it
            assert "dropped in l3_lookup(30)" in text, text
        assert lab.ping(src.split("/")[1], dst.split("/")[1]) == (blocker is None), (src, dst)
    print(f"\nmeshpeer why, 5 pairs: {', '.join(f'{t:.2f}' for t in timings)} s each")


def test_why_finds_a_flow_missing_from_a_switch(lab: Lab) -> None:
    """The intent is fine, hv1's switch is not: a flow deleted behind its OHC's back."""
    hv1 = lab.host("hv1")
    assert lab.ping("b1", "r1")
    ovs.ofctl(hv1, "del-flows", "table=30,ip,nw_dst=10.2.0.11")
    try:
        code, lines = why("blue/b1", "red/r1")
        text = "\n".join(lines)
        assert code == 4, text
        assert lines[-1] == (
            "BLOCKED at trace hv1: classify(0) -> routed_hop(20) -> l3_lookup(30): "
            "dropped in l3_lookup(30)"
        ), text
        intent = [x.split()[0] for x in lines[1:] if "trace" not in x.split()[1:2]][:-1]
        assert set(intent) == {"ok"}, text  # every intent step passed, programmed included
        assert not lab.ping("b1", "r1")
    finally:
        ovs.ofctl(hv1, "del-flows")  # the canary flow too: the OHC resyncs everything
        wait_for(lambda: lab.ping("b1", "r1"), 30.0, what="hv1 resynced by its OHC")
