"""Peering multiplexer (FIG. 9): one set of services per unique export policy, not per peer.

``desired_streams`` is the whole publication of a shard as a pure function of its intent and
peering states: every stream id with the full object set it should carry. The publisher diffs
it against what it published and sends deltas. 100 peers sharing 3 policies yield 3 sets.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from meshpeer.controller.bgp import DynamicRoute
from meshpeer.controller.model import (
    Address,
    Endpoint,
    Intent,
    JsonObject,
    Peering,
    Resource,
    gateway,
)
from meshpeer.controller.peering import PEERING_PREFIX, Status, View, view_hosts
from meshpeer.directory import Directory
from meshpeer.protocol import ServiceName
from meshpeer.protocol.gateways import (
    DEFAULT_FORWARDING,
    FORWARDING,
    RELAY_KEY,
    GatewayHop,
    choice,
    relay_object,
    uses_gateways,
)
from meshpeer.protocol.grants import Grant, expiry_bucket, mint
from meshpeer.protocol.messages import PEER_SERVICES, StreamId
from meshpeer.protocol.objects import (
    BackendObject,
    DestinationObject,
    LoadBalancerObject,
    RouteObject,
    SpilloverObject,
    destination_json,
    endpoint_json,
)
from meshpeer.protocol.peering import PeeringObject
from policies.export import ExportPolicy

# Streams a VPC's own hosts read carry no policy: they see everything of their VPC.
OWN = None


@dataclass(frozen=True)
class Publication:
    streams: dict[StreamId, dict[str, JsonObject]]
    # (vpc, policy_id) -> the peerings served by that one service set
    service_sets: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def counts(self) -> JsonObject:
        peerings = sum(len(v) for v in self.service_sets.values())
        return {
            "service_sets": len(self.service_sets),
            "services_published": len(self.service_sets) * len(PEER_SERVICES),
            "active_peerings": peerings,
        }


def active_policies(
    intent: Intent, states: Mapping[tuple[str, str], Status]
) -> dict[tuple[str, str], tuple[ExportPolicy, list[str]]]:
    """(vpc, policy_id) -> (policy, peerings using it), for ACTIVE peerings only."""
    out: dict[tuple[str, str], tuple[ExportPolicy, list[str]]] = {}
    for key, p in sorted(intent.peerings.items()):
        st = states.get(key)
        if st is None or not st.active:
            continue
        entry = out.setdefault((p.vpc, p.export.policy_id), (p.export, []))
        entry[1].append(p.name)
    return out


@dataclass(frozen=True)
class GrantSettings:
    """How peering streams mint grants: shared keys, a lifetime bucket, and the revoked hosts
    (minted nothing)."""

    directory: Directory
    ttl: float = 3600.0
    revoked: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Scope:
    """Which part of the publication to compute: VPC-keyed streams of ``vpcs`` and endpoint
    streams of ``hosts``; None means all. A write touches only its own VPC and hosts, so the
    shard recomputes in proportion to the change, not to everything it holds."""

    vpcs: frozenset[str] | None = None
    hosts: frozenset[str] | None = None

    def has_vpc(self, vpc: str) -> bool:
        return self.vpcs is None or vpc in self.vpcs

    def has_host(self, host: str) -> bool:
        return self.hosts is None or host in self.hosts

    def covers(self, sid: StreamId) -> bool:
        if sid.service == ServiceName.ENDPOINT:
            return self.has_host(sid.key)
        return sid.service != ServiceName.FEDERATION and self.has_vpc(sid.key)


ALL = Scope()


def desired_streams(
    intent: Intent,
    states: Mapping[tuple[str, str], Status],
    grants: GrantSettings,
    now: float,
    scope: Scope = ALL,
    dynamic: Mapping[str, Sequence[DynamicRoute]] | None = None,
) -> Publication:
    """Every stream in ``scope`` with the objects it should carry. ``dynamic``: each VPC's
    routes learned over BGP (``meshpeer.controller.bgp``), soft state of the shard."""
    streams: dict[StreamId, dict[str, JsonObject]] = {}
    learned = dynamic or {}
    for vpc in intent.vpcs:
        if scope.has_vpc(vpc):
            for service in PEER_SERVICES:
                objs = service_objects(intent, service, vpc, None, learned.get(vpc, ()))
                streams[StreamId(service, vpc, OWN)] = objs
    policies = {k: v for k, v in active_policies(intent, states).items() if scope.has_vpc(k[0])}
    for (vpc, pid), (policy, _) in policies.items():
        for service in PEER_SERVICES:
            objs = service_objects(intent, service, vpc, policy, learned.get(vpc, ()))
            streams[StreamId(service, vpc, pid)] = objs
    placed = sorted(intent.placements())
    for host in sorted({h for _, h in placed} | set(intent.hosts)):
        if scope.has_host(host):
            streams[StreamId(ServiceName.ENDPOINT, host)] = endpoint_objects(intent, host)
            streams[StreamId(ServiceName.ENDPOINT, host)].update(relay_objects(intent, host))
    hops = gateway_hops(intent)
    for vpc, host in placed:
        if scope.has_vpc(vpc):
            sid = StreamId(ServiceName.PEERING, vpc, None, host)
            streams[sid] = peering_objects(intent, states, grants, vpc, host, now, hops)
    for vpc in intent.vpcs:  # a gateway relaying for vpc: its sides through the gateways
        for host in intent.relay_hosts(vpc) if scope.has_vpc(vpc) else ():
            objs = peering_objects(intent, states, grants, vpc, host, now, hops, relayed=True)
            streams[StreamId(ServiceName.PEERING, vpc, None, host)] = objs
    sets = {k: names for k, (_, names) in policies.items()}
    return Publication(streams, sets)


def service_objects(
    intent: Intent,
    service: ServiceName,
    vpc: str,
    policy: ExportPolicy | None,
    dynamic: Sequence[DynamicRoute] = (),
) -> dict[str, JsonObject]:
    if service == ServiceName.DESTINATION:
        return destinations(intent, vpc, policy)
    if service == ServiceName.FORWARDING:
        return forwarding(intent, vpc, policy, dynamic)
    return load_balancers(intent, vpc, policy)


def _visible(e: Endpoint, policy: ExportPolicy | None) -> bool:
    return policy is None or policy.exports_ip(e.ip)


def destination_object(intent: Intent, e: Endpoint) -> DestinationObject:
    """Where endpoint ``e`` lives, as its VPC's destination stream says."""
    return DestinationObject(*_placement(intent, e))


