"""A fake OpenFlow 1.3 switch for unit tests: applies os-ken messages like OVS, traces packets.

Tests assert where a packet goes (``table.trace(pkt, in_port=1).is_output(3, tunnel_id=7)``), not
which messages were sent. Behaviour follows Open vSwitch where OpenFlow leaves room:

* FlowMod ADD with the same match and priority replaces the flow (instructions and cookie).
* MODIFY/MODIFY_STRICT replace the instructions of the selected flows, keep their cookie, filter
  by cookie/cookie_mask, ignore out_port/out_group, and add nothing when no flow matches (1.2+).
* DELETE/DELETE_STRICT filter by cookie/cookie_mask, out_port and out_group. os-ken's defaults
  are ``out_port=0, out_group=0``, which OVS reads as "flows that output to port 0 / group 0": a
  delete must pass ``ofp.OFPP_ANY`` and ``ofp.OFPG_ANY`` to delete anything, here as in OVS.
* Deleting a group (or OFPG_ALL) also deletes every flow that references it.
* Errors OVS would return raise ``FakeOFError`` (``code`` = OpenFlow error name); the failing
  message changes nothing.
* A bucket's actions run as OVS runs them, as an action set (``as_action_set``): set_field and
  move, then one of group, output, resubmit or ct; a learn or a resubmit beside an output in a
  bucket is dropped, as OVS drops it (found by tests/e2e/test_spillover_e2e.py).
* A select bucket whose ``watch_port`` is in ``down_ports`` (set by a test: a BFD session
  that went down) is not live: OVS picks among the live buckets only.
* ``move`` (os-ken ``NXActionRegMove``) of a whole field into another of the same width.
* ``resubmit(,T)`` looks the packet up in table T and runs that flow, following its
  goto_table as OVS does (a miss does nothing), then the action list goes on. ``learn`` (match and load specs) adds or replaces the flow it
  describes, whose actions load the learning packet's values (none without load specs), as
  OVS does (timeouts are not modelled).
* Output to the packet's own in_port is skipped (OVS needs OFPP_IN_PORT for that); the trace
  notes it.
* ``ct`` (os-ken ``NXActionCT``, no nested actions) is modelled with a connection table per
  switch, keyed by zone and (eth_type, ip_proto, addresses, tcp/udp ports): a packet whose
  tuple was committed in the zone is ``+trk+est``, its reverse ``+trk+est+rpl``, anything else
  ``+trk+new``. ``commit`` adds a new one. With ``table=N`` the tracked copy resumes in table N
  with ``ct_state``/``ct_zone`` set; the original goes on untracked with the rest of the
  action list, as in OVS. Traces therefore change the connection table (a reply traced after
  its request is ``+est``); ``forget_connections()`` empties it. A ct action needs an IP
  eth_type in the match (OFPBAC_MATCH_INCONSISTENT).
"""

from __future__ import annotations

import copy
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any

from os_ken.ofproto import ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser
from os_ken.ofproto.ofproto_common import ONF_EXPERIMENTER_ID

