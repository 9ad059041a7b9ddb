"""Peering manager: what a VPC tells peer shards, and whether each peering is ACTIVE.

A peering is ACTIVE only while both sides have configured it (each side is its own
resource, possibly on another shard) and their ranges do not overlap. Each shard publishes a
*federation view* of its VPCs; a shard decides a peering's state from the peer VPC's view,
whether that view was computed locally or replicated from the peer's shard. Peering is not
transitive: only a VPC's own peerings are ever consulted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meshpeer.controller.model import Intent, JsonObject, Network, Peering, Vpc
from meshpeer.protocol.messages import NAME_RE
from policies.overlap import find_overlaps

if TYPE_CHECKING:  # bgp reads peering states and views: a runtime import would be circular
    from meshpeer.controller.bgp import DynamicRoute

ACTIVE = "ACTIVE"
INACTIVE = "INACTIVE"
VPC_OBJ = "vpc"
PEERING_PREFIX = "peering/"

View = Mapping[str, Mapping[str, Any]]  # object id -> object, as in a service stream


def federation_view(
    intent: Intent, shard: str, vpc_name: str, dynamic: Sequence[DynamicRoute] = ()
) -> dict[str, JsonObject]:
    """What VPC ``vpc_name`` tells other shards: its ranges and each side it configured
    (``dynamic``: its routes learned over BGP, exported as custom routes)."""
    vpc = intent.vpcs.get(vpc_name)
    if vpc is None:
        return {}
    out: dict[str, JsonObject] = {
        VPC_OBJ: {
            "name": vpc.name,
            "vni": vpc.vni,
            "shard": shard,
            "subnets": [str(s.cidr) for s in vpc.subnets],
            # Who must program a new peering with this VPC (?wait=programmed on the peer's
            # shard); the peer's hosts learn these names anyway from its destinations.
            # (and the gateways relaying for it: they follow the peer's destinations)
            "hosts": sorted({*intent.hosts_of(vpc_name), *intent.relay_hosts(vpc_name)}),
            "relay_hosts": intent.relay_hosts(vpc_name),  # those gateways (docs/gateways.md)
        }
    }
    for p in intent.peerings_of(vpc_name):
        out[PEERING_PREFIX + p.peer_vpc] = exported_to_peer(intent, vpc, p, dynamic)
    return out


def exported_to_peer(
    intent: Intent, vpc: Vpc, p: Peering, dynamic: Sequence[DynamicRoute] = ()
) -> JsonObject:
    """A peering side as the peer sees it. A custom route without ``kind`` is static."""
    policy = p.export
    subnets = policy.exported_subnets(s.cidr for s in vpc.subnets)
    custom: list[JsonObject] = [
        {"prefix": str(r.prefix), "priority": r.priority, "next_hop": str(r.next_hop)}
        for r in intent.routes_of(vpc.name)
        if policy.exports_route(r.prefix, is_custom=True)
    ]
    custom += [
        {"prefix": d.prefix, "priority": d.priority, "next_hop": d.next_hop, "kind": "dynamic"}
        for d in dynamic
        if policy.exports_route(ipaddress.ip_network(d.prefix), is_custom=True)
    ]
    return {
        "name": p.name,
        "peer_vpc": p.peer_vpc,
        "policy_id": policy.policy_id,
        "exported_subnets": [str(s) for s in subnets],
        "custom_routes": custom,
        # the peer's on-prem routers must learn these subnets then (docs/routing.md)
        "import_custom_routes": p.import_custom_routes,
        # whose hosts follow which of the peer's streams (?wait=programmed, docs/gateways.md)
        "forwarding": p.forwarding,
    }


@dataclass(frozen=True)
class Status:
    state: str
    details: str
    peer_policy_id: str | None = None  # the peer's export policy toward us, when ACTIVE
    peer_vni: int | None = None

    @property
    def active(self) -> bool:
        return self.state == ACTIVE


def without_hosts(view: View | None) -> dict[str, Any] | None:
    """A view without its host list: all that peering states and publications depend on."""
    if view is None or VPC_OBJ not in view:
        return None if view is None else dict(view)
    vpc = {k: v for k, v in view[VPC_OBJ].items() if k not in ("hosts", "relay_hosts")}
    return {**view, VPC_OBJ: vpc}


MAX_VIEW_HOSTS = 4096


def view_hosts(view: View | None, field: str = "hosts") -> list[str]:
    """The hosts a VPC's federation view says hold its endpoints (or, ``relay_hosts``, the
    gateways relaying for it): names only (anything else a peer shard sends is dropped), at
    most MAX_VIEW_HOSTS, so a bad peer cannot make this shard wait on hosts that do not exist
    without bound."""
    if not view or VPC_OBJ not in view:
        return []
    hosts = view[VPC_OBJ].get(field, [])
    if not isinstance(hosts, list):
        return []
    return [h for h in hosts if isinstance(h, str) and NAME_RE.fullmatch(h)][:MAX_VIEW_HOSTS]


def peer_ranges(view: View | None) -> tuple[Network, ...]:
    if not view or VPC_OBJ not in view:
        return ()
    return tuple(ipaddress.ip_network(c) for c in view[VPC_OBJ]["subnets"])


def status(vpc: Vpc, p: Peering, peer_view: View | None, peer_shard: str | None) -> Status:
    """The state of one side, from the peer VPC's (possibly replicated) federation view."""
    if peer_view is None:
        where = f"shard {peer_shard!r}" if peer_shard else "its shard"
        return Status(INACTIVE, f"waiting for VPC {p.peer_vpc!r} on {where}: not heard from yet")
    if VPC_OBJ not in peer_view:
        return Status(INACTIVE, f"peer VPC {p.peer_vpc!r} does not exist")
    back = peer_view.get(PEERING_PREFIX + vpc.name)
    if back is None:
        return Status(
            INACTIVE, f"peer VPC {p.peer_vpc!r} has not configured a peering to {vpc.name!r}"
        )
    overlaps = find_overlaps([s.cidr for s in vpc.subnets], peer_ranges(peer_view))
    if overlaps:
        ov = overlaps[0]
        return Status(INACTIVE, f"{ov.local} {ov.relation} {ov.peer} of peer VPC {p.peer_vpc!r}")
    return Status(
        ACTIVE,
        f"both sides configured: {vpc.name!r} <-> {p.peer_vpc!r}",
        peer_policy_id=str(back["policy_id"]),
        peer_vni=int(peer_view[VPC_OBJ]["vni"]),
    )


