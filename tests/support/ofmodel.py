"""Normalised, hashable OpenFlow 1.3 flow/group model and the os-ken adapter for FakeOFTable.

os-ken ships no type stubs, so every os-ken object enters through the ``*_from_osken`` functions
below (typed ``Any``) and leaves as a frozen dataclass: the rest of the fake is fully typed.
Values are kept as ints (MACs and IP addresses too) so that masks apply uniformly; ``render``
turns them back into the text os-ken uses ('aa:bb:..', '10.0.0.1').
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

PacketValue = int | str

MAC_FIELDS = frozenset({"eth_src", "eth_dst", "arp_sha", "arp_tha", "ipv6_nd_sll", "ipv6_nd_tll"})
IPV4_FIELDS = frozenset(
    {"ipv4_src", "ipv4_dst", "arp_spa", "arp_tpa", "tun_ipv4_src", "tun_ipv4_dst"}
)
IPV6_FIELDS = frozenset({"ipv6_src", "ipv6_dst", "ipv6_nd_target"})
_HEX_FIELDS = frozenset({"eth_type", "metadata", "tunnel_id", "vlan_vid"})
_WIDTHS = {
    "metadata": 64,
    "tunnel_id": 64,
    "vlan_vid": 13,
    "eth_type": 16,
    "ip_proto": 8,
    "tcp_src": 16,
    "tcp_dst": 16,
    "udp_src": 16,
    "udp_dst": 16,
    "arp_op": 16,
    "icmpv6_type": 8,
    "icmpv6_code": 8,
    "icmpv4_type": 8,
    "icmpv4_code": 8,
    "ct_zone": 16,
}
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")

# Fields that read as 0 when a packet does not carry them (OVS metadata, registers, tunnel
# metadata, and vlan_vid == OFPVID_NONE for untagged packets).
_ZERO_DEFAULT = re.compile(
    r"^(reg\d+|xreg\d+|metadata|tunnel_id|tun_ipv4_src|tun_ipv4_dst|vlan_vid|ct_state|ct_zone)$"
)

# OXM prerequisites (OpenFlow 1.3 section 7.2.3.8); OVS rejects a flow that lacks them with
# OFPBMC_BAD_PREREQ. Each entry: all (field, allowed values) pairs must hold.
_IP = frozenset({0x0800, 0x86DD})
_PREREQS: dict[str, tuple[tuple[str, frozenset[int]], ...]] = {
    "ipv4_src": (("eth_type", frozenset({0x0800})),),
    "ipv4_dst": (("eth_type", frozenset({0x0800})),),
    "ipv6_src": (("eth_type", frozenset({0x86DD})),),
    "ipv6_dst": (("eth_type", frozenset({0x86DD})),),
    "ipv6_flabel": (("eth_type", frozenset({0x86DD})),),
    "arp_op": (("eth_type", frozenset({0x0806})),),
    "arp_spa": (("eth_type", frozenset({0x0806})),),
    "arp_tpa": (("eth_type", frozenset({0x0806})),),
    "arp_sha": (("eth_type", frozenset({0x0806})),),
    "arp_tha": (("eth_type", frozenset({0x0806})),),
    "ip_proto": (("eth_type", _IP),),
    "ip_dscp": (("eth_type", _IP),),
    "ip_ecn": (("eth_type", _IP),),
    "tcp_src": (("ip_proto", frozenset({6})),),
    "tcp_dst": (("ip_proto", frozenset({6})),),
    "udp_src": (("ip_proto", frozenset({17})),),
    "udp_dst": (("ip_proto", frozenset({17})),),
    "icmpv4_type": (("eth_type", frozenset({0x0800})), ("ip_proto", frozenset({1}))),
    "icmpv4_code": (("eth_type", frozenset({0x0800})), ("ip_proto", frozenset({1}))),
    "icmpv6_type": (("eth_type", frozenset({0x86DD})), ("ip_proto", frozenset({58}))),
    "icmpv6_code": (("eth_type", frozenset({0x86DD})), ("ip_proto", frozenset({58}))),
    "ipv6_nd_target": (("icmpv6_type", frozenset({135, 136})),),
    "ipv6_nd_sll": (("icmpv6_type", frozenset({135})),),
    "ipv6_nd_tll": (("icmpv6_type", frozenset({136})),),
}


class FakeOFError(Exception):
    """What OVS would answer with an OpenFlow error; ``code`` is the OpenFlow error name."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class FakeOFUnsupported(FakeOFError):
    """A message, instruction or action this fake does not model (never silently ignored)."""

    def __init__(self, detail: str) -> None:
        super().__init__("UNSUPPORTED_BY_FAKE", detail)


