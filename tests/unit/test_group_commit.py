"""Group commit (docs/store.md): concurrent writes share one SQLite commit, each is answered
and published only after that commit, a failed commit fails them all and leaves memory equal
to the store. Green threads on one eventlet hub, as in the controller."""

from __future__ import annotations

import ipaddress
import json
import pathlib
import sqlite3
from typing import Any

import eventlet
import pytest
from webob import Request

from meshpeer.controller import intent as ops
from meshpeer.controller.api import ControllerApi
from meshpeer.controller.model import Endpoint, Host
from meshpeer.controller.shard import ShardState
from meshpeer.protocol import ServiceName
from meshpeer.protocol.messages import StreamId
from meshpeer.rest import Api
from meshpeer.store.sqlite import Change, CommitFailed, NotFound, Store
from meshpeer.streaming.publisher import StreamHub
from tests.unit.controller_fixtures import directory, subnets

D = directory(ctl1=["blue"])
DEST = StreamId(ServiceName.DESTINATION, "blue", None)


def open_shard(path: pathlib.Path, events: list[str] | None = None) -> ShardState:
    store = Store.open(str(path / "s.db"), synchronous="NORMAL")
    if events is not None:  # the store hook: what each commit saw published when it ran
        sync = store.sync

        def hooked() -> None:
            events.append("sync")
            sync()

        store.sync = hooked  # type: ignore[method-assign]
    hub = StreamHub(base_version=store.next_incarnation() << 32)
    return ShardState("ctl1", D, store, hub, lambda: 1000.0)


def seeded(path: pathlib.Path, events: list[str] | None = None) -> ShardState:
    s = open_shard(path, events)
    s.commit([ops.new_vpc(s.intent, D, "ctl1", "blue", subnets("10.1.0.0/24"), None)])
    s.commit([Host("hv1", ipaddress.ip_address("169.254.101.11"))])
    s.commit([vm(s, 0)])  # the VPC's streams exist: later creates take the fast path
    return s


def vm(s: ShardState, i: int) -> Endpoint:
    ip = ipaddress.ip_address(f"10.1.0.{10 + i}")
    ep: Endpoint = ops.new_endpoint(s.intent, "blue", f"vm{i}", "vm", ip, None, "hv1", [])
    return ep


def concurrently(s: ShardState, writes: list[Endpoint], events: list[str]) -> list[Any]:
    """Each write from its own green thread; what each got (its version, or its error)."""
    results: list[Any] = [None] * len(writes)

    def write(i: int) -> None:
        try:
            results[i] = s.commit([writes[i]])
        except CommitFailed as exc:
            results[i] = exc
        events.append(f"answer {i}")

    pool = eventlet.GreenPool()
    for i in range(len(writes)):
        pool.spawn(write, i)
    pool.waitall()
    return results


def test_concurrent_writes_share_one_commit_and_are_answered_after_it(
    tmp_path: pathlib.Path,
) -> None:
    events: list[str] = []
    s = seeded(tmp_path, events)
    syncs = s.store.syncs  # type: ignore[attr-defined]
    events.clear()
    writes = [vm(s, i) for i in range(1, 9)]
    versions = concurrently(s, writes, events)
    assert s.store.syncs == syncs + 1  # type: ignore[attr-defined]
    assert events[0] == "sync" and sorted(events[1:]) == sorted(f"answer {i}" for i in range(8))
    assert sorted(versions) == list(range(versions[0], versions[0] + 8))  # one version each
    assert {f"vm{i}" for i in range(9)} <= set(s.hub.objects(DEST))


def test_nothing_is_published_before_its_commit(tmp_path: pathlib.Path) -> None:
    s = seeded(tmp_path)
    subscriber = s.hub.wsgi_stream(DEST, s.hub.version(DEST))
    queue, log = subscriber._outbox.queue, s.hub._streams[DEST].log
    queue.drain(log)
    seen: list[tuple[set[str], int]] = []
    sync = s._sync
    assert sync is not None

    def hooked() -> None:  # what hosts and peers could see when the commit runs
        seen.append((set(s.hub.objects(DEST)), len(queue.drain(log))))
        sync()

    s._sync = hooked
    s.applied["hv1"] = {}  # hv1 reported nothing yet: it must apply vm1 once published
    concurrently(s, [vm(s, 1), vm(s, 2)], [])
    assert seen == [({"vm0"}, 0)]  # neither write in the stream, nothing queued for hosts
    assert {"vm1", "vm2"} <= set(s.hub.objects(DEST))
    assert len(queue.drain(log)) > 0
    assert s.pending_hosts("endpoint", "blue/vm1") == ["hv1"]
    subscriber.close()


