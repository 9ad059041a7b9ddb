"""Route manager: a VPC's effective routes, with imported peer routes and conflict rules.

Local subnet and static routes, plus what each ACTIVE peer exports to this VPC (from the
peer's federation view), decided by ``policies.routes.decide_routes`` (FIG. 7): the same
function every host's flow compiler calls with the same inputs, read from its streams.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

from meshpeer.controller.bgp import DynamicRoute
from meshpeer.controller.model import Intent, JsonObject
from meshpeer.controller.peering import PEERING_PREFIX, Status, View
from policies.routes import PeerRoutes, Route, RouteDecision, decide_routes

# Each reason in words; ``{mine}``/``{theirs}``: the loser's and the winner's preference.
REASONS = {
    "not-imported": "custom route not imported: peering {peering!r} has import_custom_routes false",
    "inside-local-subnet": "matches or fits inside a local subnet route",
    "local-preferred": "a local route to the same prefix wins",
    "peering-preference": "a peer's route with a higher peering preference wins"
    " ({theirs} > {mine})",
    "priority": "a route with a better priority wins (a subnet route before a custom one,"
    " then the lower priority value, then static before dynamic)",
    "lower-peer-id": "the route of the peer with the lower id (VPC name) wins",
    "lower-next-hop": "the route with the lower next hop wins",
    "routing-policy": "the routing policy (policies/routes.py routing_policy) chose another route",
}


def effective_routes(
    intent: Intent,
    vpc_name: str,
    states: Mapping[tuple[str, str], Status],
    views: Mapping[str, View],
    dynamic: Sequence[DynamicRoute] = (),
) -> list[JsonObject]:
    """``dynamic``: the VPC's routes learned over BGP (next hop: the endpoint's IP)."""
    vpc = intent.vpcs[vpc_name]
    local = [Route(s.cidr, "subnet", vpc_name) for s in vpc.subnets]
    local += [
        Route(r.prefix, "static", vpc_name, str(r.next_hop), r.priority)
        for r in intent.routes_of(vpc_name)
    ]
    local += [
        Route(ipaddress.ip_network(d.prefix), "dynamic", vpc_name, d.next_hop, d.priority)
        for d in dynamic
    ]
    peers: list[PeerRoutes] = []
    peering_of: dict[str, str] = {}  # peer VPC -> the local peering's name
    for p in intent.peerings_of(vpc_name):
        st = states.get((vpc_name, p.name))
        back = (views.get(p.peer_vpc) or {}).get(PEERING_PREFIX + vpc_name)
        if st is None or not st.active or back is None:
            continue
        peering_of[p.peer_vpc] = p.name
        routes = [
            Route(ipaddress.ip_network(c), "subnet", p.peer_vpc) for c in back["exported_subnets"]
        ]
        routes += [
            Route(
                ipaddress.ip_network(r["prefix"]),
                "dynamic" if r.get("kind") == "dynamic" else "static",
                p.peer_vpc,
                r["next_hop"],
                r["priority"],
            )
            for r in back["custom_routes"]
        ]
        peers.append(PeerRoutes(tuple(routes), p.import_custom_routes, p.preference))
    decisions = decide_routes(local, peers)
    losers: dict[Route, list[JsonObject]] = {}  # winner -> the routes it beat
    for d in decisions:
        if d.winner is not None and d.reason != "inside-local-subnet":
            lost = {**_route(d.route, d.from_peer, d.preference), "rule": d.reason}
            losers.setdefault(d.winner, []).append(lost)
    return [_render(d, peering_of.get(d.route.origin), losers.get(d.route)) for d in decisions]


def _route(r: Route, from_peer: bool, preference: int | None) -> JsonObject:
    """One route as the API shows it: the effective table's fields, and for a peer's route
    the importing side's preference."""
    out: JsonObject = {
        "prefix": str(r.prefix),
        "kind": r.kind,
        "origin": f"peer:{r.origin}" if from_peer else "local",
        "next_hop": r.next_hop or None,
        "priority": r.priority if r.kind != "subnet" else None,
    }
    if from_peer:
        out["preference"] = preference
    return out


def _render(d: RouteDecision, peering: str | None, beat: list[JsonObject] | None) -> JsonObject:
    """One decision: the route, whether installed, and the rule that decided: a loser names
    the rule (``rule``, ``reason`` in words) and its ``winner``; a winner lists its ``losers``."""
    out: JsonObject = {
        **_route(d.route, d.from_peer, d.preference),
        "installed": d.installed,
    }
    if d.from_peer:
        out["imported"] = d.imported
    if d.reason is not None:
        text = REASONS[d.reason].format(
            peering=peering, mine=d.preference, theirs=d.winner_preference
        )
        out["rule"] = d.reason
        out["reason"] = f"{d.reason}: {text}"
    if d.winner is not None:
        w = d.winner
        winner = _route(w, d.winner_from_peer, d.winner_preference)
        via = f" via {w.next_hop}" if w.next_hop else ""
        out["winner"] = winner
        out["reason"] = f"{out['reason']} ({w.prefix} from {winner['origin']}{via})"
    if beat:
        out["losers"] = beat
    return out
