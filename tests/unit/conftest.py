"""Fixtures of the unit tests that run green servers and clients (streaming, channels)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def cleanup() -> Iterator[list[Any]]:
    """Things with a stop() method, stopped after the test (clients first)."""
    import eventlet  # only the green tests load it

    items: list[Any] = []
    yield items
    for item in reversed(items):
        item.stop()
    eventlet.sleep(0)