def destination(intent: Intent, e: Endpoint) -> JsonObject:
    """``destination_object(intent, e).to_json()``, without the object (``destination_json``)."""
    return destination_json(*_placement(intent, e))


def _placement(
    intent: Intent, e: Endpoint
) -> tuple[Address, str, int, Address | None, str, str | None]:
    host = intent.hosts.get(e.host) if e.host else None
    host_ip = host.underlay_ip if host else None
    return e.ip, e.mac, intent.vpcs[e.vpc].vni, host_ip, e.kind, e.host


def destinations(intent: Intent, vpc: str, policy: ExportPolicy | None) -> dict[str, JsonObject]:
    """Endpoint name -> IP, MAC, VNI, host underlay IP: only what the policy exports."""
    return {
        e.name: destination(intent, e)
        for e in intent.endpoints_of(vpc)
        if e.kind != "ilb" and _visible(e, policy)
    }


def forwarding(
    intent: Intent,
    vpc_name: str,
    policy: ExportPolicy | None,
    dynamic: Sequence[DynamicRoute] = (),
) -> dict[str, JsonObject]:
    """Subnet routes (clipped to the policy) and custom routes, static and ``dynamic`` (learned
    over BGP), only if it exports them."""
    vpc = intent.vpcs[vpc_name]
    out: dict[str, JsonObject] = {}
    for s in vpc.subnets:
        parts = [s.cidr] if policy is None else policy.exported_subnets([s.cidr])
        for part in parts:
            out[f"subnet:{part}"] = RouteObject(part, "subnet", vpc.vni, gateway(s.cidr)).to_json()
    by_ip = {e.ip: e for e in intent.endpoints_of(vpc_name)}
    for r in intent.routes_of(vpc_name):
        if policy is not None and not policy.exports_route(r.prefix, is_custom=True):
            continue
        hop = by_ip.get(r.next_hop)
        next_hop = destination_object(intent, hop) if hop else None
        route = RouteObject(r.prefix, "static", vpc.vni, None, r.priority, next_hop)
        out[f"static:{r.name}"] = route.to_json()
    for d in dynamic:
        net = ipaddress.ip_network(d.prefix)
        if policy is not None and not policy.exports_route(net, is_custom=True):
            continue
        via = intent.endpoints.get((vpc_name, d.endpoint))
        next_hop = destination_object(intent, via) if via else None
        out[d.name] = RouteObject(net, "dynamic", vpc.vni, None, d.priority, next_hop).to_json()
    return out


