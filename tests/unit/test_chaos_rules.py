"""The chaos suite's rule for acknowledged writes lost (tests/chaos/harness.py): what a
shard must still show after a fault, given every write and its answer."""

from __future__ import annotations

from tests.chaos.harness import Write, acked_lost


def w(op: str, name: str, status: int | None) -> Write:
    return Write(op, name, "10.101.1.10", "hv1", status, 0.0)


def test_an_acknowledged_create_must_be_there_and_a_delete_gone() -> None:
    writes = [w("create", "w1", 201), w("create", "w2", 201), w("delete", "w2", 200)]
    assert acked_lost(writes, {"w1"}) == []
    assert acked_lost(writes, set()) == [writes[0]]  # the create of w1 was lost
    assert acked_lost(writes, {"w1", "w2"}) == [writes[2]]  # the delete of w2 was lost


def test_a_write_without_an_answer_may_or_may_not_have_happened() -> None:
    writes = [w("create", "w1", 201), w("delete", "w1", None), w("create", "w2", None)]
    assert acked_lost(writes, set()) == []
    assert acked_lost(writes, {"w1", "w2"}) == []


def test_a_refused_write_changed_nothing() -> None:
    writes = [w("create", "w1", 201), w("delete", "w1", 404), w("create", "w3", 400)]
    assert acked_lost(writes, {"w1"}) == []
    assert acked_lost(writes, set()) == [writes[0]]  # a 404 on delete: the create was lost
