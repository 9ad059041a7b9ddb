"""ohc.readback: reading flow-stats bytes back against the desired flows gives exactly the
reconciliation that parsing every entry with os-ken (the previous path) gives.

Replies are built as a switch sends them: each entry is os-ken's serialization of the flow's
match and instructions, with the match's OXM TLVs in another order (OVS reports them in its own
order), and arbitrary durations, counters, timeouts and flags; then os-ken's own message parser
reads the reply, as it does on the OHC's connection.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from os_ken.ofproto import ofproto_parser as generic_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from meshpeer.controller.model import Intent
from ohc import ofio, readback
from ohc.canonical import UNREPRESENTABLE, canonical_flow, canonical_state
from ohc.cookies import kind_of
from ohc.flows import Apply, Flow, Match, Output, SetField, flow_mod, group_mod
from ohc.syncer import CANARY, FlowChange, SwitchState, SyncPlan, plan, with_canary
from tests.unit.controller_fixtures import add_vm, add_vpc
from tests.unit.test_ohc_compiler import D, build_lab, full_intent
from tests.unit.test_ohc_wire import flows

DP = SimpleNamespace(ofproto=ofp, ofproto_parser=parser)
_ENTRY = struct.Struct("!HBxIIHHHH4xQQQ")  # ofp_flow_stats up to its match
# Per entry: (a permutation seed for the OXM order, duration, counters, timeouts, flags).
Volatile = tuple[int, int, int, int, int]
VOLATILE = st.tuples(
    st.integers(0, 1000), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1),
    st.integers(0, 0xFFFF), st.integers(0, 0xF),
)  # fmt: skip


def _reordered(match: bytes, seed: int) -> bytes:
    """The match with its OXM TLVs rotated and, for odd seeds, reversed."""
    (length,) = struct.unpack_from("!H", match, 2)
    tlvs, off = [], 4
    while off < length:
        n = 4 + match[off + 3]
        tlvs.append(match[off : off + n])
        off += n
    if tlvs:
        k = seed % len(tlvs)
        tlvs = tlvs[k:] + tlvs[:k]
    if seed % 2:
        tlvs.reverse()
    body = struct.pack("!HH", 1, 4 + sum(map(len, tlvs))) + b"".join(tlvs)
    return body + b"\0" * (-len(body) % 8)


def osken_entry(flow: Flow, volatile: Volatile = (0, 0, 0, 0, 0)) -> bytes:
    """The ``ofp_flow_stats`` entry a switch reports for ``flow`` (match and instructions as
    os-ken serializes them)."""
    msg = flow_mod(DP, flow, "add")
    msg.set_xid(1)
    msg.serialize()
    buf = bytes(msg.buf)
    (match_len,) = struct.unpack_from("!H", buf, 50)
    padded = 48 + (match_len + 7) // 8 * 8
    seed, duration, count, timeout, flags = volatile
    body = _reordered(buf[48:padded], seed) + buf[padded:]
    head = _ENTRY.pack(
        48 + len(body), flow.table, duration, duration // 7, flow.priority,
        timeout, timeout // 3, flags, flow.cookie, count, count // 2,
    )  # fmt: skip
    return head + body


def reply_stats_messages(
    datapath: Any, entries: Sequence[bytes], xid: int = 7, per_reply: int = 3
) -> list[Any]:
    """The multipart replies carrying ``entries``, as os-ken parses them off the wire."""
    readback.install()
    msgs = []
    chunks = [entries[i : i + per_reply] for i in range(0, len(entries), per_reply)] or [[]]
    for n, chunk in enumerate(chunks):
        more = 1 if n < len(chunks) - 1 else 0
        body = b"".join(chunk)
        head = struct.pack("!BBHIHH4x", 4, ofp.OFPT_MULTIPART_REPLY, 16 + len(body), xid, 1, more)
        msg = generic_parser.msg(
            datapath, 4, ofp.OFPT_MULTIPART_REPLY, 16 + len(body), xid, head + body
        )
        assert isinstance(msg, parser.OFPFlowStatsReply)
        msgs.append(msg)
    return msgs


def reply_stats(entries: Sequence[bytes], per_reply: int = 3) -> list[Any]:
    """The bodies of the multipart replies carrying ``entries``."""
    return [s for m in reply_stats_messages(DP, entries, 7, per_reply) for s in m.body]


def exact(stats: list[Any]) -> frozenset[Flow]:
    """The previous path: every entry parsed by os-ken and converted, then put in canonical
    form (os-ken renders some IPv6 addresses differently, e.g. ::1:0 as ::0.1.0.0)."""
    every = (ofio.flow_from_stats(DP, raw.osken(off)) for raw in stats for off in raw.entries())
    # what the switch learns (on-demand pair counters, spillover affinity) is its own, not synced
    return frozenset(canonical_flow(f) for f in every if kind_of(f.cookie) not in ofio.LEARNED)


def reconcile(desired: SwitchState, stats: list[Any]) -> tuple[SyncPlan, SyncPlan, int]:
    fast = ofio.flows_from_stats(DP, stats, desired.flows)
    return (
        plan(desired, SwitchState(fast.flows)),
        plan(desired, SwitchState(exact(stats))),
        fast.unmatched,
    )


def compiled(flow: Flow) -> bool:
    """A flow the OHC may desire: not one of the kinds only the switch learns."""
    return kind_of(flow.cookie) not in ofio.LEARNED


@settings(max_examples=150, deadline=None)
@given(
    st.lists(flows().filter(compiled), max_size=12, unique_by=lambda f: f.key),
    st.lists(flows(), max_size=4),
    st.data(),
)
def test_random_installed_flows_reconcile_as_when_every_entry_is_parsed(
    want: list[Flow], extra: list[Flow], data: st.DataObject
) -> None:
    """Installed: some desired flows (OXMs in any order), others changed, foreign ones."""
    desired = with_canary(SwitchState.of(want))
    installed: dict[tuple[int, int, Match], Flow] = {}
    for f in want:
        fate = data.draw(st.sampled_from(["kept", "changed", "absent"]))
        if fate == "kept":
            installed[f.key] = f
        elif fate == "changed":
            installed[f.key] = Flow(f.table, f.priority, f.match, (Apply((Output(9),)),), f.cookie)
    for f in extra:
        installed.setdefault(f.key, f)
    if data.draw(st.booleans()):
        installed.setdefault(CANARY.key, CANARY)
    entries = [osken_entry(f, data.draw(VOLATILE)) for f in installed.values()]
    fast, slow, unmatched = reconcile(desired, reply_stats(entries))
    assert fast == slow
    assert unmatched == len([f for f in installed.values() if f not in desired.flows])


def compiled_flows() -> frozenset[Flow]:
    """Every flow of the compiler tests' world and of an IPv6 one, canonical."""
    v6 = Intent()
    add_vpc(v6, D, "ctl1", "blue", "fd00:1::/64")
    add_vm(v6, "blue", "b1", "fd00:1::11", "hv1")
    add_vm(v6, "blue", "b3", "fd00:1::13", "hv2")
    labs = build_lab(full_intent()), build_lab(v6)
    return frozenset(
        f for lab in labs for state in lab.states.values() for f in canonical_state(state).flows
    )


