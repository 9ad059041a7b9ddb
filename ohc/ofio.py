"""The flow syncer's os-ken edge: read flows and groups back, send a plan as one bundle.

Thin by design; every decision is in ``ohc.syncer``. This module only

* reads flows back: an installed flow whose bytes are a desired flow's is that flow
  (``ohc.readback``: no os-ken object per flow); any other is parsed by os-ken and converted
  (``OFPFlowStats``, ``OFPGroupDescStats`` into ``ohc.flows`` values), exactly inverting
  ``ohc.flows.flow_mod``/``group_mod`` after ``canonical_flow`` (the form OVS reports a flow
  in: instructions in execution order, no empty apply-actions, masks applied, full masks
  dropped, lower-case MACs, compressed IPv6);
* turns a ``SyncPlan`` into messages and sends them as ONE OpenFlow 1.3 ONF bundle
  (``ONFBundleCtrlMsg``/``ONFBundleAddMsg``, flags ATOMIC|ORDERED), waiting for the commit
  reply or an error (which rolls the whole bundle back);
* matches replies and errors to waiting callers by xid (``Replies``).

Why the OF1.3 ONF bundle and not OF1.4's native one: the OHC speaks OpenFlow 1.3 only (the
pipeline, select-group behaviour and ``tests/support/fakeoftable.py`` are 1.3), OVS accepts the
ONF extension on a 1.3 connection with the same atomic semantics, and the fake switch applies
exactly the messages sent here (``FakeOFTable.apply_bundle``). For the switch both bundle kinds
cost the same (docs/lab.md, "The switch's own speed"); an OF1.4 bundle would need a second
OpenFlow version on the channel.

Blocking helpers (``read_installed``, ``send_plan``, ``resync``) wait on eventlet events set by
the app's reply handlers, so they MUST run in their own green thread (``hub.spawn``), never
inside an os-ken event handler of the app that dispatches the replies: that handler would
block the very event loop that delivers the reply. See docs/flowsync.md.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import eventlet
import eventlet.event

from ohc import readback, wire
from ohc.canonical import UNREPRESENTABLE, canonical_flow
from ohc.cookies import Kind, cookie_of_kind, kind_mask, kind_of
from ohc.flows import (
    CT_COMMIT,
    MOVE_BITS,
    NX_IN_PORT,
    Action,
    Apply,
    Bucket,
    Conntrack,
    DecTtl,
    Flow,
    Goto,
    Group,
    GroupType,
    Instruction,
    Learn,
    Match,
    MatchValue,
    Move,
    Output,
    Resubmit,
    SetField,
    ToGroup,
    WriteMetadata,
    group_mod,
)
from ohc.syncer import CANARY, FlowState, SwitchState, SyncPlan, plan

ALL_COOKIE_BITS = (1 << 64) - 1
DEFAULT_TIMEOUT = 30.0

# Runs a CPU-heavy pure step: ``offload(fn, *args)`` returns ``fn(*args)``. The OHC passes
# ``eventlet.tpool.execute`` so that converting, planning and building 100k flow mods runs in
# a native thread while the hub keeps answering the switch (echo) and the subscriptions.
Offload = Callable[..., Any]


def inline(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


class OFError(Exception):
    """The switch answered with an OpenFlow error (or never answered)."""

    def __init__(self, detail: str, errors: Sequence[Any] = ()) -> None:
        super().__init__(detail)
        self.errors = list(errors)


class BundleError(OFError):
    """A bundle was refused; the switch rolled all of it back."""


# --- os-ken -> ohc.flows ------------------------------------------------------------------------


def match_from_osken(match: Any) -> Match:
    fields: list[tuple[str, MatchValue]] = []
    for name, value in match.items():
        fields.append((str(name), tuple(value) if isinstance(value, tuple | list) else value))
    return Match(tuple(sorted(fields)))


def action_from_osken(parser: Any, action: Any) -> Action:
    if isinstance(action, parser.OFPActionOutput):
        return Output(int(action.port))
    if isinstance(action, parser.OFPActionSetField):
        return SetField(str(action.key), action.value)
    if isinstance(action, parser.OFPActionGroup):
        return ToGroup(int(action.group_id))
    if isinstance(action, parser.OFPActionDecNwTtl):
        return DecTtl()
    if isinstance(action, parser.NXActionCT) and _plain_ct(action):
        return _conntrack_from_osken(action)
    if isinstance(action, parser.NXActionRegMove) and _whole_move(action):
        return Move(str(action.src_field), str(action.dst_field))
    if isinstance(action, parser.NXActionResubmitTable) and int(action.in_port) == NX_IN_PORT:
        return Resubmit(int(action.table_id))
    if isinstance(action, parser.NXActionLearn):
        learn = _learn_from_osken(parser, action)
        if learn is not None:
            return learn
    # Installed by someone else: keep it visibly different from anything desired, so the
    # plan replaces or deletes the flow instead of believing it is in sync.
    return SetField(UNREPRESENTABLE, type(action).__name__)


def _learn_from_osken(parser: Any, action: Any) -> Learn | None:
    """A learn action ``Learn`` can say: match and load specs of whole supported fields, no hard
    timeout, flags or fin timeouts; None for anything else."""
    values: list[tuple[str, int]] = []
    copy: list[str] = []
    load: list[str] = []
    for spec in action.specs:
        is_load = isinstance(spec, parser.NXFlowSpecLoad)
        if not (is_load or isinstance(spec, parser.NXFlowSpecMatch)) or spec.dst[1] != 0:
            return None
        # OVS reports a field that has an NXM header by it (os-ken: "<name>_nxm")
        name = str(spec.dst[0]).removesuffix("_nxm")
        if MOVE_BITS.get(name) != int(spec.n_bits):
            return None
        if isinstance(spec.src, tuple):
            if (str(spec.src[0]).removesuffix("_nxm"), spec.src[1]) != (name, 0):
                return None
            (load if is_load else copy).append(name)
        elif is_load:
            return None
        else:
            values.append((name, int(spec.src)))
    extra = (action.hard_timeout, action.flags, action.fin_idle_timeout, action.fin_hard_timeout)
    if any(int(x) for x in extra):
        return None
    return Learn(
        int(action.table_id),
        int(action.priority),
        int(action.idle_timeout),
        int(action.cookie),
        tuple(values),
        tuple(copy),
        tuple(load),
    )


def _whole_move(action: Any) -> bool:
    """A reg_move ``Move`` can say: a whole supported field into another, from bit 0."""
    bits = MOVE_BITS.get(str(action.src_field))
    return (
        bits is not None
        and MOVE_BITS.get(str(action.dst_field)) == bits == int(action.n_bits)
        and int(action.src_ofs) == int(action.dst_ofs) == 0
    )


def _plain_ct(action: Any) -> bool:
    """A ct action ``Conntrack`` can say: no nested actions, no ALG, a 16-bit zone source."""
    sixteen_bits = not action.zone_src or int(action.zone_ofs_nbits) & 0x3F == 15
    return not action.actions and not action.alg and sixteen_bits


def _conntrack_from_osken(action: Any) -> Conntrack:
    """A ct action as ``ohc.flows.Conntrack``: a zone from a field reads back as the field's
    OXM name and ofs_nbits (OVS reports it as it was sent), an immediate zone as its value."""
    source = str(action.zone_src or "")
    ofs_nbits = int(action.zone_ofs_nbits)
    return Conntrack(
        commit=bool(int(action.flags) & CT_COMMIT),
        zone=0 if source else ofs_nbits,
        zone_field=source,
        zone_start=ofs_nbits >> 6 if source else 0,
        table=int(action.recirc_table),
    )


def actions_from_osken(parser: Any, actions: Iterable[Any]) -> tuple[Action, ...]:
    return tuple(action_from_osken(parser, a) for a in actions)


def instructions_from_osken(
    ofp: Any, parser: Any, instructions: Iterable[Any]
) -> tuple[Instruction, ...]:
    out: list[Instruction] = []
    for i in instructions:
        if isinstance(i, parser.OFPInstructionActions) and i.type == ofp.OFPIT_APPLY_ACTIONS:
            out.append(Apply(actions_from_osken(parser, i.actions)))
        elif isinstance(i, parser.OFPInstructionGotoTable):
            out.append(Goto(int(i.table_id)))
        elif isinstance(i, parser.OFPInstructionWriteMetadata):
            out.append(WriteMetadata(int(i.metadata), int(i.metadata_mask)))
        else:
            out.append(Apply((SetField(UNREPRESENTABLE, type(i).__name__),)))
    return tuple(out)


def flow_from_stats(datapath: Any, stats: Any) -> Flow:
    """One ``OFPFlowStats`` entry (or a parsed ``OFPFlowMod``) as an ``ohc.flows.Flow``."""
    ofp, parser = datapath.ofproto, datapath.ofproto_parser
    return Flow(
        int(stats.table_id),
        int(stats.priority),
        match_from_osken(stats.match),
        instructions_from_osken(ofp, parser, stats.instructions or ()),
        int(stats.cookie),
    )


_GROUP_TYPE_NAMES: dict[str, GroupType] = {
    "OFPGT_ALL": "all",
    "OFPGT_SELECT": "select",
    "OFPGT_INDIRECT": "indirect",
}


def group_from_desc(datapath: Any, stats: Any) -> Group:
    """One ``OFPGroupDescStats`` entry (or a parsed ``OFPGroupMod``) as an ``ohc.flows.Group``.

    Fast-failover groups (never desired) read as ``all`` with an unrepresentable action, so
    the plan replaces or deletes them.
    """
    ofp, parser = datapath.ofproto, datapath.ofproto_parser
    gtype: GroupType | None = None
    for const, name in _GROUP_TYPE_NAMES.items():
        if int(stats.type) == getattr(ofp, const):
            gtype = name
    buckets = tuple(
        Bucket(actions_from_osken(parser, b.actions), int(b.weight), int(b.watch_port))
        for b in stats.buckets or ()
    )
    if gtype is None:
        return Group(
            int(stats.group_id), "all", (Bucket((SetField(UNREPRESENTABLE, "group-type"),)),)
        )
    return Group(int(stats.group_id), gtype, buckets)


# --- plan -> messages ---------------------------------------------------------------------------


@dataclass(slots=True)
class WireFlowMod:
    """A FlowMod of a canonical flow, packed by ``ohc.wire`` instead of built as an os-ken
    object (~100x cheaper). Numbered and serialized like an os-ken message."""

    flow: Flow
    command: str  # add | modify | delete (strict, by the flow's exact cookie)
    xid: int | None = None
    buf: bytes = b""

    def set_xid(self, xid: int) -> None:
        self.xid = xid

    def serialize(self, memo: wire.Memo | None = None) -> None:
        self.buf = wire.flow_mod(self.flow, self.command, self.xid or 0, memo)


@dataclass(slots=True)
class WireBundleAdd:
    """An ONF bundle add around a ``WireFlowMod`` (the inner message takes the outer xid)."""

    bundle_id: int
    flags: int
    message: WireFlowMod
    xid: int | None = None
    buf: bytes = b""

    def set_xid(self, xid: int) -> None:
        self.xid = xid

    def serialize(self, memo: wire.Memo | None = None) -> None:
        self.message.set_xid(self.xid or 0)
        m = self.message
        self.buf = wire.bundled_flow_mod(
            self.bundle_id,
            self.flags,
            m.flow,
            m.command,
            self.xid or 0,
            {} if memo is None else memo,
        )


def plan_messages(datapath: Any, the_plan: SyncPlan) -> list[Any]:
    """GroupMods (os-ken) and FlowMods (``WireFlowMod``) in plan order: what goes inside the
    bundle. Plans are made of canonical flows (``sync`` requires a canonical desired state).

    A modify whose cookie changes is sent as ADD, which replaces the flow atomically: an
    OpenFlow 1.3 MODIFY keeps the old cookie. Deletes are strict and carry the installed
    cookie with a full cookie mask, so they remove only the flow they were planned for.
    """
    msgs = [inner_message(datapath, g, "add") for g in the_plan.group_adds]
    msgs += [inner_message(datapath, g, "modify") for g in the_plan.group_modifies]
    msgs += [WireFlowMod(f, "add") for f in the_plan.flow_adds]
    msgs += [
        WireFlowMod(c.new, "add" if c.cookie_changed else "modify") for c in the_plan.flow_modifies
    ]
    msgs += [WireFlowMod(f, "delete") for f in the_plan.flow_deletes]
    msgs += [inner_message(datapath, g, "delete") for g in the_plan.group_deletes]
    return msgs


Command = Literal["add", "modify", "delete"]


def inner_message(datapath: Any, obj: Flow | Group, command: Command) -> Any:
    """The FlowMod (``WireFlowMod``) or GroupMod (os-ken) that ``command``s ``obj``."""
    if isinstance(obj, Flow):
        return WireFlowMod(obj, command)
    msg = group_mod(datapath, obj, command)
    if command == "delete":
        msg.type = datapath.ofproto.OFPGT_ALL  # OVS ignores the type of a delete; keep it valid
    return msg


def bundle_flags(ofp: Any) -> int:
    return int(ofp.ONF_BF_ATOMIC | ofp.ONF_BF_ORDERED)


def bundle_add(datapath: Any, bundle_id: int, message: Any) -> Any:
    """``message`` inside bundle ``bundle_id``: packed by ``ohc.wire`` if it is a FlowMod."""
    flags = bundle_flags(datapath.ofproto)
    if isinstance(message, WireFlowMod):
        return WireBundleAdd(bundle_id, flags, message)
    return datapath.ofproto_parser.ONFBundleAddMsg(datapath, bundle_id, flags, message, [])


def bundle_ctrl(datapath: Any, bundle_id: int, kind: int) -> Any:
    """An ONF bundle control message (open, commit, discard) for ``bundle_id``."""
    flags = bundle_flags(datapath.ofproto)
    return datapath.ofproto_parser.ONFBundleCtrlMsg(datapath, bundle_id, kind, flags, [])


def bundle_messages(datapath: Any, the_plan: SyncPlan, bundle_id: int) -> list[Any]:
    """OPEN, one ADD per plan message, COMMIT: the whole plan as one ONF (OF1.3) bundle."""
    ofp = datapath.ofproto
    return [
        bundle_ctrl(datapath, bundle_id, ofp.ONF_BCT_OPEN_REQUEST),
        *(bundle_add(datapath, bundle_id, m) for m in plan_messages(datapath, the_plan)),
        bundle_ctrl(datapath, bundle_id, ofp.ONF_BCT_COMMIT_REQUEST),
    ]


# --- replies ------------------------------------------------------------------------------------


@dataclass
class _Call:
    final_xid: int
    done: eventlet.event.Event = field(default_factory=eventlet.event.Event)
    replies: list[Any] = field(default_factory=list)
    errors: list[Any] = field(default_factory=list)
    xids: set[int] = field(default_factory=set)
    sent: dict[int, Any] = field(default_factory=dict)  # xid -> message, for error reports

    def finish(self) -> None:
        if not self.done.ready():
            self.done.send(None)


class Replies:
    """Routes replies and errors to the green thread waiting for them, by (datapath, xid).

    The app forwards ``EventOFPErrorMsg``, ``EventOFPBarrierReply``, ``EventONFBundleCtrlMsg``,
    ``EventOFPFlowStatsReply`` and ``EventOFPGroupDescStatsReply`` messages to ``dispatch``,
    and calls ``abort(datapath)`` when a switch disconnects.
    """

    def __init__(self) -> None:
        # by datapath, then xid: no tuple per message (a first sync numbers 100k of them)
        self._calls: dict[int, dict[int, _Call]] = {}

    def dispatch(self, msg: Any) -> bool:
        """Deliver one message; False when nobody waits for it."""
        call = self._calls.get(id(msg.datapath), {}).get(int(msg.xid))
        if call is None:
            return False
        if isinstance(msg, msg.datapath.ofproto_parser.OFPErrorMsg):
            call.errors.append(msg)
            if int(msg.xid) == call.final_xid:
                call.finish()
            return True
        call.replies.append(msg)
        more = getattr(msg, "flags", 0) & getattr(msg.datapath.ofproto, "OFPMPF_REPLY_MORE", 0)
        is_multipart = isinstance(msg, msg.datapath.ofproto_parser.OFPMultipartReply)
        if int(msg.xid) == call.final_xid and not (is_multipart and more):
            call.finish()
        return True

    def abort(self, datapath: Any) -> None:
        for call in list(self._calls.get(id(datapath), {}).values()):
            call.finish()

    def begin(self, datapath: Any, watch: Iterable[int] = ()) -> _Call:
        """A call whose messages are numbered (``number``) and sent by the caller, maybe over
        a while; errors for them and for the earlier xids in ``watch`` are collected."""
        call = _Call(final_xid=-1, xids=set(watch))
        calls = self._calls.setdefault(id(datapath), {})
        for x in call.xids:
            calls[x] = call
        return call

    def number(self, call: _Call, datapath: Any, msgs: Iterable[Any]) -> None:
        """Give each message its xid (unless it has one) and route its answers to ``call``."""
        calls = self._calls.setdefault(id(datapath), {})
        for m in msgs:
            if m.xid is None:
                datapath.set_xid(m)
            x = int(m.xid)
            call.xids.add(x)
            call.sent[x] = m
            calls[x] = call

    def end(self, call: _Call, datapath: Any) -> None:
        """Forget ``call``: later answers to its messages are nobody's."""
        calls = self._calls.get(id(datapath), {})
        for x in call.xids:
            calls.pop(x, None)
        if not calls:
            self._calls.pop(id(datapath), None)

    def wait(self, call: _Call, datapath: Any, last: Any, timeout: float) -> None:
        """Send ``last`` (a message of ``call``) and wait until it is answered."""
        self.number(call, datapath, [last])
        call.final_xid = int(last.xid)
        if datapath.send_msg(last) is False:
            raise OFError("switch connection is closed")
        self._await(call, timeout)

    @staticmethod
    def _await(call: _Call, timeout: float) -> None:
        with eventlet.Timeout(timeout, False):
            call.done.wait()
        if not call.done.ready():
            raise OFError(f"no reply from the switch within {timeout} s", call.errors)

    def call(
        self,
        datapath: Any,
        msgs: Sequence[Any],
        timeout: float = DEFAULT_TIMEOUT,
        watch: Iterable[int] = (),
        serialized: Callable[[Sequence[Any]], None] | None = None,
    ) -> _Call:
        """Send ``msgs`` in order and wait until the last one is answered (or times out).

        Errors for any of the messages, and for the earlier xids in ``watch``, are collected
        in the returned call's ``errors``. ``serialized``: every message already has its xid;
        this packs a chunk of them (``msg.buf``), and each chunk is sent as one buffer.
        """
        call = self.begin(datapath, watch)
        try:
            self.number(call, datapath, msgs)
            call.final_xid = int(msgs[-1].xid)
            if serialized is None:
                sends: Iterable[Callable[[], Any]] = (partial(datapath.send_msg, m) for m in msgs)
            else:
                sends = (
                    partial(_pack_and_send, datapath, msgs[i : i + SEND_CHUNK], serialized)
                    for i in range(0, len(msgs), SEND_CHUNK)
                )
            for send in sends:
                if send() is False:
                    raise OFError("switch connection is closed")
            self._await(call, timeout)
            return call
        finally:
            self.end(call, datapath)


