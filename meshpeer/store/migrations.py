"""The store's schema, as the ordered steps that build it.

``PRAGMA user_version`` is the schema version; ``MIGRATIONS[i]`` takes a database from version
``i`` to ``i + 1`` and runs inside the transaction that also sets the new version, so a step
is applied whole or not at all. Never edit a shipped step: append one, so that every database,
new or old, reaches the same schema by the same path. No ``executescript``: it commits first.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

Migration = Callable[[sqlite3.Connection], None]


def _create_v1(conn: sqlite3.Connection) -> None:
    """Schema 1: one head row (store version, incarnation), meta, and the resources."""
    conn.execute(
        "CREATE TABLE head (id INTEGER PRIMARY KEY CHECK (id = 1),"
        " version INTEGER NOT NULL, incarnation INTEGER NOT NULL)"
    )
    conn.execute("INSERT INTO head (id, version, incarnation) VALUES (1, 0, 0)")
    conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID")
    conn.execute(
        "CREATE TABLE resources (kind TEXT NOT NULL, key TEXT NOT NULL, body TEXT NOT NULL,"
        " version INTEGER NOT NULL, PRIMARY KEY (kind, key)) WITHOUT ROWID"
    )


def _v1_to_v2(conn: sqlite3.Connection) -> None:
    """Schema 2: each resource's creation version, and a bounded log of changes.

    Schema 1 did not record creation; the last write is the latest it can have been, so older
    resources get that. The log is complete only from the migration on: ``log_floor`` says so.
    """
    conn.execute("ALTER TABLE resources ADD COLUMN created_version INTEGER NOT NULL DEFAULT 0")
    conn.execute("UPDATE resources SET created_version = version")
    conn.execute("ALTER TABLE head ADD COLUMN log_floor INTEGER NOT NULL DEFAULT 0")
    conn.execute("UPDATE head SET log_floor = version")
    conn.execute(
        "CREATE TABLE changes (version INTEGER NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL,"
        " op TEXT NOT NULL CHECK (op IN ('put', 'delete')),"
        " PRIMARY KEY (version, kind, key)) WITHOUT ROWID"
    )


MIGRATIONS: tuple[Migration, ...] = (_create_v1, _v1_to_v2)
SCHEMA_VERSION = len(MIGRATIONS)