# --- field values -----------------------------------------------------------------------------


def field_width(name: str) -> int:
    if name in MAC_FIELDS:
        return 48
    if name in IPV4_FIELDS:
        return 32
    if name in IPV6_FIELDS:
        return 128
    if name.startswith("xreg"):
        return 64
    return _WIDTHS.get(name, 32)


def full_mask(name: str) -> int:
    return (1 << field_width(name)) - 1


def to_int(name: str, value: object) -> int:
    """Parse a field value as os-ken spells it ('aa:..', '10.0.0.1', 'fe80::1', int) to an int."""
    if isinstance(value, bool):
        raise ValueError(f"{name}: bool is not a field value")
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        raise ValueError(f"{name}: cannot use {value!r} as a field value")
    if name in MAC_FIELDS or _MAC_RE.match(value):
        if not _MAC_RE.match(value):
            raise ValueError(f"{name}: {value!r} is not a MAC address")
        return int(value.replace(":", ""), 16)
    if name in IPV4_FIELDS or name in IPV6_FIELDS or "." in value or ":" in value:
        return int(ipaddress.ip_address(value))
    return int(value, 0)


def render(name: str, value: int) -> PacketValue:
    """The canonical os-ken text of a field value (ints stay ints)."""
    if name in MAC_FIELDS:
        raw = f"{value:012x}"
        return ":".join(raw[i : i + 2] for i in range(0, 12, 2))
    if name in IPV4_FIELDS:
        return str(ipaddress.IPv4Address(value))
    if name in IPV6_FIELDS:
        return str(ipaddress.IPv6Address(value))
    return value


def render_text(name: str, value: int) -> str:
    shown = render(name, value)
    if isinstance(shown, str):
        return shown
    return hex(shown) if name in _HEX_FIELDS or name.startswith(("reg", "xreg")) else str(shown)


def packet_default(name: str) -> int | None:
    return 0 if _ZERO_DEFAULT.match(name) else None


# --- model -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatchField:
    name: str
    value: int  # already masked
    mask: int | None  # None: exact

    def __str__(self) -> str:
        text = f"{self.name}={render_text(self.name, self.value)}"
        return text if self.mask is None else f"{text}/{render_text(self.name, self.mask)}"

    @property
    def effective_mask(self) -> int:
        return full_mask(self.name) if self.mask is None else self.mask


Match = tuple[MatchField, ...]  # sorted by name, at most one entry per field


CT_NO_TABLE = 0xFF  # NX_CT_RECIRC_NONE
CT_COMMIT = 1  # NX_CT_F_COMMIT


