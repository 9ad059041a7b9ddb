"""Read installed flows back cheaply: flow-stats reply bytes matched to the desired flows.

Why this module exists: on (re)connect the OHC reads every installed flow back and diffs it
against the desired state. At 50k peer endpoints (~100k flows) os-ken parsed each flow-stats
entry into an ``OFPFlowStats`` with its ``OFPMatch``, instructions and actions (~115 us a flow,
on the hub, so echo replies waited), then ``ofio.flow_from_stats`` turned each into an
``ohc.flows.Flow`` (~47 us) that the plan compared field by field with the desired one: ~16 s of
a ~33 s restart (docs/decisions.md, "Restart read-back"). Reconciliation only needs to know
which installed entries ARE desired flows, and to see the others exactly.

How:

* ``RawFlowStats`` takes the place of ``OFPFlowStats`` as the body class of os-ken's
  ``OFPFlowStatsReply`` (``install``: the class attribute os-ken's multipart parser reads, set
  once). It consumes the whole reply body in one step, so a reply of ~400 flows becomes one
  object holding its bytes, and os-ken builds nothing per flow.
* ``entry_key`` reads one entry (OpenFlow 1.3 ``ofp_flow_stats``) as bytes: table, priority,
  cookie, the match's OXM TLVs in OXM-number order (OVS reports them in its own order) and the
  instructions as sent. Durations, counters, timeouts and flags are not part of a flow's
  identity or content and are skipped.
* ``flow_key`` is the same bytes for a canonical desired ``Flow``, cut from the FlowMod that
  ``ohc.wire`` packs (byte-identical to os-ken's), so both sides are bytes.
* ``match`` returns, per installed entry, the desired ``Flow`` object with the same key (no new
  per-flow object: the installed model shares the desired flows), and the offsets of the
  entries that match nothing. Those (flows installed by someone else, or changed while the OHC
  was away; few) are parsed exactly by os-ken and ``ofio.flow_from_stats``, so an entry that
  differs only in encoding is merely slower, never wrong.

Rejected: a second, minimal OpenFlow connection to the bridge's passive target (a second
controller on the switch, with its own handshake, echo and lifetime, for one request), and
wrapping ``Datapath.ofproto_parser`` per switch (os-ken's receive loop dispatches through the
module-level parser tables, so it would not be consulted).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from os_ken.ofproto import ofproto_v1_3_parser as parser

from ohc import wire
from ohc.flows import Flow

_FLOW_STATS_FIXED = 48  # ofp_flow_stats up to its match (OpenFlow 1.3)
_U16 = struct.Struct("!H")
_KEY_HEAD = struct.Struct("!BHQ")  # an entry's table, priority and cookie, as ``entry_key``
# entries of the encodings memo that ``match`` shares between desired flows (shared pairs and
# actions hit; a flow's own addresses do not, so it starts afresh past this size)
MEMO_SIZE = 20_000


@dataclass(frozen=True)
class RawFlowStats:
    """The entries of one flow-stats reply, as bytes (``entries`` yields their offsets)."""

    buf: bytes
    length: int  # how far os-ken's body loop advances: the whole rest of the reply

    @classmethod
    def parser(cls, buf: bytes | bytearray, offset: int) -> RawFlowStats:
        return cls(bytes(buf[offset:]), len(buf) - offset)

    def entries(self) -> Iterator[int]:
        buf, off = self.buf, 0
        while off + _FLOW_STATS_FIXED <= len(buf):
            yield off
            (length,) = _U16.unpack_from(buf, off)
            if length < _FLOW_STATS_FIXED:
                raise ValueError(f"flow stats entry of length {length} at offset {off}")
            off += length

    def osken(self, offset: int) -> Any:
        """The entry at ``offset`` parsed by os-ken, for the exact (slow) conversion."""
        return parser.OFPFlowStats.parser(self.buf, offset)


def install() -> None:
    """Make os-ken parse flow-stats reply bodies into ``RawFlowStats`` (idempotent).

    Process-wide: every ``EventOFPFlowStatsReply`` then carries ``RawFlowStats`` bodies. In the
    OHC the only reader of flow stats is ``ohc.ofio``, which accepts both forms."""
    parser.OFPFlowStatsReply.cls_stats_body_cls = RawFlowStats


def _sorted_oxms(buf: bytes, start: int, end: int) -> bytes:
    tlvs = []
    while start < end:
        n = 4 + buf[start + 3]
        tlvs.append(buf[start : start + n])
        start += n
    tlvs.sort()  # by header: OXM class, then field (each field appears once)
    return b"".join(tlvs)


def entry_key(buf: bytes, off: int) -> bytes:
    """The identity and content of the ``ofp_flow_stats`` entry at ``off``, as bytes."""
    (length,) = _U16.unpack_from(buf, off)
    (match_len,) = _U16.unpack_from(buf, off + 50)
    oxms = off + 52
    instructions = off + _FLOW_STATS_FIXED + (match_len + 7) // 8 * 8
    return b"".join(
        (
            buf[off + 2 : off + 3],  # table
            buf[off + 12 : off + 14],  # priority
            buf[off + 24 : off + 32],  # cookie
            _sorted_oxms(buf, oxms, off + _FLOW_STATS_FIXED + match_len),
            buf[instructions : off + length],
        )
    )


def flow_key(flow: Flow, memo: wire.Memo | None = None) -> bytes:
    """``entry_key`` of the entry a switch reports for the canonical ``flow``: the FlowMod's
    match and instructions as ``ohc.wire`` packs them. ``memo``: kept across many flows
    (``wire.Memo``)."""
    body = wire.add_body(flow, {} if memo is None else memo)
    (match_len,) = _U16.unpack_from(body, 2)
    return b"".join(
        (
            _KEY_HEAD.pack(flow.table, flow.priority, flow.cookie),
            body[4:match_len],  # OXMs, by OXM number
            body[(match_len + 7) // 8 * 8 :],  # instructions
        )
    )


def match(
    known: Iterable[Flow], replies: Iterable[RawFlowStats]
) -> tuple[list[Flow], list[tuple[RawFlowStats, int]]]:
    """The known flows the replies' entries are, and the entries that are none of them.

    ``known`` must be canonical (``ohc.canonical.canonical_flow``); a known flow that ``ohc.wire``
    cannot pack simply matches nothing."""
    by_key: dict[bytes, Flow] = {}
    memo: wire.Memo = {}
    for f in known:
        if len(memo) > MEMO_SIZE:  # most of it is per-flow (addresses): bound it
            memo = {}
        try:
            by_key[flow_key(f, memo)] = f
        except ValueError:
            continue
    found: list[Flow] = []
    unknown: list[tuple[RawFlowStats, int]] = []
    for reply in replies:
        buf = reply.buf
        for off in reply.entries():
            flow = by_key.get(entry_key(buf, off))
            if flow is None:
                unknown.append((reply, off))
            else:
                found.append(flow)
    return found, unknown
