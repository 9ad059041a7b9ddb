"""ohc.memo.Memo: reuse within and across one round, forget what a round did not use."""

from __future__ import annotations

import functools

from ohc.memo import Memo


def test_a_round_reuses_the_last_rounds_results_and_forgets_the_unused() -> None:
    made: list[str] = []

    def make(key: str) -> str:
        made.append(key)
        return key.upper()

    memo: Memo[str] = Memo()
    assert [memo.get(k, functools.partial(make, k)) for k in ("a", "b", "a")] == ["A", "B", "A"]
    assert made == ["a", "b"] and memo.end_round() == (0, 2) and len(memo) == 2
    assert memo.get("a", lambda: make("a")) == "A"  # from the previous round: not made again
    assert memo.get("c", lambda: make("c")) == "C"
    assert memo.end_round() == (1, 1) and len(memo) == 2  # b was not used: dropped
    assert memo.get("b", lambda: make("b")) == "B"
    assert made == ["a", "b", "c", "b"]