_ERROR_CODE_PREFIX = {
    "OFPET_BAD_REQUEST": "OFPBRC_",
    "OFPET_BAD_ACTION": "OFPBAC_",
    "OFPET_BAD_INSTRUCTION": "OFPBIC_",
    "OFPET_BAD_MATCH": "OFPBMC_",
    "OFPET_FLOW_MOD_FAILED": "OFPFMFC_",
    "OFPET_GROUP_MOD_FAILED": "OFPGMFC_",
    "OFPET_TABLE_MOD_FAILED": "OFPTMFC_",
}


def error_text(datapath: Any, err: Any) -> str:
    """An OFPErrorMsg as e.g. 'OFPET_BAD_INSTRUCTION/OFPBIC_BAD_TABLE_ID (xid 7)'."""
    ofp = datapath.ofproto
    etype = next(
        (n for n in _ERROR_CODE_PREFIX if getattr(ofp, n, None) == err.type),
        f"type {err.type}",
    )
    prefix = _ERROR_CODE_PREFIX.get(etype)
    code = next(
        (n for n in dir(ofp) if prefix and n.startswith(prefix) and getattr(ofp, n) == err.code),
        f"code {err.code}",
    )
    if int(err.type) == 0xFFFF:  # experimenter error, e.g. an ONF bundle failure
        etype, code = "OFPET_EXPERIMENTER", f"exp_type {getattr(err, 'exp_type', '?')}"
    return f"{etype}/{code} (xid {err.xid})"