def load_balancers(intent: Intent, vpc: str, policy: ExportPolicy | None) -> dict[str, JsonObject]:
    """VIP -> weighted backends, for every ILB whose VIP the policy exports. Spillover
    backends: in full on the own stream only; a policy's stream (shared by every peer under
    that policy) names those in a VPC peered under it, and nothing else (docs/protocol.md)."""
    out: dict[str, JsonObject] = {}
    named: set[str] | None = None  # the VPCs peered under ``policy``
    for e in intent.endpoints_of(vpc):
        if e.kind != "ilb" or not _visible(e, policy):
            continue
        backends = tuple(
            BackendObject(b.endpoint, b.weight, destination_object(intent, be))
            for b in e.backends
            if (be := intent.endpoints.get((vpc, b.endpoint))) is not None
        )
        spillover = _spillover(intent, e) if e.spillover else ()
        if policy is not None and spillover:
            if named is None:
                named = {
                    p.peer_vpc
                    for p in intent.peerings_of(vpc)
                    if p.export.policy_id == policy.policy_id
                }
            spillover = tuple(s.named() for s in spillover if s.vpc in named)
        lb = LoadBalancerObject(e.ip, e.mac, intent.vpcs[vpc].vni, backends, spillover)
        out[e.name] = lb.to_json()
    return out


def _spillover(intent: Intent, ilb: Endpoint) -> tuple[SpilloverObject, ...]:
    """An ILB's spillover backends that their VPC exports to the ILB's, in a VPC the ILB's
    exports the VIP to (its hosts learn the VIP from it: without, they would drop the share
    sent there). ACTIVE or not: the hosts use a backend only in a peer they follow."""
    out = []
    for s in ilb.spillover:
        be = intent.endpoints.get((s.vpc, s.endpoint))
        side = next((p for p in intent.peerings_of(s.vpc) if p.peer_vpc == ilb.vpc), None)
        back = next((p for p in intent.peerings_of(ilb.vpc) if p.peer_vpc == s.vpc), None)
        if be is None or side is None or back is None or side.inbound == "replies":
            continue  # a side that lets in only replies takes no new connection from the ILB's
        if _visible(be, side.export) and _visible(ilb, back.export):
            out.append(SpilloverObject(s.vpc, s.endpoint, s.weight, destination_object(intent, be)))
    return tuple(out)


def endpoint_objects(intent: Intent, host: str) -> dict[str, JsonObject]:
    """Endpoint meta-service: what this shard has on one host, with what the port needs."""
    return {endpoint_id(e): endpoint_object(intent, e) for e in intent.endpoints_on(host)}


def relay_objects(intent: Intent, host: str) -> dict[str, JsonObject]:
    """A gateway host's part of its endpoint stream: one object per VPC it relays for
    (``Intent.relay_hosts``), so that its OHC follows that VPC's peering stream
    (docs/gateways.md)."""
    h = intent.hosts.get(host)
    if h is None or h.role != "gateway":
        return {}
    return {
        RELAY_KEY + vpc: relay_object(vpc)
        for vpc in sorted(intent.vpcs)
        if host in intent.relay_hosts(vpc)
    }


def endpoint_id(e: Endpoint) -> str:
    return f"{e.vpc}.{e.name}"


def endpoint_object(intent: Intent, e: Endpoint) -> JsonObject:
    vpc = intent.vpcs[e.vpc]
    subnet = vpc.subnet_for(e.ip)
    prefix = subnet.cidr if subnet else None
    gw = gateway(prefix) if prefix else None
    return endpoint_json(e.vpc, e.name, e.ip, e.mac, vpc.vni, prefix, gw, e.kind)


