"""What the controller needs of an intent store: the surface both backends implement.

``meshpeer.store.sqlite.Store`` (one machine) and ``meshpeer.store.etcd.EtcdStore`` (shards
and their standbys on several machines) keep the same guarantees (docs/store.md); the contract
tests (tests/unit/test_store.py) run against both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from meshpeer.store.sqlite import Change, LogEntry, Snapshot


class IntentStore(Protocol):
    @property
    def version(self) -> int: ...

    @property
    def incarnation(self) -> int: ...

    def load(self) -> Snapshot: ...

    def commit(self, changes: Sequence[Change], *, expect_version: int | None = None) -> int: ...

    def changes_since(self, version: int) -> list[LogEntry] | None: ...

    def get_meta(self, name: str) -> str | None: ...

    def set_meta(self, name: str, value: str | None) -> None: ...

    def next_incarnation(self) -> int: ...

    def close(self) -> None: ...


@runtime_checkable
class GroupCommit(Protocol):
    """A store that can group commits (SQLite): :meth:`stage` writes one change set at the
    next version into an open transaction, :meth:`sync` commits and syncs all staged ones at
    once (``CommitFailed``: none of them is written). etcd commits each change set on its own
    (a transaction with a compare on ``head``): it does not offer this."""

    def stage(self, changes: Sequence[Change]) -> int: ...

    def sync(self) -> None: ...

    def rollback(self) -> None: ...


class VpcClaims(Protocol):
    """Where VPC ownership is claimed (etcd: ``meshpeer.store.etcd.Ownership``)."""

    def claim(self, vpc: str, shard: str) -> str: ...

    def release(self, vpc: str, shard: str) -> None: ...
