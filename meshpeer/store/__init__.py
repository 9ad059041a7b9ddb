"""The controller shard's intent store (SQLite, WAL): versioned, transactional, migratable."""

from meshpeer.store.migrations import SCHEMA_VERSION
from meshpeer.store.sqlite import (
    DEFAULT_LOG_RETENTION,
    Change,
    Conflict,
    LogEntry,
    NotFound,
    Record,
    SchemaTooNew,
    Snapshot,
    Store,
    StoreError,
    canonical_json,
)

__all__ = [
    "DEFAULT_LOG_RETENTION",
    "SCHEMA_VERSION",
    "Change",
    "Conflict",
    "LogEntry",
    "NotFound",
    "Record",
    "SchemaTooNew",
    "Snapshot",
    "Store",
    "StoreError",
    "canonical_json",
]