# --- reading and sending ------------------------------------------------------------------------


def flow_stats_request(
    datapath: Any, table_id: int | None = None, cookie: int = 0, cookie_mask: int = 0
) -> Any:
    ofp, parser = datapath.ofproto, datapath.ofproto_parser
    readback.install()  # the reply's entries arrive as bytes (ohc.readback)
    return parser.OFPFlowStatsRequest(
        datapath,
        0,
        ofp.OFPTT_ALL if table_id is None else table_id,
        ofp.OFPP_ANY,
        ofp.OFPG_ANY,
        cookie,
        cookie_mask,
        parser.OFPMatch(),
    )


def group_desc_request(datapath: Any) -> Any:
    return datapath.ofproto_parser.OFPGroupDescStatsRequest(datapath, 0)


def _multipart(replies: Replies, datapath: Any, request: Any, timeout: float) -> list[Any]:
    call = replies.call(datapath, [request], timeout)
    if call.errors:
        raise OFError(
            f"{type(request).__name__}: {error_text(datapath, call.errors[0])}", call.errors
        )
    return [entry for reply in call.replies for entry in reply.body]


@dataclass(frozen=True)
class ReadFlows:
    """Flows read back from a switch; ``unmatched`` of them were not known flows."""

    flows: frozenset[Flow]
    unmatched: int  # entries that were not a known flow: parsed by os-ken, converted


