"""The canonical form of flows and groups: how OVS reports a flow back, as pure functions.

The syncer compares the flows it wants with the flows the switch reports, so both sides must be
in one form: instructions in execution order, no empty apply-actions, masks applied and full
masks dropped, lower-case MACs, compressed IPv6. ``canonical_state`` puts the compiler's output
in that form (memoized per flow); ``ohc.ofio`` puts what it reads back from the switch in it;
``ohc.wire`` packs only canonical flows. No I/O here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from meshpeer.protocol.objects import DOTTED_QUAD
from ohc.flows import (
    Action,
    Apply,
    Bucket,
    Flow,
    Goto,
    Group,
    Instruction,
    Match,
    MatchValue,
    SetField,
    WriteMetadata,
)
from ohc.syncer import FlowState, SwitchState

UNREPRESENTABLE = "x-unrepresentable"  # SetField name marking an action ohc.flows cannot express

_MAC_FIELDS = frozenset({"eth_src", "eth_dst", "arp_sha", "arp_tha", "ipv6_nd_sll", "ipv6_nd_tll"})
_IP_FIELDS = frozenset(
    {"ipv4_src", "ipv4_dst", "arp_spa", "arp_tpa", "ipv6_src", "ipv6_dst", "ipv6_nd_target"}
)
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_WIDTH = {
    "metadata": 64,
    "tunnel_id": 64,
    "eth_type": 16,
    "vlan_vid": 13,
    "ip_proto": 8,
    "tcp_src": 16,
    "tcp_dst": 16,
    "udp_src": 16,
    "udp_dst": 16,
    "ct_zone": 16,
}
_INSTRUCTION_RANK = {Apply: 0, WriteMetadata: 1, Goto: 2}  # OpenFlow 1.3 execution order


def _is_mac(name: str, value: str) -> bool:
    if name in _MAC_FIELDS:
        return True
    return name not in _IP_FIELDS and _MAC_RE.match(value) is not None


def _text_value(name: str, value: str) -> int:
    if _is_mac(name, value):
        return int(value.replace(":", ""), 16)
    return int(ipaddress.ip_address(value))


def _canon_text(name: str, value: str) -> str:
    if _is_mac(name, value):
        return value.lower()
    if DOTTED_QUAD.fullmatch(value):
        return value  # already as str(IPv4Address) prints it; parsing costs ~30 us
    return str(ipaddress.ip_address(value))


def _full_mask(name: str, value: str | int) -> int:
    if isinstance(value, str):
        if _is_mac(name, value):
            return (1 << 48) - 1
        return (1 << ipaddress.ip_address(value).max_prefixlen) - 1
    return (1 << _WIDTH.get(name, 32)) - 1


def canonical_value(name: str, value: MatchValue) -> MatchValue | None:
    """A match value as OVS reports it back; None when the field matches everything."""
    if not isinstance(value, tuple):
        return _canon_text(name, value) if isinstance(value, str) else value
    raw, mask = value
    if isinstance(raw, str):
        assert isinstance(mask, str)
        v, m = _text_value(name, raw), _text_value(name, mask)
        full = _full_mask(name, raw)
        if m == 0:
            return None
        if m == full:
            return _canon_text(name, raw)
        width = 48 if full == (1 << 48) - 1 else None
        return (_render(name, v & m, width), _render(name, m, width))
    assert isinstance(mask, int)
    if mask == 0:
        return None
    if mask == _full_mask(name, raw):
        return raw
    return (raw & mask, mask)


def _render(name: str, value: int, mac_width: int | None) -> str:
    if mac_width is not None:
        raw = f"{value:012x}"
        return ":".join(raw[i : i + 2] for i in range(0, 12, 2))
    if name in ("ipv6_src", "ipv6_dst", "ipv6_nd_target"):
        return str(ipaddress.IPv6Address(value))
    return str(ipaddress.IPv4Address(value))


def canonical_match(match: Match) -> Match:
    fields: list[tuple[str, MatchValue]] = []
    for name, value in match.fields:
        canon = canonical_value(name, value)
        if canon is not None:
            fields.append((name, canon))
    return Match(tuple(sorted(fields)))


def _canonical_action(a: Action) -> Action:
    if isinstance(a, SetField) and isinstance(a.value, str) and a.name != UNREPRESENTABLE:
        return SetField(a.name, _canon_text(a.name, a.value))
    return a


def canonical_instructions(instructions: Iterable[Instruction]) -> tuple[Instruction, ...]:
    out: list[Instruction] = []
    for i in instructions:
        if isinstance(i, Apply):
            if i.actions:
                out.append(Apply(tuple(_canonical_action(a) for a in i.actions)))
        elif isinstance(i, WriteMetadata):
            out.append(WriteMetadata(i.value & i.mask, i.mask))
        else:
            out.append(i)
    return tuple(sorted(out, key=lambda i: _INSTRUCTION_RANK[type(i)]))


def _is_canonical_text(name: str, value: str) -> bool:
    if _is_mac(name, value):
        return value == value.lower()
    if DOTTED_QUAD.fullmatch(value):
        return True
    try:
        return ":" in value and str(ipaddress.IPv6Address(value)) == value
    except ValueError:
        return False


def _is_canonical_match(match: Match) -> bool:
    previous = ""
    for name, value in match.fields:
        if name <= previous:
            return False
        previous = name
        if isinstance(value, str):
            if not _is_canonical_text(name, value):
                return False
        elif isinstance(value, tuple):
            raw, mask = value
            if not (
                isinstance(raw, int)
                and isinstance(mask, int)
                and 0 < mask < _full_mask(name, raw)
                and raw & mask == raw
            ):
                return False
    return True


def _is_canonical_action(a: Action) -> bool:
    if isinstance(a, SetField) and isinstance(a.value, str) and a.name != UNREPRESENTABLE:
        return _is_canonical_text(a.name, a.value)
    return True


def _is_canonical_instructions(instructions: tuple[Instruction, ...]) -> bool:
    rank = -1
    for i in instructions:
        r = _INSTRUCTION_RANK[type(i)]
        if r < rank:
            return False
        rank = r
        if isinstance(i, Apply):
            if not i.actions:
                return False
            if not all(_is_canonical_action(a) for a in i.actions):
                return False
        elif isinstance(i, WriteMetadata) and i.value & i.mask != i.value:
            return False
    return True


def canonical_flow(flow: Flow) -> Flow:
    """The flow as a switch reports it back: compare canonical desired with read-back installed.

    A flow already in that form (what the compiler makes, almost always) is returned itself:
    checking costs a fraction of rebuilding, and no second copy of the flow is kept."""
    if _is_canonical_match(flow.match) and _is_canonical_instructions(flow.instructions):
        return flow
    return _rebuilt_canonical(flow)


def _rebuilt_canonical(flow: Flow) -> Flow:
    return Flow(
        flow.table,
        flow.priority,
        canonical_match(flow.match),
        canonical_instructions(flow.instructions),
        flow.cookie,
    )


def canonical_group(group: Group) -> Group:
    buckets = tuple(
        Bucket(tuple(_canonical_action(a) for a in b.actions), b.weight, b.watch_port)
        for b in group.buckets
    )
    return Group(group.group_id, group.type, buckets)


def canonical_state(state: FlowState) -> SwitchState:
    """``state`` in canonical form."""
    flows = frozenset(canonical_flow(f) for f in state.flows)
    return SwitchState(flows, frozenset(canonical_group(g) for g in state.groups))
