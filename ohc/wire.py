"""OpenFlow 1.3 wire bytes of a canonical ``ohc.flows.Flow``, without os-ken objects.

A first sync at 50k peer endpoints sends 100k FlowMods. Building and serializing them as os-ken
objects cost ~290 us each (~30 s of CPU); packing them here, in a bundle add, ~40 us. The
bytes are exactly what os-ken would send (tested for every flow the compiler makes and for
random ones); group mods and bundle control stay os-ken messages (a handful per sync).

Only canonical flows (``ohc.canonical.canonical_flow``): masks applied, full masks dropped. The
match fields are those ``ohc.pipeline`` declares, in os-ken's order (by OXM number), and the
actions those ``ohc.flows`` has. Anything else raises ``ValueError``: a compiler bug.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Hashable, Mapping
from types import MappingProxyType
from typing import Literal

from ohc.flows import (
    CT_COMMIT,
    Action,
    Apply,
    Conntrack,
    DecTtl,
    Flow,
    Goto,
    Instruction,
    Learn,
    MatchValue,
    Move,
    Output,
    Resubmit,
    SetField,
    ToGroup,
    WriteMetadata,
    field_bits,
)

Kind = Literal["int", "mac", "ipv4", "ipv6"]
# Encodings of match pairs and actions, by the pair or action: most are shared by many flows
# (a VPC's metadata, eth_type, a host's tunnel actions). One memo per batch of FlowMods
# (``ofio``: per chunk) cut the packing of a first sync by ~25% (docs/decisions.md).
Memo = dict[Hashable, bytes]

OFP_VERSION = 4
OFPT_EXPERIMENTER = 4
OFPT_FLOW_MOD = 14
ONF_EXPERIMENTER_ID = 0x4F4E4600
ONF_ET_BUNDLE_ADD_MESSAGE = 2301
OFPFC = MappingProxyType({"add": 0, "modify": 2, "delete": 4})  # modify and delete: strict
OFP_NO_BUFFER = 0xFFFFFFFF
OFPP_ANY = 0xFFFFFFFF
OFPG_ANY = 0xFFFFFFFF
OFPCML_MAX = 0xFFE5  # os-ken's default max_len for output actions
ALL_COOKIE_BITS = (1 << 64) - 1

BASIC, NXM1 = 0x8000, 0x0001
# name -> (OXM class, field, size in bytes, value kind)
FIELDS: Mapping[str, tuple[int, int, int, Kind]] = MappingProxyType(
    {
        "in_port": (BASIC, 0, 4, "int"),
        "metadata": (BASIC, 2, 8, "int"),
        "eth_dst": (BASIC, 3, 6, "mac"),
        "eth_src": (BASIC, 4, 6, "mac"),
        "eth_type": (BASIC, 5, 2, "int"),
        "ip_proto": (BASIC, 10, 1, "int"),
        "ipv4_src": (BASIC, 11, 4, "ipv4"),
        "ipv4_dst": (BASIC, 12, 4, "ipv4"),
        "tcp_src": (BASIC, 13, 2, "int"),
        "tcp_dst": (BASIC, 14, 2, "int"),
        "udp_src": (BASIC, 15, 2, "int"),
        "udp_dst": (BASIC, 16, 2, "int"),
        "arp_op": (BASIC, 21, 2, "int"),
        "arp_spa": (BASIC, 22, 4, "ipv4"),
        "arp_tpa": (BASIC, 23, 4, "ipv4"),
        "arp_sha": (BASIC, 24, 6, "mac"),
        "arp_tha": (BASIC, 25, 6, "mac"),
        "ipv6_src": (BASIC, 26, 16, "ipv6"),
        "ipv6_dst": (BASIC, 27, 16, "ipv6"),
        "icmpv6_type": (BASIC, 29, 1, "int"),
        "ipv6_nd_target": (BASIC, 31, 16, "ipv6"),
        "tunnel_id": (BASIC, 38, 8, "int"),
        "tun_ipv4_src": (NXM1, 31, 4, "ipv4"),
        "tun_ipv4_dst": (NXM1, 32, 4, "ipv4"),
        "ct_state": (NXM1, 105, 4, "int"),
        "ct_zone": (NXM1, 106, 2, "int"),
    }
)

# OXM order (os-ken's: by class, then field) and each field's header, exact and masked
_ORDER = MappingProxyType({n: cls << 7 | fld for n, (cls, fld, _, _) in FIELDS.items()})
_OXM_HEADER = MappingProxyType(
    {n: (cls << 16 | fld << 9 | size, cls << 16 | fld << 9 | 1 << 8 | 2 * size)
     for n, (cls, fld, size, _) in FIELDS.items()}
)  # fmt: skip
_U32 = struct.Struct("!I")
_HEADER = struct.Struct("!BBHI")
_FLOW_MOD = struct.Struct("!QQBBHHHIIIH2x")
_BUNDLE_ADD = struct.Struct("!IIIxxH")  # experimenter, exp_type, bundle id, pad, flags
_MATCH_HEADER = struct.Struct("!HH")
_ORDER_OF = "order of"  # in a memo key: the OXM order of a match with these fields
# a bundle add's header and body, then its FlowMod's header and fixed part
_BUNDLED_FLOW_MOD = struct.Struct("!BBHIIIIxxHBBHIQQBBHHHIIIH2x")
_BUNDLE_HEAD = _HEADER.size + _BUNDLE_ADD.size
NX_EXPERIMENTER_ID = 0x00002320
NXAST_CT = 35
# OFPAT_EXPERIMENTER, length, Nicira, NXAST_CT; flags, zone source header, zone (or the
# source's ofs_nbits), resume table, pad, alg (os-ken NXActionCT without nested actions)
_NX_CT = struct.Struct("!HHIHH4sHB3xH")
NXAST_REG_MOVE = 6
# OFPAT_EXPERIMENTER, length, Nicira, NXAST_REG_MOVE; n_bits, src_ofs, dst_ofs, src and dst
# NXM headers (os-ken NXActionRegMove of two NXM fields)
_NX_MOVE = struct.Struct("!HHIHHHHII")
NXAST_RESUBMIT_TABLE = 14
_NX_RESUBMIT = struct.Struct("!HHIHHB3x")  # ..., in_port, table
NXAST_LEARN = 16
# ..., idle and hard timeout, priority, cookie, flags, table, pad, fin idle and hard timeout;
# then the flow_mod_specs, zero-padded to 8 bytes
_NX_LEARN = struct.Struct("!HHIHHHHQHBxHH")


def _field(name: str) -> tuple[int, int, int, Kind]:
    try:
        return FIELDS[name]
    except KeyError:
        raise ValueError(f"OXM field {name!r} is not encoded by ohc.wire") from None


def _value(kind: Kind, size: int, value: int | str) -> bytes:
    if kind == "ipv4" and isinstance(value, str):
        try:
            return socket.inet_pton(socket.AF_INET, value)
        except OSError:
            raise ValueError(f"expected an ipv4 address, got {value!r}") from None
    if kind == "int":
        if not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        return value.to_bytes(size, "big")
    if not isinstance(value, str):
        raise ValueError(f"expected an address, got {value!r}")
    if kind == "mac":
        return bytes.fromhex(value.replace(":", ""))
    try:
        return socket.inet_pton(socket.AF_INET if kind == "ipv4" else socket.AF_INET6, value)
    except OSError:
        raise ValueError(f"expected an {kind} address, got {value!r}") from None


def _oxm(name: str, value: MatchValue | int | str) -> bytes:
    _, _, size, kind = _field(name)
    exact, masked = _OXM_HEADER[name]
    if isinstance(value, tuple):
        body = _value(kind, size, value[0]) + _value(kind, size, value[1])
        return _U32.pack(masked) + body
    return _U32.pack(exact) + _value(kind, size, value)


def _pad8(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 8)


def _match(fields: tuple[tuple[str, MatchValue], ...], memo: Memo) -> bytes:
    oxms = []
    for pair in fields:
        oxm = memo.get(pair)
        if oxm is None:
            oxm = memo[pair] = _oxm(*pair)  # a field ohc.wire cannot encode: says which
        oxms.append(oxm)
    # os-ken's order (by OXM number; a field is in a match once), as a permutation of the
    # pairs' (sorted by name): the same for every match with these fields, so it is memoized
    names = (_ORDER_OF, *[p[0] for p in fields])
    order = memo.get(names)
    if order is None:
        order = memo[names] = bytes(sorted(range(len(fields)), key=lambda i: _ORDER[fields[i][0]]))
    body = b"".join([oxms[i] for i in order])
    return _pad8(_MATCH_HEADER.pack(1, 4 + len(body)) + body)  # OFPMT_OXM


def _action(a: Action, memo: Memo) -> bytes:
    got = memo.get(a)
    if got is None:
        got = memo[a] = _pack_action(a)
    return got


def _pack_action(a: Action) -> bytes:
    if isinstance(a, Output):
        return struct.pack("!HHIH6x", 0, 16, a.port, OFPCML_MAX)
    if isinstance(a, ToGroup):
        return struct.pack("!HHI", 22, 8, a.group_id)
    if isinstance(a, DecTtl):
        return struct.pack("!HH4x", 24, 8)
    if isinstance(a, SetField):
        oxm = _oxm(a.name, a.value)
        return _pad8(struct.pack("!HH", 25, _padded_len(4 + len(oxm))) + oxm)
    if isinstance(a, Conntrack):
        source = b"\0" * 4
        if a.zone_field:
            cls, fld, size, _ = _field(a.zone_field)
            source = struct.pack("!I", cls << 16 | fld << 9 | size)
        flags = CT_COMMIT if a.commit else 0
        return _NX_CT.pack(
            0xFFFF,
            _NX_CT.size,
            NX_EXPERIMENTER_ID,
            NXAST_CT,
            flags,
            source,
            a.zone_ofs_nbits(),
            a.table,
            0,
        )
    if isinstance(a, Move):
        _, _, size, _ = _field(a.src)
        src, dst = _OXM_HEADER[a.src][0], _OXM_HEADER[a.dst][0]
        return _NX_MOVE.pack(
            0xFFFF, _NX_MOVE.size, NX_EXPERIMENTER_ID, NXAST_REG_MOVE, 8 * size, 0, 0, src, dst
        )
    if isinstance(a, Resubmit):
        return _NX_RESUBMIT.pack(
            0xFFFF, _NX_RESUBMIT.size, NX_EXPERIMENTER_ID, NXAST_RESUBMIT_TABLE, 0xFFF8, a.table
        )
    if isinstance(a, Learn):
        return _learn(a)
    raise ValueError(f"action {a!r} is not encoded by ohc.wire")


def _learn(a: Learn) -> bytes:
    specs = b""
    for name, value in a.values:  # immediate source (1 << 13), match destination
        bits = field_bits(name)
        size = (bits + 15) // 16 * 2
        specs += struct.pack("!H", 1 << 13 | bits) + value.to_bytes(size, "big")
        specs += _U32.pack(_OXM_HEADER[name][0]) + b"\0\0"
    for name in a.copy:  # field source, match destination: the packet's own value
        header = _U32.pack(_OXM_HEADER[name][0]) + b"\0\0"
        specs += struct.pack("!H", field_bits(name)) + header + header
    for name in a.load:  # field source, load destination (1 << 11): the learned flow's action
        header = _U32.pack(_OXM_HEADER[name][0]) + b"\0\0"
        specs += struct.pack("!H", 1 << 11 | field_bits(name)) + header + header
    size = _padded_len(_NX_LEARN.size + len(specs))
    head = _NX_LEARN.pack(
        0xFFFF, size, NX_EXPERIMENTER_ID, NXAST_LEARN, a.idle_timeout, 0, a.priority, a.cookie,
        0, a.table, 0, 0,
    )  # fmt: skip
    return (head + specs).ljust(size, b"\0")


def _padded_len(n: int) -> int:
    return n + (-n % 8)


def _instruction(i: Instruction, memo: Memo) -> bytes:
    if isinstance(i, Goto):
        return struct.pack("!HHB3x", 1, 8, i.table)
    if isinstance(i, WriteMetadata):
        return struct.pack("!HH4xQQ", 2, 24, i.value, i.mask)
    if isinstance(i, Apply):
        actions = b"".join([_action(a, memo) for a in i.actions])
        return struct.pack("!HH4x", 4, 8 + len(actions)) + actions
    raise ValueError(f"instruction {i!r} is not encoded by ohc.wire")


def flow_mod(flow: Flow, command: str, xid: int, memo: Memo | None = None) -> bytes:
    """The FlowMod that adds, strictly modifies or strictly deletes ``flow`` (as
    ``ohc.flows.flow_mod`` plus ``ohc.ofio.plan_messages``: a delete carries no instructions and
    matches the cookie exactly). ``memo``: kept across a batch of FlowMods (``Memo``)."""
    rest = _body(flow, command, {} if memo is None else memo)
    head = _HEADER.pack(OFP_VERSION, OFPT_FLOW_MOD, _HEADER.size + _FLOW_MOD.size + len(rest), xid)
    return head + _fixed(flow, command) + rest


def add_body(flow: Flow, memo: Memo) -> bytes:
    """The match and instructions of the FlowMod that adds ``flow`` (``flow_mod``'s, after its
    fixed part): what a read-back compares (``ohc.readback.flow_key``)."""
    return _body(flow, "add", memo)


def bundle_add(bundle_id: int, flags: int, inner: bytes) -> bytes:
    """An ONF bundle add (OpenFlow 1.3 extension) carrying ``inner``, with inner's xid."""
    (xid,) = struct.unpack_from("!I", inner, 4)
    body = _BUNDLE_ADD.pack(ONF_EXPERIMENTER_ID, ONF_ET_BUNDLE_ADD_MESSAGE, bundle_id, flags)
    return _HEADER.pack(OFP_VERSION, OFPT_EXPERIMENTER, 8 + len(body) + len(inner), xid) + (
        body + inner
    )


