"""The intent store contract, on real SQLite files and on a real etcd: versions, atomicity,
restart; then SQLite's own schema migration.

Tests taking ``backend`` run against both stores (``meshpeer.store.contract.IntentStore``); the
etcd half starts one etcd for the module (tests/support/etcd.py) and gives each test its own
key prefix.
"""

from __future__ import annotations

import base64
import itertools
import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from meshpeer.client import Client
from meshpeer.store import (
    SCHEMA_VERSION,
    Change,
    Conflict,
    IntentStore,
    LogEntry,
    NotFound,
    SchemaTooNew,
    Store,
    StoreError,
)
from meshpeer.store.etcd import EtcdStore
from meshpeer.store.migrations import MIGRATIONS
from tests.support.etcd import EtcdServer, etcd_server


def _open(path: Path, **kw: Any) -> Store:
    # NORMAL keeps the suite fast; it is as durable as FULL against a process exit.
    return Store.open(str(path), synchronous="NORMAL", **kw)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "intent.db"


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    with etcd_server() as server:
        yield server


_prefixes = itertools.count()


@dataclass
class Backend:
    """One store, opened again and again (a restart) with :meth:`open`."""

    name: str
    open: Callable[..., IntentStore]
    script_args: list[str]  # how a subprocess opens the same store (see _SCRIPT)
    raw_body: Callable[[], str]  # the stored text of the only resource


def _sqlite_backend(db: Path) -> Backend:
    def raw() -> str:
        return str(sqlite3.connect(db).execute("SELECT body FROM resources").fetchone()[0])

    return Backend("sqlite", lambda **kw: _open(db, **kw), ["sqlite", str(db)], raw)


def _etcd_backend(server: EtcdServer) -> Backend:
    prefix = f"/test/{next(_prefixes)}/"

    def raw() -> str:
        key = base64.b64encode(f"{prefix}res/".encode()).decode()
        end = base64.b64encode(f"{prefix}res0".encode()).decode()
        answer = Client(server.url, None).post("/v3/kv/range", {"key": key, "range_end": end})
        (kv,) = answer["kvs"]
        value = base64.b64decode(kv["value"]).decode()  # {"body":<text>,"created_version":..
        return value[len('{"body":') : value.rindex(',"created_version":')]

    def opener(**kw: Any) -> IntentStore:
        return EtcdStore.open([server.url], prefix, **kw)

    return Backend("etcd", opener, ["etcd", server.url, prefix], raw)


@pytest.fixture(params=["sqlite", "etcd"])
def backend(request: pytest.FixtureRequest, db: Path) -> Backend:
    if request.param == "sqlite":
        return _sqlite_backend(db)
    return _etcd_backend(request.getfixturevalue("etcd"))


def _bodies(store: IntentStore) -> dict[tuple[str, str], tuple[dict[str, Any], int, int]]:
    snap = store.load()
    return {k: (r.body, r.version, r.created_version) for k, r in snap.records.items()}


def test_new_store_is_empty_at_version_zero(backend: Backend) -> None:
    with backend.open() as s:
        snap = s.load()
        assert (s.version, snap.version, snap.records, snap.meta) == (0, 0, {}, {})
        assert s.changes_since(0) == []


def test_each_commit_is_one_version_and_stamps_what_it_wrote(backend: Backend) -> None:
    with backend.open() as s:
        assert s.commit([Change("vpc", "blue", {"cidr": "10.0.0.0/16"})]) == 1
        v2 = s.commit(
            [Change("endpoint", "blue/b1", {"ip": "10.0.0.5"}), Change("vpc", "red", {"n": 1})]
        )
        assert v2 == 2
        assert s.commit([Change("vpc", "blue", {"cidr": "10.1.0.0/16"})]) == 3
        assert s.version == 3
        assert _bodies(s) == {
            ("vpc", "blue"): ({"cidr": "10.1.0.0/16"}, 3, 1),
            ("endpoint", "blue/b1"): ({"ip": "10.0.0.5"}, 2, 2),
            ("vpc", "red"): ({"n": 1}, 2, 2),
        }
        assert s.commit([Change("vpc", "red", None)]) == 4
        assert ("vpc", "red") not in s.load().records


def test_recreated_resource_gets_a_new_created_version(backend: Backend) -> None:
    with backend.open() as s:
        s.commit([Change("vpc", "blue", {})])
        s.commit([Change("vpc", "blue", None)])
        s.commit([Change("vpc", "blue", {"a": 1})])
        assert s.load().records[("vpc", "blue")].created_version == 3