class FailingCommit:
    """A connection whose next COMMIT fails (a full disk, an I/O error), everything else
    real."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.failed = False

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT" and not self.failed:
            self.failed = True
            raise sqlite3.OperationalError("disk I/O error")
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def snapshot(s: ShardState) -> tuple[Any, ...]:
    return (
        {k: e.to_json() for k, e in s.intent.endpoints.items()},
        dict(s.versions),
        set(s.hub.objects(DEST)),
        s.store_version,
    )


def test_a_failed_group_commit_fails_every_write_and_memory_agrees_with_the_store(
    tmp_path: pathlib.Path,
) -> None:
    s = seeded(tmp_path)
    before = snapshot(s)
    real = s.store._conn  # type: ignore[attr-defined]
    s.store._conn = FailingCommit(real)  # type: ignore[attr-defined]
    s.on_fatal = lambda: pytest.fail("the store could be read: no need to exit")
    results = concurrently(s, [vm(s, i) for i in range(1, 4)], [])
    assert all(isinstance(r, CommitFailed) for r in results)
    assert snapshot(s) == before  # memory back to the store: none of the three
    s.store._conn = real  # type: ignore[attr-defined]
    assert {k for (_, k) in s.store.load().records} == {"blue", "hv1", "blue/vm0"}
    s.commit([vm(s, 1)])  # and the shard goes on writing
    s.store.close()
    again = open_shard(tmp_path)
    assert set(again.intent.endpoints) == {("blue", "vm0"), ("blue", "vm1")}


def test_a_refresh_while_a_group_forms_commits_it_before_publishing(
    tmp_path: pathlib.Path,
) -> None:
    """A federation view or BGP news republishes while writers are joining a group: the group
    is committed first, and every writer is still answered after its commit."""
    events: list[str] = []
    s = seeded(tmp_path, events)
    events.clear()

    def refresh() -> None:
        while s._group is None:  # until a writer has staged and the group is forming
            eventlet.sleep(0)
        published = set(s.hub.objects(DEST))
        s.refresh()
        events.append(f"refresh saw {sorted(published)}")

    pool = eventlet.GreenPool()
    pool.spawn(concurrently, s, [vm(s, i) for i in range(1, 4)], events)
    pool.spawn(refresh)
    pool.waitall()
    assert events[0] == "sync"
    assert set(events[1:]) == {"answer 0", "answer 1", "answer 2", "refresh saw ['vm0']"}
    assert {"vm1", "vm2", "vm3"} <= set(s.hub.objects(DEST))


def test_a_failed_commit_answers_503_json_and_the_endpoint_does_not_exist(
    tmp_path: pathlib.Path,
) -> None:
    s = seeded(tmp_path)
    handlers = ControllerApi(s, "t", lambda vpc: None, heartbeat_interval=0.05)
    api = Api(handlers.routes(), handlers.guard)
    s.store._conn = FailingCommit(s.store._conn)  # type: ignore[attr-defined]
    s.on_fatal = lambda: pytest.fail("the store could be read: no need to exit")

    def call(method: str, body: dict[str, Any] | None = None) -> Any:
        path = "/v1/vpcs/blue/endpoints" + ("" if body else "/vm1")
        return Request.blank(
            path,
            method=method,
            headers={"Authorization": "Bearer t", "Content-Type": "application/json"},
            body=json.dumps(body).encode() if body else b"",
        ).get_response(api)

    answer = call("POST", {"name": "vm1", "ip": "10.1.0.11", "host": "hv1"})
    assert answer.status_int == 503
    assert answer.json["error"] == "unavailable" and "nothing" in answer.json["detail"]
    assert call("GET").status_int == 404
    assert call("POST", {"name": "vm1", "ip": "10.1.0.11", "host": "hv1"}).status_int == 201


def test_a_restart_after_an_acknowledged_group_has_all_of_it(tmp_path: pathlib.Path) -> None:
    s = seeded(tmp_path)
    concurrently(s, [vm(s, i) for i in range(1, 6)], [])
    before = (dict(s.versions), {k: e.to_json() for k, e in s.intent.endpoints.items()})
    s.store.close()
    again = open_shard(tmp_path)
    assert (dict(again.versions), {k: e.to_json() for k, e in again.intent.endpoints.items()}) == (
        before
    )
    assert set(again.hub.objects(DEST)) == {f"vm{i}" for i in range(6)}


def test_without_grouping_each_write_is_its_own_commit(tmp_path: pathlib.Path) -> None:
    store = Store.open(str(tmp_path / "s.db"), synchronous="NORMAL")
    hub = StreamHub(base_version=store.next_incarnation() << 32)
    s = ShardState("ctl1", D, store, hub, lambda: 1000.0, group_commit=False)
    s.commit([ops.new_vpc(s.intent, D, "ctl1", "blue", subnets("10.1.0.0/24"), None)])
    s.commit([Host("hv1", ipaddress.ip_address("169.254.101.11"))])
    syncs = store.syncs
    concurrently(s, [vm(s, i) for i in range(3)], [])
    assert store.syncs == syncs + 3


def test_a_refused_change_set_leaves_the_rest_of_its_group(tmp_path: pathlib.Path) -> None:
    store = Store.open(str(tmp_path / "s.db"), synchronous="NORMAL")
    assert store.stage([Change("vpc", "a", {"n": 1})]) == 1
    with pytest.raises(NotFound):
        store.stage([Change("vpc", "b", {"n": 2}), Change("vpc", "nope", None)])
    assert store.stage([Change("vpc", "c", {"n": 3})]) == 2
    store.sync()
    store.close()
    again = Store.open(str(tmp_path / "s.db"))
    assert {k: r.version for (_, k), r in again.load().records.items()} == {"a": 1, "c": 2}
    assert [e.key for e in again.changes_since(0) or []] == ["a", "c"]
