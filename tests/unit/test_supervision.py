"""The supervisor's decisions (meshpeer.lab.supervision): pure, so times are plain numbers."""

from __future__ import annotations

from meshpeer.lab.supervision import (
    COPY_HOLD,
    COPY_MAX_AGE,
    COPY_QUIET,
    MAX_DELAY,
    Action,
    Seen,
    Spec,
    copy_due,
    decide,
    exited,
    restart_delay,
    started,
)


def test_a_wanted_process_is_started_once_and_left_alone_while_it_runs() -> None:
    seen = Seen()
    assert decide(True, seen, 100.0) is Action.START
    seen = started(seen, 100.0, restart=False)
    assert decide(True, seen, 500.0) is Action.NONE
    assert seen.restarts == 0


def test_a_crash_while_wanted_is_restarted_at_once_and_counted() -> None:
    seen = started(Seen(), 100.0, restart=False)
    seen = exited(seen, 160.0, wanted=True)  # ran a minute: no back-off
    assert decide(True, seen, 160.0) is Action.RESTART
    seen = started(seen, 160.0, restart=True)
    assert seen.restarts == 1 and decide(True, seen, 161.0) is Action.NONE


def test_a_stop_by_the_lab_is_never_undone_and_a_later_start_is_cold() -> None:
    seen = exited(started(Seen(), 100.0, restart=False), 200.0, wanted=False)
    for now in (200.0, 201.0, 10_000.0):
        assert decide(False, seen, now) is Action.NONE
    assert decide(True, seen, 300.0) is Action.START  # the lab starts it again: no restore
    assert seen.restarts == 0


def test_a_process_that_keeps_dying_at_start_backs_off_up_to_a_cap() -> None:
    seen, now, delays = started(Seen(), 0.0, restart=False), 0.0, []
    for _ in range(8):
        now += 0.125  # exact in binary: the comparisons below are exact
        seen = exited(seen, now, wanted=True)
        # the first restart at the first moment it is allowed, not before
        delay = restart_delay(seen.quick_exits)
        if delay:
            assert decide(True, seen, now + delay / 2) is Action.NONE
        assert decide(True, seen, now + delay) is Action.RESTART
        delays.append(delay)
        now += delay
        seen = started(seen, now, restart=True)
    assert delays[0] == 0.0
    assert delays == sorted(delays) and delays[-1] == MAX_DELAY
    # once it ran long enough, the next crash restarts at once again
    seen = exited(seen, now + 60.0, wanted=True)
    assert seen.quick_exits == 0 and decide(True, seen, now + 60.0) is Action.RESTART


def test_a_spec_round_trips_through_its_file_form() -> None:
    spec = Spec(
        "hv1", "ohc", ("ip", "netns", "exec", "x", "true"), "/tmp/o.log", "/", (("A", "1"),)
    )
    assert Spec.from_json(spec.to_json()) == spec
    assert spec.key == "ohc.hv1"
    assert Spec.from_json({**spec.to_json(), "wanted": False}).wanted is False


def test_a_br_int_copy_follows_a_burst_of_syncs_once_they_pause() -> None:
    assert copy_due(100.0, changed_at=100.0, copied=None, copied_at=None)  # the first: at once
    assert not copy_due(101.0, changed_at=100.5, copied=100.0, copied_at=100.0)  # mid-burst
    assert copy_due(100.5 + COPY_QUIET, changed_at=100.5, copied=100.0, copied_at=100.0)
    assert not copy_due(500.0, changed_at=100.5, copied=100.5, copied_at=103.0)  # copied


def test_no_copy_while_a_restarted_ohc_reads_br_int_back() -> None:
    """The last sync at 100.0, the OHC restarted at 101.0 (a benchmark's restart): the copy due
    at 102.0 waited for the OHC's first sync; it competed with the restart's read-back and
    compile before (50k peer endpoints: 0.5-1.1 s slower)."""
    before = {"changed_at": 100.0, "copied": 90.0, "copied_at": 98.0}
    assert copy_due(102.0, **before)  # no OHC start: due once the syncs paused
    assert not copy_due(102.0, **before, ohc_started_at=101.0)
    assert not copy_due(101.0 + COPY_HOLD - 0.1, **before, ohc_started_at=101.0)
    assert copy_due(101.0 + COPY_HOLD + 0.1, **before, ohc_started_at=101.0)  # it never synced
    # its first sync (at 104.0) changes the status: copied once that pauses, as any sync
    first = {"changed_at": 104.0, "copied": 90.0, "copied_at": 98.0, "ohc_started_at": 101.0}
    assert not copy_due(105.0, **first)
    assert copy_due(104.0 + COPY_QUIET, **first)


def test_syncs_that_never_pause_still_get_a_copy_every_max_age() -> None:
    """A steady write load (a sync every half second) used to starve the copy: a kill -9 of
    ovs-vswitchd then restored nothing (tests/chaos)."""
    copied, copied_at, taken = 0.0, 0.0, []
    for k in range(1, 200):
        now = k * 0.5
        if copy_due(now, changed_at=now - 0.1, copied=copied, copied_at=copied_at):
            copied, copied_at = now - 0.1, now
            taken.append(now)
    assert taken and all(b - a <= COPY_MAX_AGE for a, b in zip([0.0, *taken], taken, strict=False))