from tests.support.ofmodel import (
    CT_COMMIT,
    CT_NO_TABLE,
    Action,
    FakeOFError,
    FakeOFUnsupported,
    Flow,
    Group,
    Instruction,
    Match,
    MatchField,
    PacketValue,
    check_prereqs,
    group_from_osken,
    instructions_from_osken,
    match_from_osken,
    packet_default,
    render,
    to_int,
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

Port = int | str  # an OpenFlow port number, or 'controller', 'local', 'flood', 'all', 'normal'
_SPECIAL_OUT = {
    ofp.OFPP_CONTROLLER: "controller",
    ofp.OFPP_LOCAL: "local",
    ofp.OFPP_FLOOD: "flood",
    ofp.OFPP_ALL: "all",
    ofp.OFPP_NORMAL: "normal",
}
# Execution order of the action set (OpenFlow 1.3 section 5.10); output runs last.
_SET_ORDER = ("pop_vlan", "push_vlan", "dec_ttl", "set_ttl", "set_field", "group", "output")
_MAX_DEPTH = 64  # nested groups / goto hops before the trace gives up (OVS: resubmit limit)
CT_NEW, CT_EST, CT_RPL, CT_TRK = 0x01, 0x02, 0x08, 0x20


@dataclass(frozen=True)
class Output:
    """One packet leaving the switch: where, as what, and through which select buckets."""

    port: Port
    packet: dict[str, PacketValue]
    table_id: int
    choices: tuple[tuple[int, int, int], ...] = ()  # (group_id, bucket index, weight) on the path

    @property
    def weight(self) -> int:
        """Product of the select-bucket weights on this output's path (1 if none)."""
        result = 1
        for _, _, weight in self.choices:
            result *= weight
        return result

    def has(self, **fields: object) -> bool:
        for name, want in fields.items():
            got = self.packet.get(name)
            if want is None:
                if got is not None:
                    return False
                continue
            have = packet_default(name) if got is None else to_int(name, got)
            if have != to_int(name, want):  # registers, metadata, tunnel fields read as 0
                return False
        return True


@dataclass(frozen=True)
class SelectRecord:
    group_id: int
    buckets: tuple[tuple[int, int], ...]  # (bucket index, weight), every bucket of the group


@dataclass
class TraceResult:
    outputs: list[Output] = field(default_factory=list)
    tables: list[int] = field(default_factory=list)
    flows: list[Flow] = field(default_factory=list)
    selects: list[SelectRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ttl_expired: bool = False

    @property
    def dropped(self) -> bool:
        return not self.outputs

    def outputs_to(self, port: Port) -> list[dict[str, PacketValue]]:
        return [o.packet for o in self.outputs if o.port == port]

    def is_output(self, port: Port, **fields: object) -> bool:
        """True if some copy left via ``port`` with these field values (None = field absent)."""
        return any(o.port == port and o.has(**fields) for o in self.outputs)

    def ports(self) -> set[Port]:
        return {o.port for o in self.outputs}

    def weights_by_port(self) -> dict[Port, int]:
        """Summed select weights per port: the possible destinations of a select group."""
        weights: dict[Port, int] = {}
        for out in self.outputs:
            weights[out.port] = weights.get(out.port, 0) + out.weight
        return weights

    def __str__(self) -> str:
        lines = [f"tables visited: {self.tables}"]
        lines += [f"  hit: {f}" for f in self.flows]
        lines += [f"  note: {n}" for n in self.notes]
        lines += [
            f"  out {o.port} (w={o.weight}, table {o.table_id}): {o.packet}" for o in self.outputs
        ]
        return "\n".join(lines + (["  dropped"] if self.dropped else []))


@dataclass
class _Trace:
    """Mutable trace state shared by one trace() call."""

    result: TraceResult
    in_port: int
    select_bucket: int | Mapping[int, int] | None
    select_hash: int | None


_DP = SimpleNamespace(ofproto=ofp, ofproto_parser=parser)


def decode_wire(msg: Any) -> Any:
    """A message the OHC packs itself (``ohc.ofio.WireFlowMod``/``WireBundleAdd``: anything
    with ``serialize`` and ``buf`` that is not an os-ken message) as os-ken parses its bytes:
    the fake switch applies what would be on the wire. Other messages are returned as they are.
    """
    if isinstance(msg, parser.MsgBase) or not hasattr(msg, "buf"):
        return msg
    if msg.xid is None:
        msg.set_xid(1)
    msg.serialize()
    return parse_wire(bytes(msg.buf))


def parse_wire(buf: bytes) -> Any:
    """An OpenFlow 1.3 FlowMod, or an ONF bundle add of one, from its bytes (os-ken's parser)."""
    version, msg_type, length, xid = ofproto_parser.header(buf)
    if msg_type != ofp.OFPT_EXPERIMENTER:
        return ofproto_parser.msg(_DP, version, msg_type, length, xid, buf)
    experimenter, exp_type, bundle_id, flags = struct.unpack_from("!IIIxxH", buf, 8)
    if (experimenter, exp_type) != (ONF_EXPERIMENTER_ID, ofp.ONF_ET_BUNDLE_ADD_MESSAGE):
        raise FakeOFUnsupported(f"experimenter message {experimenter:#x}/{exp_type}")
    inner = parse_wire(buf[24:length])
    if inner.xid != xid:
        raise FakeOFError("OFPBFC_BAD_ID", "a bundled message must carry the bundle add's xid")
    outer = parser.ONFBundleAddMsg(_DP, bundle_id, flags, inner, [])
    outer.xid = xid
    return outer


class FakeOFTable:
    """Flow tables and a group table of one OpenFlow 1.3 switch, as OVS would hold them."""

    def __init__(self, num_tables: int = 64) -> None:
        if not 1 <= num_tables <= ofp.OFPTT_MAX + 1:
            raise ValueError(f"num_tables must be in 1..{ofp.OFPTT_MAX + 1}")
        self.num_tables = num_tables
        self._tables: list[dict[tuple[int, Match], Flow]] = [{} for _ in range(num_tables)]
        self._groups: dict[int, Group] = {}
        self._connections: set[tuple[int, tuple[int | None, ...]]] = set()  # (zone, tuple)
        self.down_ports: set[int] = set()  # not live (a select bucket watching one is skipped)

    def forget_connections(self) -> None:
        """Empty the connection tracker (as ``ovs-appctl dpctl/flush-conntrack``)."""
        self._connections.clear()

    def connections(self) -> int:
        return len(self._connections)

    # --- applying messages ---------------------------------------------------------------------

    def apply(self, msg: Any) -> None:
        """Apply one os-ken message; on FakeOFError the table is unchanged."""
        msg = decode_wire(msg)
        if isinstance(msg, parser.OFPFlowMod):
            self._flow_mod(msg)
        elif isinstance(msg, parser.OFPGroupMod):
            self._group_mod(msg)
        elif isinstance(msg, parser.OFPBarrierRequest):
            return
        else:
            raise FakeOFUnsupported(f"message {type(msg).__name__} is not modelled")

    def apply_all(self, msgs: Iterable[Any]) -> None:
        """Apply messages one by one, as separate messages: an error leaves earlier ones applied."""
        for msg in msgs:
            self.apply(msg)

    def apply_bundle(self, msgs: Iterable[Any]) -> None:
        """Apply messages atomically: if one fails, the table is left exactly as before.

        Accepts bare FlowMod/GroupMod messages or the ONF bundle messages that wrap them
        (``ONFBundleAddMsg`` is unwrapped, ``ONFBundleCtrlMsg`` skipped). A barrier inside a
        bundle is an error in OVS (OFPBFC_MSG_UNSUP) and here.
        """
        saved_tables = [dict(t) for t in self._tables]
        saved_groups = dict(self._groups)
        try:
            for msg in msgs:
                msg = decode_wire(msg)
                if isinstance(msg, parser.ONFBundleCtrlMsg):
                    continue
                inner = msg.message if isinstance(msg, parser.ONFBundleAddMsg) else msg
                if isinstance(inner, parser.OFPBarrierRequest):
                    raise FakeOFError("OFPBFC_MSG_UNSUP", "barrier request inside a bundle")
                self.apply(inner)
        except Exception:
            self._tables = saved_tables
            self._groups = saved_groups
            raise

    def _flow_mod(self, fm: Any) -> None:
        command = int(fm.command)
        table_id = int(fm.table_id)
        match = match_from_osken(fm.match)
        check_prereqs(match, (f.name for f in match), "match")
        if command == ofp.OFPFC_ADD:
            if table_id >= self.num_tables:
                raise FakeOFError("OFPFMFC_BAD_TABLE_ID", f"cannot add a flow to table {table_id}")
            flow = Flow(
                table_id,
                int(fm.priority),
                match,
                instructions_from_osken(fm.instructions),
                int(fm.cookie),
            )
            self._check_flow(flow)
            self._tables[table_id][(flow.priority, flow.match)] = flow
            return
        if table_id != ofp.OFPTT_ALL and table_id >= self.num_tables:
            raise FakeOFError("OFPFMFC_BAD_TABLE_ID", f"no table {table_id}")
        strict = command in (ofp.OFPFC_MODIFY_STRICT, ofp.OFPFC_DELETE_STRICT)
        is_delete = command in (ofp.OFPFC_DELETE, ofp.OFPFC_DELETE_STRICT)
        if not is_delete and command not in (ofp.OFPFC_MODIFY, ofp.OFPFC_MODIFY_STRICT):
            raise FakeOFError("OFPFMFC_BAD_COMMAND", f"flow_mod command {command}")
        selected = [
            flow
            for flow in self._iter_flows(None if table_id == ofp.OFPTT_ALL else table_id)
            if _selects(flow, match, int(fm.priority), strict)
            and (flow.cookie & int(fm.cookie_mask)) == (int(fm.cookie) & int(fm.cookie_mask))
            and (not is_delete or _out_filter(flow, int(fm.out_port), int(fm.out_group)))
        ]
        if is_delete:
            for flow in selected:
                del self._tables[flow.table_id][(flow.priority, flow.match)]
            return
        instructions = instructions_from_osken(fm.instructions)
        updated = [replace(flow, instructions=instructions) for flow in selected]
        for flow in updated:
            self._check_flow(flow)
        for flow in updated:
            self._tables[flow.table_id][(flow.priority, flow.match)] = flow

    def _check_flow(self, flow: Flow) -> None:
        where = f"flow [{flow}]"
        for instr in flow.instructions:
            if instr.kind == "goto_table" and not flow.table_id < instr.value < self.num_tables:
                raise FakeOFError(
                    "OFPBIC_BAD_TABLE_ID",
                    f"{where}: goto_table:{instr.value} must go to a later, existing table",
                )
            check_prereqs(
                flow.match, (a.field for a in instr.actions if a.kind == "set_field"), where
            )
        ip_match = {f.value for f in flow.match if f.name == "eth_type" and f.mask is None}
        for action in flow.actions():
            if action.kind in ("dec_ttl", "set_ttl") and not ip_match & {0x0800, 0x86DD}:
                raise FakeOFError(
                    "OFPBAC_MATCH_INCONSISTENT",
                    f"{where}: {action.kind} needs an IP eth_type match",
                )
            if action.kind == "ct" and not ip_match & {0x0800, 0x86DD}:
                raise FakeOFError(
                    "OFPBAC_MATCH_INCONSISTENT", f"{where}: ct needs an IP eth_type match"
                )
            if action.kind == "group" and action.arg not in self._groups:
                raise FakeOFError(
                    "OFPBAC_BAD_OUT_GROUP", f"{where}: group {action.arg} does not exist"
                )

    def _group_mod(self, gm: Any) -> None:
        command, group_id = int(gm.command), int(gm.group_id)
        if command == ofp.OFPGC_DELETE:
            doomed = set(self._groups) if group_id == ofp.OFPG_ALL else {group_id}
            for gid in doomed:
                self._groups.pop(gid, None)
            for table in self._tables:
                for key, flow in list(table.items()):
                    if any(flow.uses_group(gid) for gid in doomed):
                        del table[key]
            return
        if group_id > ofp.OFPG_MAX:
            raise FakeOFError("OFPGMFC_INVALID_GROUP", f"group id {group_id:#x} is reserved")
        group = group_from_osken(gm)
        for bucket in group.buckets:
            for action in bucket.actions:
                if action.kind == "group" and action.arg not in self._groups:
                    raise FakeOFError(
                        "OFPBAC_BAD_OUT_GROUP",
                        f"group {group_id} bucket uses missing group {action.arg}",
                    )
        if command == ofp.OFPGC_ADD:
            if group_id in self._groups:
                raise FakeOFError("OFPGMFC_GROUP_EXISTS", f"group {group_id} already exists")
        elif command == ofp.OFPGC_MODIFY:
            if group_id not in self._groups:
                raise FakeOFError("OFPGMFC_UNKNOWN_GROUP", f"group {group_id} does not exist")
        else:
            raise FakeOFError("OFPGMFC_BAD_COMMAND", f"group_mod command {command}")
        self._groups[group_id] = group

    # --- dumping -------------------------------------------------------------------------------

    def _iter_flows(self, table_id: int | None) -> list[Flow]:
        tables = self._tables if table_id is None else [self._tables[table_id]]
        return [flow for table in tables for flow in table.values()]

    def flows(self, table_id: int | None = None) -> list[Flow]:
        """Installed flows sorted by (table, -priority, text): compare two tables with ==."""
        return sorted(self._iter_flows(table_id), key=lambda f: (f.table_id, -f.priority, str(f)))

    def groups(self) -> list[Group]:
        return [self._groups[gid] for gid in sorted(self._groups)]

    def group(self, group_id: int) -> Group | None:
        return self._groups.get(group_id)

    def copy(self) -> FakeOFTable:
        return copy.deepcopy(self)

    def __str__(self) -> str:
        lines = [str(g) for g in self.groups()] + [str(f) for f in self.flows()]
        return "\n".join(lines) if lines else "(no flows, no groups)"

    # --- tracing -------------------------------------------------------------------------------

    def trace(
        self,
        packet: Mapping[str, object],
        in_port: int,
        *,
        select_bucket: int | Mapping[int, int] | None = None,
        select_hash: int | None = None,
    ) -> TraceResult:
        """Send ``packet`` (OXM field name -> value, plus ``ip_ttl``) in on ``in_port``.

        Select groups: by default every bucket with weight > 0 is followed and each output
        carries its (group, bucket, weight) choices, so ``weights_by_port()`` gives the possible
        destinations and weights. ``select_bucket`` (an index, or {group_id: index}) or
        ``select_hash`` (weighted pick: hash modulo total weight) follow one bucket instead.
        """
        state = {name: to_int(name, value) for name, value in packet.items()}
        state["in_port"] = in_port
        ctx = _Trace(TraceResult(), in_port, select_bucket, select_hash)
        self._pipeline(ctx, state, 0, 0)
        return ctx.result

    def _lookup(self, ctx: _Trace, table_id: int, state: dict[str, int]) -> Flow | None:
        hits = [f for f in self._tables[table_id].values() if _packet_matches(f, state)]
        if not hits:
            return None
        best = max(hits, key=lambda f: f.priority)
        ties = [f for f in hits if f.priority == best.priority]
        if len(ties) > 1:  # OVS picks one of them, unspecified which: a pipeline bug
            ctx.result.notes.append(f"table {table_id}: {len(ties)} flows tie at {best.priority}")
        return best

    def _pipeline(self, ctx: _Trace, state: dict[str, int], start: int, depth: int) -> None:
        result = ctx.result
        action_set: dict[tuple[str, str], Action] = {}
        table_id: int | None = start
        while table_id is not None:
            result.tables.append(table_id)
            flow = self._lookup(ctx, table_id, state)
            if flow is None:
                result.notes.append(f"table {table_id}: no flow matched (table-miss) -> drop")
                return
            result.flows.append(flow)
            table_id = None
            for instr in flow.instructions:
                if instr.kind == "apply_actions":
                    run = self._run_actions(ctx, instr.actions, state, flow.table_id, (), depth)
                    if not run:
                        return
                elif instr.kind == "clear_actions":
                    action_set.clear()
                elif instr.kind == "write_actions":
                    for action in instr.actions:
                        action_set[(action.kind, action.field)] = action
                elif instr.kind == "write_metadata":
                    old = state.get("metadata", 0)
                    state["metadata"] = (old & ~instr.mask) | (instr.value & instr.mask)
                elif instr.kind == "goto_table":
                    table_id = instr.value
        ordered = sorted(action_set.values(), key=lambda a: _SET_ORDER.index(a.kind))
        if any(a.kind == "group" for a in ordered):
            ordered = [a for a in ordered if a.kind != "output"]  # group wins over output
        self._run_actions(ctx, ordered, state, result.tables[-1], (), depth)

    def _run_actions(
        self,
        ctx: _Trace,
        actions: Iterable[Action],
        state: dict[str, int],
        table_id: int,
        choices: tuple[tuple[int, int, int], ...],
        depth: int,
    ) -> bool:
        """Run an action list on ``state`` in place; False if a dec_ttl expired the packet."""
        result = ctx.result
        for action in actions:
            if action.kind == "output":
                port: Port = action.arg
                if action.arg == ofp.OFPP_IN_PORT:
                    port = ctx.in_port
                elif action.arg in _SPECIAL_OUT:
                    port = _SPECIAL_OUT[action.arg]
                elif action.arg == ctx.in_port:
                    result.notes.append(f"output:{action.arg} is the in_port: skipped (OVS)")
                    continue
                packet = {name: render(name, value) for name, value in state.items()}
                result.outputs.append(Output(port, packet, table_id, choices))
            elif action.kind == "set_field":
                state[action.field] = action.arg
            elif action.kind == "move":
                if action.src in state:
                    state[action.field] = state[action.src]
            elif action.kind == "resubmit":  # the flow found, and where its gotos lead (OVS)
                table: int | None = action.arg
                while table is not None:
                    flow = self._lookup(ctx, table, state)
                    result.tables.append(table)
                    if flow is None:
                        break
                    result.flows.append(flow)
                    table = None
                    for instr in flow.instructions:
                        if instr.kind == "apply_actions":
                            self._run_actions(
                                ctx, instr.actions, state, flow.table_id, choices, depth + 1
                            )
                        elif instr.kind == "write_metadata":
                            old = state.get("metadata", 0)
                            state["metadata"] = (old & ~instr.mask) | (instr.value & instr.mask)
                        elif instr.kind == "goto_table":
                            table = instr.value
            elif action.kind == "learn" and action.learn is not None:
                self._learn(action.arg, action.learn, state)
            elif action.kind == "dec_ttl":
                if state.get("eth_type") not in (0x0800, 0x86DD):
                    continue  # not IP: OVS leaves the packet alone
                ttl = state.get("ip_ttl", 64)
                if ttl <= 1:
                    result.ttl_expired = True
                    result.notes.append(f"table {table_id}: dec_ttl on ttl {ttl} -> drop")
                    return False
                state["ip_ttl"] = ttl - 1
            elif action.kind == "set_ttl":
                state["ip_ttl"] = action.arg
            elif action.kind == "push_vlan":
                state["vlan_vid"] = state.get("vlan_vid", 0) | ofp.OFPVID_PRESENT
            elif action.kind == "pop_vlan":
                state.pop("vlan_vid", None)
            elif action.kind == "group":
                self._run_group(ctx, action.arg, state, table_id, choices, depth + 1)
            elif action.kind == "ct":
                self._conntrack(ctx, action, state, depth + 1)
        return True

    def _learn(
        self,
        table_id: int,
        spec: tuple[int, int, int, tuple[tuple[str, int], ...], tuple[str, ...], tuple[str, ...]],
        state: dict[str, int],
    ) -> None:
        priority, _idle, cookie, values, copy, load = spec
        fields = [MatchField(name, value, None) for name, value in values]
        fields += [MatchField(name, state.get(name, 0), None) for name in copy]
        match = tuple(sorted(fields, key=lambda f: f.name))
        loads = tuple(Action("set_field", state.get(name, 0), field=name) for name in load)
        instructions = (Instruction("apply_actions", loads),) if loads else ()
        flow = Flow(table_id, priority, match, instructions, cookie)
        self._tables[table_id][(priority, match)] = flow

    def _conntrack(self, ctx: _Trace, action: Action, state: dict[str, int], depth: int) -> None:
        """Look the packet up (and commit it); resume a tracked copy in the action's table.
        The original goes on untracked (its ct fields cleared), as OVS's xlate does."""
        if depth > _MAX_DEPTH:
            raise FakeOFError("TRACE_TOO_DEEP", f"ct: more than {_MAX_DEPTH} recirculations")
        zone = action.ct_zone(state)
        key = _ct_tuple(state)
        if (zone, key) in self._connections:
            ct_state = CT_TRK | CT_EST
        elif (zone, _ct_tuple(state, reverse=True)) in self._connections:
            ct_state = CT_TRK | CT_EST | CT_RPL
        else:
            ct_state = CT_TRK | CT_NEW
            if action.flags & CT_COMMIT:
                self._connections.add((zone, key))
        ctx.result.notes.append(f"{action}: zone {zone}, ct_state {ct_state:#x}")
        if action.arg != CT_NO_TABLE:
            tracked = {**state, "ct_state": ct_state, "ct_zone": zone}
            self._pipeline(ctx, tracked, action.arg, depth)
        state.pop("ct_state", None)
        state.pop("ct_zone", None)

    def _run_group(
        self,
        ctx: _Trace,
        group_id: int,
        state: dict[str, int],
        table_id: int,
        choices: tuple[tuple[int, int, int], ...],
        depth: int,
    ) -> None:
        """Each bucket works on a copy of the packet (OVS restores it after the group)."""
        if depth > _MAX_DEPTH:
            raise FakeOFError("TRACE_TOO_DEEP", f"group {group_id}: more than {_MAX_DEPTH} levels")
        group = self._groups.get(group_id)
        if group is None:  # only reachable through a bucket of a group deleted since
            ctx.result.notes.append(f"group {group_id} does not exist -> drop")
            return
        picked: list[tuple[int, tuple[tuple[int, int, int], ...]]] = []
        if group.type == "all":
            picked = [(i, choices) for i in range(len(group.buckets))]
        elif group.type in ("indirect", "fast_failover"):
            picked = [(0, choices)] if group.buckets else []  # fake: every port is live
        else:
            weights = tuple(
                (i, b.weight if b.watch_port not in self.down_ports else 0)
                for i, b in enumerate(group.buckets)
            )
            ctx.result.selects.append(SelectRecord(group_id, weights))
            index = _choose_bucket(ctx, group_id, weights)
            if index is not None:
                picked = [(index, choices)]
            elif ctx.select_bucket is None and ctx.select_hash is None:
                picked = [(i, (*choices, (group_id, i, w))) for i, w in weights if w > 0]
        if not picked:
            ctx.result.notes.append(f"group {group_id}: no bucket to run -> drop")
        for index, path in picked:
            bucket_state = dict(state)
            actions = as_action_set(group.buckets[index].actions)
            self._run_actions(ctx, actions, bucket_state, table_id, path, depth)


# What OVS keeps of a bucket's actions (ofpacts_execute_action_set: a bucket is an OpenFlow
# action set): the last vlan and TTL actions, the set_field and move actions in order, then the last of the first kind present
# among group, output, resubmit and ct; nothing else (a learn, or a resubmit next to an output,
# is dropped silently).
_ONE_OF = ("pop_vlan", "push_vlan", "dec_ttl", "set_ttl")
_SET_LIKE = ("set_field", "move")
_TERMINAL = ("group", "output", "resubmit", "ct")


def as_action_set(actions: tuple[Action, ...]) -> tuple[Action, ...]:
    kept = [last[-1] for k in _ONE_OF if (last := [a for a in actions if a.kind == k])]
    kept += [a for a in actions if a.kind in _SET_LIKE]
    for kind in _TERMINAL:
        last = [a for a in actions if a.kind == kind]
        if last:
            return (*kept, last[-1])
    return ()


def _choose_bucket(ctx: _Trace, group_id: int, weights: tuple[tuple[int, int], ...]) -> int | None:
    chosen = ctx.select_bucket
    if isinstance(chosen, Mapping):
        chosen = chosen.get(group_id)
    if chosen is not None:
        if not 0 <= chosen < len(weights):
            raise IndexError(f"group {group_id} has no bucket {chosen}")
        return chosen
    if ctx.select_hash is not None:
        total = sum(w for _, w in weights)
        if total == 0:
            return None
        point = ctx.select_hash % total
        for index, weight in weights:
            if point < weight:
                return index
            point -= weight
    return None


def _ct_tuple(state: Mapping[str, int], reverse: bool = False) -> tuple[int | None, ...]:
    """What conntrack keys a connection by: eth_type, ip_proto, addresses, tcp/udp ports."""
    v6 = state.get("eth_type") == 0x86DD
    proto = state.get("ip_proto")
    src = state.get("ipv6_src" if v6 else "ipv4_src")
    dst = state.get("ipv6_dst" if v6 else "ipv4_dst")
    l4 = {6: "tcp", 17: "udp"}.get(proto or 0)
    sport = state.get(f"{l4}_src") if l4 else None
    dport = state.get(f"{l4}_dst") if l4 else None
    if reverse:
        src, dst, sport, dport = dst, src, dport, sport
    return (state.get("eth_type"), proto, src, dst, sport, dport)


def _packet_matches(flow: Flow, state: dict[str, int]) -> bool:
    for f in flow.match:
        value = state.get(f.name, packet_default(f.name))
        if value is None or value & f.effective_mask != f.value:
            return False
    return True


def _selects(flow: Flow, match: Match, priority: int, strict: bool) -> bool:
    """Strict: same match and priority. Loose: flow's match is ``match`` or more specific."""
    if strict:
        return flow.priority == priority and flow.match == match
    have = {f.name: f for f in flow.match}
    for want in match:
        got = have.get(want.name)
        if got is None:
            return False
        if want.effective_mask & ~got.effective_mask:
            return False  # the request pins bits the flow leaves wild
        if got.value & want.effective_mask != want.value:
            return False
    return True


def _out_filter(flow: Flow, out_port: int, out_group: int) -> bool:
    port_ok = out_port == ofp.OFPP_ANY or flow.outputs_to(out_port)
    return port_ok and (out_group == ofp.OFPG_ANY or flow.uses_group(out_group))
