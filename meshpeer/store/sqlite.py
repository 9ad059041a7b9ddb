"""The controller shard's intent store: SQLite in WAL mode, one transaction per change set.

Generic over resources: a resource is ``(kind, key)`` plus a JSON object body; what kinds mean
belongs to the controller's model layer. Every commit bumps the store version by exactly one and
stamps what it wrote with it, so a restarted controller serves the same bodies at the same
versions. Public methods are each one short transaction with no yield inside, so green threads
sharing the connection (eventlet, one OS thread) never interleave within one.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from meshpeer.store.migrations import MIGRATIONS, SCHEMA_VERSION

Synchronous = Literal["NORMAL", "FULL"]
Op = Literal["put", "delete"]
ResourceId = tuple[str, str]

DEFAULT_LOG_RETENTION = 10_000
BUSY_TIMEOUT_S = 5.0


class StoreError(Exception):
    """Base of the store's own errors."""


class SchemaTooNew(StoreError):
    """The file was written by newer code; opening it here could corrupt it."""

    def __init__(self, path: str, found: int) -> None:
        super().__init__(
            f"{path}: schema version {found} is newer than this code knows ({SCHEMA_VERSION})"
        )
        self.found = found


class Conflict(StoreError):
    """``commit(expect_version=...)`` found the store had moved on."""

    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"store is at version {actual}, expected {expected}")
        self.expected = expected
        self.actual = actual


