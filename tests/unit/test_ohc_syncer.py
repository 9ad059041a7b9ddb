"""The flow syncer: plan order and content, the incremental == full recompute invariant,
the os-ken round trip of ohc.flows values, and the bundle protocol of ``send_plan``.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from os_ken.ofproto import ofproto_parser as generic_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from ohc import canonical, ofio
from ohc.flows import (
    Apply,
    Bucket,
    DecTtl,
    Flow,
    Goto,
    Group,
    Instruction,
    Learn,
    Match,
    Move,
    Output,
    Resubmit,
    SetField,
    ToGroup,
    WriteMetadata,
    flow_mod,
)
from ohc.syncer import (
    CANARY,
    STEP_KINDS,
    FlowChange,
    PlanError,
    SwitchState,
    SyncPlan,
    missing_groups,
    plan,
    with_canary,
)
from tests.support.fakeoftable import FakeOFError, FakeOFTable, decode_wire, parse_wire
from tests.unit.test_ohc_wire import flows as wire_flows


class StubDatapath:
    """Enough of os-ken's Datapath to build, serialize and number messages."""

    ofproto = ofp
    ofproto_parser = parser

    def __init__(self) -> None:
        self.xid = 100
        self.id = 1

    def set_xid(self, msg: Any) -> int:
        self.xid += 1
        msg.set_xid(self.xid)
        return self.xid


DP = StubDatapath()
G1 = Group(1, "select", (Bucket((Output(1),), 3), Bucket((Output(2),), 1)))
F_IN1 = Flow(0, 10, Match.of(in_port=1), (Goto(1),), cookie=0x11)
F_IP = Flow(1, 20, Match.of(eth_type=0x0800, ipv4_dst="10.0.0.1"), (Apply((Output(3),)),), 0x12)
F_GRP = Flow(1, 30, Match.of(eth_type=0x0800, ipv4_dst="10.0.0.2"), (Apply((ToGroup(1),)),), 0x13)


def state(*items: Flow | Group) -> SwitchState:
    return SwitchState.of(
        [i for i in items if isinstance(i, Flow)], [i for i in items if isinstance(i, Group)]
    )


# --- plan ----------------------------------------------------------------------------------


def test_equal_states_give_an_empty_plan() -> None:
    s = state(G1, F_IN1, F_IP, F_GRP)
    p = plan(s, s)
    assert p.empty and len(p) == 0 and p.summary() == "nothing to do"
    assert p.apply_to(s) == s


def test_steps_come_in_bundle_order() -> None:
    g2 = Group(2, "all", (Bucket((Output(4),)),))
    g3 = Group(3, "indirect", (Bucket((Output(5),)),))
    old_f = Flow(2, 1, Match.of(in_port=9), (Apply((ToGroup(3),)),), 0x20)
    installed = state(G1, g3, F_IN1, old_f)
    g1_changed = Group(1, "select", (Bucket((Output(1),), 1),))
    desired = state(g1_changed, g2, F_IP, Flow(0, 10, Match.of(in_port=1), (), 0x11))
    p = plan(desired, installed)
    kinds = [k for k, _ in p.steps()]
    assert kinds == [
        "group_add", "group_modify", "flow_add", "flow_modify", "flow_delete", "group_delete",
    ]  # fmt: skip
    assert [k for k in STEP_KINDS if p.counts[k]] == kinds
    assert p.group_adds == (g2,) and p.group_modifies == (g1_changed,)
    assert p.group_deletes == (g3,) and p.flow_deletes == (old_f,)
    assert p.apply_to(installed) == desired


def test_same_key_other_instructions_is_a_modify_other_priority_is_add_and_delete() -> None:
    changed = Flow(F_IP.table, F_IP.priority, F_IP.match, (Apply((DecTtl(), Output(3))),), 0x12)
    p = plan(state(changed), state(F_IP))
    assert p.flow_modifies == (FlowChange(F_IP, changed),)
    assert not p.flow_modifies[0].cookie_changed
    assert p.flow_adds == () and p.flow_deletes == ()

    moved = Flow(F_IP.table, 21, F_IP.match, F_IP.instructions, F_IP.cookie)
    p = plan(state(moved), state(F_IP))
    assert p.flow_adds == (moved,) and p.flow_deletes == (F_IP,) and p.flow_modifies == ()


