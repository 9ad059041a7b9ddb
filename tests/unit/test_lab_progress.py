"""A long lab stage says it is still going, with what it has done so far (issue 18)."""

from __future__ import annotations

from meshpeer.lab.progress import Ticker
from tests.support.wait import wait_for


def test_a_stage_that_runs_on_says_how_far_it_got_and_stops_when_done() -> None:
    lines: list[str] = []
    with Ticker(lines.append, "[lab x] intent", every=0.01) as ticker:
        ticker.note("340/2000 REST calls")
        wait_for(lambda: len(lines) >= 2, timeout=30, what="two progress lines")
    assert lines[0].startswith("[lab x] intent ... 340/2000 REST calls (")
    assert not ticker._thread.is_alive()  # nothing more once the stage is over


def test_a_short_stage_prints_nothing() -> None:
    lines: list[str] = []
    with Ticker(lines.append, "[lab x] links", every=60):
        pass
    assert lines == []
