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
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import common

sys.path.insert(0, common.ROOT)

from tests.api.ctlkit import Cluster, Ctl, health, standing_by
from tests.support.etcd import etcd_server
from tests.support.wait import wait_for

LEADER_TTL = 2.0
LAYOUT = {"ctl1": ((1000, 1999), ("blue",))}


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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--out", default=None)
    args = p.parse_args()
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