@dataclass(frozen=True)
class Action:
    kind: str  # output, set_field, group, dec_ttl, set_ttl, push_vlan, pop_vlan, ct
    arg: int = 0  # port, group id, value, ttl, ethertype or ct's resume table
    field: str = ""  # set_field; ct: the zone's source field ("" for an immediate zone)
    zone: int = 0  # ct only: the immediate zone, or the source field's ofs_nbits
    flags: int = 0  # ct only: NX_CT_F_*
    src: str = ""  # move only: the field copied into ``field`` (whole fields, from bit 0)
    # learn only (``arg`` is the table): priority, idle timeout, cookie, the immediate
    # (field, value) matches, the fields matched on the packet's own value and the fields
    # the learned flow loads with the packet's own value
    learn: (
        tuple[int, int, int, tuple[tuple[str, int], ...], tuple[str, ...], tuple[str, ...]] | None
    ) = None

    def ct_zone(self, packet: Mapping[str, int]) -> int:
        """The zone this ct action uses for ``packet``."""
        if not self.field:
            return self.zone
        start, nbits = self.zone >> 6, (self.zone & 0x3F) + 1
        return (packet.get(self.field, 0) >> start) & ((1 << nbits) - 1)

    def __str__(self) -> str:
        if self.kind == "ct":  # as ovs-ofctl prints it, but with os-ken's field names
            start, bits = self.zone >> 6, (self.zone & 0x3F) + 1
            zone = f"{self.field}[{start}..{start + bits - 1}]" if self.field else str(self.zone)
            table = "" if self.arg == CT_NO_TABLE else f",table={self.arg}"
            return f"ct({'commit,' if self.flags & CT_COMMIT else ''}zone={zone}{table})"
        if self.kind == "output":
            return f"output:{port_name(self.arg)}"
        if self.kind == "move":
            return f"move:{self.src}[]->{self.field}[]"
        if self.kind == "resubmit":
            return f"resubmit(,{self.arg})"
        if self.kind == "learn":
            return f"learn(table={self.arg},{self.learn})"
        if self.kind == "set_field":
            return f"set_field:{render_text(self.field, self.arg)}->{self.field}"
        if self.kind in ("group", "set_ttl"):
            return f"{self.kind}:{self.arg}"
        if self.kind == "push_vlan":
            return f"push_vlan:{self.arg:#06x}"
        return self.kind


@dataclass(frozen=True)
class Instruction:
    kind: str  # apply_actions, clear_actions, write_actions, write_metadata, goto_table, meter
    actions: tuple[Action, ...] = ()
    value: int = 0  # metadata, table id or meter id
    mask: int = 0  # metadata mask

    def __str__(self) -> str:
        acts = ",".join(str(a) for a in self.actions)
        if self.kind == "apply_actions":
            return acts or "drop"
        if self.kind == "write_actions":
            return f"write_actions({acts})"
        if self.kind == "write_metadata":
            return f"write_metadata:{self.value:#x}/{self.mask:#x}"
        if self.kind == "clear_actions":
            return "clear_actions"
        return f"{self.kind}:{self.value}"


_INSTRUCTION_ORDER = (
    "meter",
    "apply_actions",
    "clear_actions",
    "write_actions",
    "write_metadata",
    "goto_table",
)


@dataclass(frozen=True)
class Flow:
    """One installed flow, normalised: equal flows compare and hash equal."""

    table_id: int
    priority: int
    match: Match
    instructions: tuple[Instruction, ...]
    cookie: int = 0

    def actions(self) -> Iterable[Action]:
        for instr in self.instructions:
            yield from instr.actions

    def outputs_to(self, port: int) -> bool:
        return any(a.kind == "output" and a.arg == port for a in self.actions())

    def uses_group(self, group_id: int) -> bool:
        return any(a.kind == "group" and a.arg == group_id for a in self.actions())

    def match_dict(self) -> dict[str, PacketValue | tuple[PacketValue, PacketValue]]:
        return {
            f.name: render(f.name, f.value)
            if f.mask is None
            else (render(f.name, f.value), render(f.name, f.mask))
            for f in self.match
        }

    def __str__(self) -> str:
        match = ",".join(str(f) for f in self.match)
        instrs = " ".join(str(i) for i in self.instructions) or "drop"
        head = f"cookie={self.cookie:#x}, table={self.table_id}, priority={self.priority}"
        return f"{head}{',' + match if match else ''} actions={instrs}"


