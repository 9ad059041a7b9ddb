"""Route conflict rules (the source's FIG. 7, claim 20): one effective route table per VPC.

``decide_routes`` is THE route decision: the API's effective routes
(``meshpeer/controller/routing.py``) and every host's flow compiler (``ohc/compiler.py``) call it
with the same inputs (the VPC's own routes; per ACTIVE peer, what the peer exports and the local
peering side's ``import_custom_routes`` and ``preference``), so what the API says is installed is
what the switch forwards. Pre-defined, deterministic rules, applied in order (docs/routing.md):

0. A peer's custom (static/dynamic) route is imported only when the local peering sets
   ``import_custom_routes`` (`not-imported`); a peer's subnet routes always are.
1. An imported route whose prefix matches or fits inside a local subnet route is not imported
   (`inside-local-subnet`): local traffic must never be taken to a peer.

Routes with different prefixes coexist (longest-prefix match decides at forwarding time). Among
the routes to one prefix exactly one is installed; each loser names the first rule by which it
ranks below the winner, and the winner:

2. a local route beats a peer's (`local-preferred`);
3. between peers' routes, the higher ``preference`` of the local peering side that imports them
   (`peering-preference`; default ``DEFAULT_PREFERENCE``, so equal unless a user sets it);
4. a subnet route beats a custom one, then the lower ``priority`` (MED) value, then static
   before dynamic (`priority`);
5. the lower peer id: the name of the VPC the route comes from, compared as text
   (`lower-peer-id`);
6. within one VPC, the lower next hop, compared as text (`lower-next-hop`);
7. the deployment's routing policy, ``routing_policy``: it may pick another route among those
   of the winner's side (local, or peers' when no local route has the prefix); the routes it
   passes over say `routing-policy`. The default keeps the rules' winner.

Rules 2-6 order all distinct routes totally, so the result does not depend on input order (the
hook sees the routes in that order). There is no ECMP: equal-cost routes still give one winner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from itertools import groupby
from typing import Literal, TypeAlias

from policies.overlap import Network, intersect, network_key, relation

RouteKind: TypeAlias = Literal["subnet", "static", "dynamic"]
# Why a route is not installed: a filter (0, 1), or the conflict rule it lost by (2-7).
Reason: TypeAlias = Literal[
    "not-imported",
    "inside-local-subnet",
    "local-preferred",
    "peering-preference",
    "priority",
    "lower-peer-id",
    "lower-next-hop",
    "routing-policy",
]
# The conflict rules, in order, for each component of ``Candidate.rank()``.
RULE_OF_RANK: tuple[Reason, ...] = (
    "local-preferred",
    "peering-preference",
    "priority",
    "priority",
    "priority",
    "lower-peer-id",
    "lower-next-hop",
    "priority",  # a subnet route's (ignored) priority: only to make the order total
)
DEFAULT_PREFERENCE = 100  # a peering side's preference when none is set: higher wins
MIN_PREFERENCE, MAX_PREFERENCE = 0, 65535
_KIND_RANK: dict[RouteKind, int] = {"subnet": 0, "static": 1, "dynamic": 2}
_INSIDE = ("matches", "fits inside")

_Rank: TypeAlias = tuple[bool, int, bool, int, int, str, str, int]


@dataclass(frozen=True)
class Route:
    """One route. `origin` names the VPC that owns it; `next_hop` is opaque here."""

    prefix: Network
    kind: RouteKind
    origin: str
    next_hop: str = ""
    priority: int = 1000  # lower wins, as in GCP (BGP's MED); ignored for subnet routes


@dataclass(frozen=True)
class Candidate:
    """A route competing for its prefix: a local one, or a peer's with the local peering
    side's ``preference`` (None for a local route)."""

    route: Route
    from_peer: bool
    preference: int | None = None

    def rank(self) -> _Rank:
        """Rules 2-6 as a sort key: the least candidate wins (``RULE_OF_RANK`` names each part)."""
        r = self.route
        custom = r.kind != "subnet"
        return (
            self.from_peer,
            -(self.preference or 0),
            custom,
            r.priority if custom else 0,
            _KIND_RANK[r.kind],
            r.origin,
            r.next_hop,
            r.priority,
        )


# The deployment's hook (rule 7): the prefix and the candidates of the winner's side, in rule
# order (at least one), to the one to install. Pure: the API and every host call it.
RoutingPolicy: TypeAlias = Callable[[Network, Sequence[Candidate]], Candidate]


def routing_policy(prefix: Network, ranked: Sequence[Candidate]) -> Candidate:
    """Rule 7, replaceable by a deployment (edit it here: shards and hosts load this module).

    ``ranked`` holds the routes to ``prefix`` of the rules' winner's side (the local ones, or
    the peers' when the VPC has none), best first; return one of them. The default keeps the
    rules' result."""
    return ranked[0]