@pytest.mark.parametrize("memo_size", [readback.MEMO_SIZE, 2])
def test_every_compiled_flow_reads_back_as_the_desired_flow_itself(memo_size: int) -> None:
    """The key of each compiled flow equals the key of its reported entry, in any OXM order,
    so a restart with nothing changed parses no entry and plans nothing; the encodings memo
    the desired flows share (started afresh every ``memo_size`` entries) changes no key."""
    with mock.patch.object(readback, "MEMO_SIZE", memo_size):
        check_compiled_flows_read_back()


def check_compiled_flows_read_back() -> None:
    want = compiled_flows()
    assert len(want) > 100
    assert {n for f in want for n, _ in f.match.fields} >= {"ipv6_nd_target", "tun_ipv4_src"}
    desired = with_canary(SwitchState(want))
    for seed in (0, 1, 2, 3):
        entries = [osken_entry(f, (seed, 5, 6, 0, 0)) for f in desired.flows]
        stats = reply_stats(entries, per_reply=50)
        read = ofio.flows_from_stats(DP, stats, desired.flows)
        assert read.unmatched == 0
        assert read.flows == desired.flows == exact(stats)
        assert all(any(f is d for d in desired.flows) for f in list(read.flows)[:20])
        assert plan(desired, SwitchState(read.flows)).empty