def read_flows(
    replies: Replies,
    datapath: Any,
    timeout: float = DEFAULT_TIMEOUT,
    offload: Offload = inline,
    known: Iterable[Flow] = (),
) -> ReadFlows:
    """Every installed flow. An installed flow equal to one of the canonical ``known`` flows
    (the desired ones) is read as that very object, without parsing it (``ohc.readback``);
    the others (``ReadFlows.unmatched`` of them) are parsed and converted exactly."""
    stats = _multipart(replies, datapath, flow_stats_request(datapath), timeout)
    result: ReadFlows = offload(flows_from_stats, datapath, stats, known)
    return result


def flows_from_stats(datapath: Any, stats: list[Any], known: Iterable[Flow] = ()) -> ReadFlows:
    """Flow-stats reply bodies (``readback.RawFlowStats`` or os-ken's ``OFPFlowStats``) as
    flows: an entry equal to a ``known`` flow is that flow; the others are converted."""
    raw = [s for s in stats if isinstance(s, readback.RawFlowStats)]
    found, unknown = readback.match(known, raw) if raw else ([], [])
    parsed = [s for s in stats if not isinstance(s, readback.RawFlowStats)]
    parsed += [reply.osken(off) for reply, off in unknown]
    # Canonical, as the desired flows are: os-ken renders e.g. ::1:0 as ::0.1.0.0, and a key
    # that differs only in its rendering would be planned as an add plus a delete.
    flows = frozenset(found).union(
        canonical_flow(flow) for flow in (flow_from_stats(datapath, s) for s in parsed)
        if kind_of(flow.cookie) not in LEARNED  # the switch's own: not the OHC's to sync
    )  # fmt: skip
    return ReadFlows(flows, len(parsed))


