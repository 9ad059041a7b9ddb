"""Stream changes as an OHC's agent hands them to the flow engine (``ohc.engine``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ohc.engine import DELETED, StreamChange
from ohc.subscriptions import Sub

Streams = Mapping[Sub, Mapping[str, Any]]


def changes(old: Streams, new: Streams, snapshot: bool) -> dict[Sub, StreamChange]:
    """What a replica would deliver to get from ``old`` to ``new``: deltas, or snapshots."""
    out: dict[Sub, StreamChange] = {}
    for sub in old.keys() - new.keys():
        out[sub] = StreamChange(None)
    for sub, objs in new.items():
        before = old.get(sub)
        if before is None or snapshot:
            out[sub] = StreamChange(dict(objs))
            continue
        delta = {k: objs.get(k, DELETED) for k in before.keys() | objs.keys()}
        delta = {k: v for k, v in delta.items() if before.get(k, DELETED) != v}
        if delta:
            out[sub] = StreamChange(delta, partial=True)
    return out
