"""A fresh engine's first sync (``SwitchSession.first_sync``): to an empty switch the bundle
goes out while the engine compiles, piece by piece; to a switch holding flows (some desired,
some changed, some stale) the read-back is matched once the engine compiled. Either way the
switch ends exactly where the reference full compile says, however small the pieces, with or
without every followed stream delivered (fail static). A refused message or a failing compile
leaves the switch as it was, bundle discarded."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from meshpeer.controller.model import Intent
from ohc import ofio, session
from ohc.engine import FlowEngine, Update
from ohc.flows import Apply, Flow, Goto, Match, Output, flow_mod, group_mod
from ohc.pipeline import TUNNEL_PORT
from ohc.session import SwitchSession
from ohc.syncer import CANARY, FlowKey, SwitchState
from tests.support.changes import Streams, changes
from tests.support.fakeoftable import FakeOFTable
from tests.unit.test_ohc_compiler import (
    KINDS,
    OFPORT,
    apply_op,
    base_intent,
    followed,
    full_intent,
    publish,
    sorted_flows,
)
from tests.unit.test_ohc_engine import RAW_EDITS, RawEdit, raw_edit, reference
from tests.unit.test_ohc_readback import osken_entry, reply_stats_messages
from tests.unit.test_ohc_syncer import FakeSwitch

HOST = "hv1"


class StreamSwitch(FakeSwitch):
    """A FakeSwitch (bundles, barriers, commits) that holds ``held`` at first and answers
    read-backs of it; ``refuse``: the bundle add with that number (from 1) is refused on
    arrival, as OVS refuses a bad message."""

    def __init__(self, replies: ofio.Replies, held: SwitchState, refuse: int = 0) -> None:
        super().__init__(replies)
        self.held = held
        self.refuse = refuse
        self.adds = 0
        self.table = table_of(held)

    def send_msg(self, msg: Any) -> bool:
        if isinstance(msg, parser.OFPFlowStatsRequest):
            entries = [osken_entry(f) for f in sorted_flows(self.held.flows)]
            for reply in reply_stats_messages(self, entries, msg.xid, 5):
                self._answer(reply)
            return True
        if isinstance(msg, parser.OFPGroupDescStatsRequest):
            mods = [group_mod(self, g, "add") for g in self.held.groups]
            body = [parser.OFPGroupDescStats(m.type, m.group_id, m.buckets) for m in mods]
            reply = parser.OFPGroupDescStatsReply(self, body=body, flags=0)
            reply.xid = msg.xid
            self._answer(reply)
            return True
        if isinstance(msg, parser.ONFBundleAddMsg):
            self.adds += 1
            if self.adds == self.refuse:
                self.sent.append("refused")
                self._error(msg.xid, ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_OUT_PORT)
                return True
        return super().send_msg(msg)


def table_of(state: SwitchState) -> FakeOFTable:
    table = FakeOFTable(num_tables=CANARY.table + 1)
    groups = [group_mod(DP_ANY, g) for g in sorted(state.groups, key=lambda g: g.group_id)]
    table.apply_bundle([*groups, *(flow_mod(DP_ANY, f) for f in sorted_flows(state.flows))])
    return table


class _Dp:
    ofproto = ofp
    ofproto_parser = parser


DP_ANY = _Dp()


def held_before(how: str, want: SwitchState) -> SwitchState:
    """What the switch holds before the first sync."""
    if how == "empty":
        return SwitchState()
    desired = sorted_flows(want.flows - {CANARY})
    changed = Flow(desired[1].table, desired[1].priority, desired[1].match,
                   (Apply((Output(99),)),), desired[1].cookie)  # fmt: skip
    stale = Flow(60, 7, desired[0].match, (), 0x5EED)
    return SwitchState.of([desired[0], changed, stale, CANARY])


def first_sync(
    i: Intent, how: str, complete: bool, piece: int, streams: Streams | None = None
) -> tuple[StreamSwitch, SwitchSession, SwitchState, SwitchState, session.Synced]:
    streams = followed(publish(i), HOST) if streams is None else streams
    want, _ = reference(i, streams, HOST, OFPORT, TUNNEL_PORT)
    held = held_before(how, want)
    replies = ofio.Replies()
    switch = StreamSwitch(replies, held)
    engine = FlowEngine(str(i.hosts[HOST].underlay_ip))
    s = SwitchSession(engine)
    with mock.patch.object(session, "FIRST_PIECE", piece):
        update, synced = s.first_sync(
            replies, switch, engine, changes({}, streams, True), (OFPORT, TUNNEL_PORT), complete
        )
    assert update.skeleton and update.units > 0
    return switch, s, held, want, synced


def expected(want: SwitchState, held: SwitchState, complete: bool) -> SwitchState:
    """The desired state, plus (not complete: fail static) the held flows nothing wants."""
    if complete:
        return want
    keys = {f.key for f in want.flows}
    return SwitchState.of(
        [*want.flows, *(f for f in held.flows if f.key not in keys)],
        [*want.groups, *held.groups],
    )


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 11)), max_size=10),
    st.sampled_from(["empty", "few"]),
    st.booleans(),
    st.integers(1, 4),
)
def test_a_streamed_first_sync_ends_where_the_full_compile_says(
    ops: list[tuple[str, int]], how: str, complete: bool, piece: int
) -> None:
    i = base_intent()
    for op in ops:
        apply_op(i, op)
    switch, s, held, want, synced = first_sync(i, how, complete, piece)
    assert synced.streamed == (how == "empty")
    end = expected(want, held, complete)
    assert switch.table.flows() == table_of(end).flows()
    assert switch.table.groups() == table_of(end).groups()
    assert synced.plan.apply_to(held) == end  # the reported plan is what was done, net
    assert s.installed is not None and s.installed.state() == end
    assert s.installed.count == len(end.flows)
    assert s.stale == (not complete and how != "empty")  # an empty switch had nothing stale
    assert s.desired.state() == want


@settings(max_examples=60, deadline=None)
@given(RAW_EDITS, st.integers(1, 3))
def test_addresses_claimed_twice_end_with_the_winner_the_full_compile_picks(
    edits: list[RawEdit], piece: int
) -> None:
    """Untrusted peer objects (tests/unit/test_ohc_engine.py): red's destinations may take
    blue's own addresses, so a unit compiled later can win a key whose flow already went out:
    the later flow goes out too, and replaces it in the bundle."""
    i = full_intent()
    streams = followed(publish(i), HOST)
    for edit in edits:
        streams = raw_edit(streams, edit)
    switch, s, _held, want, _synced = first_sync(i, "empty", True, piece, streams)
    assert switch.table.flows() == table_of(want).flows()
    assert s.installed is not None and s.installed.state() == want


class Scripted:
    """An engine whose first update comes in the given pieces: a key may come back with
    another flow (a unit compiled later won it) or go (None)."""

    def __init__(self, pieces: list[list[tuple[FlowKey, Flow | None]]]) -> None:
        self.pieces = pieces
        self.final: dict[FlowKey, Flow] = {}
        for piece in pieces:
            for k, f in piece:
                if f is None:
                    self.final.pop(k, None)
                else:
                    self.final[k] = f
        self.groups: dict[int, Any] = {}
        self.last_update: Update | None = None

    def first_update(
        self, *args: Any, **kwargs: Any
    ) -> Iterator[list[tuple[FlowKey, Flow | None]]]:
        for piece in self.pieces:
            yield list(piece)
        self.last_update = Update(frozenset(), frozenset(), 0, True, {})

    def flow(self, key: FlowKey) -> Flow | None:
        return CANARY if key == CANARY.key else self.final.get(key)

    def state(self) -> SwitchState:
        return SwitchState.of([*self.final.values(), CANARY])


def test_a_key_sent_again_or_withdrawn_ends_as_the_engine_has_it() -> None:
    a, b, c = (Flow(1, 10, Match.of(in_port=n), (Goto(2),), cookie=n) for n in (1, 2, 3))
    a2 = Flow(1, 10, a.match, (), cookie=1)  # a's key, other instructions, same cookie
    a3 = Flow(1, 10, a.match, (), cookie=9)  # and again, another cookie
    engine = Scripted([[(a.key, a), (b.key, b)], [(a.key, a2), (c.key, c)], [(b.key, None)],
                       [(a.key, a3)]])  # fmt: skip
    replies = ofio.Replies()
    held = SwitchState()
    switch = StreamSwitch(replies, held)
    s = SwitchSession(engine)  # type: ignore[arg-type]
    _, synced = s.first_sync(replies, switch, engine, {}, ({}, None), True)  # type: ignore[arg-type]
    assert synced.streamed
    want = engine.state()
    assert want.flows == {a3, c, CANARY}
    assert switch.table.flows() == table_of(want).flows()
    assert synced.plan.apply_to(held) == want
    assert s.installed is not None and s.installed.state() == want


def test_later_syncs_are_incremental_and_delete_the_stale_flows_once_complete() -> None:
    i = full_intent()
    switch, s, _held, want, synced = first_sync(i, "few", False, 2)
    assert synced.plan.counts["flow_delete"] == 0  # fail static: the stale flow stays
    assert synced.plan.counts["flow_modify"] == 1  # the changed one
    engine = s.desired
    assert isinstance(engine, FlowEngine)
    before = followed(publish(i), HOST)
    apply_op(i, ("vm", 3))
    after = followed(publish(i), HOST)
    update = engine.update(changes(before, after, False), OFPORT, TUNNEL_PORT)
    done = s.sync(switch.replies, switch, update, complete=True)
    want, _ = reference(i, after, HOST, OFPORT, TUNNEL_PORT)
    assert done.plan.counts["flow_delete"] >= 1  # the stale flow, now that the view is whole
    assert switch.table.flows() == table_of(want).flows()
    assert s.installed is not None and s.installed.state() == want and not s.stale


def test_a_switch_holding_flows_is_matched_not_streamed() -> None:
    """A restart with flows installed: the engine compiles whole, and the read-back entries
    are matched to its flows (none parsed when nothing changed)."""
    i = full_intent()
    switch, s, _held, want, synced = first_sync(i, "few", True, 1)
    assert not synced.streamed and synced.compile_s is not None
    assert synced.read_unmatched == 2  # the changed flow and the stale one
    assert switch.table.flows() == table_of(want).flows()
    assert s.installed is not None and s.installed.state() == want


@pytest.mark.parametrize("fail", ["refused", "compile"])
def test_a_failure_mid_stream_discards_the_bundle(fail: str) -> None:
    i = full_intent()
    streams = followed(publish(i), HOST)
    held = SwitchState()
    replies = ofio.Replies()
    switch = StreamSwitch(replies, held, refuse=3 if fail == "refused" else 0)
    engine = FlowEngine(str(i.hosts[HOST].underlay_ip))
    s = SwitchSession(engine)
    boom = RuntimeError("compile failed")
    calls = iter(range(10**6))
    real = engine._compile_dest

    def flaky(*args: Any) -> None:
        if fail == "compile" and next(calls) == 3:
            raise boom
        real(*args)

    with (
        mock.patch.object(session, "FIRST_PIECE", 1),
        mock.patch.object(engine, "_compile_dest", flaky),
        pytest.raises(
            ofio.BundleError if fail == "refused" else RuntimeError,
            match=r"OFPBAC_BAD_OUT_PORT .* for (flow|group)_add \S" if fail == "refused" else "",
        ),
    ):
        s.first_sync(
            replies, switch, engine, changes({}, streams, True), (OFPORT, TUNNEL_PORT), True
        )
    assert switch.table.flows() == table_of(held).flows()  # nothing committed
    assert switch.bundle == [] and switch.sent[-1] == "ONFBundleCtrlMsg"  # discarded
    assert "ONFBundleAddMsg" in switch.sent and (fail != "refused" or "refused" in switch.sent)
    assert s.installed is None  # the next sync reads the switch back
    assert not replies._calls  # nothing left waiting
