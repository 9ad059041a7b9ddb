"""A restarted controller serves exactly what it served before, from its store.

Every GET (with its ``version`` fields) and the store version survive a restart; the next
write gets the next version; streams resumed with a ``since`` from before the restart get a
fresh snapshot rather than a delta of another incarnation.
"""

from __future__ import annotations

import http.client
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.api.ctlkit import Cluster, Ctl, state_of, stream
from tests.support.etcd import etcd_server
from tests.support.wait import wait_for


@pytest.fixture(params=["sqlite", "etcd"])
def any_store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Cluster]:
    """The two shards on SQLite files, or both in one etcd (each under its own prefix)."""
    if request.param == "sqlite":
        yield request.getfixturevalue("cluster")
        return
    with etcd_server() as etcd:
        make = request.getfixturevalue("make_cluster")
        yield make(options={"store": "etcd", "etcd_endpoints": etcd.url})


def build(c1: Ctl, c2: Ctl) -> None:
    """Every kind of resource, on both shards, with a peering within and across shards."""
    for ctl in (c1, c2):
        ctl.put("/v1/hosts/hv1", {"underlay_ip": "192.0.2.1"})
        ctl.put("/v1/hosts/hv2", {"underlay_ip": "2001:db8::2"})
    c1.post(
        "/v1/vpcs",
        {
            "name": "blue",
            "subnets": [{"cidr": "10.1.0.0/16"}, {"name": "v6", "cidr": "fd00:1::/64"}],
        },
    )
    c1.post("/v1/vpcs/blue/subnets", {"name": "extra", "cidr": "10.11.0.0/24"})
    c1.vpc("green", "10.3.0.0/24", vni=1500)
    c2.vpc("red", "10.2.0.0/24")
    c1.vm("blue", "b1", "10.1.0.5")
    c1.post(
        "/v1/vpcs/blue/endpoints",
        {
            "name": "gw",
            "kind": "router",
            "ip": "10.11.0.9",
            "host": "hv2",
            "mac": "02:AB:00:00:00:09",
        },
    )
    c1.vm("blue", "b6", "fd00:1::5", host="hv2")
    c1.post(
        "/v1/vpcs/blue/endpoints",
        {
            "name": "lb1",
            "kind": "ilb",
            "ip": "10.1.0.100",
            "backends": [{"endpoint": "b1", "weight": 3}, {"endpoint": "gw"}],
        },
    )
    c1.post(
        "/v1/vpcs/blue/routes",
        {"name": "onprem", "prefix": "192.168.0.0/16", "next_hop": "10.11.0.9", "priority": 500},
    )
    c1.vm("green", "g1", "10.3.0.5")
    c2.vm("red", "r1", "10.2.0.5", host="hv2")
    c1.peer("blue", "green", export={"ranges": ["10.1.0.0/16"]})
    c1.peer("green", "blue")
    c1.peer("blue", "red", export={"custom_routes": True})
    c1.put("/v1/vpcs/blue/peerings/to-red", {"import_custom_routes": True})  # an update
    c2.peer("red", "blue", export={"private_only": True})
    for vpc, name in (("blue", "to-green"), ("green", "to-blue"), ("blue", "to-red")):
        c1.wait_state(vpc, name, "ACTIVE")
    c2.wait_state("red", "to-blue", "ACTIVE")


def everything(ctl: Ctl) -> dict[str, Any]:
    """state_of plus every single-item GET."""
    out = state_of(ctl)
    for vpc in out["vpcs"]["vpcs"]:
        v = vpc["name"]
        out[f"vpc {v}"] = ctl.get(f"/v1/vpcs/{v}")
        for kind in ("subnets", "endpoints", "peerings", "routes"):
            items = out[f"{v}/{kind}"][kind]
            assert isinstance(items, list)
            for item in items:
                out[f"{v}/{kind}/{item['name']}"] = ctl.get(f"/v1/vpcs/{v}/{kind}/{item['name']}")
    for host in out["hosts"]["hosts"]:
        out[f"host {host['name']}"] = ctl.get(f"/v1/hosts/{host['name']}")
    return out


def settled(ctl: Ctl, expected: dict[str, Any]) -> bool:
    """True once the restarted shard has heard from its peers again and serves ``expected``."""
    return everything(ctl) == expected