def statuses(
    intent: Intent,
    views: Mapping[str, View],
    owner_of: Mapping[str, str | None],
    previous: Mapping[tuple[str, str], Status] | None = None,
    vpcs: frozenset[str] | None = None,
) -> dict[tuple[str, str], Status]:
    """Every local peering's status. ``views`` holds the federation view of each known VPC.

    With ``previous`` and ``vpcs``, only peerings of or towards those VPCs are re-evaluated;
    the others keep their previous status (a write changes its own VPC's view only).
    """
    out: dict[tuple[str, str], Status] = {}
    for key, p in intent.peerings.items():
        old = previous.get(key) if previous is not None and vpcs is not None else None
        if old is not None and vpcs is not None and p.vpc not in vpcs and p.peer_vpc not in vpcs:
            out[key] = old
            continue
        vpc = intent.vpcs[p.vpc]
        out[key] = status(vpc, p, views.get(p.peer_vpc), owner_of.get(p.peer_vpc))
    return out


def side_toward(
    intent: Intent, views: Mapping[str, View], vpc: str, peer_vpc: str
) -> tuple[str | None, list[str]]:
    """``vpc``'s side toward ``peer_vpc`` as this shard knows it (its intent, or ``vpc``'s
    federation view): the side's ``forwarding`` (None: no such side) and the gateways that
    relay for ``vpc``."""
    if vpc in intent.vpcs:
        side = next((p for p in intent.peerings_of(vpc) if p.peer_vpc == peer_vpc), None)
        return (side.forwarding if side else None), intent.relay_hosts(vpc)
    view = views.get(vpc) or {}
    exported = view.get(PEERING_PREFIX + peer_vpc)
    forwarding = exported.get("forwarding") if isinstance(exported, Mapping) else None
    return (forwarding if isinstance(forwarding, str) else None), view_hosts(view, "relay_hosts")


def exported_subnets(views: Mapping[str, View], vpc: str, peer_vpc: str) -> list[str] | None:
    """The subnets ``vpc`` exports to ``peer_vpc``, from its federation view (None: no view
    or no such side yet)."""
    side = (views.get(vpc) or {}).get(PEERING_PREFIX + peer_vpc)
    subnets = side.get("exported_subnets") if isinstance(side, Mapping) else None
    if not isinstance(subnets, list):
        return None
    out = []
    for s in subnets:
        try:
            out.append(str(ipaddress.ip_network(s)))
        except (TypeError, ValueError):
            continue  # a peer shard's junk: dropped
    return out
