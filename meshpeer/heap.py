"""The C heap of a long-running meshpeer process (glibc malloc), tuned from outside Python.

Objects over 512 bytes (packed OpenFlow messages, JSON lines, big dicts) come from malloc,
not from Python's own allocator. glibc gives each thread that allocates its own arena, up
to 8 per core, and the OHC packs bundles in eventlet's thread pool: the free space left in
those arenas after a big sync stays mapped. Both functions are no-ops where libc lacks them.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)
ARENAS = 1  # at 50k peer endpoints the OHC ended a first sync 10-25 MiB smaller (docs/decisions.md)


def _libc_function(name: str) -> Any:
    # The process's own symbols, libc's among them: ``ctypes.util.find_library("c")`` ran
    # ``ldconfig -p`` in a subprocess at every start (~15-45 ms of each OHC's cold start).
    return getattr(ctypes.CDLL(None), name, None)


def cap_arenas(count: int = ARENAS) -> None:
    """At most ``count`` malloc arenas for the whole process. Call it before any thread starts.
    A ``MALLOC_ARENA_MAX`` in the environment (read by glibc itself) wins."""
    mallopt = None if "MALLOC_ARENA_MAX" in os.environ else _libc_function("mallopt")
    if mallopt is not None:
        mallopt(M_ARENA_MAX, count)


def release_free_heap() -> None:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim``). A big sync
    (the first at 50k peer endpoints: the plan, the packed bundle, the engine's scratch)
    leaves tens of MiB free but mapped, counted in the OHC's RSS until the next big sync
    reuses it: measured in docs/benchmarks.md."""
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim(0)
