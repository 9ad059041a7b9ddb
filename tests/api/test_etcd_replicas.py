"""Active/standby replicas of one shard on etcd: the leader holds a lease, the standby answers
503 naming it, and after a kill -9 of the leader the standby takes over at the same versions
and the other shard follows the new leader's URL (no restart of anyone)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.ctlkit import Cluster, Ctl, free_port, state_of
from tests.support.etcd import EtcdServer, etcd_server
from tests.support.wait import wait_for


@pytest.fixture
def etcd() -> Iterator[EtcdServer]:
    with etcd_server() as server:
        yield server


def _standby_of(cluster: Cluster, leader: Ctl, replica: str, workdir: Path) -> Ctl:
    """A second process for ``leader``'s shard, with its own port and files."""
    workdir.mkdir(parents=True, exist_ok=True)
    other = Ctl(leader.name, free_port(), workdir, cluster.token, False, host_key=cluster.host_key)
    other.write_conf(
        cluster.directory_file, cluster.heartbeat, {**cluster.options, "replica": replica}
    )
    cluster.ctls[f"{leader.name}/{replica}"] = other  # stopped with the others
    return other


def _standing_by(ctl: Ctl) -> Any:
    """The standby's 503 body once it names a leader (None until then)."""
    status, body = _answer(ctl)
    return body if status == 503 and body["leader"] is not None else None


def _answer(ctl: Ctl) -> tuple[int, Any]:
    """``GET /healthz``'s status and body (0: nothing listens yet)."""
    try:
        r = ctl.req("GET", "/healthz")
    except OSError:
        return 0, None
    return r.status, r.body


def test_the_standby_takes_over_at_the_same_versions(
    make_cluster: Callable[..., Cluster], etcd: EtcdServer, tmp_path: Path
) -> None:
    cluster = make_cluster(
        tls=False, options={"store": "etcd", "etcd_endpoints": etcd.url, "replica": "a"}
    )
    a, c2 = cluster["ctl1"], cluster["ctl2"]
    b = _standby_of(cluster, a, "b", tmp_path / "b")
    b.spawn()
    body = wait_for(lambda: _standing_by(b), what="the standby's 503")
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
    wait_for(lambda: _answer(b)[0] == 200, timeout=30, what="the standby to lead")
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
    body = wait_for(lambda: _standing_by(a), what="a standing by")
    assert body["leader"] == {"replica": "b", "url": b.url}