def test_a_change_set_larger_than_one_read_keeps_each_created_version(backend: Backend) -> None:
    """etcd reads what a change set touches 100 keys at a time, the first read with ``head``:
    every resource past the first read still keeps its created version, a new one gets the
    commit's, and a delete of one that is not there refuses the whole set."""
    ids = [f"blue/e{i:03}" for i in range(250)]
    with backend.open() as s:
        s.commit([Change("endpoint", k, {"n": 0}) for k in ids[::2]])  # every other one
        s.commit([Change("endpoint", k, {"n": 1}) for k in ids])
        records = s.load().records
        assert {k: records[("endpoint", k)].created_version for k in ids} == {
            k: 1 if i % 2 == 0 else 2 for i, k in enumerate(ids)
        }
        with pytest.raises(NotFound):
            s.commit([*(Change("endpoint", k, None) for k in ids), Change("vpc", "gone", None)])
        assert s.version == 2 and len(s.load().records) == 250


def test_bodies_are_canonical_json_and_load_back_equal(backend: Backend) -> None:
    body = {"b": [1, 2.5, None, True], "a": {"z": "ü", "y": {}}}
    with backend.open() as s:
        s.commit([Change("vpc", "blue", body)])
        assert s.load().records[("vpc", "blue")].body == body
    assert backend.raw_body() == '{"a":{"y":{},"z":"ü"},"b":[1,2.5,null,true]}'


@pytest.mark.parametrize(
    "changes, error",
    [
        ([], ValueError),
        ([Change("vpc", "x", {"when": object()})], TypeError),
        ([Change("vpc", "x", {"nan": float("nan")})], ValueError),
        # Would load back unequal: as a list, and with key "1".
        ([Change("vpc", "x", {"t": (1, 2)})], ValueError),
        ([Change("vpc", "x", {1: "a"})], ValueError),  # type: ignore[dict-item]
        ([Change("vpc", "x", [1])], TypeError),  # type: ignore[arg-type]
        ([Change("vpc", "", {})], ValueError),
        ([Change("vpc", "x", {}), Change("vpc", "x", None)], ValueError),
        # Fails inside the transaction, after the first write has been executed.
        ([Change("vpc", "new", {"a": 1}), Change("vpc", "missing", None)], NotFound),
    ],
)
def test_failed_commit_writes_nothing(backend: Backend, changes: list[Change], error: type) -> None:
    with backend.open() as s:
        s.commit([Change("vpc", "blue", {"a": 1})])
        before = (s.load(), s.changes_since(0))
        with pytest.raises(error):
            s.commit(changes)
        assert (s.load(), s.changes_since(0)) == before
        assert s.commit([Change("vpc", "blue", {"a": 2})]) == 2  # still usable


def test_expect_version_detects_a_store_that_moved_on(backend: Backend) -> None:
    with backend.open() as s:
        s.commit([Change("vpc", "blue", {})])
        with pytest.raises(Conflict) as exc:
            s.commit([Change("vpc", "red", {})], expect_version=0)
        assert (exc.value.expected, exc.value.actual) == (0, 1)
        assert s.version == 1 and ("vpc", "red") not in s.load().records
        assert s.commit([Change("vpc", "red", {})], expect_version=1) == 2


def test_restart_serves_the_same_state_at_the_same_versions(backend: Backend) -> None:
    with backend.open() as s:
        for i in range(5):
            s.commit([Change("endpoint", f"blue/b{i}", {"i": i})])
        s.commit([Change("endpoint", "blue/b0", None), Change("vpc", "blue", {"x": 1})])
        s.set_meta("shard", "eu-1")
        before, log = s.load(), s.changes_since(0)
    with backend.open() as s:
        assert s.load() == before
        assert s.changes_since(0) == log
        assert s.commit([Change("vpc", "red", {})]) == before.version + 1


_SCRIPT = (
    "import os, sys\n"
    "from meshpeer.store import Change, Store\n"
    "from meshpeer.store.etcd import EtcdStore\n"
    "kind, where = sys.argv[1], sys.argv[2:]\n"
    "s = Store.open(*where) if kind == 'sqlite' else EtcdStore.open([where[0]], where[1])\n"
    "s.next_incarnation()\n"
    "for i in range(20): s.commit([Change('vpc', f'v{i}', {'i': i})])\n"
    "os._exit(0)\n"
)


def test_a_killed_process_loses_nothing_it_committed(backend: Backend) -> None:
    """No close(); for SQLite no checkpoint either: the commits live only in the WAL."""
    cmd = [sys.executable, "-c", _SCRIPT, *backend.script_args]
    subprocess.run(cmd, check=True, timeout=60)
    if backend.name == "sqlite":
        assert Path(f"{backend.script_args[1]}-wal").stat().st_size > 0
    with backend.open() as s:
        assert (s.version, s.incarnation) == (20, 1)
        assert _bodies(s)[("vpc", "v19")] == ({"i": 19}, 20, 20)


