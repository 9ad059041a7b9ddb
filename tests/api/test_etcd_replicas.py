"""Active/standby replicas of one shard on etcd: the leader holds a lease, the standby answers
503 naming it, and after a kill -9 of the leader the standby takes over at the same versions
and the other shard follows the new leader's URL (no restart of anyone)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from meshpeer.client import Client
from meshpeer.store import etcdplan as plan
from tests.api.ctlkit import Cluster, health, standing_by, state_of
from tests.support.etcd import EtcdServer, etcd_server
from tests.support.wait import wait_for


@pytest.fixture
def etcd() -> Iterator[EtcdServer]:
    with etcd_server() as server:
        yield server


def test_the_standby_takes_over_at_the_same_versions(
    make_cluster: Callable[..., Cluster], etcd: EtcdServer
) -> None:
    cluster = make_cluster(
        tls=False, options={"store": "etcd", "etcd_endpoints": etcd.url, "replica": "a"}
    )
    a, c2 = cluster["ctl1"], cluster["ctl2"]
    b = cluster.replica("ctl1", "b")
    b.spawn()
    body = wait_for(lambda: standing_by(b), what="the standby's 503")
    assert body["leader"] == {"replica": "a", "url": a.url}
    assert f"replica 'b' of shard 'ctl1' is a standby; the leader is a at {a.url}" in body["detail"]
    for ctl in (a, c2):
        ctl.put("/v1/hosts/hv1", {"underlay_ip": "192.0.2.1"})
    a.vpc("blue", "10.1.0.0/24")
    a.vm("blue", "b1", "10.1.0.5")
    c2.vpc("red", "10.2.0.0/24")
    a.peer("blue", "red")
    c2.peer("red", "blue")
    a.wait_state("blue", "to-red", "ACTIVE")
    before, version = state_of(a), a.version()

    assert a.proc is not None
    a.proc.kill()  # kill -9: no resignation, the lease has to run out
    a.proc.wait(10)
    a.proc = None
    wait_for(lambda: health(b)[0] == 200, timeout=30, what="the standby to lead")
    assert b.version() == version
    after = state_of(b)
    assert {k: v for k, v in after.items() if k != "healthz"} == {
        k: v for k, v in before.items() if k != "healthz"
    }
    assert b.vm("blue", "b2", "10.1.0.6")["version"] == version + 1  # writes go on, in order
    # the other shard follows the new leader's URL (the leaders watch) and federates with it
    wait_for(
        lambda: c2.get("/v1/placement/blue")["url"] == b.url, what="ctl2 to learn the new leader"
    )
    b.delete("/v1/vpcs/blue/peerings/to-red")
    p = c2.wait_state("red", "to-blue", "INACTIVE")  # ctl2 heard it from b
    assert "has not configured" in p["state_details"]
    # the old leader comes back as a standby of the new one
    a.spawn()
    body = wait_for(lambda: standing_by(a), what="a standing by")
    assert body["leader"] == {"replica": "b", "url": b.url}
    # a switch-over: revoking the leader's lease hands the lead over and ends the old leader
    gateway = Client(etcd.url, None)
    (kv,) = gateway.post("/v3/kv/range", {"key": plan.b64("/meshpeer/leaders/ctl1")})["kvs"]
    gateway.post("/v3/lease/revoke", {"ID": kv["lease"]})
    wait_for(lambda: health(a)[0] == 200, timeout=30, what="a to lead again")
    assert b.proc is not None
    assert b.proc.wait(30) == 75  # its next renewal found the lease gone: it stopped
    b.proc = None
    assert a.version() == version + 2


def test_every_acknowledged_write_survives_failovers_once(
    make_cluster: Callable[..., Cluster], etcd: EtcdServer
) -> None:
    """A client writes endpoints to whichever replica leads while the leader is killed three
    times: every write it got a 201 for is there after, at the version it was given, and no
    version was given twice."""
    cluster = make_cluster(
        tls=False, options={"store": "etcd", "etcd_endpoints": etcd.url, "replica": "a"}
    )
    a = cluster["ctl1"]
    b = cluster.replica("ctl1", "b")
    b.spawn()
    wait_for(lambda: standing_by(b), what="b to stand by")
    a.put("/v1/hosts/hv1", {"underlay_ip": "192.0.2.1"})
    a.vpc("blue", "10.1.0.0/16")
    acked: dict[str, int] = {}  # endpoint -> version of its 201
    refused: list[int] = []
    stop = threading.Event()

    def client() -> None:
        n = 0
        while not stop.is_set():
            name = f"e{n}"
            for ctl in (a, b):
                try:
                    r = ctl.req(
                        "POST",
                        "/v1/vpcs/blue/endpoints",
                        {"name": name, "ip": f"10.1.{n // 250}.{n % 250 + 2}", "host": "hv1"},
                    )
                except OSError:
                    continue
                if r.status == 201:
                    acked[name] = r.body["version"]
                    n += 1
                    break
                if r.status == 409:  # applied, answer lost: present, not acknowledged
                    n += 1
                    break
                refused.append(r.status)

    writer = threading.Thread(target=client)
    writer.start()
    try:
        leader, standby = a, b
        for _ in range(3):
            wait_for(lambda: len(acked) >= 20, what="writes to the leader")
            count = len(acked)
            assert leader.proc is not None
            leader.proc.kill()
            leader.proc.wait(10)
            leader.proc = None
            wait_for(lambda: len(acked) > count + 10, timeout=30, what="writes to the new leader")  # noqa: B023
            leader.spawn()
            wait_for(lambda: standing_by(leader), what="the old leader to stand by")  # noqa: B023
            leader, standby = standby, leader
    finally:
        stop.set()
        writer.join()
    present = {e["name"]: e for e in leader.get("/v1/vpcs/blue/endpoints")["endpoints"]}
    assert set(acked) <= set(present)
    assert all(present[name]["version"] == v for name, v in acked.items())
    assert len(set(acked.values())) == len(acked)  # no version acknowledged twice
    assert set(refused) <= {503}  # standbys and the takeover: 503, never a 500