LEARNED = frozenset({Kind.OFFLOAD, Kind.AFFINITY})  # cookie kinds of the flows a switch learns


def read_counts(
    replies: Replies, datapath: Any, table_id: int, kind: Kind, timeout: float = DEFAULT_TIMEOUT
) -> list[tuple[int, dict[str, Any], int]]:
    """(cookie, match, packet count) of every flow of ``kind`` in ``table_id``: the on-demand
    pair counters the switch learned (ohc/offload.py)."""
    request = flow_stats_request(datapath, table_id, cookie_of_kind(kind), kind_mask())
    out = []
    for s in _multipart(replies, datapath, request, timeout):
        for e in [s.osken(o) for o in s.entries()] if isinstance(s, readback.RawFlowStats) else [s]:
            out.append((int(e.cookie), dict(e.match.items()), int(e.packet_count)))
    return out


def read_groups(
    replies: Replies, datapath: Any, timeout: float = DEFAULT_TIMEOUT
) -> frozenset[Group]:
    stats = _multipart(replies, datapath, group_desc_request(datapath), timeout)
    return frozenset(group_from_desc(datapath, s) for s in stats)


@dataclass(frozen=True)
class RawInstalled:
    """What a switch holds, read back but not yet parsed: flow-stats bodies and groups."""

    stats: list[Any]
    groups: frozenset[Group]

    @property
    def empty(self) -> bool:
        """No flow and no group (stops at the first entry: a restart reads 100k back)."""
        no_flows = not any(
            next(iter(s.entries()), None) is not None
            if isinstance(s, readback.RawFlowStats)
            else True
            for s in self.stats
        )
        return no_flows and not self.groups

    def state(self, datapath: Any, known: Iterable[Flow] = ()) -> tuple[SwitchState, int]:
        """As flows (see ``read_flows``: ``known`` ones are not parsed), and how many were
        not ``known``."""
        read = flows_from_stats(datapath, self.stats, known)
        return SwitchState(read.flows, self.groups), read.unmatched


