"""Test helpers shared by unit tests (no I/O, no OVS)."""

from tests.support.fakeoftable import (
    FakeOFError,
    FakeOFTable,
    FakeOFUnsupported,
    Flow,
    Group,
    Output,
    SelectRecord,
    TraceResult,
)

__all__ = [
    "FakeOFError",
    "FakeOFTable",
    "FakeOFUnsupported",
    "Flow",
    "Group",
    "Output",
    "SelectRecord",
    "TraceResult",
]
