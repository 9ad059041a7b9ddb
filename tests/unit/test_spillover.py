"""The overload shift's pure decision (ohc/spillover.py): share up under load, back after a
quiet hold, no flapping between the thresholds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ohc.spillover import (
    Load,
    State,
    Thresholds,
    bucket_weights,
    decide,
    thresholds,
    wanted_share,
)

T = Thresholds(high_pps=100.0, low_pps=50.0, hold_s=5.0, step=10, max_share=80)
ILB = 0x06_0000_0000_0000_01  # an ILB's cookie


def run(state: State, steps: list[tuple[float, int]], backends: int = 2) -> list[int]:
    """Feed (now, cumulative local packets) readings; the share after each."""
    out = []
    for now, packets in steps:
        state = decide(state, {ILB: Load(packets, backends)}, now, T).state
        out.append(state.shares.get(ILB, 0))
    return out


def test_the_first_reading_is_a_baseline():
    got = decide(State(), {ILB: Load(10_000, 2)}, 1.0, T)
    assert got.state.shares == {} and got.changed == frozenset()


def test_overload_raises_the_share_to_keep_each_local_backend_at_the_threshold():
    # 2 local backends at 400 pps each: 75 % must go elsewhere -> 80 % (steps of 10, capped)
    assert run(State(), [(0.0, 0), (1.0, 800)]) == [0, 80]
    # at 150 pps each: 1/3 -> 40 %
    assert run(State(), [(0.0, 0), (1.0, 300)]) == [0, 40]


def test_a_steady_load_pinned_to_the_local_backends_does_not_ratchet_the_share_up():
    # one pinned stream, 150 pps per local backend, whatever the share (affinity, or the share
    # not on the switch yet): 1/3 must go elsewhere -> 40 %, and it stays there (review S1)
    assert run(State(), [(float(s), 300 * s) for s in range(6)]) == [0, 40, 40, 40, 40, 40]


def test_while_shifted_the_demand_counts_what_went_to_the_peer():
    # 40 % shifted: the local backends see 100 pps each and the peer 133 pps (its pin flows'
    # counters): demand (200 + 133) / 2 = 166 per local backend -> keep 40 %
    state, got = State({ILB: 40}, {}), []
    for now, local, spilled in [(0.0, 0, 0), (1.0, 200, 133), (2.0, 400, 266)]:
        state = decide(state, {ILB: Load(local, 2, spilled)}, now, T).state
        got.append(state.shares.get(ILB, 0))
    assert got == [40, 40, 40]


def test_back_to_0_once_the_whole_load_stays_under_low_pps_even_at_the_cap():
    # at the cap (80 %), 40 pps per local backend and 10 more to the peer: 45 < low 50
    state = State({ILB: 80}, {})
    got = []
    for s in range(8):
        state = decide(state, {ILB: Load(80 * s, 2, 10 * s)}, float(s), T).state
        got.append(state.shares.get(ILB, 0))
    assert got == [80, 80, 80, 80, 80, 0, 0, 0]


def test_between_the_thresholds_the_share_stays():
    state = State({ILB: 30}, {})
    # local 60 pps each with 30 % away: demand ~86, between 50 and 100: unchanged for ever
    steps = [(float(s), 120 * s) for s in range(30)]
    assert set(run(state, steps)) == {30}


def test_the_share_goes_back_only_after_the_load_stayed_low_for_hold_s():
    state = State({ILB: 50}, {})
    # 10 pps per backend from t=0: low since the first interval; back at t >= 5
    steps = [(float(s), 20 * s) for s in range(8)]
    assert run(state, steps) == [50, 50, 50, 50, 50, 0, 0, 0]


def test_a_burst_during_the_hold_restarts_it():
    state = State({ILB: 50}, {})
    steps = [(0.0, 0), (1.0, 20), (2.0, 40), (3.0, 200), (4.0, 220), (5.0, 240), (8.0, 300)]
    # t=3: 80 pps per local backend: not low (between the thresholds): stays 50, hold restarts
    assert run(state, steps) == [50, 50, 50, 50, 50, 50, 0]


def test_reset_counters_are_a_new_baseline_and_keep_the_share():
    state = State({ILB: 20}, {})
    assert run(state, [(0.0, 1000), (1.0, 10)]) == [20, 20]


def test_an_ilb_gone_loses_its_share():
    got = decide(State({ILB: 20}, {}), {}, 1.0, T)
    assert got.state.shares == {} and got.changed == {ILB}


@given(st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 2000)), min_size=2, max_size=40))
def test_the_share_follows_the_measured_demand_whatever_the_split(readings):
    """Each reading: packets/s to the local backends and to the peer, however the switch split
    them (lag, pinned connections): the share depends on their sum only."""
    state, local, spilled = State(), 0, 0
    prev = 0
    for i, (to_local, to_peer) in enumerate(readings):
        local, spilled = local + to_local * 2, spilled + to_peer * 2
        state = decide(state, {ILB: Load(local, 2, spilled)}, float(i), T).state
        share = state.shares.get(ILB, 0)
        assert 0 <= share <= T.max_share and share % T.step == 0
        demand = to_local + to_peer if i else 0  # per local backend
        if demand > T.high_pps:
            assert share == wanted_share(demand, T)
        elif share < prev:
            assert share == 0 and demand < T.low_pps  # down only when low (and after the hold)
        else:
            assert share == prev
        prev = share


def test_wanted_share():
    assert wanted_share(100.0, T) == 0
    assert wanted_share(101.0, T) == 10
    assert wanted_share(1e9, T) == 80


def test_bucket_weights_split_new_connections_by_the_share():
    local, spill = bucket_weights((3, 1), (1, 1), 40)
    total = sum(local) + sum(spill)
    assert abs(sum(spill) / total - 0.40) < 0.01
    assert local[0] == 3 * local[1]
    assert bucket_weights((3, 1), (1,), 0) == ((3, 1), ())
    assert all(w <= 65535 for w in local + spill)


OK = {
    "spillover_interval": 1.0,
    "spillover_high_pps": 200.0,
    "spillover_low_pps": 100.0,
    "spillover_hold_s": 10.0,
    "spillover_max_share": 80,
    "spillover_affinity_s": 60,
}


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("spillover_max_share", 100),  # the local backends would keep nothing
        ("spillover_max_share", -1),
        ("spillover_affinity_s", 0),  # OVS idle 0: learned flows never expire
        ("spillover_interval", 0.0),  # a busy loop
        ("spillover_low_pps", 300.0),  # above high_pps
        ("spillover_low_pps", -1.0),
        ("spillover_hold_s", -1.0),
    ],
)
def test_out_of_range_options_are_refused_by_name(option: str, value: float) -> None:
    """Review S5: checked when the OHC loads its config, with the option's name."""
    with pytest.raises(ValueError, match=f"\\[ohc\\] {option}"):
        thresholds(OK | {option: value})


def test_the_defaults_are_in_range() -> None:
    assert thresholds(OK) == Thresholds()


@given(st.integers(0, 99), st.lists(st.integers(0, 10**6), min_size=2, max_size=10))
def test_any_accepted_cap_decides_without_error(cap: int, rates: list[int]) -> None:
    t = thresholds(OK | {"spillover_max_share": cap})
    state, packets = State(), 0
    for i, rate in enumerate(rates):
        packets += rate
        state = decide(state, {ILB: Load(packets, 1)}, float(i), t).state
        assert 0 <= state.shares.get(ILB, 0) <= cap