def test_a_cookie_only_change_is_a_modify_sent_as_add() -> None:
    recookied = Flow(F_IP.table, F_IP.priority, F_IP.match, F_IP.instructions, 0x99)
    p = plan(state(recookied), state(F_IP))
    assert p.counts["flow_modify"] == 1 and len(p) == 1
    assert p.flow_modifies[0].cookie_changed
    (msg,) = map(decode_wire, ofio.plan_messages(DP, p))
    assert msg.command == ofp.OFPFC_ADD and msg.cookie == 0x99  # MODIFY would keep 0x12
    table = FakeOFTable()
    table.apply_bundle(ofio.bundle_messages(DP, plan(state(F_IP), state()), 1))
    table.apply_bundle(ofio.bundle_messages(DP, p, 2))
    assert [f.cookie for f in table.flows()] == [0x99]


def test_instruction_changes_are_sent_as_modify_strict_and_deletes_are_strict_by_cookie() -> None:
    changed = Flow(F_IP.table, F_IP.priority, F_IP.match, (), F_IP.cookie)
    p = plan(state(changed), state(F_IP, F_IN1))
    modify, delete = map(decode_wire, ofio.plan_messages(DP, p))
    assert modify.command == ofp.OFPFC_MODIFY_STRICT
    assert delete.command == ofp.OFPFC_DELETE_STRICT
    assert (delete.cookie, delete.cookie_mask) == (F_IN1.cookie, ofio.ALL_COOKIE_BITS)
    assert (delete.out_port, delete.out_group) == (ofp.OFPP_ANY, ofp.OFPG_ANY)


def test_group_lifecycle_groups_before_their_flows_and_deleted_after_them() -> None:
    table = FakeOFTable()
    steps: list[SyncPlan] = []
    installed = state()
    for desired in (
        state(G1, F_GRP),
        state(Group(1, "all", (Bucket((Output(7),)),)), F_GRP),
        state(),
    ):
        p = plan(desired, installed)
        steps.append(p)
        table.apply_bundle(ofio.bundle_messages(DP, p, len(steps)))  # raises if out of order
        installed = p.apply_to(installed)
        assert installed == desired
    assert [k for k, _ in steps[0].steps()] == ["group_add", "flow_add"]
    assert [k for k, _ in steps[1].steps()] == ["group_modify"]
    assert [k for k, _ in steps[2].steps()] == ["flow_delete", "group_delete"]
    assert table.flows() == [] and table.groups() == []


def test_a_flow_before_its_group_is_what_a_switch_refuses() -> None:
    """The order matters: the same messages with the group after the flow fail atomically."""
    p = plan(state(G1, F_GRP), state())
    msgs = ofio.plan_messages(DP, p)
    table = FakeOFTable()
    with pytest.raises(FakeOFError, match="OFPBAC_BAD_OUT_GROUP"):
        table.apply_bundle(list(reversed(msgs)))
    assert table.flows() == [] and table.groups() == []


def test_two_flows_with_one_key_cannot_be_planned() -> None:
    twin = Flow(F_IP.table, F_IP.priority, F_IP.match, (), 0x77)
    with pytest.raises(PlanError, match="share a key"):
        plan(state(F_IP, twin), state())


def test_apply_to_refuses_a_plan_that_does_not_fit() -> None:
    p = plan(state(F_IP, G1), state())
    with pytest.raises(PlanError):
        p.apply_to(state(F_IP))
    with pytest.raises(PlanError):
        p.apply_to(state(G1))
    with pytest.raises(PlanError):
        plan(state(), state(F_IP)).apply_to(state())


def test_canary_and_missing_groups() -> None:
    s = with_canary(state(F_GRP))
    assert CANARY in s.flows and missing_groups(s) == {1}
    assert missing_groups(state(F_GRP, G1)) == frozenset()


# --- the invariant: incremental updates == full recompute ---------------------------------------

_MATCHES = (
    Match(),
    Match.of(in_port=1),
    Match.of(in_port=2),
    Match.of(eth_type=0x0800, ipv4_dst="10.0.0.1"),
    Match.of(eth_type=0x0800, ipv4_dst=("10.0.1.0", "255.255.255.0")),
    Match.of(metadata=(0x10, 0xFF)),
)
_ACTIONS = (Output(1), Output(2), SetField("eth_dst", "02:00:00:00:00:01"), DecTtl())