def test_a_foreign_action_is_parsed_and_replaced() -> None:
    """An entry ohc.flows cannot express (pop_vlan) matches no desired flow; it is read
    exactly, as unrepresentable, so the plan replaces it."""
    desired = Flow(0, 1, Match.of(in_port=1), (Apply((Output(2),)),), 0)
    msg = parser.OFPFlowMod(
        DP, cookie=0, table_id=0, priority=1, match=parser.OFPMatch(in_port=1),
        instructions=[parser.OFPInstructionActions(
            ofp.OFPIT_APPLY_ACTIONS, [parser.OFPActionPopVlan(), parser.OFPActionOutput(2)])],
    )  # fmt: skip
    msg.set_xid(1)
    msg.serialize()
    entry = _ENTRY.pack(len(msg.buf), 0, 0, 0, 1, 0, 0, 0, 0, 0, 0) + bytes(msg.buf)[48:]
    stats = reply_stats([entry])
    fast, slow, unmatched = reconcile(SwitchState.of([desired]), stats)
    assert fast == slow and unmatched == 1
    assert [c.old.instructions for c in fast.flow_modifies] == [
        (Apply((SetField(UNREPRESENTABLE, "OFPActionPopVlan"), Output(2))),)
    ]


def test_a_reply_is_one_object_whatever_its_number_of_entries() -> None:
    f = Flow(0, 1, Match.of(in_port=1), (Apply((Output(2),)),), 3)
    stats = reply_stats([osken_entry(f)] * 40, per_reply=40)
    assert len(stats) == 1 and isinstance(stats[0], readback.RawFlowStats)
    assert len(list(stats[0].entries())) == 40


class ReadBackSwitch:
    """A switch that answers flow-stats requests with reply bytes (``per_reply`` entries in
    each, OXMs reversed), parsed by os-ken as on a real connection, and group-desc requests
    with its groups. Anything else sent to it is recorded in ``sent``."""

    ofproto = ofp
    ofproto_parser = parser
    id = 1

    def __init__(self, replies: ofio.Replies, state: SwitchState, per_reply: int = 7) -> None:
        self.replies, self.flows, self.per_reply = replies, state.flows, per_reply
        self.groups = state.groups
        self.xid = 0
        self.sent: list[str] = []

    def set_xid(self, msg: Any) -> int:
        self.xid += 1
        msg.set_xid(self.xid)
        return self.xid

    def send_msg(self, msg: Any) -> bool:
        if isinstance(msg, parser.OFPFlowStatsRequest):
            chosen = [
                f
                for f in self.flows
                if msg.table_id in (ofp.OFPTT_ALL, f.table)
                and f.cookie & msg.cookie_mask == msg.cookie & msg.cookie_mask
            ]
            for reply in reply_stats_messages(
                self, [osken_entry(f, (1, 0, 0, 0, 0)) for f in chosen], msg.xid, self.per_reply
            ):
                self.replies.dispatch(reply)
        elif isinstance(msg, parser.OFPGroupDescStatsRequest):
            mods = [group_mod(self, g, "add") for g in self.groups]
            body = [parser.OFPGroupDescStats(m.type, m.group_id, m.buckets) for m in mods]
            reply = parser.OFPGroupDescStatsReply(self, body=body, flags=0)
            reply.xid = msg.xid
            self.replies.dispatch(reply)
        else:
            self.sent.append(type(msg).__name__)
        return True


def test_a_restart_with_nothing_changed_reads_every_flow_as_desired_and_sends_nothing() -> None:
    """Through ``ofio.sync`` against a switch holding exactly the desired flows: no entry is
    parsed, the plan is empty, nothing is sent. Then one flow changed and the canary gone:
    only that entry is parsed, and the plan is that modify and the canary."""
    lab = build_lab(full_intent())
    host = max(lab.states, key=lambda h: len(lab.states[h].flows))
    desired = with_canary(canonical_state(lab.states[host]))
    replies = ofio.Replies()
    switch = ReadBackSwitch(replies, desired)
    assert desired.groups
    result = ofio.sync(replies, switch, desired, bundle_id=1)
    assert result.plan.empty and switch.sent == []
    assert result.read_unmatched == 0 and result.canary_was_present
    assert result.installed.flows == desired.flows
    assert ofio.has_canary(replies, switch)

    old = next(f for f in desired.flows if f != CANARY)
    changed = Flow(old.table, old.priority, old.match, (Apply((Output(9),)),), old.cookie)
    switch.flows = (desired.flows - {old, CANARY}) | {changed}
    read = ofio.read_flows(replies, switch, known=desired.flows)
    assert read.unmatched == 1
    the_plan = plan(desired, SwitchState(read.flows, desired.groups))
    assert the_plan.flow_modifies == (FlowChange(changed, old),)
    assert the_plan.flow_adds == (CANARY,) and len(the_plan) == 2
    assert not ofio.has_canary(replies, switch)
