"""Route conflict rules (the source's FIG. 7, claim 20): one effective route table per VPC.

``decide_routes`` is THE route decision: the API's effective routes
(``meshpeer/controller/routing.py``) and every host's flow compiler (``ohc/compiler.py``) call it
with the same inputs (the VPC's own routes; per ACTIVE peer, what the peer exports and the local
peering's ``import_custom_routes``), so what the API says is installed is what the switch
forwards. Pre-defined, deterministic rules, applied in order:

0. A peer's custom (static/dynamic) route is imported only when the local peering sets
   ``import_custom_routes`` (`not-imported`); a peer's subnet routes always are.
1. An imported route whose prefix matches or fits inside a local subnet route is not imported
   (`inside-local-subnet`): local traffic must never be taken to a peer.
2. Routes with different prefixes coexist; longest-prefix match decides at forwarding time.
3. Among routes with the same prefix exactly one is installed, the least by
   (imported, not a subnet route, priority, kind: subnet < static < dynamic, origin, next_hop).
   So local beats imported (`local-preferred`, the patent's rule), a subnet route beats a custom
   one, then the lower priority value wins, then names break ties (`lower-preference`).

The key orders all distinct routes totally, so the result does not depend on input order. There is
no ECMP: equal-cost routes to one prefix still give one winner.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Literal, TypeAlias

from policies.overlap import Network, intersect, network_key, relation

RouteKind: TypeAlias = Literal["subnet", "static", "dynamic"]
Reason: TypeAlias = Literal[
    "not-imported", "inside-local-subnet", "local-preferred", "lower-preference"
]
_KIND_RANK: dict[RouteKind, int] = {"subnet": 0, "static": 1, "dynamic": 2}
_INSIDE = ("matches", "fits inside")


@dataclass(frozen=True)
class Route:
    """One route. `origin` names the VPC that owns it; `next_hop` is opaque here."""

    prefix: Network
    kind: RouteKind
    origin: str
    next_hop: str = ""
    priority: int = 1000  # lower wins, as in GCP; ignored for subnet routes


@dataclass(frozen=True)
class RouteDecision:
    """What happened to one route: installed, or why not and which route won instead."""

    route: Route
    from_peer: bool
    installed: bool
    reason: Reason | None = None
    winner: Route | None = None

    @property
    def imported(self) -> bool:
        """True for a peer's route that made it into the table."""
        return self.from_peer and self.installed


def _rank(route: Route, from_peer: bool) -> tuple[bool, bool, int, int, str, str]:
    custom = route.kind != "subnet"
    priority = route.priority if custom else 0
    return (from_peer, custom, priority, _KIND_RANK[route.kind], route.origin, route.next_hop)


def resolve_routes(local: Iterable[Route], imported: Iterable[Route]) -> tuple[RouteDecision, ...]:
    """Decide every route of the local VPC and of its peers; see the module docstring for rules.

    Returns one decision per distinct input route, sorted by prefix then rank (winner first).
    """
    candidates = sorted(
        {(r, False) for r in local} | {(r, True) for r in imported},
        key=lambda c: (network_key(c[0].prefix), _rank(*c)),
    )
    local_subnets = [r for r, peer in candidates if not peer and r.kind == "subnet"]
    decisions: list[RouteDecision] = []
    best: dict[Network, tuple[Route, bool]] = {}  # prefix -> (winner, winner is from a peer)
    for route, peer in candidates:
        inside = [s for s in local_subnets if relation(route.prefix, s.prefix) in _INSIDE]
        if peer and inside:
            decisions.append(RouteDecision(route, peer, False, "inside-local-subnet", inside[0]))
        elif route.prefix not in best:
            best[route.prefix] = (route, peer)
            decisions.append(RouteDecision(route, peer, True))
        else:
            winner, winner_peer = best[route.prefix]
            reason: Reason = "local-preferred" if peer and not winner_peer else "lower-preference"
            decisions.append(RouteDecision(route, peer, False, reason, winner))
    return tuple(decisions)


@dataclass(frozen=True)
class PeerRoutes:
    """What one ACTIVE peer exports to the VPC, and whether the VPC imports its custom routes."""

    routes: tuple[Route, ...]
    import_custom_routes: bool = False


def decide_routes(local: Iterable[Route], peers: Iterable[PeerRoutes]) -> tuple[RouteDecision, ...]:
    """Rule 0, then ``resolve_routes``: the decisions for the routes taken in, then those for
    the custom routes left out (`not-imported`), each part in ``resolve_routes``' order."""
    taken: list[Route] = []
    refused: set[Route] = set()
    for peer in peers:
        for route in peer.routes:
            if route.kind == "subnet" or peer.import_custom_routes:
                taken.append(route)
            else:
                refused.add(route)
    left_out = tuple(
        RouteDecision(r, True, False, "not-imported")
        for r in sorted(refused, key=lambda r: (network_key(r.prefix), _rank(r, True)))
    )
    return resolve_routes(local, taken) + left_out


def installed_routes(decisions: Iterable[RouteDecision]) -> tuple[Route, ...]:
    """The effective route table: the installed routes, in decision order."""
    return tuple(d.route for d in decisions if d.installed)


@dataclass(frozen=True)
class Lookup:
    """Longest-prefix match over installed routes: where the effective table sends an address.

    A subnet route's addresses are its VPC's endpoints: a host forwards to a peer's endpoint only
    when the peer's subnet route is what ``find`` returns for its address (``ohc/compiler.py``),
    so a peer route that lost a conflict, or an address outside what the peer exports, is
    not reached through that peer."""

    routes: tuple[Route, ...]  # longest prefix first
    _keys: tuple[tuple[int, int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.routes, key=lambda r: -r.prefix.prefixlen))
        object.__setattr__(self, "routes", ordered)
        keys = tuple(
            (r.prefix.version, int(r.prefix.network_address), int(r.prefix.netmask))
            for r in ordered
        )
        object.__setattr__(self, "_keys", keys)

    def find(self, ip: IPv4Address | IPv6Address) -> Route | None:
        version, n = ip.version, int(ip)
        for (v, net, mask), route in zip(self._keys, self.routes, strict=True):
            if v == version and n & mask == net:
                return route
        return None

    def around(self, prefixes: Iterable[Network]) -> Lookup:
        """The routes that overlap ``prefixes``: enough to look up an address inside them."""
        nets = tuple(prefixes)
        return Lookup(tuple(r for r in self.routes if any(intersect(r.prefix, n) for n in nets)))