@st.composite
def switch_states(draw: st.DrawFn) -> SwitchState:
    group_ids = draw(st.sets(st.sampled_from([1, 2, 3])))
    groups = [
        Group(
            gid,
            draw(st.sampled_from(["select", "all"])),
            tuple(
                Bucket(tuple(draw(st.lists(st.sampled_from(_ACTIONS), max_size=2))), w)
                for w in draw(st.lists(st.integers(1, 3), min_size=1, max_size=2))
            ),
        )
        for gid in sorted(group_ids)
    ]
    keys = draw(
        st.sets(
            st.tuples(st.integers(0, 2), st.integers(1, 2), st.sampled_from(_MATCHES)), max_size=8
        )
    )
    flows = []
    for table, priority, match in sorted(keys, key=repr):
        actions: list[Any] = draw(st.lists(st.sampled_from(_ACTIONS), max_size=2))
        if match.get("eth_type") is None:  # OVS refuses dec_ttl without an IP match
            actions = [a for a in actions if not isinstance(a, DecTtl)]
        use_group: bool = draw(st.booleans())
        if group_ids and use_group:
            actions.append(ToGroup(draw(st.sampled_from(sorted(group_ids)))))
        instructions: list[Instruction] = [Apply(tuple(actions))] if actions else []
        if draw(st.booleans()):
            instructions += [WriteMetadata(draw(st.integers(0, 3)), 0xF), Goto(table + 1)]
        cookie = draw(st.integers(0, 2))
        flows.append(Flow(table, priority, match, tuple(instructions), cookie))
    return SwitchState.of(flows, groups)


@settings(max_examples=150, deadline=None)
@given(st.lists(switch_states(), min_size=1, max_size=6))
def test_incremental_updates_equal_a_full_recompute(sequence: list[SwitchState]) -> None:
    installed = SwitchState()
    table = FakeOFTable()
    for n, desired in enumerate(sequence, 1):
        p = plan(desired, installed)
        installed = p.apply_to(installed)
        assert installed == desired
        assert plan(desired, installed).empty
        table.apply_bundle(ofio.bundle_messages(DP, p, n))
    fresh = FakeOFTable()
    fresh.apply_bundle(ofio.bundle_messages(DP, plan(sequence[-1], SwitchState()), 0))
    assert table.flows() == fresh.flows()
    assert table.groups() == fresh.groups()


# --- ofio: canonical form and the os-ken round trip -----------------------------------------------

ROUND_TRIP = [
    F_IN1,
    F_IP,
    F_GRP,
    CANARY,
    Flow(0, 1, Match(), (), 0),
    Flow(
        3,
        7,
        Match.of(
            in_port=4,
            eth_src=("02:AA:00:00:00:00", "ff:ff:00:00:00:00"),
            eth_type=0x86DD,
            ipv6_dst="fd00:0:0:0::1",
            metadata=(0x1F, 0xF0),
            tunnel_id=5001,
        ),
        (Goto(9), WriteMetadata(0x123, 0xFF), Apply((SetField("eth_dst", "02:BB:00:00:00:01"),))),
        (1 << 64) - 1,
    ),
    Flow(
        2,
        5,
        Match.of(eth_type=0x0800, ipv4_src=("10.1.2.3", "255.255.255.255"), reg0=(0, 0)),
        (
            Apply(()),
            Apply((DecTtl(), SetField("tunnel_id", 77), Output(ofp.OFPP_CONTROLLER))),
        ),
        9,
    ),
    Flow(  # a gateway's BFD reflection, an on-demand host's counting (docs/gateways.md)
        0,
        1000,
        Match.of(in_port=1, tunnel_id=0, eth_type=0x0800, ip_proto=17, udp_dst=3784),
        (Apply((Move("tun_ipv4_src", "tun_ipv4_dst"), Output(0xFFFFFFF8))),),
        0x14,
    ),
    Flow(
        35,
        1,
        Match.of(eth_type=0x0800, ipv4_dst=("10.2.0.0", "255.255.255.0")),
        (Apply((Learn(35, 10, 10, 0xB1, (("eth_type", 0x0800),), ("metadata", "ipv4_dst")),)),),
        0x15,
    ),
    Flow(30, 9, Match.of(eth_type=0x0800), (Apply((Resubmit(35), ToGroup(1))),), 0x16),
]


