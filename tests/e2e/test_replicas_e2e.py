"""Shard replicas on the lab's etcd cluster (issue 15), on tests/e2e/topologies/replicas.yaml.

ctl1 runs replicas ``a`` (leads) and ``b`` (stands by); ctl2 one process; three etcd members.
b1 (hv1, blue, ctl1) pings r1 (hv2, red, ctl2) across hosts and shards at 100 pps while:

- the leader of ctl1 is killed with SIGKILL: no request goes unanswered (the switches keep
  their flows: fail static), ``b`` leads and ``scripts/lab status --json`` says so, every OHC
  resumes the same streams at the new leader (no flow changes), and a write through the new
  leader is programmed on the hosts (``?wait=programmed``): the OHCs found the new leader by
  themselves (nobody restarted them);
- etcd members are stopped: one changes nothing; with two gone (no quorum) a write is a 503
  JSON error while reads and the data plane go on; with them back, writes work again;
- a client creates endpoints through the leader-following client while the leader is killed
  three times: every acknowledged write is there once after, at its version, and a resent
  create whose first send had applied is recognised (409, as sent), never made twice.

Every wait is for a condition with a generous deadline; no count or duration is asserted.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from meshpeer.client import Client
from meshpeer.lab import controllers, etcd
from meshpeer.lab.cli import load_topology
from meshpeer.lab.plan import EtcdMemberPlan
from tests.e2e.test_ohc_restarts import (
    PINGS,
    changes,
    log_size,
    logged_syncs,
    newer_than_held,
    report,
    wait_applied,
    wait_replies,
)
from tests.e2e.traffic import Pinger
from tests.e2e.writeloop import WriteLoop, check
from tests.integration.labkit import E2E_TOPOLOGIES as TOPOLOGIES
from tests.integration.labkit import Lab, lab_cli, running
from tests.support.wait import wait_for

TOPOLOGY = "replicas.yaml"


def ctl_status(lab: Lab, name: str) -> dict[str, Any]:
    doc = json.loads(lab_cli(lab.name, "status", "--json").stdout)
    found: dict[str, Any] = next(c for c in doc["controllers"] if c["name"] == name)
    return found


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """replicas.yaml, down at the end whatever happened (``running``)."""
    with running(TOPOLOGY, TOPOLOGIES) as the_lab:
        yield the_lab


def replica(status: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(r for r in status["replicas"] if r["name"] == name)
    return found


def leader_client(lab: Lab, name: str, timeout: float = 30.0) -> Client:
    c = next(x for x in lab.plan.controllers if x.name == name)
    return controllers.client(lab.plan, c, lab.plan.api_token, timeout)


def endpoint(name: str, ip: str, host: str = "hv1") -> dict[str, Any]:
    return {"name": name, "kind": "vm", "ip": ip, "host": host}


def test_kill_9_of_the_leader_loses_nothing_and_the_standby_takes_writes(lab: Lab) -> None:
    before = ctl_status(lab, "ctl1")
    a, b = replica(before, "a"), replica(before, "b")
    assert (a["role"], b["role"]) == ("leader", "standby"), before
    assert before["url"] == a["url"] and a["pid"] is not None
    # The new leader publishes a new incarnation: every stream of ctl1 a host holds comes back
    # at a higher version, under the same name (the directory's URL: a's).
    newer = newer_than_held(lab, a["url"])
    assert all(newer[h.name][a["url"]] for h in lab.plan.hosts), newer
    offsets = {h.name: log_size(h) for h in lab.plan.hosts}
    with Pinger(lab.vm("b1"), lab.vm("r1").ip, count=PINGS) as pinger:
        wait_replies(pinger, "b1 -> r1 before the kill")
        t_kill = time.time()
        os.kill(a["pid"], signal.SIGKILL)

        def b_leads() -> dict[str, Any] | None:
            st = ctl_status(lab, "ctl1")
            return st if replica(st, "b")["role"] == "leader" and st["url"] == b["url"] else None

        after = wait_for(b_leads, timeout=60, step=0.2, what="status --json: b leads ctl1")
        t_led = time.time()
        # the supervisor started the killed replica again: a standby of the new leader
        back = wait_for(
            lambda: (
                (r := replica(ctl_status(lab, "ctl1"), "a"))["pid"] not in (None, a["pid"])
                and r["role"] == "standby"
                and r["alive"]
            ),
            timeout=60,
            what="a back as a standby",
        )
        assert back
        for h in lab.plan.hosts:  # each OHC resumed its streams at the new leader
            wait_applied(h, t_kill, newer[h.name])
        for h in lab.plan.hosts:  # same intent, same snapshot: no flow changed (fail static)
            syncs = logged_syncs(h, offsets[h.name])
            assert changes(syncs) == 0, (h.name, syncs)
        # a write through the new leader, programmed on the hosts that follow blue
        topo = load_topology(os.path.join(TOPOLOGIES, TOPOLOGY))
        b2 = next(e for e in topo.endpoints if e.name == "b2")
        made = leader_client(lab, "ctl1").post(
            "/v1/vpcs/blue/endpoints?wait=programmed", controllers.endpoint_body(lab.plan, b2)
        )
        assert made["programmed"] is True, made
        # r1's host learns b2 through ctl2, which follows blue at the new leader (federation,
        # asynchronous: its channel may be backing off after the old leader refused it)
        wait_for(lambda: lab.ping("r1", "b2"), timeout=30, what="r1 -> b2 (made on the new leader)")
        wait_replies(pinger, "b1 -> r1 after the failover")
        result = pinger.stop()
    report("kill -9 of ctl1's leader, b1 -> r1 at up to 100 pps", result)
    print(f"  b led {t_led - t_kill:.2f}s after the kill (status --json polled)")
    assert not result.gaps(), result.missing()
    assert after["rest_url"] == b["url"]


def write(lab: Lab, name: str, ip: str) -> tuple[int, Any]:
    """POST an endpoint on blue at ctl1's leader (whoever leads now)."""
    return leader_client(lab, "ctl1").request("POST", "/v1/vpcs/blue/endpoints", endpoint(name, ip))


