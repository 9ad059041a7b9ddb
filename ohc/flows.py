"""Typed OpenFlow flows and groups: what the compiler produces and the syncer diffs.

Small frozen dataclasses, hashable and comparable, so desired and installed state are plain
sets. Never built from strings; ``to_osken`` turns them into os-ken parser objects at the
edge, ``text`` renders them for humans in failure messages and docs.

Match values use os-ken's native forms: ints for ports, registers, tunnel ids and eth types;
strings for MAC and IP addresses; a (value, mask) pair for a masked match.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

MatchValue = int | str | tuple[int, int] | tuple[str, str]


class Match(tuple[tuple[str, MatchValue], ...]):
    """An OXM match: a sorted tuple of (field, value) pairs (os-ken field names).

    The tuple itself, no wrapper: hashed and compared in C, and 100k flows hold no extra
    object and hash each (9 MiB at 50k peer endpoints, measured)."""

    __slots__ = ()

    @property
    def fields(self) -> tuple[tuple[str, MatchValue], ...]:
        return self

    @staticmethod
    def of(**kw: MatchValue) -> Match:
        return Match(sorted(kw.items()))

    def get(self, name: str) -> MatchValue | None:
        return dict(self).get(name)

    def names(self) -> set[str]:
        return {k for k, _ in self}

    def as_dict(self) -> dict[str, MatchValue]:
        return dict(self)

    def __repr__(self) -> str:
        return f"Match(fields={tuple.__repr__(self)})"


# --- actions ------------------------------------------------------------------------------


@dataclass(frozen=True, order=True, slots=True)
class Output:
    port: int


@dataclass(frozen=True, order=True, slots=True)
class SetField:
    name: str
    value: int | str


@dataclass(frozen=True, order=True, slots=True)
class ToGroup:
    group_id: int


@dataclass(frozen=True, order=True, slots=True)
class DecTtl:
    pass


CT_NO_TABLE = 0xFF  # NX_CT_RECIRC_NONE: a ct action that resumes nowhere
CT_COMMIT = 1  # NX_CT_F_COMMIT


@dataclass(frozen=True, order=True, slots=True)
class Conntrack:
    """``ct(...)``, the Nicira connection-tracking action (os-ken ``NXActionCT``).

    The zone is ``zone``, or, when ``zone_field`` names a field, its 16 bits from
    ``zone_start``: ``in_port`` bits 0-15 is the sending port; ``metadata`` bits 32-47 the
    port a tunnel packet is for. With a ``table`` the tracked copy resumes there with
    ``ct_state`` and ``ct_zone`` set and the action list ends for the untracked original (the
    pipeline puts nothing after it); without one (``CT_NO_TABLE``, with ``commit``) the
    connection is committed and the packet goes on with the next action."""

    commit: bool = False
    zone: int = 0
    zone_field: str = ""
    zone_start: int = 0
    table: int = CT_NO_TABLE

    def zone_ofs_nbits(self) -> int:
        """The action's 16-bit zone word: the immediate zone, or the field's bit range."""
        return self.zone_start << 6 | 15 if self.zone_field else self.zone


@dataclass(frozen=True, order=True, slots=True)
class Move:
    """``move:src[]->dst[]`` (Nicira reg_move, os-ken ``NXActionRegMove``): the whole of one
    field copied into another of the same width (a gateway reflecting a BFD probe copies the
    tunnel's source address into its destination, docs/gateways.md)."""

    src: str
    dst: str


@dataclass(frozen=True, order=True, slots=True)
class Resubmit:
    """``resubmit(,table)`` (Nicira): look the packet up in ``table``, run that flow's actions,
    then go on with the rest of this action list (an on-demand host counts each packet of the
    gateway path in ``offload_count`` this way, docs/gateways.md)."""

    table: int


@dataclass(frozen=True, order=True, slots=True)
class Learn:
    """``learn(...)`` (Nicira): add (or refresh) a flow in ``table`` with this priority,
    idle timeout and cookie, matching each (field, value) in ``values`` and each field in
    ``copy`` on the value the current packet has; the learned flow's only actions load, for
    each field in ``load``, the value the current packet has into that field (none: no
    actions). An on-demand host learns one such flow per (VPC context, destination) it sends
    to: its counters are the pair's packet count (docs/gateways.md, on-demand). An ILB with
    spillover backends learns one per connection that loads the backend's MAC into
    ``eth_dst``: the connection's later packets keep their backend (docs/pipeline.md)."""

    table: int
    priority: int
    idle_timeout: int
    cookie: int
    values: tuple[tuple[str, int], ...]
    copy: tuple[str, ...]
    load: tuple[str, ...] = ()


Action = Output | SetField | ToGroup | DecTtl | Conntrack | Move | Resubmit | Learn


# --- instructions --------------------------------------------------------------------------


@dataclass(frozen=True, order=True, slots=True)
class Apply:
    actions: tuple[Action, ...]


@dataclass(frozen=True, order=True, slots=True)
class Goto:
    table: int


@dataclass(frozen=True, order=True, slots=True)
class WriteMetadata:
    value: int
    mask: int = (1 << 64) - 1


Instruction = Apply | Goto | WriteMetadata


@dataclass(frozen=True, slots=True)
class Flow:
    """One flow entry. Identity (what OpenFlow replaces on ADD) is (table, priority, match)."""

    table: int
    priority: int
    match: Match
    instructions: tuple[Instruction, ...]
    cookie: int = 0
    _hash: int = field(init=False, repr=False, compare=False)
    _key: tuple[int, int, Match] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Hashed when first asked (-1: not yet; CPython's hash() never returns -1). A cold
        # compile builds 100k flows and hashes few of them: an action's hash is a Python
        # call, and hashing every flow up front was ~6% of the compile (measured).
        object.__setattr__(self, "_hash", -1)
        # One key tuple per flow, shared by every index of it (the engine's table, the model
        # of the switch, plans): at 100k flows each index built its own (~6 MiB each).
        object.__setattr__(self, "_key", (self.table, self.priority, self.match))

    def __hash__(self) -> int:
        h = self._hash
        if h == -1:
            h = hash((self.table, self.priority, self.match, self.instructions, self.cookie))
            object.__setattr__(self, "_hash", h)
        return h

    @property
    def key(self) -> tuple[int, int, Match]:
        return self._key

    def text(self) -> str:
        m = ",".join(f"{k}={_value_text(v)}" for k, v in self.match.fields)
        ins = ",".join(_instruction_text(i) for i in self.instructions) or "drop"
        return f"cookie={self.cookie:#x},table={self.table},priority={self.priority},{m} {ins}".replace(
            ",,", ","
        )


GroupType = Literal["all", "select", "indirect"]
OFPP_ANY = 0xFFFFFFFF  # a bucket watching no port: always live
NX_IN_PORT = 0xFFF8  # resubmit's "the packet's own in_port" (16-bit Nicira form)


@dataclass(frozen=True, order=True, slots=True)
class Bucket:
    actions: tuple[Action, ...]
    weight: int = 0  # only select groups use weights
    # the port whose liveness the bucket's follows (OVS skips a select bucket whose watched
    # port is down, e.g. its BFD session: docs/gateways.md); OFPP_ANY: none, always live
    watch_port: int = OFPP_ANY


@dataclass(frozen=True, slots=True)
class Group:
    group_id: int
    type: GroupType
    buckets: tuple[Bucket, ...] = field(default_factory=tuple)

    def text(self) -> str:
        bs = ";".join(
            f"w={b.weight}:"
            + ("" if b.watch_port == OFPP_ANY else f"watch={b.watch_port}:")
            + ",".join(_action_text(a) for a in b.actions)
            for b in self.buckets
        )
        return f"group_id={self.group_id},type={self.type},buckets={bs}"


# --- rendering for humans -------------------------------------------------------------------


def _value_text(v: MatchValue) -> str:
    if isinstance(v, tuple):
        return f"{v[0]}/{v[1]}"
    return hex(v) if isinstance(v, int) and v > 9 else str(v)


def _action_text(a: Action) -> str:
    if isinstance(a, Output):
        return f"output:{a.port}"
    if isinstance(a, SetField):
        return f"set_field:{a.value}->{a.name}"
    if isinstance(a, ToGroup):
        return f"group:{a.group_id}"
    if isinstance(a, Conntrack):
        return _ct_text(a)
    if isinstance(a, Move):
        return f"move:{a.src}[]->{a.dst}[]"
    if isinstance(a, Resubmit):
        return f"resubmit(,{a.table})"
    if isinstance(a, Learn):
        specs = [f"{k}={v:#x}" for k, v in a.values] + [f"{k}" for k in a.copy]
        specs += [f"load:{k}[]->{k}[]" for k in a.load]
        return (
            f"learn(table={a.table},priority={a.priority},idle_timeout={a.idle_timeout},"
            f"cookie={a.cookie:#x},{','.join(specs)})"
        )
    return "dec_ttl"


def _ct_text(a: Conntrack) -> str:
    args = ["commit"] if a.commit else []
    if a.zone_field:
        args.append(f"zone={a.zone_field}[{a.zone_start}..{a.zone_start + 15}]")
    else:
        args.append(f"zone={a.zone}")
    if a.table != CT_NO_TABLE:
        args.append(f"table={a.table}")
    return f"ct({','.join(args)})"


def _instruction_text(i: Instruction) -> str:
    if isinstance(i, Apply):
        return "actions=" + (",".join(_action_text(a) for a in i.actions) or "drop")
    if isinstance(i, Goto):
        return f"goto_table:{i.table}"
    return f"write_metadata:{i.value:#x}/{i.mask:#x}"


# --- os-ken conversion (the edge) ----------------------------------------------------------


def match_to_osken(parser: Any, match: Match) -> Any:
    return parser.OFPMatch(**match.as_dict())


def actions_to_osken(parser: Any, actions: tuple[Action, ...]) -> list[Any]:
    out: list[Any] = []
    for a in actions:
        if isinstance(a, Output):
            out.append(parser.OFPActionOutput(a.port))
        elif isinstance(a, SetField):
            out.append(parser.OFPActionSetField(**{a.name: a.value}))
        elif isinstance(a, ToGroup):
            out.append(parser.OFPActionGroup(a.group_id))
        elif isinstance(a, Conntrack):
            out.append(
                parser.NXActionCT(
                    CT_COMMIT if a.commit else 0,
                    a.zone_field,
                    a.zone_ofs_nbits(),
                    a.table,
                    0,
                    [],
                )
            )
        elif isinstance(a, Move):
            out.append(parser.NXActionRegMove(a.src, a.dst, field_bits(a.src)))
        elif isinstance(a, Resubmit):
            out.append(parser.NXActionResubmitTable(NX_IN_PORT, a.table))
        elif isinstance(a, Learn):
            specs = [parser.NXFlowSpecMatch(v, (k, 0), field_bits(k)) for k, v in a.values]
            specs += [parser.NXFlowSpecMatch((k, 0), (k, 0), field_bits(k)) for k in a.copy]
            specs += [parser.NXFlowSpecLoad((k, 0), (k, 0), field_bits(k)) for k in a.load]
            out.append(
                parser.NXActionLearn(
                    a.table, specs, a.idle_timeout, 0, a.priority, a.cookie, 0, 0, 0
                )
            )
        else:
            out.append(parser.OFPActionDecNwTtl())
    return out


# Widths of the fields a ``Move`` may copy (both ends the same width) or a ``Learn`` match.
MOVE_BITS: Mapping[str, int] = {
    "tun_ipv4_src": 32,
    "tun_ipv4_dst": 32,
    "metadata": 64,
    "eth_type": 16,
    "ipv4_dst": 32,
    "ipv4_src": 32,
    "ipv6_dst": 128,  # an on-demand side's IPv6 pair counters (learned)
    "ip_proto": 8,
    "tcp_src": 16,
    "tcp_dst": 16,
    "udp_src": 16,
    "udp_dst": 16,
    "eth_dst": 48,
}


def field_bits(name: str) -> int:
    try:
        return MOVE_BITS[name]
    except KeyError:
        raise ValueError(f"move: field {name!r} is not supported") from None


def instructions_to_osken(
    ofp: Any, parser: Any, instructions: tuple[Instruction, ...]
) -> list[Any]:
    out: list[Any] = []
    for i in instructions:
        if isinstance(i, Apply):
            out.append(
                parser.OFPInstructionActions(
                    ofp.OFPIT_APPLY_ACTIONS, actions_to_osken(parser, i.actions)
                )
            )
        elif isinstance(i, Goto):
            out.append(parser.OFPInstructionGotoTable(i.table))
        else:
            out.append(parser.OFPInstructionWriteMetadata(i.value, i.mask))
    return out


GROUP_TYPES: Mapping[str, str] = {
    "all": "OFPGT_ALL",
    "select": "OFPGT_SELECT",
    "indirect": "OFPGT_INDIRECT",
}


def flow_mod(datapath: Any, flow: Flow, command: str = "add") -> Any:
    """An OFPFlowMod adding, modifying (strict) or deleting (strict) exactly this flow
    (tests and tools; the OHC's syncer packs its FlowMods with ``ohc.wire``)."""
    ofp, parser = datapath.ofproto, datapath.ofproto_parser
    cmd = {
        "add": ofp.OFPFC_ADD,
        "modify": ofp.OFPFC_MODIFY_STRICT,
        "delete": ofp.OFPFC_DELETE_STRICT,
    }[command]
    return parser.OFPFlowMod(
        datapath,
        cookie=flow.cookie,
        table_id=flow.table,
        command=cmd,
        priority=flow.priority,
        match=match_to_osken(parser, flow.match),
        instructions=[]
        if command == "delete"
        else instructions_to_osken(ofp, parser, flow.instructions),
        out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY,
    )


def group_mod(datapath: Any, group: Group, command: str = "add") -> Any:
    ofp, parser = datapath.ofproto, datapath.ofproto_parser
    cmd = {"add": ofp.OFPGC_ADD, "modify": ofp.OFPGC_MODIFY, "delete": ofp.OFPGC_DELETE}[command]
    buckets = [
        parser.OFPBucket(
            weight=b.weight,
            watch_port=b.watch_port,
            watch_group=ofp.OFPG_ANY,
            actions=actions_to_osken(parser, b.actions),
        )
        for b in group.buckets
    ]
    gtype = getattr(ofp, GROUP_TYPES[group.type])
    return parser.OFPGroupMod(
        datapath, cmd, gtype, group.group_id, [] if command == "delete" else buckets
    )
