"""Peering-time overlap check and the range relations the other policy modules share.

Two CIDR ranges either are disjoint or one contains the other, so three relations cover every
overlap. A peering is rejected when any subnet range of one VPC matches, contains or fits inside a
subnet range of the peer (as GCP does): otherwise one address could name two endpoints.
IPv4 and IPv6 ranges never overlap.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Literal, TypeAlias

Network: TypeAlias = IPv4Network | IPv6Network
Relation: TypeAlias = Literal["matches", "contains", "fits inside"]

_INVERSE: dict[Relation, Relation] = {
    "matches": "matches",
    "contains": "fits inside",
    "fits inside": "contains",
}


def network_key(net: Network) -> tuple[int, int, int]:
    """Total order on networks of both families (IPv4 first), used for every sorted output."""
    return (net.version, int(net.network_address), net.prefixlen)


def subnet_of(a: Network, b: Network) -> bool:
    """True when `a` lies inside `b` (or equals it); False across address families."""
    if isinstance(a, IPv4Network) and isinstance(b, IPv4Network):
        return a.subnet_of(b)
    if isinstance(a, IPv6Network) and isinstance(b, IPv6Network):
        return a.subnet_of(b)
    return False


def intersect(a: Network, b: Network) -> Network | None:
    """The common part of two ranges: the smaller one when nested, else None."""
    if subnet_of(a, b):
        return a
    if subnet_of(b, a):
        return b
    return None


def relation(a: Network, b: Network) -> Relation | None:
    """How `a` relates to `b`, or None when they share no address."""
    if a == b:
        return "matches"
    if subnet_of(b, a):
        return "contains"
    if subnet_of(a, b):
        return "fits inside"
    return None


@dataclass(frozen=True)
class Overlap:
    """`local` <relation> `peer`, e.g. local 10.0.0.0/16 contains peer 10.0.1.0/24."""

    local: Network
    peer: Network
    relation: Relation

    def reversed(self) -> Overlap:
        """The same overlap seen from the peer's side."""
        return Overlap(self.peer, self.local, _INVERSE[self.relation])

    def __str__(self) -> str:
        return f"local {self.local} {self.relation} peer {self.peer}"


def find_overlaps(local: Iterable[Network], peer: Iterable[Network]) -> list[Overlap]:
    """Every overlapping (local, peer) pair; empty means the peering may proceed.

    Sorted by (local, peer) and free of duplicates, so the result does not depend on input order.
    O(n*m): VPCs have hundreds of subnets at most, and this runs once per peering request.
    """
    peers = set(peer)
    found = {
        Overlap(a, b, rel) for a in set(local) for b in peers if (rel := relation(a, b)) is not None
    }
    return sorted(found, key=lambda o: (network_key(o.local), network_key(o.peer)))
