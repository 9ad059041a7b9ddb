"""Group commit (docs/store.md): concurrent writes share one SQLite commit, each is answered
and published only after that commit, a failed commit fails them all and leaves memory equal
to the store. Green threads on one eventlet hub, as in the controller."""

from __future__ import annotations

import contextlib
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
from meshpeer.metrics import ShardCollector
from meshpeer.protocol import ServiceName
from meshpeer.protocol.messages import StreamId, stream_name
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


class FailNth:
    """A connection whose COMMIT number ``n`` (1-based) fails; ``on_many`` sees each
    ``executemany`` first (to fail a stage). Everything else real."""

    def __init__(self, conn: sqlite3.Connection, n: int = 0, on_many: Any = None) -> None:
        self.conn, self.n, self.count, self.on_many = conn, n, 0, on_many

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            self.count += 1
            if self.count == self.n:
                raise sqlite3.OperationalError("disk I/O error")
        return self.conn.execute(sql, *args)

    def executemany(self, sql: str, rows: Any) -> Any:
        rows = list(rows)
        if self.on_many is not None:
            self.on_many(self.conn, sql, rows)
        return self.conn.executemany(sql, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def api_of(s: ShardState) -> Api:
    handlers = ControllerApi(s, "t", lambda vpc: None, heartbeat_interval=0.05)
    return Api(handlers.routes(), handlers.guard)


def call(api: Api, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    return Request.blank(
        path,
        method=method,
        headers={"Authorization": "Bearer t", "Content-Type": "application/json"},
        body=json.dumps(body).encode() if body is not None else b"",
    ).get_response(api)


def forming(s: ShardState, size: int = 1) -> None:
    """Wait (yielding) until a group of ``size`` staged writes is forming."""
    while s._group is None or len(s._group.writes) < size:
        eventlet.sleep(0)


def answers_match_the_store(s: ShardState, results: dict[str, Any], keys: dict[str, Any]) -> None:
    """Each write answered with a version is in the store, each one that failed is not, and
    memory equals the store."""
    real = s.store._conn  # type: ignore[attr-defined]
    s.store._conn = getattr(real, "conn", real)  # type: ignore[attr-defined]
    snap = s.store.load()
    for name, result in results.items():
        assert (keys[name] in snap.records) == isinstance(result, int), (name, results)
    assert s.versions == {k: r.version for k, r in snap.records.items()}
    assert s.store_version == snap.version


def vm1_and_vm2(s: ShardState, *others: Any) -> dict[str, Any]:
    """vm1 and vm2 written by two green threads (plus ``others``): what each writer got."""
    results: dict[str, Any] = {}

    def write(i: int) -> None:
        try:
            results[f"vm{i}"] = s.commit([vm(s, i)])
        except Exception as exc:  # what its writer would hear
            results[f"vm{i}"] = exc

    pool = eventlet.GreenPool()
    pool.spawn(write, 1)
    pool.spawn(write, 2)
    for other in others:
        pool.spawn(other)
    pool.waitall()
    return results


def split_by_a_meta_write(tmp_path: pathlib.Path, failing_commit: int) -> dict[str, Any]:
    """W1 adds host hv2 and is staged; a meta write (a peering's fetched view) comes while
    its group forms; then W2 places an endpoint on hv2."""
    s = seeded(tmp_path)
    s.store._conn = FailNth(s.store._conn, failing_commit)  # type: ignore[attr-defined]
    s.on_fatal = lambda: pytest.fail("the store could be read: no need to exit")
    results: dict[str, Any] = {}

    def w1() -> None:
        try:
            results["w1"] = s.commit([Host("hv2", ipaddress.ip_address("169.254.101.12"))])
        except CommitFailed as exc:
            results["w1"] = exc

    def w2() -> None:
        forming(s)
        with contextlib.suppress(CommitFailed):
            s.adopt_fetched_view("red", {})
        try:
            ip = ipaddress.ip_address("10.1.0.99")
            ep = ops.new_endpoint(s.intent, "blue", "on-hv2", "vm", ip, None, "hv2", [])
            results["w2"] = s.commit([ep])
        except Exception as exc:  # a refusal (no hv2) or a failed commit
            results["w2"] = exc

    pool = eventlet.GreenPool()
    pool.spawn(w1)
    pool.spawn(w2)
    pool.waitall()
    keys = {"w1": ("host", "hv2"), "w2": ("endpoint", "blue/on-hv2")}
    answers_match_the_store(s, results, keys)
    return results


def test_a_meta_write_that_syncs_a_failing_group_fails_that_group_alone(
    tmp_path: pathlib.Path,
) -> None:
    """C1: the meta write syncs W1's group first; that commit fails W1 (503, no hv2). W2
    comes after, in a group of its own (an endpoint may name a host not registered yet):
    answered by its own commit, not committed behind a 503."""
    results = split_by_a_meta_write(tmp_path, 1)
    assert isinstance(results["w1"], CommitFailed) and isinstance(results["w2"], int)


def test_a_meta_write_mid_group_does_not_split_the_group(tmp_path: pathlib.Path) -> None:
    """C2: the group is one transaction: W1 is answered by its own commit, and W2's failed
    commit fails only W2."""
    results = split_by_a_meta_write(tmp_path, 3)
    assert isinstance(results["w1"], int) and isinstance(results["w2"], CommitFailed)


def test_a_stage_that_loses_the_transaction_fails_the_whole_group(
    tmp_path: pathlib.Path,
) -> None:
    """C3: SQLite rolls the whole transaction back on an error inside vm2's stage (a full
    disk): vm1, staged earlier in the same group, must not be acknowledged."""
    s = seeded(tmp_path)
    s.on_fatal = lambda: pytest.fail("the store could be read: no need to exit")

    def full_disk(conn: sqlite3.Connection, sql: str, rows: list[Any]) -> None:
        if "INSERT INTO resources" in sql and any(r[1] == "blue/vm2" for r in rows):
            conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")

    s.store._conn = FailNth(s.store._conn, 0, full_disk)  # type: ignore[attr-defined]
    results = vm1_and_vm2(s)
    answers_match_the_store(s, results, {f"vm{i}": ("endpoint", f"blue/vm{i}") for i in (1, 2)})
    assert isinstance(results["vm1"], CommitFailed)
    assert s.commit([vm(s, 3)]) == s.store.version  # the shard goes on writing


def test_an_unchanged_put_host_is_answered_after_the_staged_write_it_rests_on(
    tmp_path: pathlib.Path,
) -> None:
    """C4: an OHC re-sends its registration while the first PUT is staged; that group
    fails: the re-sent PUT must not get a 200 for a host that does not exist."""
    s = seeded(tmp_path)
    api = api_of(s)
    s.store._conn = FailNth(s.store._conn, 1)  # type: ignore[attr-defined]
    s.on_fatal = lambda: pytest.fail("the store could be read: no need to exit")
    status: dict[str, int] = {}
    body = {"underlay_ip": "169.254.101.12"}

    def put(name: str) -> None:
        if name == "second":
            forming(s)
        status[name] = call(api, "PUT", "/v1/hosts/hv2", body).status_int

    pool = eventlet.GreenPool()
    pool.spawn(put, "first")
    pool.spawn(put, "second")
    pool.waitall()
    assert status == {"first": 503, "second": 503}
    assert ("host", "hv2") not in s.store.load().records


def test_get_wait_programmed_is_answered_after_the_sync_of_a_staged_write(
    tmp_path: pathlib.Path,
) -> None:
    """C5: a GET ?wait=programmed of an endpoint whose write is staged waits for its sync
    (and its publication): no host holds it before."""
    s = seeded(tmp_path)
    api = api_of(s)
    s.report_applied("hv1", {stream_name(*sid): s.hub.version(sid) for sid in s.hub.stream_ids()})
    syncs = s.store.syncs  # type: ignore[attr-defined]
    seen: dict[str, Any] = {}

    def reader() -> None:
        forming(s)
        answer = call(api, "GET", "/v1/vpcs/blue/endpoints/vm1?wait=programmed&timeout=1")
        seen["synced"] = s.store.syncs > syncs  # type: ignore[attr-defined]
        seen["published"] = "vm1" in set(s.hub.objects(DEST))
        seen["status"] = answer.status_int

    pool = eventlet.GreenPool()
    pool.spawn(s.commit, [vm(s, 1)])
    pool.spawn(reader)
    pool.waitall()
    assert seen == {"synced": True, "published": True, "status": 200}


def test_a_store_closed_while_a_group_forms_fails_every_writer(tmp_path: pathlib.Path) -> None:
    """C6: any error of the sync (here a closed connection) fails the whole group."""
    s = seeded(tmp_path)
    fatal: list[bool] = []
    s.on_fatal = lambda: fatal.append(True)

    def closer() -> None:
        forming(s, 2)
        s.store.close()

    results = vm1_and_vm2(s, closer)
    assert not any(isinstance(r, int) for r in results.values()), results
    assert isinstance(results["vm2"], CommitFailed)
    assert fatal == [True]  # the store cannot be read back: the shard exits


def test_a_write_that_breaks_after_its_stage_leaves_no_staged_row(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """C7: vm2 is staged, then applying it to memory raises: its row must not be committed
    by the group's sync (its writer got an error); the group fails, memory is reloaded."""
    s = seeded(tmp_path)
    s.on_fatal = lambda: pytest.fail("the store could be read: no need to exit")
    apply = s._apply

    def breaks(puts: list[Any], *args: Any) -> Any:
        if any(getattr(r, "name", "") == "vm2" for r in puts):
            raise RuntimeError("a bug")
        return apply(puts, *args)

    monkeypatch.setattr(s, "_apply", breaks)
    results = vm1_and_vm2(s)
    answers_match_the_store(s, results, {f"vm{i}": ("endpoint", f"blue/vm{i}") for i in (1, 2)})
    assert isinstance(results["vm2"], RuntimeError)
    assert not s.store._conn.in_transaction  # type: ignore[attr-defined]


def test_after_a_failed_implicit_sync_the_store_refuses_to_stage_until_the_group_ends(
    tmp_path: pathlib.Path,
) -> None:
    """C1 (store side): another call's implicit sync of the group fails: a later stage must
    not open a fresh transaction that the next reader would commit; the group's own sync
    (and a plain ``commit``'s implicit sync, C10) reports the failure."""
    store = Store.open(str(tmp_path / "s.db"), synchronous="NORMAL")
    real = store._conn
    store.stage([Change("vpc", "a", {"n": 1})])
    store._conn = FailNth(real, 1)  # type: ignore[assignment]
    with pytest.raises(CommitFailed):
        store.set_meta("m", "x")
    with pytest.raises(CommitFailed):
        store.stage([Change("vpc", "b", {"n": 2})])
    with pytest.raises(CommitFailed):
        store.sync()
    assert set(store.load().records) == set()
    store.stage([Change("vpc", "c", {"n": 3})])
    store._conn = FailNth(real, 1)  # type: ignore[assignment]
    with pytest.raises(CommitFailed):
        store.commit([Change("vpc", "d", {"n": 4})])
    with pytest.raises(CommitFailed):
        store.sync()  # c's writer hears that c was lost
    store._conn = real
    assert set(store.load().records) == set()


def test_the_store_version_metric_moves_at_the_sync_not_at_the_stage(
    tmp_path: pathlib.Path,
) -> None:
    """C8: while a group forms, the metric still shows the last committed version (a crash
    would take the staged one back)."""
    s = seeded(tmp_path)
    committed = s.store_version
    seen: list[float] = []

    def scrape() -> None:
        forming(s)
        family = next(
            m for m in ShardCollector(s).collect() if m.name == "meshpeer_shard_store_version"
        )
        seen.append(family.samples[0].value)

    pool = eventlet.GreenPool()
    pool.spawn(s.commit, [vm(s, 1)])
    pool.spawn(scrape)
    pool.waitall()
    assert seen == [committed]
    assert s.store_version == committed + 1
