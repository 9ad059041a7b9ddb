"""The controller shard's intent store: versioned, transactional; SQLite (WAL, migratable) or etcd."""

from meshpeer.store.contract import GroupCommit, IntentStore
from meshpeer.store.migrations import SCHEMA_VERSION
from meshpeer.store.sqlite import (
    DEFAULT_LOG_RETENTION,
    Change,
    CommitFailed,
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
    "CommitFailed",
    "Conflict",
    "GroupCommit",
    "IntentStore",
    "LogEntry",
    "NotFound",
    "Record",
    "SchemaTooNew",
    "Snapshot",
    "Store",
    "StoreError",
    "canonical_json",
]
