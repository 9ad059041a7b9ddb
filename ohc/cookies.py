"""Flow cookies: which object a flow exists for.

cookie = kind (high 8 bits) | a stable 56-bit hash of the owning object's identity, e.g.
``cookie(Kind.PORT, "blue/b1")`` or ``cookie(Kind.PEER_DEST, "red/r1@p-1234")``. All flows of one
kind are selected with ``kind_mask()`` (delete stale flows by cookie and mask), all flows of one
object with ``(cookie(kind, owner), OBJECT_MASK)``. ``describe`` turns a cookie read back from the
switch into its kind, for humans; ``owner`` strings are logged by the compiler's callers.
"""

from __future__ import annotations

import hashlib
from enum import IntEnum

KIND_SHIFT = 56
HASH_MASK = (1 << KIND_SHIFT) - 1
KIND_MASK = 0xFF << KIND_SHIFT
OBJECT_MASK = (1 << 64) - 1


class Kind(IntEnum):
    INFRA = 0x01  # table-miss drops and other fixed flows
    VPC = 0x02  # per local VPC: tunnel classifier, routed hop, gateway ARP
    PORT = 0x03  # per local port: anti-spoofing, ARP reply, tunnel delivery
    DEST = 0x04  # own-VPC destination
    ROUTE = 0x05  # own-VPC route (subnet or static)
    LB = 0x06  # own-VPC internal load balancer
    PEER_DEST = 0x07  # destination received from a peer under a policy
    PEER_ROUTE = 0x08  # route received from a peer under a policy
    PEER_LB = 0x09  # load balancer received from a peer under a policy
    RELAY = 0x0A  # a gateway host's: forwarding to one destination of a VPC it relays for
    OFFLOAD = 0x0B  # learned by the switch: one (VPC, destination) pair of an on-demand side
    SPILL = 0x0C  # an own ILB's pin flow toward one of its spillover backends (peer VPC)
    AFFINITY = 0x0D  # learned by the switch: one connection of an ILB with spillover backends


def object_hash(owner: str) -> int:
    """Stable 56-bit hash of an owner string (the same in every process and run)."""
    digest = hashlib.blake2b(owner.encode(), digest_size=7).digest()
    return int.from_bytes(digest, "big")


def cookie(kind: Kind, owner: str) -> int:
    return (int(kind) << KIND_SHIFT) | object_hash(owner)


def kind_mask() -> int:
    """The cookie mask that selects every flow of a kind: ``(cookie_of_kind(k), kind_mask())``."""
    return KIND_MASK


def cookie_of_kind(kind: Kind) -> int:
    return int(kind) << KIND_SHIFT


def kind_of(value: int) -> Kind | None:
    try:
        return Kind(value >> KIND_SHIFT)
    except ValueError:
        return None


def describe(value: int) -> str:
    kind = kind_of(value)
    name = kind.name if kind is not None else f"unknown({value >> KIND_SHIFT:#x})"
    return f"{name}:{value & HASH_MASK:#016x}"
