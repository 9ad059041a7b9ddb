"""Waiting for a condition, the one way tests wait: a predicate, a generous deadline, a name.

Tests never sleep a fixed time and then check: they wait until what they need holds (or fail
after ``timeout`` saying what they waited for), then assert behaviour. Green-threaded tests
pass ``sleep=eventlet.sleep`` so the hub keeps running while they wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    pred: Callable[[], T],
    timeout: float = 30.0,
    step: float = 0.02,
    what: str = "",
    sleep: Callable[[float], object] = time.sleep,
) -> T:
    """Poll ``pred`` until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or pred}")
        sleep(step)