def peering_objects(
    intent: Intent,
    states: Mapping[tuple[str, str], Status],
    grants: GrantSettings,
    vpc: str,
    host: str,
    now: float,
    gateways: tuple[GatewayHop, ...] = (),
    relayed: bool = False,
) -> dict[str, JsonObject]:
    """Peering service for one host: which peers to follow, where, a grant to do so, and what
    the local side imports (``meshpeer.protocol.peering.PeeringObject``, the OHC's parser too),
    with the gateway hosts (``gateway_hops``) a side with forwarding gateway sends through.
    ``relayed``: for a gateway host, only the sides that send through the gateways.

    Expiry is rounded to whole ``ttl`` buckets (valid for at least one ttl), so the stream
    changes once per bucket rather than at every recomputation.
    """
    d = grants.directory
    expires = expiry_bucket(now, grants.ttl)
    out: dict[str, JsonObject] = {}
    if host in grants.revoked:
        return out
    for p in intent.peerings_of(vpc):
        st = states.get((vpc, p.name))
        url = d.url_of(p.peer_vpc)
        if st is None or not st.active or st.peer_policy_id is None or st.peer_vni is None:
            continue
        if relayed and not uses_gateways(p.forwarding):
            continue
        grant = Grant(vpc, p.peer_vpc, st.peer_policy_id, host, expires, d.signing_key_id)
        out[p.peer_vpc] = PeeringObject(
            peering=p.name,
            peer_vpc=p.peer_vpc,
            peer_vni=st.peer_vni,
            policy_id=st.peer_policy_id,
            controller=url,
            grant=mint(grant, d.grant_keys),
            expires_at=expires,
            import_custom_routes=p.import_custom_routes,
            inbound=p.inbound,
            preference=p.preference,
            forwarding=p.forwarding,
            gateways=gateways,
        ).to_json()
    return out


def gateway_hops(intent: Intent) -> tuple[GatewayHop, ...]:
    """The registered gateway hosts (docs/gateways.md), sorted. Liveness is, for now, the
    registration itself; an IPv6 underlay cannot carry the tunnel (tun_ipv4_dst)."""
    return tuple(
        sorted(
            GatewayHop(h.name, str(h.underlay_ip))
            for h in intent.hosts.values()
            if h.role == "gateway" and h.underlay_ip.version == 4
        )
    )


def must_apply(
    intent: Intent,
    states: Mapping[tuple[str, str], Status],
    views: Mapping[str, View],
    written: Resource,
    deleted: bool,
) -> dict[StreamId, frozenset[str]]:
    """Hosts that must hold a stream's current version before a write is programmed, whether
    or not they follow the stream yet (``?wait=programmed``; subscribers of a stream the write
    changed must apply it too). ``written`` is the resource put, or the one deleted.

    - An endpoint: its host, through its endpoint stream, even before the host ever
      registered; for a delete, only a registered host (one that never was has nothing to
      remove).
    - A peering: every host of the VPC, through its peering stream (an OHC reports that only
      once the peer's services listed there have arrived, so "applied" means the peer's
      destinations are on the switch). If the peering is ACTIVE, also every host of the peer
      VPC, through the VPC's services under its export policy: the way back. Those hosts come
      from this shard's intent, or from the peer VPC's federation view.
    """
    if isinstance(written, Endpoint):
        host = written.host
        if host and (not deleted or host in intent.hosts):
            return {StreamId(ServiceName.ENDPOINT, host): frozenset({host})}
        return {}
    if not isinstance(written, Peering):
        return {}
    p = written
    out = {
        StreamId(ServiceName.PEERING, p.vpc, OWN, h): frozenset({h}) for h in intent.hosts_of(p.vpc)
    }
    st = states.get((p.vpc, p.name))
    if not deleted and st is not None and st.active:
        hypervisors, relays, via = _peer_side(intent, views, p)
        for service in PEER_SERVICES:
            # the peer's side through the gateways: its gateways hold our destinations, its
            # hypervisors the rest (docs/gateways.md)
            hosts = relays if via and service == ServiceName.DESTINATION else hypervisors
            out[StreamId(service, p.vpc, p.export.policy_id)] = frozenset(hosts)
    return out


def _peer_side(
    intent: Intent, views: Mapping[str, View], p: Peering
) -> tuple[list[str], list[str], bool]:
    """The peer VPC's hypervisors and relaying gateways, and whether its side toward
    ``p.vpc`` sends through the gateways: from this shard's intent, or the peer's view."""
    if p.peer_vpc in intent.vpcs:
        back = next((q for q in intent.peerings_of(p.peer_vpc) if q.peer_vpc == p.vpc), None)
        relays = intent.relay_hosts(p.peer_vpc)
        return (
            intent.hosts_of(p.peer_vpc),
            relays,
            back is not None and uses_gateways(back.forwarding),
        )
    view = views.get(p.peer_vpc)
    relays = view_hosts(view, "relay_hosts")
    hypervisors = [h for h in view_hosts(view) if h not in relays]
    side = (view or {}).get(PEERING_PREFIX + p.vpc) or {}
    forwarding = choice(side.get("forwarding", DEFAULT_FORWARDING), FORWARDING)
    return hypervisors, relays, forwarding is not None and uses_gateways(forwarding)