@dataclass(frozen=True)
class Bucket:
    actions: tuple[Action, ...]
    weight: int = 0
    watch_port: int = ofp.OFPP_ANY
    watch_group: int = ofp.OFPG_ANY


GROUP_TYPES = {
    ofp.OFPGT_ALL: "all",
    ofp.OFPGT_SELECT: "select",
    ofp.OFPGT_INDIRECT: "indirect",
    ofp.OFPGT_FF: "fast_failover",
}


@dataclass(frozen=True)
class Group:
    group_id: int
    type: str  # all, select, indirect, fast_failover
    buckets: tuple[Bucket, ...]

    def __str__(self) -> str:
        parts = [f"group_id={self.group_id},type={self.type}"]
        for bucket in self.buckets:
            weight = f"weight:{bucket.weight}," if self.type == "select" else ""
            parts.append(f"bucket={weight}actions={','.join(str(a) for a in bucket.actions)}")
        return ",".join(parts)


_PORT_NAMES = {
    ofp.OFPP_IN_PORT: "IN_PORT",
    ofp.OFPP_TABLE: "TABLE",
    ofp.OFPP_NORMAL: "NORMAL",
    ofp.OFPP_FLOOD: "FLOOD",
    ofp.OFPP_ALL: "ALL",
    ofp.OFPP_CONTROLLER: "CONTROLLER",
    ofp.OFPP_LOCAL: "LOCAL",
    ofp.OFPP_ANY: "ANY",
}


def port_name(port: int) -> str:
    return _PORT_NAMES.get(port, str(port))


# --- os-ken adapter ----------------------------------------------------------------------------


def match_from_osken(match: Any) -> Match:
    """Normalise an OFPMatch: value &= mask, full mask -> exact, zero mask -> wildcard."""
    fields: list[MatchField] = []
    if match is None:
        return ()
    for name, raw in match.items():
        name = str(name)
        if isinstance(raw, tuple):
            value, mask = to_int(name, raw[0]), to_int(name, raw[1])
            if mask == 0:
                continue
            fields.append(MatchField(name, value & mask, None if mask == full_mask(name) else mask))
        else:
            fields.append(MatchField(name, to_int(name, raw), None))
    return tuple(sorted(fields, key=lambda f: f.name))


def check_prereqs(match: Match, fields: Iterable[str], what: str) -> None:
    """Raise OFPBMC_BAD_PREREQ if a field is used without its OXM prerequisites in ``match``."""
    exact = {f.name: f.value for f in match if f.mask is None}
    for name in fields:
        for need, allowed in _PREREQS.get(name, ()):
            if exact.get(need) not in allowed:
                shown = "/".join(hex(v) if need == "eth_type" else str(v) for v in sorted(allowed))
                raise FakeOFError(
                    "OFPBMC_BAD_PREREQ", f"{what} uses {name} but the match lacks {need}={shown}"
                )