def test_canonical_form() -> None:
    f = canonical.canonical_flow(ROUND_TRIP[5])
    assert f.match.as_dict() == {
        "eth_src": ("02:aa:00:00:00:00", "ff:ff:00:00:00:00"),
        "eth_type": 0x86DD,
        "in_port": 4,
        "ipv6_dst": "fd00::1",
        "metadata": (0x10, 0xF0),
        "tunnel_id": 5001,
    }
    assert f.instructions == (
        Apply((SetField("eth_dst", "02:bb:00:00:00:01"),)),
        WriteMetadata(0x23, 0xFF),
        Goto(9),
    )
    g = canonical.canonical_flow(ROUND_TRIP[6])
    assert g.match.as_dict() == {"eth_type": 0x0800, "ipv4_src": "10.1.2.3"}  # full/zero masks
    assert [type(i) for i in g.instructions] == [Apply]  # the empty apply-actions is gone
    for flow in ROUND_TRIP:
        once = canonical.canonical_flow(flow)
        assert canonical.canonical_flow(once) == once


@st.composite
def perturbed_flows(draw: st.DrawFn) -> Flow:
    """Canonical flows, then put out of canonical form in the ways the compiler or a caller
    could: upper-case MACs, full and zero masks, value bits outside the mask, long IPv6 text,
    instructions out of execution order, empty apply-actions."""
    f = draw(wire_flows())
    fields = dict(f.match.fields)
    for name, value in list(fields.items()):
        how = draw(st.sampled_from(["keep", "keep", "upper", "full", "zero", "outside", "long"]))
        if how == "upper" and isinstance(value, str) and ":" in value:
            fields[name] = value.upper()
        elif how == "full" and not isinstance(value, tuple):
            full = "ff:ff:ff:ff:ff:ff" if name in ("eth_src", "eth_dst") else None
            if isinstance(value, int):
                fields[name] = (value, canonical._full_mask(name, value))
            elif full is not None:
                fields[name] = (value, full)
        elif how == "zero" and isinstance(value, tuple) and isinstance(value[1], int):
            fields[name] = (value[0], 0)
        elif how == "outside" and isinstance(value, tuple) and isinstance(value[1], int):
            fields[name] = (value[0] | ~value[1] & 0xFF, value[1])
        elif how == "long" and isinstance(value, str) and value.count(":") > 1 and "::" in value:
            fields[name] = str(ipaddress.IPv6Address(value).exploded)
    ins = list(f.instructions)
    if draw(st.booleans()):
        ins.reverse()
    if draw(st.booleans()):
        ins.append(Apply(()))
    ins = [
        WriteMetadata(i.value | 1, i.mask) if isinstance(i, WriteMetadata) and draw(st.booleans())
        else i
        for i in ins
    ]  # fmt: skip
    return Flow(f.table, f.priority, Match(tuple(sorted(fields.items()))), tuple(ins), f.cookie)


@settings(max_examples=400, deadline=None)
@given(st.one_of(wire_flows(), perturbed_flows()))
def test_a_flow_already_canonical_is_returned_itself_and_others_are_rebuilt(f: Flow) -> None:
    """canonical_flow's shortcut (return the flow itself) agrees with rebuilding it."""
    canon = canonical.canonical_flow(f)
    assert canon == canonical._rebuilt_canonical(f)
    assert canonical.canonical_flow(canon) == canon
    if canon == f and not any(isinstance(v, tuple) and isinstance(v[0], str) for _, v in
                              f.match.fields):  # fmt: skip
        assert canon is f  # masked addresses are always rebuilt (rare: subnet routes)
    for flow in ROUND_TRIP:
        assert canonical.canonical_flow(flow) == canonical._rebuilt_canonical(flow)


def _reparse(msg: Any) -> Any:
    DP.set_xid(msg)
    msg.serialize()
    version, msg_type, msg_len, xid = struct.unpack_from("!BBHI", msg.buf)
    return generic_parser.msg(DP, version, msg_type, msg_len, xid, bytes(msg.buf))


@pytest.mark.parametrize("flow", ROUND_TRIP, ids=range(len(ROUND_TRIP)))
def test_flow_round_trip_through_os_ken_bytes(flow: Flow) -> None:
    parsed = _reparse(flow_mod(DP, canonical.canonical_flow(flow)))
    assert isinstance(parsed, parser.OFPFlowMod)
    stats = parser.OFPFlowStats(
        table_id=parsed.table_id,
        priority=parsed.priority,
        cookie=parsed.cookie,
        match=parsed.match,
        instructions=parsed.instructions,
    )
    assert ofio.flow_from_stats(DP, stats) == canonical.canonical_flow(flow)