@dataclass(frozen=True)
class RouteDecision:
    """What happened to one route: installed, or why not and which route won instead."""

    route: Route
    from_peer: bool
    installed: bool
    reason: Reason | None = None
    winner: Route | None = None
    preference: int | None = None  # the importing peering side's, for a peer's route
    winner_from_peer: bool = False
    winner_preference: int | None = None

    @property
    def imported(self) -> bool:
        """True for a peer's route that made it into the table."""
        return self.from_peer and self.installed


def _lost(loser: Candidate, winner: Candidate, reason: Reason) -> RouteDecision:
    w = winner
    return RouteDecision(
        loser.route,
        loser.from_peer,
        False,
        reason,
        w.route,
        loser.preference,
        w.from_peer,
        w.preference,
    )


def why_lost(loser: Candidate, winner: Candidate) -> Reason:
    """The first rule (2-6) by which ``loser`` ranks below ``winner``; `routing-policy` when it
    ranks above (the hook chose the winner)."""
    lose, win = loser.rank(), winner.rank()
    for rule, a, b in zip(RULE_OF_RANK, lose, win, strict=True):
        if a != b:  # the first difference decides the tuples' order
            return rule if lose > win else "routing-policy"
    raise ValueError(f"{loser} and {winner} are the same route")


def _resolve(
    candidates: Iterable[Candidate], policy: RoutingPolicy | None
) -> tuple[RouteDecision, ...]:
    pick = policy or routing_policy
    # One candidate per (route, side): a route offered twice counts with its best preference.
    best_of: dict[tuple[Route, bool], Candidate] = {}
    for c in candidates:
        known = best_of.get((c.route, c.from_peer))
        if known is None or c.rank() < known.rank():
            best_of[c.route, c.from_peer] = c
    ordered = sorted(best_of.values(), key=lambda c: (network_key(c.route.prefix), c.rank()))
    local_subnets = [c.route for c in ordered if not c.from_peer and c.route.kind == "subnet"]
    decisions: list[RouteDecision] = []
    for prefix, group in groupby(ordered, key=lambda c: c.route.prefix):
        competing: list[Candidate] = []
        for c in group:
            inside = [s for s in local_subnets if relation(c.route.prefix, s.prefix) in _INSIDE]
            if c.from_peer and inside:
                decisions.append(
                    RouteDecision(
                        c.route, True, False, "inside-local-subnet", inside[0], c.preference
                    )
                )
            else:
                competing.append(c)
        if not competing:
            continue
        side = [c for c in competing if c.from_peer == competing[0].from_peer]
        winner = pick(prefix, tuple(side))
        if winner not in side:
            raise ValueError(f"routing policy picked {winner} for {prefix}: not a candidate")
        for c in competing:
            if c == winner:
                decisions.append(RouteDecision(c.route, c.from_peer, True, preference=c.preference))
            else:
                decisions.append(_lost(c, winner, why_lost(c, winner)))
    return tuple(decisions)


def resolve_routes(
    local: Iterable[Route], imported: Iterable[Route], policy: RoutingPolicy | None = None
) -> tuple[RouteDecision, ...]:
    """Rules 1-7 for the local VPC's routes and peers' routes taken in, every peer at
    ``DEFAULT_PREFERENCE``; see the module docstring.

    Returns one decision per distinct input route, sorted by prefix, then by rank."""
    return _resolve(
        [
            *(Candidate(r, False) for r in local),
            *(Candidate(r, True, DEFAULT_PREFERENCE) for r in imported),
        ],
        policy,
    )


@dataclass(frozen=True)
class PeerRoutes:
    """What one ACTIVE peer exports to the VPC, and the local peering side's settings: whether
    the VPC imports the peer's custom routes, and how much it prefers the peer's routes."""

    routes: tuple[Route, ...]
    import_custom_routes: bool = False
    preference: int = DEFAULT_PREFERENCE


def decide_routes(
    local: Iterable[Route], peers: Iterable[PeerRoutes], policy: RoutingPolicy | None = None
) -> tuple[RouteDecision, ...]:
    """Rule 0, then rules 1-7: the decisions for the routes taken in (sorted by prefix, then
    by rank), then those for the custom routes left out (`not-imported`).

    ``policy`` stands in for ``routing_policy`` (tests); None: ``routing_policy``."""
    taken: list[Candidate] = [Candidate(r, False) for r in local]
    refused: dict[Route, Candidate] = {}
    for peer in peers:
        for route in peer.routes:
            c = Candidate(route, True, peer.preference)
            if route.kind == "subnet" or peer.import_custom_routes:
                taken.append(c)
            elif route not in refused or c.rank() < refused[route].rank():
                refused[route] = c
    left_out = tuple(
        RouteDecision(c.route, True, False, "not-imported", preference=c.preference)
        for c in sorted(refused.values(), key=lambda c: (network_key(c.route.prefix), c.rank()))
    )
    return _resolve(taken, policy) + left_out


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
