"""Route manager: a VPC's effective routes, with imported peer routes and conflict rules.

Local subnet and static routes, plus what each ACTIVE peer exports to this VPC (from the
peer's federation view), resolved by the pre-defined rules of ``policies.routes`` (FIG. 7).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from meshpeer.controller.model import Intent, JsonObject
from meshpeer.controller.peering import PEERING_PREFIX, Status, View
from policies.routes import Route, RouteDecision, resolve_routes

REASONS = {
    "inside-local-subnet": "matches or fits inside a local subnet route",
    "local-preferred": "a local route to the same prefix wins",
    "lower-preference": "another route to the same prefix is preferred",
}


def effective_routes(
    intent: Intent,
    vpc_name: str,
    states: Mapping[tuple[str, str], Status],
    views: Mapping[str, View],
) -> list[JsonObject]:
    vpc = intent.vpcs[vpc_name]
    local = [Route(s.cidr, "subnet", vpc_name) for s in vpc.subnets]
    local += [
        Route(r.prefix, "static", vpc_name, str(r.next_hop), r.priority)
        for r in intent.routes_of(vpc_name)
    ]
    imported: list[Route] = []
    skipped: list[JsonObject] = []
    for p in intent.peerings_of(vpc_name):
        st = states.get((vpc_name, p.name))
        back = (views.get(p.peer_vpc) or {}).get(PEERING_PREFIX + vpc_name)
        if st is None or not st.active or back is None:
            continue
        for cidr in back["exported_subnets"]:
            imported.append(Route(ipaddress.ip_network(cidr), "subnet", p.peer_vpc))
        for r in back["custom_routes"]:
            route = Route(
                ipaddress.ip_network(r["prefix"]),
                "static",
                p.peer_vpc,
                r["next_hop"],
                r["priority"],
            )
            if p.import_custom_routes:
                imported.append(route)
            else:
                reason = (
                    f"custom route not imported: peering {p.name!r} has import_custom_routes false"
                )
                skipped.append(_render(RouteDecision(route, True, False), reason))
    decided = [
        _render(d, REASONS[d.reason] if d.reason else None) for d in resolve_routes(local, imported)
    ]
    return decided + skipped


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