@pytest.mark.parametrize(
    "group",
    [G1, Group(2, "all", (Bucket((Output(1),)), Bucket((DecTtl(), ToGroup(1))))),
     Group(3, "indirect", (Bucket((SetField("eth_dst", "02:00:00:00:00:09"), Output(4))),)),
     Group(4, "select", (Bucket((Output(1),), 1, 7), Bucket((Output(1),), 2)))],
)  # fmt: skip
def test_group_round_trip_through_os_ken_bytes(group: Group) -> None:
    msg = ofio.plan_messages(DP, plan(state(group), state()))[0]
    buf = bytearray()
    for b in msg.buckets:
        b.serialize(buf, len(buf))
    buckets, offset = [], 0
    while offset < len(buf):
        bucket = parser.OFPBucket.parser(bytes(buf), offset)
        buckets.append(bucket)
        offset += bucket.len
    stats = parser.OFPGroupDescStats(type_=msg.type, group_id=msg.group_id, buckets=buckets)
    assert ofio.group_from_desc(DP, stats) == group


def test_a_learn_read_back_with_nxm_field_names_is_the_learn_sent() -> None:
    """OVS reports learn specs by the NXM header of a field that has one (eth_type, ipv4_dst;
    metadata has none): found by tests/integration/test_ohc_syncer.py, where every restart
    modified the on-demand learner."""
    specs = [
        parser.NXFlowSpecMatch(0x0800, ("eth_type_nxm", 0), 16),
        parser.NXFlowSpecMatch(("metadata", 0), ("metadata", 0), 64),
        parser.NXFlowSpecMatch(("ipv4_dst_nxm", 0), ("ipv4_dst_nxm", 0), 32),
    ]
    reported = parser.NXActionLearn(35, specs, 10, 0, 100, 0xB1)
    sent = Learn(35, 100, 10, 0xB1, (("eth_type", 0x0800),), ("metadata", "ipv4_dst"))
    assert ofio.action_from_osken(parser, reported) == sent


def test_foreign_actions_read_as_unrepresentable_so_they_are_replaced() -> None:
    stats = parser.OFPFlowStats(
        table_id=0,
        priority=1,
        cookie=0,
        match=parser.OFPMatch(in_port=1),
        instructions=[
            parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, [parser.OFPActionPopVlan()])
        ],
    )
    installed = ofio.flow_from_stats(DP, stats)
    desired = Flow(0, 1, Match.of(in_port=1), (Apply((Output(2),)),), 0)
    assert plan(state(desired), state(installed)).counts["flow_modify"] == 1


# --- send_plan against a fake switch ---------------------------------------------------------------