class CommitFailed(StoreError):
    """A group commit (:meth:`Store.sync`) failed: every change set staged since the last sync
    was rolled back, none of it is written."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"the commit failed, nothing of it was written: {cause}")
        self.cause = cause


class NotFound(StoreError):
    """A delete named a resource that does not exist (a silent no-op would still log it)."""

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"no {kind} {key!r}")
        self.kind = kind
        self.key = key


@dataclass(frozen=True, slots=True)
class Change:
    """Write ``body`` at ``(kind, key)``; ``body=None`` deletes it."""

    kind: str
    key: str
    body: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class Record:
    kind: str
    key: str
    body: dict[str, Any]
    version: int  # store version of the commit that last wrote it
    created_version: int


@dataclass(frozen=True, slots=True)
class LogEntry:
    version: int
    kind: str
    key: str
    op: Op


@dataclass(frozen=True, slots=True)
class Snapshot:
    records: dict[ResourceId, Record]
    version: int
    meta: dict[str, str]


# built once (json.dumps with options builds an encoder per call; a batch writes 5,000 bodies)
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_json(body: Mapping[str, Any]) -> str:
    """Sorted keys, no spaces, no NaN; refuses what would not load back equal (tuples, int keys)."""
    if not isinstance(body, Mapping):
        raise TypeError(f"body must be a JSON object, not {type(body).__name__}")
    text = _CANONICAL.encode(body)
    if json.loads(text) != body:
        raise ValueError("body does not survive a JSON round trip (tuple or non-str key?)")
    return text


def encode_changes(changes: Sequence[Change]) -> list[tuple[str, str, str | None]]:
    """Validate and serialise before the transaction starts: bad input never takes the lock."""
    if not changes:
        raise ValueError("empty change set: a version must mean a change")
    rows: list[tuple[str, str, str | None]] = []
    seen: set[ResourceId] = set()
    for c in changes:
        if not (isinstance(c.kind, str) and c.kind and isinstance(c.key, str) and c.key):
            raise ValueError(f"kind and key must be non-empty strings: {c.kind!r}, {c.key!r}")
        if (c.kind, c.key) in seen:
            raise ValueError(f"{c.kind} {c.key!r} appears twice in one change set")
        seen.add((c.kind, c.key))
        rows.append((c.kind, c.key, None if c.body is None else canonical_json(c.body)))
    return rows


@contextmanager
def _transaction(conn: sqlite3.Connection, mode: str = "IMMEDIATE") -> Iterator[None]:
    """IMMEDIATE takes the write lock up front: no busy-upgrade failure halfway through."""
    conn.execute(f"BEGIN {mode}")
    try:
        yield
    except BaseException:
        if conn.in_transaction:  # SQLite rolls back by itself on some errors (e.g. disk full)
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    """Apply each missing step in its own transaction; re-read the version under the lock."""
    while True:
        with _transaction(conn):
            found = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if found > SCHEMA_VERSION:
                raise SchemaTooNew(path, found)
            if found == SCHEMA_VERSION:
                return
            MIGRATIONS[found](conn)
            conn.execute(f"PRAGMA user_version = {found + 1}")


class Store:
    """Open with :meth:`open`; see the module docstring and docs/store.md."""

    def __init__(self, conn: sqlite3.Connection, log_retention: int) -> None:
        self._conn = conn
        self._retention = log_retention
        self._lock = threading.Lock()  # only matters if real threads share the store
        self._failed: BaseException | None = None  # the group's lost transaction, for sync()
        self._staged = 0  # change sets staged since the last sync (or rollback)
        self.syncs = 0  # transactions committed (group commit: one per group; for tests)

    @classmethod
    def open(
        cls,
        path: str,
        *,
        synchronous: Synchronous = "FULL",
        log_retention: int = DEFAULT_LOG_RETENTION,
    ) -> Store:
        """Create or open the store at ``path`` and migrate it to the current schema.

        ``FULL`` (default) syncs the WAL at every commit, so an acknowledged version survives
        power loss; ``NORMAL`` survives only a process crash (see docs/store.md for numbers).
        """
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        if log_retention < 1:
            raise ValueError("log_retention must be at least 1")
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            mode = str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            if mode.lower() != "wal":
                raise StoreError(f"{path}: journal_mode is {mode!r}, not wal (need a file)")
            conn.execute(f"PRAGMA synchronous={synchronous}")
            conn.execute("PRAGMA foreign_keys=ON")
            _migrate(conn, path)
        except BaseException:
            conn.close()
            raise
        return cls(conn, log_retention)

    def close(self) -> None:
        with self._lock:
            if self._conn.in_transaction:  # staged, never synced: not acknowledged, dropped
                self._conn.execute("ROLLBACK")
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def version(self) -> int:
        """Version of the last commit; 0 for a new store."""
        with self._lock:
            return int(self._conn.execute("SELECT version FROM head").fetchone()[0])

    @property
    def incarnation(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT incarnation FROM head").fetchone()[0])

    def _head(self) -> tuple[int, int]:
        version, floor = self._conn.execute("SELECT version, log_floor FROM head").fetchone()
        return int(version), int(floor)

    def load(self) -> Snapshot:
        """Every resource, the version and meta, read in one consistent transaction."""
        with self._lock, self._after_sync(), _transaction(self._conn, "DEFERRED"):
            version = int(self._conn.execute("SELECT version FROM head").fetchone()[0])
            rows = self._conn.execute(
                "SELECT kind, key, body, version, created_version FROM resources"
            ).fetchall()
            meta = dict(self._conn.execute("SELECT name, value FROM meta").fetchall())
        records = {(k, n): Record(k, n, json.loads(b), v, c) for k, n, b, v, c in rows}
        return Snapshot(records, version, meta)

    def commit(self, changes: Sequence[Change], *, expect_version: int | None = None) -> int:
        """Apply ``changes`` as one transaction at version + 1 and return that version.

        All or nothing: on any error (bad body, :class:`Conflict`, :class:`NotFound`, SQLite)
        nothing is written and the version is unchanged.
        """
        rows = encode_changes(changes)
        with self._lock, self._after_sync():
            with _transaction(self._conn):
                new = self._write(rows, expect_version)
            self.syncs += 1
        return new

    def stage(self, changes: Sequence[Change]) -> int:
        """Group commit: write ``changes`` at version + 1 into the open transaction (opened
        if none is) and return that version; :meth:`sync` commits the whole group. Each call
        is all or nothing on its own (a savepoint): a refused change set leaves the group as
        it was. Until :meth:`sync` returns nothing staged is durable, and a crash loses it.

        Once the group's transaction is lost (SQLite rolled it back by itself on an error, or
        an implicit sync failed) every ``stage`` raises :class:`CommitFailed` until
        :meth:`sync` (or :meth:`rollback`) has ended the group: one group, one transaction,
        one outcome."""
        rows = encode_changes(changes)
        conn = self._conn
        with self._lock:
            if self._failed is not None:
                raise CommitFailed(self._failed)
            if not conn.in_transaction:
                conn.execute("BEGIN IMMEDIATE")
            conn.execute("SAVEPOINT staged")
            try:
                new = self._write(rows, None)
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK TO staged")
                    conn.execute("RELEASE staged")
                elif self._staged:  # SQLite rolled the whole group back (e.g. disk full)
                    self._failed, self._staged = exc, 0
                raise
            conn.execute("RELEASE staged")
            self._staged += 1
        return new

    def sync(self) -> None:
        """Commit (and, with ``synchronous=FULL``, fsync) what :meth:`stage` wrote. On failure
        the whole group is rolled back and :class:`CommitFailed` raised: none of it is
        written."""
        with self._lock:
            self._sync_locked()

    def rollback(self) -> None:
        """Drop what :meth:`stage` wrote (a group that must not be committed)."""
        with self._lock:
            self._failed, self._staged = None, 0
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")

    @contextmanager
    def _after_sync(self) -> Iterator[None]:
        """Another transaction first commits a staged group; if that fails, the error is kept
        for the group's own :meth:`sync` (whose writers must hear of it) and raised here too.
        The shard never relies on this (it syncs its group before any other store call): it
        is a safety net, so that no other transaction ends up inside a group."""
        if self._conn.in_transaction or self._staged:
            try:
                self._sync_locked()
            except CommitFailed as exc:
                self._failed = exc.cause
                raise
        yield

    def _sync_locked(self) -> None:
        conn = self._conn
        failed, staged, self._failed, self._staged = self._failed, self._staged, None, 0
        if failed is not None:  # the group's transaction was lost before its sync
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise CommitFailed(failed)
        if not conn.in_transaction:
            if staged:  # SQLite ended the transaction by itself: the group is gone
                raise CommitFailed(StoreError("the transaction was rolled back"))
            return
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise CommitFailed(exc) from exc
        self.syncs += 1

    def _write(self, rows: list[tuple[str, str, str | None]], expect_version: int | None) -> int:
        """The rows of one change set at version + 1, inside the caller's transaction."""
        conn = self._conn
        current, floor = self._head()
        if expect_version is not None and expect_version != current:
            raise Conflict(expect_version, current)
        new = current + 1
        log: list[tuple[int, str, str, Op]] = []
        puts: list[tuple[str, str, str, int, int]] = []
        for kind, key, text in rows:
            if text is None:
                cur = conn.execute("DELETE FROM resources WHERE kind = ? AND key = ?", (kind, key))
                if cur.rowcount != 1:
                    raise NotFound(kind, key)
                log.append((new, kind, key, "delete"))
            else:
                puts.append((kind, key, text, new, new))
                log.append((new, kind, key, "put"))
        # one statement for every put (a change set names each resource once, so the
        # order against the deletes does not matter)
        conn.executemany(
            "INSERT INTO resources (kind, key, body, version, created_version)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (kind, key)"
            " DO UPDATE SET body = excluded.body, version = excluded.version",
            puts,
        )
        conn.executemany("INSERT INTO changes (version, kind, key, op) VALUES (?, ?, ?, ?)", log)
        new_floor = max(floor, new - self._retention)
        if new_floor > floor:
            conn.execute("DELETE FROM changes WHERE version <= ?", (new_floor,))
        conn.execute("UPDATE head SET version = ?, log_floor = ?", (new, new_floor))
        return new

    def changes_since(self, version: int) -> list[LogEntry] | None:
        """What each commit after ``version`` touched, oldest first.

        None when the log cannot answer: ``version`` is older than it holds, or newer than the
        store (a caller from another store's history). Either way the caller needs a snapshot.
        """
        with self._lock, self._after_sync(), _transaction(self._conn, "DEFERRED"):
            current, floor = self._head()
            if not floor <= version <= current:
                return None
            rows = self._conn.execute(
                "SELECT version, kind, key, op FROM changes WHERE version > ?"
                " ORDER BY version, kind, key",
                (version,),
            ).fetchall()
        return [LogEntry(v, k, n, op) for v, k, n, op in rows]

    def get_meta(self, name: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, name: str, value: str | None) -> None:
        """Set (or, with None, delete) a meta entry. Meta is not intent: no version bump."""
        if value is not None and not isinstance(value, str):
            raise TypeError("meta values are strings; encode anything else")
        with self._lock, self._after_sync(), _transaction(self._conn):
            if value is None:
                self._conn.execute("DELETE FROM meta WHERE name = ?", (name,))
            else:
                self._conn.execute(
                    "INSERT INTO meta (name, value) VALUES (?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (name, value),
                )

    def next_incarnation(self) -> int:
        """Persistently bump and return the incarnation (once per controller start)."""
        with self._lock, self._after_sync(), _transaction(self._conn):
            row = self._conn.execute(
                "UPDATE head SET incarnation = incarnation + 1 RETURNING incarnation"
            ).fetchone()
        return int(row[0])
