"""A round-based memo: what the OHC's last sync computed, reused while its inputs are unchanged.

The OHC recompiles its whole view on every update (a pure function of the view), but most of a
large view does not change between two updates. A ``Memo`` keeps each result computed or reused
in the current round and the previous one; ``end_round`` forgets everything the round did not
use, so memory follows the current view, not its history. Keys must hold every input the
result depends on: a hit returns the stored result without calling ``make``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar, cast

V = TypeVar("V")


class Memo(Generic[V]):
    def __init__(self) -> None:
        self._previous: dict[Hashable, V] = {}
        self._current: dict[Hashable, V] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, make: Callable[[], V]) -> V:
        # The common case first: a hit from the previous round, moved into this one.
        found = self._previous.pop(key, _MISSING)
        if found is not _MISSING:
            self.hits += 1
            value = cast(V, found)
        elif key in self._current:
            return self._current[key]
        else:
            value = make()
            self.misses += 1
        self._current[key] = value
        return value

    def end_round(self) -> tuple[int, int]:
        """Drop what this round did not use and start the next; returns the round's
        (hits, misses)."""
        self._previous, self._current = self._current, {}  # what is left in previous: unused
        counts = self.hits, self.misses
        self.hits = self.misses = 0
        return counts

    def __len__(self) -> int:
        """Entries kept from the last finished round."""
        return len(self._previous)


_MISSING = object()  # a sentinel no key maps to