def read_raw(replies: Replies, datapath: Any, timeout: float = DEFAULT_TIMEOUT) -> RawInstalled:
    """Every flow and group on the switch (multipart replies collected), flows unparsed."""
    groups = read_groups(replies, datapath, timeout)
    stats = _multipart(replies, datapath, flow_stats_request(datapath), timeout)
    return RawInstalled(stats, groups)


def read_live_ports(
    replies: Replies, datapath: Any, timeout: float = DEFAULT_TIMEOUT
) -> frozenset[int]:
    """The ports the switch says are live (OFPPS_LIVE: for a port with BFD, its session is
    forwarding)."""
    ofp, parser = datapath.ofproto, datapath.ofproto_parser
    request = parser.OFPPortDescStatsRequest(datapath, 0)
    ports = _multipart(replies, datapath, request, timeout)
    return frozenset(int(p.port_no) for p in ports if int(p.state) & ofp.OFPPS_LIVE)


def read_installed(
    replies: Replies,
    datapath: Any,
    timeout: float = DEFAULT_TIMEOUT,
    offload: Offload = inline,
    known: Iterable[Flow] = (),
) -> tuple[SwitchState, int]:
    """Every flow and group on the switch, and how many flows were not ``known`` ones (see
    ``read_flows``)."""
    raw = read_raw(replies, datapath, timeout)
    result: tuple[SwitchState, int] = offload(raw.state, datapath, known)
    return result