class FakeSwitch(StubDatapath):
    """Answers like OVS: bundle adds are checked on arrival (here: never), barriers and commits
    are answered, a commit that fails reports the failing message's xid, then the commit's."""

    def __init__(self, replies: ofio.Replies) -> None:
        super().__init__()
        self.replies = replies
        self.table = FakeOFTable()
        self.bundle: list[Any] = []
        self.sent: list[str] = []
        self.numbered: dict[int, Any] = {}

    def _answer(self, msg: Any) -> None:
        msg.datapath = self
        self.replies.dispatch(msg)

    def _error(self, xid: int, type_: int, code: int) -> None:
        err = parser.OFPErrorMsg(self, type_=type_, code=code)
        err.xid = xid
        self._answer(err)

    def set_xid(self, msg: Any) -> int:
        xid = super().set_xid(msg)
        self.numbered[xid] = msg
        return xid

    def send(self, buf: bytes) -> bool:
        """Pre-serialized bytes (as os-ken's Datapath.send): one or more messages back to
        back, as a TCP stream carries them; each is the message numbered with the xid in its
        header, which must have serialized to exactly its bytes."""
        off = 0
        while off < len(buf):
            (length,) = struct.unpack_from("!H", buf, off + 2)
            one = bytes(buf[off : off + length])
            off += length
            (xid,) = struct.unpack_from("!I", one, 4)
            msg = self.numbered[xid]
            assert bytes(msg.buf) == one and msg.xid == xid
            if not isinstance(msg, parser.MsgBase):  # packed by ohc.wire: what the bytes say
                msg = parse_wire(one)
            self.send_msg(msg)
        assert off == len(buf), "a message cut in two"
        return True

    def send_msg(self, msg: Any) -> bool:
        self.sent.append(type(msg).__name__)
        if isinstance(msg, parser.ONFBundleAddMsg):
            self.bundle.append(msg)
        elif isinstance(msg, parser.OFPBarrierRequest):
            reply = parser.OFPBarrierReply(self)
            reply.xid = msg.xid
            self._answer(reply)
        elif isinstance(msg, parser.ONFBundleCtrlMsg) and msg.type == ofp.ONF_BCT_DISCARD_REQUEST:
            self.bundle = []
            reply = parser.ONFBundleCtrlMsg(self, msg.bundle_id, ofp.ONF_BCT_DISCARD_REPLY, 0, [])
            reply.xid = msg.xid
            self._answer(reply)
        elif isinstance(msg, parser.ONFBundleCtrlMsg) and msg.type == ofp.ONF_BCT_COMMIT_REQUEST:
            try:
                self.table.apply_bundle(self.bundle)
            except FakeOFError:
                bad = next(m for m in self.bundle if _fails_alone(self.table, m))
                self._error(bad.xid, ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_OUT_GROUP)
                self._error(msg.xid, 0xFFFF, 0)
            else:
                reply = parser.ONFBundleCtrlMsg(
                    self, msg.bundle_id, ofp.ONF_BCT_COMMIT_REPLY, 0, []
                )
                reply.xid = msg.xid
                self._answer(reply)
            self.bundle = []
        return True


def _fails_alone(table: FakeOFTable, msg: Any) -> bool:
    try:
        table.copy().apply(msg.message)
    except FakeOFError:
        return True
    return False


@pytest.mark.parametrize("chunk", [ofio.SEND_CHUNK, 2, 1])
def test_send_plan_commits_one_bundle_after_a_barrier(
    chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same messages in the same order however many go in one buffer."""
    monkeypatch.setattr(ofio, "SEND_CHUNK", chunk)
    replies = ofio.Replies()
    switch = FakeSwitch(replies)
    desired = state(G1, F_IN1, F_IP, F_GRP)
    ofio.send_plan(replies, switch, plan(desired, state()), 5)
    assert switch.sent == [
        "ONFBundleCtrlMsg",
        *["ONFBundleAddMsg"] * 4,
        "OFPBarrierRequest",
        "ONFBundleCtrlMsg",
    ]
    assert len(switch.table.flows()) == 3 and len(switch.table.groups()) == 1
    ofio.send_plan(replies, switch, plan(desired, desired), 6)  # empty: nothing sent
    assert len(switch.sent) == 7


def test_a_chunk_that_cannot_be_packed_discards_the_bundle_already_begun(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Chunks are packed as they go out: when a later one cannot be (a field ohc.wire does not
    encode), the bundle the switch holds the first chunks of is discarded, not left open."""
    monkeypatch.setattr(ofio, "SEND_CHUNK", 1)
    replies = ofio.Replies()
    switch = FakeSwitch(replies)
    odd = Flow(F_IP.table, 7, Match.of(not_a_field=1), (), 9)
    with pytest.raises(ValueError, match="not_a_field"):
        ofio.send_plan(replies, switch, plan(state(F_IN1, odd), state()), 3)
    assert switch.sent[0] == "ONFBundleCtrlMsg" and switch.sent[-1] == "ONFBundleCtrlMsg"
    assert "ONFBundleAddMsg" in switch.sent and switch.bundle == []
    assert not switch.table.flows()  # nothing committed


def test_send_plan_raises_when_the_commit_fails_and_the_switch_is_unchanged() -> None:
    replies = ofio.Replies()
    switch = FakeSwitch(replies)
    ofio.send_plan(replies, switch, plan(state(F_IN1), state()), 1)
    before = switch.table.flows()
    with pytest.raises(ofio.BundleError, match=r"OFPBAC_BAD_OUT_GROUP.*group:1"):
        ofio.send_plan(replies, switch, plan(state(F_IN1, F_IP, F_GRP), state(F_IN1)), 2)
    assert switch.table.flows() == before