def bundled_flow_mod(
    bundle_id: int, flags: int, flow: Flow, command: str, xid: int, memo: Memo
) -> bytes:
    """``bundle_add(bundle_id, flags, flow_mod(flow, command, xid, memo))`` in one pass: the
    headers and the FlowMod's fixed part in one ``struct`` call (a first sync packs 100k)."""
    rest = _body(flow, command, memo)
    n = len(rest)
    delete = command == "delete"
    head = _BUNDLED_FLOW_MOD.pack(
        OFP_VERSION, OFPT_EXPERIMENTER, _BUNDLED_FLOW_MOD.size + n, xid,
        ONF_EXPERIMENTER_ID, ONF_ET_BUNDLE_ADD_MESSAGE, bundle_id, flags,
        OFP_VERSION, OFPT_FLOW_MOD, _BUNDLED_FLOW_MOD.size - _BUNDLE_HEAD + n, xid,
        flow.cookie, ALL_COOKIE_BITS if delete else 0, flow.table, OFPFC[command], 0, 0,
        flow.priority, OFP_NO_BUFFER, OFPP_ANY, OFPG_ANY, 0,
    )  # fmt: skip
    return head + rest


def _fixed(flow: Flow, command: str) -> bytes:
    """The FlowMod's fixed part after its header."""
    delete = command == "delete"
    return _FLOW_MOD.pack(
        flow.cookie, ALL_COOKIE_BITS if delete else 0, flow.table, OFPFC[command], 0, 0,
        flow.priority, OFP_NO_BUFFER, OFPP_ANY, OFPG_ANY, 0,
    )  # fmt: skip


def _body(flow: Flow, command: str, memo: Memo) -> bytes:
    """The FlowMod's match and instructions (none in a delete)."""
    if command == "delete":
        return _match(flow.match.fields, memo)
    return _match(flow.match.fields, memo) + b"".join(
        [_instruction(i, memo) for i in flow.instructions]
    )