def has_canary(replies: Replies, datapath: Any, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Is the canary flow still installed? Its absence means the switch lost its flows."""
    req = flow_stats_request(datapath, CANARY.table, CANARY.cookie, ALL_COOKIE_BITS)
    stats = _multipart(replies, datapath, req, timeout)
    return CANARY in flows_from_stats(datapath, stats, (CANARY,)).flows


def send_plan(
    replies: Replies,
    datapath: Any,
    the_plan: SyncPlan,
    bundle_id: int,
    timeout: float = DEFAULT_TIMEOUT,
    offload: Offload = inline,
) -> None:
    """Apply ``the_plan`` atomically as one bundle; raise BundleError if the switch refused it.

    OPEN and every ADD are sent, then a barrier (outside the bundle): OVS checks each added
    message as it arrives (bad tables, bad matches), so their errors are all in before the
    barrier reply. On any error the bundle is discarded; otherwise COMMIT is sent and its
    reply awaited. Errors found at commit (e.g. output to a missing group) roll back the
    whole bundle in the switch. An empty plan sends nothing.
    """
    if the_plan.empty:
        return
    parser = datapath.ofproto_parser
    msgs: list[Any] = offload(bundle_messages, datapath, the_plan, bundle_id)
    what: dict[int, tuple[str, Flow | Group | None]] = {}  # rendered only for error reports
    for m, step in zip(msgs[1:-1], the_plan.steps(), strict=True):
        what[datapath.set_xid(m)] = step
    what[datapath.set_xid(msgs[0])] = ("bundle open", None)
    what[datapath.set_xid(msgs[-1])] = ("bundle commit", None)
    barrier = parser.OFPBarrierRequest(datapath)
    datapath.set_xid(barrier)
    first = [*msgs[:-1], barrier]
    # Packed off the hub a chunk at a time, each sent as soon as it is packed: the switch
    # takes chunk k (on the other core) while chunk k+1 is packed, and a chunk goes out as one
    # buffer, not a write per message (100k FlowMods at a first sync of 50k peer endpoints).
    try:
        call = replies.call(
            datapath, first, timeout, serialized=lambda chunk: offload(_serialize, chunk)
        )
    except ValueError:  # a chunk that cannot be packed, after earlier ones were sent
        _discard(replies, datapath, bundle_id, timeout)
        raise
    _commit(replies, datapath, bundle_id, call, msgs[-1], what, timeout)


def _discard(replies: Replies, datapath: Any, bundle_id: int, timeout: float) -> None:
    msg = bundle_ctrl(datapath, bundle_id, datapath.ofproto.ONF_BCT_DISCARD_REQUEST)
    replies.call(datapath, [msg], timeout)


def _commit(
    replies: Replies,
    datapath: Any,
    bundle_id: int,
    call: _Call,
    commit: Any,
    what: dict[int, tuple[str, Flow | Group | None]],
    timeout: float,
) -> None:
    """``call`` sent the bundle's messages and a barrier, and has its answer: discard the
    bundle if the switch refused any message, else commit it."""
    if call.errors:
        _discard(replies, datapath, bundle_id, timeout)
        raise BundleError(
            f"bundle {bundle_id} refused: {_errors_text(datapath, call.errors, what, call.sent)}",
            call.errors,
        )
    # A failure found at commit is reported for the failing message's xid, then the commit's.
    done = replies.call(datapath, [commit], timeout, watch=call.xids)
    if done.errors:
        raise BundleError(
            f"bundle {bundle_id} commit failed: "
            f"{_errors_text(datapath, done.errors, what, call.sent)}",
            done.errors,
        )


class BundleStream:
    """One bundle sent while it is still being produced (a first sync streams the flows as
    the engine compiles them: ``session.SwitchSession.first_sync``). OPEN goes out at once;
    the caller builds messages (``messages``, pure: off the hub), numbers them on the hub
    (``number``), packs them off it (``pack``) and sends them (``send``); ``commit`` sends
    a barrier, then COMMIT, or DISCARD if the switch refused anything (as ``send_plan``)."""

    def __init__(
        self, replies: Replies, datapath: Any, bundle_id: int, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.replies, self.datapath, self.bundle_id = replies, datapath, bundle_id
        self.timeout = timeout
        self.what: dict[int, tuple[str, Flow | Group | None]] = {}
        self.call = replies.begin(datapath)
        self.open = True
        ofp = datapath.ofproto
        first = bundle_ctrl(datapath, bundle_id, ofp.ONF_BCT_OPEN_REQUEST)
        replies.number(self.call, datapath, [first])
        self.what[int(first.xid)] = ("bundle open", None)
        first.serialize()
        self._send(first.buf)

    def messages(self, steps: Sequence[tuple[Command, Flow | Group]]) -> list[Any]:
        return [bundle_add(self.datapath, self.bundle_id, inner_message(self.datapath, o, c))
                for c, o in steps]  # fmt: skip

    def number(self, msgs: Sequence[Any], steps: Sequence[tuple[Command, Flow | Group]]) -> None:
        """Give ``msgs`` (made of ``steps``) their xids, on the hub. An error report names a
        FlowMod's step from the message itself: no record per flow (100k at a first sync)."""
        self.replies.number(self.call, self.datapath, msgs)
        for m, (command, obj) in zip(msgs, steps, strict=True):
            if isinstance(obj, Group):
                self.what[int(m.xid)] = (f"group_{command}", obj)

    @staticmethod
    def pack(msgs: Iterable[Any]) -> None:
        _serialize(msgs)

    def send(self, msgs: Sequence[Any]) -> None:
        """Numbered and packed messages, as one buffer."""
        if msgs:
            self._send(b"".join(m.buf for m in msgs))
            for m in msgs:
                m.buf = b""  # sent: only the error report needs the message

    def _send(self, data: bytes) -> None:
        if self.datapath.send(data) is False:
            raise OFError("switch connection is closed")

    def commit(self) -> None:
        """Wait until the switch took every message, then commit (BundleError: refused)."""
        ofp, parser = self.datapath.ofproto, self.datapath.ofproto_parser
        try:
            self.replies.wait(
                self.call, self.datapath, parser.OFPBarrierRequest(self.datapath), self.timeout
            )
        finally:
            self.replies.end(self.call, self.datapath)
        self.open = False
        commit = bundle_ctrl(self.datapath, self.bundle_id, ofp.ONF_BCT_COMMIT_REQUEST)
        self.datapath.set_xid(commit)
        self.what[int(commit.xid)] = ("bundle commit", None)
        _commit(
            self.replies, self.datapath, self.bundle_id, self.call, commit, self.what, self.timeout
        )

    def abandon(self) -> None:
        """Production failed: discard what the switch holds of the bundle (best effort)."""
        self.replies.end(self.call, self.datapath)
        if self.open:
            self.open = False
            with contextlib.suppress(OFError):  # the connection is gone: so is the bundle
                _discard(self.replies, self.datapath, self.bundle_id, self.timeout)


SEND_CHUNK = 2000  # messages packed and sent at a time (~250 KB of FlowMods)


def _pack_and_send(
    datapath: Any, chunk: Sequence[Any], pack: Callable[[Sequence[Any]], None]
) -> Any:
    pack(chunk)
    sent = datapath.send(b"".join(m.buf for m in chunk))
    for m in chunk:  # sent: the joined copy is all that is needed (100k FlowMods: ~15 MiB)
        if isinstance(m, WireBundleAdd):
            m.buf = b""
    return sent


def _serialize(msgs: Iterable[Any]) -> None:
    memo: wire.Memo = {}  # a chunk's FlowMods share most of their fields' encodings
    for m in msgs:
        if isinstance(m, WireBundleAdd | WireFlowMod):
            m.serialize(memo)
        else:
            m.serialize()


def _errors_text(
    datapath: Any,
    errors: Sequence[Any],
    what: dict[int, tuple[str, Flow | Group | None]],
    sent: Mapping[int, Any],
) -> str:
    """The errors, each with the step it refused: from ``what``, else read off the FlowMod
    ``sent`` with that xid (a streamed bundle keeps no record per flow)."""

    def culprit(xid: int) -> str:
        m = sent.get(xid)
        if xid not in what and isinstance(m, WireBundleAdd):
            return f"flow_{m.message.command} {m.message.flow.text()}"
        kind, obj = what.get(xid, ("?", None))
        return kind if obj is None else f"{kind} {obj.text()}"

    return "; ".join(f"{error_text(datapath, e)} for {culprit(int(e.xid))}" for e in errors)


@dataclass(frozen=True)
class SyncResult:
    """One sync: the plan sent, the installed state after it, and where the time went."""

    plan: SyncPlan
    installed: SwitchState
    read_s: float
    plan_s: float
    send_s: float
    canary_was_present: bool | None = None
    read_unmatched: int = 0  # installed flows read back that were not desired ones (parsed)

    @property
    def total_s(self) -> float:
        return self.read_s + self.plan_s + self.send_s


def sync(
    replies: Replies,
    datapath: Any,
    desired: FlowState,
    bundle_id: int,
    installed: FlowState | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    keep_extra: bool = False,
    offload: Offload = inline,
) -> SyncResult:
    """Read installed (unless given: the incremental path), diff, send one bundle.

    ``desired`` must be canonical (``canonical_state``) and include ``CANARY``
    (``ohc.syncer.with_canary``). ``keep_extra`` leaves installed flows and groups that are
    not desired in place. ``offload`` runs the CPU-heavy pure steps (see ``Offload``).
    Raises BundleError when the switch refuses the plan; the switch then holds exactly what
    it held before.
    """
    t0 = time.monotonic()
    canary: bool | None = None
    unmatched = 0
    if installed is None:
        installed, unmatched = read_installed(replies, datapath, timeout, offload, desired.flows)
        canary = CANARY in installed.flows
    t1 = time.monotonic()
    the_plan: SyncPlan = offload(plan, desired, installed)
    if keep_extra:  # fail static: only add and change; stale flows go at the next full sync
        the_plan = the_plan.without_deletes()
    t2 = time.monotonic()
    send_plan(replies, datapath, the_plan, bundle_id, timeout, offload)
    t3 = time.monotonic()
    after: SwitchState = offload(the_plan.apply_to, installed)
    return SyncResult(the_plan, after, t1 - t0, t2 - t1, t3 - t2, canary, unmatched)