def test_wal_and_pragmas_are_on(db: Path) -> None:
    with _open(db) as s:
        conn = s._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    with Store.open(str(db)) as s:
        assert s._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    # WAL is a property of the file: a plain connection sees it too.
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_rejects_bad_options_and_in_memory_databases(db: Path) -> None:
    with pytest.raises(ValueError):
        Store.open(str(db), synchronous="OFF")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Store.open(str(db), log_retention=0)
    with pytest.raises(StoreError, match="wal"):
        Store.open(":memory:")


def test_incarnation_increments_across_reopen(backend: Backend) -> None:
    with backend.open() as s:
        assert s.incarnation == 0
        assert s.next_incarnation() == 1
        assert s.next_incarnation() == 2
        assert s.version == 0  # not a change of intent
    with backend.open() as s:
        assert s.incarnation == 2
        assert s.next_incarnation() == 3


def test_meta_set_get_delete_without_version_bump(backend: Backend) -> None:
    with backend.open() as s:
        assert s.get_meta("shard") is None
        s.set_meta("shard", "a")
        s.set_meta("shard", "b")
        assert s.get_meta("shard") == "b"
        assert s.load().meta == {"shard": "b"}
        s.set_meta("shard", None)
        assert s.get_meta("shard") is None
        assert s.version == 0
        with pytest.raises(TypeError):
            s.set_meta("n", 1)  # type: ignore[arg-type]


def test_changes_since_and_bounded_log(backend: Backend) -> None:
    with backend.open(log_retention=3) as s:
        s.commit([Change("vpc", "b", {}), Change("vpc", "a", {})])
        s.commit([Change("vpc", "a", None)])
        assert s.changes_since(0) == [
            LogEntry(1, "vpc", "a", "put"),
            LogEntry(1, "vpc", "b", "put"),
            LogEntry(2, "vpc", "a", "delete"),
        ]
        assert s.changes_since(1) == [LogEntry(2, "vpc", "a", "delete")]
        assert s.changes_since(2) == []
        assert s.changes_since(3) is None  # from the future: not this store's history
        for i in range(3):
            s.commit([Change("vpc", f"c{i}", {})])  # versions 3, 4, 5: keeps 3..5
        assert s.changes_since(1) is None
        assert [e.version for e in s.changes_since(2) or []] == [3, 4, 5]
        assert s.changes_since(5) == []


def test_the_sqlite_log_keeps_only_its_retention(db: Path) -> None:
    with _open(db, log_retention=3) as s:
        for i in range(5):
            s.commit([Change("vpc", f"c{i}", {})])
        rows = s._conn.execute("SELECT COUNT(*) FROM changes").fetchone()[0]
        assert rows == 3


def test_two_handles_on_one_store_keep_versions_contiguous(backend: Backend) -> None:
    a, b = backend.open(), backend.open()
    try:
        assert a.commit([Change("vpc", "x", {})]) == 1
        assert b.commit([Change("vpc", "y", {})]) == 2
        assert a.commit([Change("vpc", "z", {})]) == 3
        assert a.load() == b.load()
    finally:
        a.close()
        b.close()


# --- schema -----------------------------------------------------------------------------------