def action_from_osken(action: Any) -> Action:
    if isinstance(action, parser.OFPActionOutput):
        return Action("output", int(action.port))
    if isinstance(action, parser.OFPActionSetField):
        name = str(action.key)
        return Action("set_field", to_int(name, action.value), field=name)
    if isinstance(action, parser.OFPActionGroup):
        return Action("group", int(action.group_id))
    if isinstance(action, parser.OFPActionDecNwTtl | parser.NXActionDecTtl):
        return Action("dec_ttl")
    if isinstance(action, parser.OFPActionSetNwTtl):
        return Action("set_ttl", int(action.nw_ttl))
    if isinstance(action, parser.OFPActionPushVlan):
        return Action("push_vlan", int(action.ethertype))
    if isinstance(action, parser.OFPActionPopVlan):
        return Action("pop_vlan")
    if isinstance(action, parser.NXActionCT) and not action.actions and not action.alg:
        zone_src = str(action.zone_src or "")
        return Action(
            "ct",
            int(action.recirc_table),
            field=zone_src,
            zone=int(action.zone_ofs_nbits),
            flags=int(action.flags),
        )
    if (
        isinstance(action, parser.NXActionRegMove)
        and int(action.src_ofs) == int(action.dst_ofs) == 0
        and field_width(str(action.src_field))
        == field_width(str(action.dst_field))
        == int(action.n_bits)
    ):
        return Action("move", field=str(action.dst_field), src=str(action.src_field))
    if isinstance(action, parser.NXActionResubmitTable) and int(action.in_port) == 0xFFF8:
        return Action("resubmit", int(action.table_id))
    if isinstance(action, parser.NXActionLearn) and all(
        isinstance(s, parser.NXFlowSpecMatch | parser.NXFlowSpecLoad) and s.dst[1] == 0
        for s in action.specs
    ):
        matches = [s for s in action.specs if isinstance(s, parser.NXFlowSpecMatch)]
        values = tuple((str(s.dst[0]), int(s.src)) for s in matches if not isinstance(s.src, tuple))
        copy = tuple(str(s.dst[0]) for s in matches if isinstance(s.src, tuple))
        load = tuple(str(s.dst[0]) for s in action.specs if isinstance(s, parser.NXFlowSpecLoad))
        spec = (
            int(action.priority),
            int(action.idle_timeout),
            int(action.cookie),
            values,
            copy,
            load,
        )
        return Action("learn", int(action.table_id), learn=spec)
    raise FakeOFUnsupported(f"action {type(action).__name__} is not modelled by FakeOFTable")


def instructions_from_osken(instructions: Any) -> tuple[Instruction, ...]:
    """Instructions in OpenFlow execution order; a repeated instruction type is OFPBIC_DUP_INST."""
    found: dict[str, Instruction] = {}
    kinds = {
        ofp.OFPIT_APPLY_ACTIONS: "apply_actions",
        ofp.OFPIT_WRITE_ACTIONS: "write_actions",
        ofp.OFPIT_CLEAR_ACTIONS: "clear_actions",
    }
    for instr in instructions or ():
        if isinstance(instr, parser.OFPInstructionActions):
            kind = kinds[int(instr.type)]
            acts = () if kind == "clear_actions" else tuple(map(action_from_osken, instr.actions))
            new = Instruction(kind, acts)
        elif isinstance(instr, parser.OFPInstructionGotoTable):
            new = Instruction("goto_table", value=int(instr.table_id))
        elif isinstance(instr, parser.OFPInstructionWriteMetadata):
            new = Instruction(
                "write_metadata", value=int(instr.metadata), mask=int(instr.metadata_mask)
            )
        elif isinstance(instr, parser.OFPInstructionMeter):
            new = Instruction("meter", value=int(instr.meter_id))
        else:
            raise FakeOFUnsupported(f"instruction {type(instr).__name__} is not modelled")
        if new.kind in found:
            raise FakeOFError("OFPBIC_DUP_INST", f"two {new.kind} instructions in one flow")
        found[new.kind] = new
    return tuple(found[k] for k in _INSTRUCTION_ORDER if k in found)


def group_from_osken(msg: Any) -> Group:
    gtype = GROUP_TYPES.get(int(msg.type))
    if gtype is None:
        raise FakeOFError("OFPGMFC_BAD_TYPE", f"group {msg.group_id}: unknown type {msg.type}")
    buckets = tuple(
        Bucket(
            tuple(map(action_from_osken, b.actions)),
            int(b.weight),
            int(b.watch_port),
            int(b.watch_group),
        )
        for b in msg.buckets or ()
    )
    if gtype == "indirect" and len(buckets) != 1:
        raise FakeOFError(
            "OFPGMFC_INVALID_GROUP", f"indirect group {msg.group_id} needs exactly one bucket"
        )
    return Group(int(msg.group_id), gtype, buckets)
