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

REASONS = {
    "not-imported": "custom route not imported: peering {peering!r} has import_custom_routes false",
    "inside-local-subnet": "matches or fits inside a local subnet route",
    "local-preferred": "a local route to the same prefix wins",
    "lower-preference": "another route to the same prefix is preferred",
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
        peers.append(PeerRoutes(tuple(routes), p.import_custom_routes))
    return [
        _render(
            d,
            REASONS[d.reason].format(peering=peering_of.get(d.route.origin)) if d.reason else None,
        )
        for d in decide_routes(local, peers)
    ]


def _render(d: RouteDecision, reason: str | None) -> JsonObject:
    r = d.route
    out: JsonObject = {
        "prefix": str(r.prefix),
        "kind": r.kind,
        "origin": f"peer:{r.origin}" if d.from_peer else "local",
        "next_hop": r.next_hop or None,
        "priority": r.priority if r.kind != "subnet" else None,
        "installed": d.installed,
    }
    if d.from_peer:
        out["imported"] = d.imported
    if reason:
        out["reason"] = reason + (
            f" ({d.winner.prefix} from {d.winner.origin})" if d.winner else ""
        )
    return out
