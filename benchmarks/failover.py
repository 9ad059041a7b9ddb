"""Failover time of a shard's replicas on etcd (issue 15): leader gone -> standby serving writes.

One etcd member and two replicas of shard ctl1 as real processes on 127.0.0.1 (the API tests'
launcher, tests/api/ctlkit.py; store = etcd, leader_ttl 2 s). Each run kills the current leader
with SIGKILL (no resignation: its lease has to run out), and times from the moment the process
is gone to the first write the other replica acknowledges (a ``PUT /v1/hosts/...`` answered
200, tried every 20 ms on both replicas); then it starts the killed one again and waits until it
stands by, naming the new leader. Every write acknowledged before is checked to be there after,
and the version to be the one before + 1. No lab; run it under the lab lock all the same:

    flock /tmp/meshpeer-lab.lock .venv/bin/python benchmarks/failover.py [--runs 10]

Prints p50/p99 and writes benchmarks/results/failover.json. Target (issue 15): p50 <= 3 s.

``--lab``: the same measure in the lab (tests/e2e/topologies/replicas.yaml: ctl1 with replicas
``a`` and ``b`` on a 3-member etcd cluster, ctl2, two hosts), with b1 -> r1 (cross-shard)
pinged at 100 pps through every run. Each run kills ctl1's leader with SIGKILL and times from
the moment it is gone to the first write a replica acknowledges (the same ``PUT``, tried every
20 ms on each replica); the lab's supervisor starts the killed one again, and the run waits
until it stands by. Through all runs a client (``meshpeer.client.Replicas``: it follows the
leader, and sends a create again under the same name after a 503 or no answer) creates
endpoints in VPC ``wl`` on ctl1, 20 a second at most (tests/e2e/writeloop.py), and each run
starts once 20 more of them were acknowledged (by the leader of the time); after the last
run its log is checked against the shard's list: every acknowledged write present once, at
its version; a resent create whose first send had applied (409, the endpoint as sent) counted
as recognised, never twice. Writes ``failover_lab.json`` (the same fields, plus the pings sent
and lost while later ones were answered, and the writes: ``writes_sent``,
``writes_acknowledged``, ``writes_recognised``, ``writes_retried`` (sent more than once),
``writes_resends``, ``writes_present``; ``unplanned_failovers``: runs after which the killed
replica led again, the one that took over having lost its lease meanwhile):

    flock /tmp/meshpeer-lab.lock .venv/bin/python benchmarks/failover.py --lab [--runs 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import common

sys.path.insert(0, common.ROOT)

from meshpeer.client import Client
from meshpeer.lab import controllers
from meshpeer.lab.plan import ControllerPlan, LabPlan
from tests.api.ctlkit import Cluster, Ctl, health, standing_by
from tests.support.etcd import etcd_server
from tests.support.wait import wait_for

LEADER_TTL = 2.0
LAYOUT = {"ctl1": ((1000, 1999), ("blue",))}
WRITES_VPC, WRITES_CIDR = "wl", "10.50.0.0/16"  # --lab: the write loop's VPC (on ctl1)


def _write(ctl: Ctl, host: str) -> int | None:
    """The version of an acknowledged ``PUT /v1/hosts/<host>`` (None: not acknowledged)."""
    try:
        r = ctl.req("PUT", f"/v1/hosts/{host}", {"underlay_ip": "192.0.2.1"})
    except OSError:
        return None
    return int(r.body["version"]) if r.status == 200 else None


def one_failover(leader: Ctl, standby: Ctl, run: int) -> float:
    """Seconds from the leader's death to the standby's first acknowledged write."""
    before = _write(leader, f"before{run}")
    assert before is not None, "the leader did not take a write"
    assert leader.proc is not None
    leader.proc.kill()
    leader.proc.wait(10)
    leader.proc = None
    gone = time.monotonic()
    version = wait_for(lambda: _write(standby, f"after{run}"), 30, 0.02, "the standby to lead")
    took = time.monotonic() - gone
    assert version == before + 1, (before, version)
    hosts = {h["name"] for h in standby.get("/v1/hosts")["hosts"]}
    assert {f"before{i}" for i in range(run + 1)} <= hosts, hosts
    leader.spawn()
    body = wait_for(lambda: standing_by(leader), 30, what="the old leader to stand by")
    assert body["leader"]["url"] == standby.url, body
    return took


def lab_write(plan: LabPlan, c: ControllerPlan, host: str) -> int | None:
    """The version of a ``PUT /v1/hosts/<host>`` that some replica of ``c`` acknowledged."""
    for r in controllers.replicas(c):
        client = Client(controllers.replica_url(plan, c, r), plan.api_token, 2.0, plan.ca_file)
        try:
            status, body = client.request("PUT", f"/v1/hosts/{host}", {"underlay_ip": "192.0.2.1"})
        except OSError:
            continue
        if status == 200:
            return int(body["version"])
    return None


def lab_failover(plan: LabPlan, c: ControllerPlan, run: int) -> tuple[float, bool]:
    """Seconds from the lab leader's death to a replica's first acknowledged write, and
    whether the killed replica leads again once it is back (the one that took over lost the
    lead meanwhile: a failover nobody asked for)."""
    before = lab_write(plan, c, f"before{run}")
    assert before is not None, "the leader did not take a write"
    leader, pid = controllers.kill_leader(plan, c)
    gone = time.monotonic()
    version = wait_for(lambda: lab_write(plan, c, f"after{run}"), 30, 0.02, "a replica to lead")
    took = time.monotonic() - gone
    assert version > before, (before, version)  # the write loop commits in between
    wait_for(
        lambda: controllers.back_after_kill(plan, c, leader, pid),
        60,
        0.1,
        "the killed replica back, one leading",
    )
    return took, controllers.leader_url(plan, c) == controllers.replica_url(plan, c, leader)


def main_lab(args: argparse.Namespace) -> None:
    from meshpeer.lab.cli import load_topology
    from tests.e2e.traffic import Pinger
    from tests.e2e.writeloop import WriteLoop, check
    from tests.integration.labkit import E2E_TOPOLOGIES

    topology = os.path.join(E2E_TOPOLOGIES, "replicas.yaml")
    times: list[float] = []
    unplanned = 0
    with common.lab(topology, "fobnch") as lab:
        c = next(x for x in lab.plan.controllers if x.name == "ctl1")
        b1 = next(v for v in lab.plan.vms if v.name == "b1")
        r1 = next(v for v in lab.plan.vms if v.name == "r1")
        client = controllers.leader_client(lab.plan, c)
        client.post("/v1/vpcs", {"name": WRITES_VPC, "subnets": [{"cidr": WRITES_CIDR}]})
        with (
            Pinger(b1, r1.ip, count=10**6) as pinger,
            WriteLoop(client, WRITES_VPC, "hv1", WRITES_CIDR) as loop,
        ):
            assert pinger.wait_reply_after(time.time(), 30) is not None, "b1 -> r1"
            for run in range(args.runs):
                flowing = loop.acknowledged + 20  # writes reach the leader before each kill
                wait_for(lambda: loop.acknowledged >= flowing, 60, 0.05, "writes to the leader")  # noqa: B023
                took, again = lab_failover(lab.plan, c, run)
                times.append(took)
                unplanned += again
                print(f"run {run + 1}: {took:.2f} s ({controllers.leader_url(lab.plan, c)} leads)")
            assert pinger.wait_reply_after(time.time(), 30) is not None, "b1 -> r1 after"
            pings = pinger.stop()
            writes = loop.stop()
        counts = check(writes, client.get(f"/v1/vpcs/{WRITES_VPC}/endpoints")["endpoints"])
        topo = load_topology(topology)
        assert topo.etcd is not None
        members = topo.etcd.members
    s = common.summary(times)
    print(f"lab failover over {len(times)} runs: p50 {s['p50']:.2f} s, p99 {s['p99']:.2f} s "
          f"(min {s['min']:.2f}, max {s['max']:.2f}); target p50 <= 3 s; b1 -> r1: "
          f"{pings.sent} sent, {len(pings.gaps())} lost; endpoint writes: "
          f"{counts['writes_acknowledged']} acknowledged, {counts['writes_recognised']} "
          f"recognised, {counts['writes_retried']} retried, {counts['writes_present']} present "
          f"(each once); {unplanned} failovers nobody asked for")  # fmt: skip
    result = {
        "what": "lab: leader killed (SIGKILL) -> a replica acknowledges a write",
        "leader_ttl_s": LEADER_TTL,
        "runs_s": times,
        "summary_s": s,
        "target_p50_s": 3.0,
        "etcd_members": members,
        "pings_sent": pings.sent,
        "pings_lost": len(pings.gaps()),
        **counts,
        "unplanned_failovers": unplanned,
        "machine": common.machine("fobnch"),
        "when": common.now_utc(),
    }
    common.write_json(result, args.out, "failover_lab.json")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--out", default=None)
    p.add_argument("--lab", action="store_true", help="in the lab (replicas.yaml), under pings")
    args = p.parse_args()
    if args.lab:
        main_lab(args)
        return
    times: list[float] = []
    with etcd_server() as etcd, tempfile.TemporaryDirectory() as tmp:
        options = {"store": "etcd", "etcd_endpoints": etcd.url, "leader_ttl": LEADER_TTL}
        cluster = Cluster.create(Path(tmp), LAYOUT, tls=False, options={**options, "replica": "a"})
        try:
            cluster.start_all()
            a, b = cluster["ctl1"], cluster.replica("ctl1", "b")
            b.spawn()
            wait_for(lambda: standing_by(b), 30, what="b to stand by")
            leader, standby = a, b
            for run in range(args.runs):
                took = one_failover(leader, standby, run)
                times.append(took)
                print(f"run {run + 1}: {took:.2f} s ({standby.url} leads)")
                leader, standby = standby, leader
            assert health(leader)[0] == 200
        finally:
            cluster.stop_all()
    s = common.summary(times)
    print(f"failover over {len(times)} runs: p50 {s['p50']:.2f} s, p99 {s['p99']:.2f} s "
          f"(min {s['min']:.2f}, max {s['max']:.2f}); target p50 <= 3 s")  # fmt: skip
    result = {
        "what": "leader killed (SIGKILL) -> standby acknowledges a write",
        "leader_ttl_s": LEADER_TTL,
        "runs_s": times,
        "summary_s": s,
        "target_p50_s": 3.0,
        "machine": common.machine(),
        "when": common.now_utc(),
    }
    common.write_json(result, args.out, "failover.json")


if __name__ == "__main__":
    main()