def _write_v1(path: Path) -> None:
    """A schema-1 file as the first release wrote it, spelled out here so it cannot drift."""
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        PRAGMA journal_mode=WAL;
        CREATE TABLE head (id INTEGER PRIMARY KEY CHECK (id = 1),
                           version INTEGER NOT NULL, incarnation INTEGER NOT NULL);
        INSERT INTO head VALUES (1, 7, 4);
        CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
        INSERT INTO meta VALUES ('shard', 'eu-1');
        CREATE TABLE resources (kind TEXT NOT NULL, key TEXT NOT NULL, body TEXT NOT NULL,
                                version INTEGER NOT NULL, PRIMARY KEY (kind, key)) WITHOUT ROWID;
        INSERT INTO resources VALUES ('vpc', 'blue', '{"cidr":"10.0.0.0/16"}', 2);
        INSERT INTO resources VALUES ('endpoint', 'blue/b1', '{"ip":"10.0.0.5"}', 7);
        PRAGMA user_version = 1;
        """
    )
    conn.close()


def test_migrates_a_v1_file_keeping_data_and_versions(db: Path) -> None:
    _write_v1(db)
    with _open(db) as s:
        assert s._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        assert (s.version, s.incarnation, s.get_meta("shard")) == (7, 4, "eu-1")
        assert _bodies(s) == {
            ("vpc", "blue"): ({"cidr": "10.0.0.0/16"}, 2, 2),
            ("endpoint", "blue/b1"): ({"ip": "10.0.0.5"}, 7, 7),
        }
        assert s.changes_since(7) == []
        assert s.changes_since(6) is None  # v1 kept no log
        assert s.commit([Change("vpc", "blue", {"cidr": "10.1.0.0/16"})]) == 8
        assert s.changes_since(7) == [LogEntry(8, "vpc", "blue", "put")]
        assert s.load().records[("vpc", "blue")].created_version == 2
        assert s.next_incarnation() == 5
    with _open(db) as s:  # and the migrated file reopens as is
        assert s.version == 8


def test_refuses_a_schema_newer_than_the_code(db: Path) -> None:
    with _open(db) as s:
        s.commit([Change("vpc", "blue", {})])
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaTooNew, match="newer than this code"):
        _open(db)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT version FROM head").fetchone()[0] == 1  # untouched


def test_a_failed_migration_step_leaves_the_file_at_the_old_schema(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_v1(db)

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE resources ADD COLUMN created_version INTEGER")
        raise RuntimeError("boom")

    monkeypatch.setattr("meshpeer.store.sqlite.MIGRATIONS", (MIGRATIONS[0], broken))
    with pytest.raises(RuntimeError):
        _open(db)
    monkeypatch.undo()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    cols = [r[1] for r in conn.execute("PRAGMA table_info(resources)")]
    assert "created_version" not in cols
    conn.close()
    with _open(db) as s:
        assert s.version == 7


# --- the store against a dict model ----------------------------------------------------------

KINDS = st.sampled_from(["vpc", "endpoint"])
KEYS = st.sampled_from(["a", "b", "c", "d"])
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)
BODIES = st.dictionaries(st.text(max_size=4), JSON, max_size=3)
RETENTION = 4


class StoreVsModel(RuleBasedStateMachine):
    """Random commits, failed commits and reopens; the store must always equal the model."""

    fresh: Callable[[], Backend]  # a new, empty store

    def __init__(self) -> None:
        super().__init__()
        self.backend = self.fresh()
        self.store = self.backend.open(log_retention=RETENTION)
        self.version = 0
        self.model: dict[tuple[str, str], tuple[dict[str, Any], int, int]] = {}
        self.log: list[LogEntry] = []

    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.tuples(KINDS, KEYS), min_size=1, max_size=4, unique=True))
        changes = []
        for rid in ids:
            delete = rid in self.model and data.draw(st.booleans())
            changes.append(Change(*rid, None if delete else data.draw(BODIES)))
        expect = data.draw(st.sampled_from([None, self.version]))
        self.version += 1
        assert self.store.commit(changes, expect_version=expect) == self.version
        for c in changes:
            rid = (c.kind, c.key)
            if c.body is None:
                del self.model[rid]
            else:
                created = self.model[rid][2] if rid in self.model else self.version
                self.model[rid] = (json.loads(json.dumps(c.body)), self.version, created)
            self.log.append(
                LogEntry(self.version, c.kind, c.key, "delete" if c.body is None else "put")
            )

    @rule(rid=st.tuples(KINDS, KEYS), body=BODIES, stale=st.booleans())
    def failed_commit(self, rid: tuple[str, str], body: dict[str, Any], stale: bool) -> None:
        if stale and self.version > 0:
            with pytest.raises(Conflict):
                self.store.commit([Change(*rid, body)], expect_version=self.version - 1)
        elif rid in self.model:
            with pytest.raises(TypeError):
                self.store.commit([Change(*rid, {"x": {1, 2}})])
        else:
            with pytest.raises(NotFound):
                self.store.commit([Change("vpc", "fresh", body), Change(*rid, None)])

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = self.backend.open(log_retention=RETENTION)

    @precondition(lambda self: self.version > 0)
    @rule(data=st.data())
    def changes_since(self, data: st.DataObject) -> None:
        since = data.draw(st.integers(0, self.version + 1))
        floor = max(0, self.version - RETENTION)
        expected = (
            None
            if not floor <= since <= self.version
            else sorted(
                (e for e in self.log if e.version > since),
                key=lambda e: (e.version, e.kind, e.key),
            )
        )
        assert self.store.changes_since(since) == expected

    @invariant()
    def matches_model(self) -> None:
        assert self.store.version == self.version
        assert _bodies(self.store) == self.model

    def teardown(self) -> None:
        self.store.close()


def test_store_matches_a_dict_model(backend: Backend, tmp_path: Path) -> None:
    if backend.name == "sqlite":
        files = itertools.count()
        StoreVsModel.fresh = staticmethod(lambda: _sqlite_backend(tmp_path / f"m{next(files)}.db"))
    else:
        server = EtcdServer(backend.script_args[1], 0, "")
        StoreVsModel.fresh = staticmethod(lambda: _etcd_backend(server))
    run_state_machine_as_test(
        StoreVsModel,
        settings=settings(
            max_examples=40,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