def member(lab: Lab, name: str) -> EtcdMemberPlan:
    return next(m for m in lab.plan.etcd if m.name == name)


def test_etcd_members_one_down_changes_nothing_two_down_stops_writes_only(lab: Lab) -> None:
    e2, e3 = member(lab, "etcd2"), member(lab, "etcd3")
    # a plain etcdctl inside a member's namespace reaches that member
    health = lab_cli(lab.name, "exec", "etcd1", "--", "etcdctl", "endpoint", "health")
    assert "127.0.0.1:2379 is healthy" in health.stdout + health.stderr
    keys = lab_cli(
        lab.name, "exec", "etcd1", "--", "etcdctl", "get", "--prefix", "--keys-only", "/"
    )
    assert "/meshpeer/leaders/ctl1" in keys.stdout.split()
    # the directory's shards, seeded from the lab's file, as every shard reads them
    for name in ("ctl1", "ctl2"):
        assert f"/meshpeer/directory/shards/{name}" in keys.stdout.split()
    entry = lab_cli(
        lab.name, "exec", "etcd1", "--", "etcdctl", "get", "--print-value-only",
        "/meshpeer/directory/shards/ctl1",
    )  # fmt: skip
    c1 = next(x for x in lab.plan.controllers if x.name == "ctl1")
    assert json.loads(entry.stdout)["replicas"] == controllers.replica_urls(lab.plan, c1)
    try:
        etcd.stop(lab.plan, e3)
        members = json.loads(lab_cli(lab.name, "status", "--json").stdout)["etcd"]
        assert [(m["name"], m["pid"] is None) for m in members] == [
            ("etcd1", False),
            ("etcd2", False),
            ("etcd3", True),
        ]
        status, body = write(lab, "q1", "10.1.0.31")
        assert status == 201, body
        etcd.stop(lab.plan, e2)  # no quorum
        status, body = write(lab, "q2", "10.1.0.32")
        assert status == 503, body
        assert body["error"] == "unavailable" and "etcd" in body["detail"], body
        listed = leader_client(lab, "ctl1").get("/v1/vpcs/blue/endpoints")["endpoints"]
        names = {e["name"] for e in listed}
        assert "q1" in names and "q2" not in names  # reads: from memory
        with Pinger(lab.vm("b1"), lab.vm("r1").ip, count=PINGS) as pinger:
            wait_replies(pinger, "b1 -> r1 without an etcd quorum")
            result = pinger.stop()
        assert not result.gaps(), result.missing()
    finally:
        for m in (e2, e3):
            etcd.start(lab.plan, m)
    etcd.wait_healthy(lab.plan)
    tries = itertools.count(100)

    def writes() -> bool:
        n = next(tries)
        try:
            return write(lab, f"w{n}", f"10.1.0.{n}")[0] == 201
        except OSError:
            return False

    wait_for(writes, timeout=90, step=1.0, what="a write once etcd has its quorum back")
    assert lab.ping("b1", "r1"), "b1 -> r1 after etcd came back"


def test_a_client_writing_through_failovers_loses_no_write_and_makes_none_twice(lab: Lab) -> None:
    c = next(x for x in lab.plan.controllers if x.name == "ctl1")
    etcd.wait_healthy(lab.plan)  # the test before stopped members
    controllers.wait_healthy(lab.plan, c, timeout=60)
    client = controllers.leader_client(lab.plan, c)
    client.post("/v1/vpcs", {"name": "wl", "subnets": [{"cidr": "10.50.0.0/16"}]})
    with WriteLoop(client, "wl", "hv1", "10.50.0.0/16") as loop:
        for _ in range(3):
            count = loop.acknowledged
            wait_for(lambda: loop.acknowledged >= count + 20, 60, what="writes to the leader")  # noqa: B023
            killed, pid = controllers.kill_leader(lab.plan, c)
            count = loop.acknowledged
            wait_for(lambda: loop.acknowledged >= count + 20, 60, what="writes to the new leader")  # noqa: B023
            wait_for(
                lambda: controllers.back_after_kill(lab.plan, c, killed, pid),  # noqa: B023
                timeout=60,
                step=0.2,
                what=f"{killed.name} back, one replica leading",
            )
        log = loop.stop()
    counts = check(log, client.get("/v1/vpcs/wl/endpoints")["endpoints"])
    print(f"  writes through 3 failovers: {counts}")
    assert log.retried > 0, "no write was sent again: the failovers went unnoticed"