def test_restart_serves_every_get_unchanged(any_store: Cluster) -> None:
    cluster = any_store
    c1, c2 = cluster["ctl1"], cluster["ctl2"]
    build(c1, c2)
    before = {ctl.name: everything(ctl) for ctl in cluster}
    versions = {ctl.name: ctl.version() for ctl in cluster}
    assert versions == {"ctl1": 15, "ctl2": 5}  # one version per write (one commit each)
    assert before["ctl1"]["vpc blue"]["version"] == 4  # created at 3, subnet added at 4
    assert before["ctl1"]["blue/peerings/to-red"]["version"] == 15  # updated last
    with stream(c1, cluster.token, "destination", "blue") as s:
        snap = s.next()
        assert snap["type"] == "snapshot"
    for ctl in (c1, c2):  # each in turn: the other keeps serving (and federating)
        ctl.restart()
        assert ctl.starts == 2
        assert ctl.version() == versions[ctl.name]
        expected = before[ctl.name]
        wait_for(lambda: settled(ctl, expected), 30, what="state after restart")  # noqa: B023
        for other in cluster:
            assert everything(other) == before[other.name]
    # The next write continues the version sequence.
    body = c1.put("/v1/hosts/hv3", {"underlay_ip": "192.0.2.3"})
    assert body["version"] == versions["ctl1"] + 1
    assert c1.version() == versions["ctl1"] + 1
    vpc = c1.vpc("amber", "10.4.0.0/24")
    assert vpc["version"] == versions["ctl1"] + 2 and vpc["vni"] == 1001  # lowest free VNI
    # A since from the previous incarnation gets a snapshot of the same objects.
    with stream(c1, cluster.token, "destination", "blue", since=snap["version"]) as s:
        again = s.next()
    assert again["type"] == "snapshot" and again["version"] > snap["version"]
    assert again["objects"] == snap["objects"]

    # The store is the one configured: with etcd no SQLite file was made.
    on_etcd = cluster.options.get("store") == "etcd"
    assert all(ctl.store.exists() != on_etcd for ctl in cluster)
    # Deletes survive a restart too.
    c1.delete("/v1/vpcs/blue/peerings/to-red")
    c1.delete("/v1/vpcs/blue/endpoints/lb1")
    c1.delete("/v1/vpcs/blue/routes/onprem")
    c1.delete("/v1/vpcs/blue/endpoints/gw")
    c1.delete("/v1/vpcs/blue/subnets/extra")
    c2.wait_state("red", "to-blue", "INACTIVE")
    before_deletes = everything(c1)
    version = c1.version()
    assert version == versions["ctl1"] + 7
    assert [e["name"] for e in before_deletes["blue/endpoints"]["endpoints"]] == ["b1", "b6"]
    c1.restart()
    assert c1.version() == version
    wait_for(lambda: settled(c1, before_deletes), 30, what="state after restart")
    assert c1.req("GET", "/v1/vpcs/blue/peerings/to-red").status == 404
    p = c2.wait_state("red", "to-blue", "INACTIVE")
    assert "has not configured" in p["state_details"]


def _hammer(ctl: Ctl, stop: threading.Event, served: list[int]) -> None:
    """Keep the controller busy serving requests until ``stop`` (or it goes away); count
    the answers in ``served``."""
    while not stop.is_set():
        try:
            conn = ctl.connection(timeout=1)
            conn.request("GET", "/v1/openapi.json")
            conn.getresponse().read()
            conn.close()
            served.append(1)
        except (OSError, http.client.HTTPException):
            time.sleep(0.01)


def test_sigterm_stops_a_busy_controller_promptly(cluster: Cluster) -> None:
    """SIGTERM while requests are being served: the handler runs in a request's green thread."""
    ctl = cluster["ctl1"]
    for attempt in range(5):
        proc = ctl.proc
        assert proc is not None
        stop, served = threading.Event(), list[int]()
        workers = [threading.Thread(target=_hammer, args=(ctl, stop, served)) for _ in range(3)]
        for w in workers:
            w.start()
        wait_for(
            lambda served=served: len(served) >= 10, 30, what="the controller busy serving requests"
        )
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)  # the bug was a hang (never reached os._exit), not slowness
        except subprocess.TimeoutExpired:
            code = None  # ctl.start()/the fixture kill it by pid
        finally:
            stop.set()
            for w in workers:
                w.join()
        took = time.monotonic() - start
        assert code == 128 + signal.SIGTERM, f"attempt {attempt}: still running after {took:.1f}s"
        ctl.proc = None
        ctl.start()
