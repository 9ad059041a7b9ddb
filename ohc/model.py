"""The flow compiler's input: what one host knows, as frozen, validated values.

Everything here is built from the JSON objects the OHC receives on its subscriptions (the
shapes written by ``meshpeer/controller/mux.py``): the endpoint meta-service for this host,
each local VPC's own destination/forwarding/load-balancer services, its peering service, and
the peer VPCs' services under the peer's export policy. A subscription is untrusted input (a
peer controller is another administrative domain): an object with a bad IP, MAC, VNI or
shape is skipped and reported as a ``Skipped``; the rest of the view is still built. Each
object is parsed by the type its writer uses (``meshpeer/protocol/objects.py``, and
``PeeringObject`` for the peering service, which the agent parses once as each arrives:
``ohc.subscriptions.parsed``); what it means to this host is decided here.

Beyond shape, ``HostView.from_service_objects`` checks what a peer may claim: a peer's objects
must carry the peer's VNI (from our own controller's peering object), and a peer VNI may not
be the VNI of another local VPC. Otherwise a peer could make this host send (or accept)
packets on a VNI the peering never granted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshpeer.protocol.gateways import DEFAULT_FORWARDING, Forwarding, GatewayHop, uses_gateways
from meshpeer.protocol.messages import ProtocolError

# the field parsers' names, as the compiler, the engine and the tests take them from here
from meshpeer.protocol.objects import Address as Address
from meshpeer.protocol.objects import BadObject as BadObject
from meshpeer.protocol.objects import (
    DestinationObject,
    EndpointObject,
    LoadBalancerObject,
    RouteKind,
    RouteObject,
    destination_fields,
    parse_int,
    parse_underlay_ip,
)
from meshpeer.protocol.objects import Network as Network
from meshpeer.protocol.objects import TextIPv4 as TextIPv4
from meshpeer.protocol.objects import parse_ip as parse_ip
from meshpeer.protocol.objects import parse_mac as parse_mac
from meshpeer.protocol.peering import Inbound
from ohc.flows import OFPP_ANY
from ohc.pipeline import MAX_PORT, TUNNEL_PORT
from ohc.subscriptions import HeldPeering, peering_of
from policies.routes import DEFAULT_PREFERENCE

JsonObject = Mapping[str, Any]
ServiceObjects = Mapping[str, JsonObject]  # object key -> object, as a stream holds them
# (VPC, export policy or None for its own services, VNI) -> ip_keys of destinations kept apart
NOWHERE = "null: not placed on a host"
TakenIps = Callable[[str, str | None, int], Container[tuple[int, int]]]


@dataclass(frozen=True, order=True)
class Skipped:
    """One object left out of a HostView, and why (for the OHC's log and status)."""

    service: str
    key: str
    reason: str


def ip_key(ip: Address) -> tuple[int, int]:
    """Sort key for mixed IPv4/IPv6 addresses."""
    return ip.version, int(ip)


# --- values ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalPort:
    """An endpoint of this host, attached to ``br-int`` at ``ofport``."""

    vpc: str
    name: str
    ip: Address
    mac: str
    vni: int
    ofport: int
    prefix: Network | None
    gateway: Address | None

    @staticmethod
    def from_service_objects(obj: EndpointObject, ofport: object) -> LocalPort:
        """From one endpoint meta-service object and the ofport OVS gave its interface."""
        port = parse_int(ofport, "ofport", 1, MAX_PORT)
        return LocalPort(obj.vpc, obj.name, obj.ip, obj.mac, obj.vni, port, obj.prefix, obj.gateway)


@dataclass(frozen=True, slots=True)
class Destination:
    """Where an address of a VPC lives: its MAC, its VPC's VNI and its host's underlay IP."""

    vpc: str
    name: str
    ip: Address
    mac: str
    vni: int
    host_ip: ipaddress.IPv4Address

    @staticmethod
    def from_service_objects(
        vpc: str, name: str, obj: JsonObject, hosts: dict[str, ipaddress.IPv4Address] | None = None
    ) -> Destination:
        """From a destination-service object, as ``DestinationObject.parse`` reads it (its
        fields only: ``destination_fields``); ``hosts``: shared underlay addresses."""
        ip, mac, vni, host_ip = destination_fields(obj, hosts)
        if host_ip is None:
            raise BadObject("host_ip", NOWHERE)
        return Destination(vpc, name, ip, mac, vni, host_ip)

    @staticmethod
    def placed(vpc: str, name: str, d: DestinationObject) -> Destination:
        """A destination (a route's next hop or an ILB backend), if on a host."""
        if not isinstance(d.host_ip, ipaddress.IPv4Address):  # parsed: None or IPv4
            raise BadObject("host_ip", NOWHERE)
        return Destination(vpc, name, d.ip, d.mac, d.vni, d.host_ip)


@dataclass(frozen=True)
class RouteEntry:
    """A subnet route (``next_hop`` None) or a static route via an endpoint of the VPC."""

    vpc: str
    prefix: Network
    kind: RouteKind
    next_hop: Destination | None
    priority: int
    name: str = ""
    gateway: Address | None = None  # subnet routes: the subnet's gateway address

    @staticmethod
    def from_service_objects(vpc: str, key: str, r: RouteObject) -> RouteEntry:
        """From a forwarding-service object; a static route's next hop may be null (unusable)."""
        if r.kind == "subnet":
            return RouteEntry(vpc, r.prefix, "subnet", None, 0, key, r.gateway)
        next_hop = None
        if r.next_hop is not None:
            try:
                next_hop = Destination.placed(vpc, f"{key}:next_hop", r.next_hop)
            except BadObject as e:
                raise BadObject(f"next_hop.{e.field}", e.detail) from None
        return RouteEntry(vpc, r.prefix, r.kind, next_hop, r.priority, key)


@dataclass(frozen=True)
class LoadBalancer:
    """An internal load balancer: a VIP spread over weighted backends (healthy, weight > 0),
    and the backends in peered VPCs that take a share of its new connections when the local
    ones are overloaded (``spillover``, each with its own VPC's VNI: docs/gateways.md)."""

    vpc: str
    name: str
    vip: Address
    mac: str
    vni: int
    backends: tuple[tuple[Destination, int], ...]
    spillover: tuple[tuple[Destination, int], ...] = ()  # the own stream's full entries
    # (VPC, endpoint) of every healthy spillover backend, full or named only (a peer stream
    # names them: the hosts of that VPC find their own port by its name)
    spill_names: tuple[tuple[str, str], ...] = ()

    @staticmethod
    def from_service_objects(
        vpc: str, name: str, obj: JsonObject, skipped: list[Skipped] | None = None
    ) -> LoadBalancer:
        """From a load-balancer object; a bad backend is left out (and reported)."""

        def bad(place: str, e: BadObject) -> None:
            if skipped is not None:
                skipped.append(Skipped("loadbalancer", f"{vpc}/{name}/{place}", str(e)))

        lb = LoadBalancerObject.parse(obj, bad)
        backends = tuple(
            (Destination.placed(vpc, b.endpoint, b.destination), b.weight)
            for b in sorted(lb.backends, key=lambda b: b.endpoint)
            if b.healthy and b.weight
        )
        spillover, names = [], []
        for s in lb.spillover:
            if s.vpc == vpc:
                problem = BadObject("vpc", f"a spillover backend is in a peer VPC, not in {vpc}")
                bad(f"spillover:{s.vpc}/{s.endpoint}", problem)
            elif s.healthy and s.weight:
                names.append((s.vpc, s.endpoint))
                if s.destination is not None:
                    dest = Destination.placed(s.vpc, s.endpoint, s.destination)
                    spillover.append((dest, s.weight))
        spillover.sort(key=lambda d: (d[0].vpc, d[0].name))
        return LoadBalancer(
            vpc, name, lb.vip, lb.mac, lb.vni, backends, tuple(spillover), tuple(sorted(names))
        )


@dataclass(frozen=True)
class StreamObjects:
    """The objects of one VPC's destination, forwarding and load-balancer streams (raw JSON)."""

    destinations: ServiceObjects = field(default_factory=dict)
    forwarding: ServiceObjects = field(default_factory=dict)
    load_balancers: ServiceObjects = field(default_factory=dict)


@dataclass(frozen=True)
class VpcServices:
    """What one VPC's service set said (all of it for an own VPC; the exported part for a peer)."""

    vpc: str
    vni: int
    destinations: tuple[Destination, ...] = ()
    routes: tuple[RouteEntry, ...] = ()
    load_balancers: tuple[LoadBalancer, ...] = ()

    @staticmethod
    def from_service_objects(
        vpc: str,
        vni: int,
        objects: StreamObjects,
        skipped: list[Skipped],
        taken: Container[tuple[int, int]] = (),
    ) -> VpcServices:
        """Validate every object; objects not carrying ``vni`` are skipped (a VPC has one VNI).

        ``taken``: the ``ip_key`` of valid destinations kept elsewhere (``ohc.engine`` passes
        no destinations here and keeps them itself); a VIP may not be one of them either.
        """
        dests: dict[tuple[int, int], Destination] = {}  # by ip_key: cheaper than ipaddress hashes
        for key in sorted(objects.destinations):
            try:
                d = Destination.from_service_objects(vpc, key, objects.destinations[key])
                same_vni(d.vni, vni)
                k = ip_key(d.ip)
                if k in dests:
                    raise BadObject("ip", f"{d.ip} already belongs to {dests[k].name}")
                dests[k] = d
            except BadObject as e:
                skipped.append(Skipped("destination", f"{vpc}/{key}", str(e)))
        routes: list[RouteEntry] = []
        for key in sorted(objects.forwarding):
            try:
                route = RouteObject.parse(objects.forwarding[key])
                same_vni(route.vni, vni)
                r = RouteEntry.from_service_objects(vpc, key, route)
                if r.next_hop is not None:
                    same_vni(r.next_hop.vni, vni)
                routes.append(r)
            except BadObject as e:
                skipped.append(Skipped("forwarding", f"{vpc}/{key}", str(e)))
        lbs: dict[Address, LoadBalancer] = {}
        for key in sorted(objects.load_balancers):
            try:
                lb = LoadBalancer.from_service_objects(
                    vpc, key, objects.load_balancers[key], skipped
                )
                same_vni(lb.vni, vni)
                if ip_key(lb.vip) in dests or ip_key(lb.vip) in taken or lb.vip in lbs:
                    raise BadObject("vip", f"{lb.vip} is already in use")
                lbs[lb.vip] = lb
            except BadObject as e:
                skipped.append(Skipped("loadbalancer", f"{vpc}/{key}", str(e)))
        return VpcServices(
            vpc,
            vni,
            tuple(d for _, d in sorted(dests.items(), key=lambda kd: kd[0])),
            tuple(sorted(routes, key=lambda r: (r.prefix.version, str(r.prefix), r.name))),
            tuple(sorted(lbs.values(), key=lambda lb: ip_key(lb.vip))),
        )


@dataclass(frozen=True)
class PeerView:
    """A peer VPC this host follows for local VPC ``vpc``, and what the peer exports to it."""

    vpc: str
    peer_vpc: str
    peer_vni: int
    policy_id: str
    services: VpcServices
    import_custom_routes: bool = False  # the local peering's flag (policies.routes rule 0)
    inbound: Inbound = "all"  # the local side's: "replies" lets in only answers (conntrack)
    preference: int = DEFAULT_PREFERENCE  # the local side's (policies.routes rule 3)
    forwarding: Forwarding = DEFAULT_FORWARDING  # the local side's (docs/gateways.md)
    gateways: tuple[GatewayHop, ...] = ()  # the live gateway hosts, as the shard lists them
    # on-demand: the peer's addresses this host sends to directly (ohc/offload.py decides)
    offloaded: frozenset[Address] = frozenset()
    offload_idle_s: int = 10  # on-demand: a learned pair's idle timeout ([ohc] offload_idle_s)

    @property
    def via_gateways(self) -> bool:
        """Does this host send to the peer through the gateways (no per-endpoint flows)?"""
        return uses_gateways(self.forwarding)

    @property
    def on_demand(self) -> bool:
        return self.forwarding == "on-demand"


@dataclass(frozen=True)
class Offload:
    """What the host's own traffic decided. On-demand sides: what goes directly, per (local
    VPC, peer VPC), the peer's addresses (``ohc.offload`` decides them), and the idle timeout
    of the switch's pair counters. ILBs with spillover backends: the share (percent) of new
    connections each sends to them, by the ILB's cookie (``ohc.spillover`` decides it), and
    the idle timeout of the switch's connection-affinity flows."""

    pairs: Mapping[tuple[str, str], frozenset[Address]] = field(default_factory=dict)
    idle_s: int = 10
    spill: Mapping[int, int] = field(default_factory=dict)
    affinity_s: int = 60


@dataclass(frozen=True)
class HostView:
    """Everything the compiler needs about one host, sorted so that equal views compare equal."""

    local_underlay_ip: ipaddress.IPv4Address
    local_ports: tuple[LocalPort, ...] = ()
    own: tuple[VpcServices, ...] = ()  # one per local VPC
    peers: tuple[PeerView, ...] = ()  # one per (local VPC, ACTIVE peer VPC)
    # The flow-based Geneve port's ofport, as OVSDB says (ohc/ports.py); None: br-int has none,
    # so remote destinations are unreachable from here. TUNNEL_PORT for views without a switch.
    tunnel_port: int | None = TUNNEL_PORT
    # A gateway host's: the destination sets it forwards to (docs/gateways.md), each with
    # its VPC's VNI; a hypervisor has none.
    relays: tuple[VpcServices, ...] = ()
    # A hypervisor's BFD ports toward the gateways, (gateway underlay IP, ofport), sorted
    # (ohc/ports.py): the select group's bucket for a gateway watches its port, so OVS drops
    # a gateway whose BFD session is down from the group by itself (docs/gateways.md).
    bfd_ports: tuple[tuple[str, int], ...] = ()
    # ILBs with spillover backends (ohc/spillover.py): (ILB cookie, share in percent) of
    # those that send a share to them now, sorted; the affinity flows' idle timeout
    spill: tuple[tuple[int, int], ...] = ()
    affinity_s: int = 60

    def spill_share(self, lb_cookie: int) -> int:
        """The percentage of the ILB's new connections that goes to its spillover backends."""
        return next((share for c, share in self.spill if c == lb_cookie), 0)

    def watch_port(self, gateway_ip: str) -> int:
        """The port a bucket toward ``gateway_ip`` watches; OFPP_ANY (always live) while the
        gateway has no BFD port yet."""
        return next((port for ip, port in self.bfd_ports if ip == gateway_ip), OFPP_ANY)

    def vpc_vni(self) -> dict[str, int]:
        return {p.vpc: p.vni for p in self.local_ports}

    def own_of(self, vpc: str) -> VpcServices | None:
        return next((s for s in self.own if s.vpc == vpc), None)

    def peers_of(self, vpc: str) -> tuple[PeerView, ...]:
        return tuple(p for p in self.peers if p.vpc == vpc)

    @staticmethod
    def from_service_objects(
        local_underlay_ip: str,
        endpoints: ServiceObjects,
        ofports: Mapping[tuple[str, str], int],
        own: Mapping[str, StreamObjects],
        peerings: Mapping[str, Mapping[str, HeldPeering]],
        peer_services: Mapping[tuple[str, str], StreamObjects],
        tunnel_port: int | None = TUNNEL_PORT,
        taken: TakenIps | None = None,
    ) -> tuple[HostView, tuple[Skipped, ...]]:
        """Build the view of one host.

        ``endpoints``: the endpoint meta-service objects for this host (all shards merged);
        ``ofports``: (vpc, endpoint name) -> ofport, as learned from OVS (endpoints without one
        are not attached yet and are left out; any ofport but the tunnel's, ``tunnel_port``,
        also read from OVS: ``ohc/ports.py``); ``own``: local VPC -> its own streams;
        ``peerings``: local VPC -> its peering-service objects; ``peer_services``:
        (peer VPC, policy id) -> the peer's streams under that policy (one subscription serves
        every local VPC the peer exports to under the same policy); ``taken``: (VPC, policy or None, VNI) -> the addresses of destinations
        the caller keeps apart from the view (``VpcServices.from_service_objects``).
        """
        skipped: list[Skipped] = []
        ports = _local_ports(endpoints, ofports, tunnel_port, skipped)
        vni_of = {p.vpc: p.vni for p in ports}
        owners = {vni: vpc for vpc, vni in vni_of.items()}
        owns = tuple(
            VpcServices.from_service_objects(
                vpc,
                vni,
                own.get(vpc, StreamObjects()),
                skipped,
                () if taken is None else taken(vpc, None, vni),
            )
            for vpc, vni in sorted(vni_of.items())
        )
        peers: list[PeerView] = []
        for vpc in sorted(vni_of):
            objs = peerings.get(vpc, {})
            for key in sorted(objs):
                try:
                    po = peering_of(objs[key])
                    peer_vpc, peer_vni = po.peer_vpc, po.peer_vni
                    if peer_vpc == vpc:
                        raise BadObject("peer_vpc", "a VPC cannot peer with itself")
                    if owners.get(peer_vni, peer_vpc) != peer_vpc:
                        raise BadObject(
                            "peer_vni", f"{peer_vni} belongs to local VPC {owners[peer_vni]}"
                        )
                    if peer_vpc in vni_of and vni_of[peer_vpc] != peer_vni:
                        raise BadObject(
                            "peer_vni", f"{peer_vni} is not {peer_vpc}'s VNI {vni_of[peer_vpc]}"
                        )
                    if any(p.vpc == vpc and p.peer_vpc == peer_vpc for p in peers):
                        raise BadObject("peer_vpc", f"{vpc} already follows {peer_vpc}")
                except ProtocolError as e:
                    skipped.append(Skipped("peering", f"{vpc}/{key}", str(e)))
                    continue
                streams = peer_services.get((peer_vpc, po.policy_id), StreamObjects())
                services = VpcServices.from_service_objects(
                    peer_vpc,
                    peer_vni,
                    streams,
                    skipped,
                    () if taken is None else taken(peer_vpc, po.policy_id, peer_vni),
                )
                peers.append(
                    PeerView(
                        vpc,
                        peer_vpc,
                        peer_vni,
                        po.policy_id,
                        services,
                        po.import_custom_routes,
                        po.inbound,
                        po.preference,
                        po.forwarding,
                        po.gateways,
                    )
                )
        view = HostView(
            parse_underlay_ip(local_underlay_ip, "local_underlay_ip"),
            ports,
            owns,
            tuple(peers),
            tunnel_port,
        )
        return view, tuple(sorted(set(skipped)))


def gateway_ips(view: HostView) -> frozenset[str]:
    """The gateways a hypervisor sends some peer through: the BFD ports it needs."""
    return frozenset(
        hop.underlay_ip for peer in view.peers if peer.via_gateways for hop in peer.gateways
    )


def same_vni(got: int, want: int) -> None:
    """An object of a VPC's stream carries the VPC's VNI (a peer's: the peering's)."""
    if got != want:
        raise BadObject("vni", f"{got} is not the VPC's VNI {want}")


def _local_ports(
    endpoints: ServiceObjects,
    ofports: Mapping[tuple[str, str], int],
    tunnel_port: int | None,
    skipped: list[Skipped],
) -> tuple[LocalPort, ...]:
    """Valid, attached local ports; a VPC's VNI is that of its first port (by name)."""
    ports: list[LocalPort] = []
    vni_of: dict[str, int] = {}
    used_ports: set[int] = set()
    used_ips: set[tuple[str, Address]] = set()
    for key in sorted(endpoints):
        try:
            obj = EndpointObject.parse(endpoints[key])
            ofport = ofports.get((obj.vpc, obj.name))
            if ofport is None:
                raise BadObject("ofport", "no OpenFlow port yet (interface not attached)")
            p = LocalPort.from_service_objects(obj, ofport)
            if p.ofport == tunnel_port:
                raise BadObject("ofport", f"ofport {p.ofport} is the tunnel port's")
            if vni_of.get(p.vpc, p.vni) != p.vni:
                raise BadObject("vni", f"{p.vni} differs from {p.vpc}'s VNI {vni_of[p.vpc]}")
            if any(v == p.vni and k != p.vpc for k, v in vni_of.items()):
                raise BadObject("vni", f"{p.vni} is another local VPC's")
            if p.ofport in used_ports or (p.vpc, p.ip) in used_ips:
                raise BadObject("ofport", f"{p.ofport} or ip {p.ip} already in use on this host")
        except BadObject as e:
            skipped.append(Skipped("endpoint", key, str(e)))
            continue
        vni_of.setdefault(p.vpc, p.vni)
        used_ports.add(p.ofport)
        used_ips.add((p.vpc, p.ip))
        ports.append(p)
    return tuple(sorted(ports, key=lambda p: (p.vpc, p.name)))


def relay_sides(
    peerings: Mapping[str, Mapping[str, HeldPeering]], skipped: list[Skipped]
) -> dict[tuple[str, str], int]:
    """(peer VPC, export policy) -> the peer's VNI of each peering side that sends through
    the gateways, sorted (the order a gateway relays in); a peering object that does not
    parse goes into ``skipped``."""
    sides: dict[tuple[str, str], int] = {}
    for vpc in sorted(peerings):
        for key in sorted(peerings[vpc]):
            try:
                po = peering_of(peerings[vpc][key])
            except ProtocolError as e:
                skipped.append(Skipped("peering", f"{vpc}/{key}", str(e)))
                continue
            if uses_gateways(po.forwarding):
                sides.setdefault((po.peer_vpc, po.policy_id), po.peer_vni)
    return dict(sorted(sides.items()))


def relay_view(
    local_underlay_ip: str,
    peerings: Mapping[str, Mapping[str, HeldPeering]],
    peer_services: Mapping[tuple[str, str], StreamObjects],
    tunnel_port: int | None = TUNNEL_PORT,
) -> tuple[HostView, tuple[Skipped, ...]]:
    """The view of a gateway host (docs/gateways.md): no ports and no VPC of its own; per
    peering side that sends through the gateways (``peerings``: VPC -> the objects of its
    peering stream for this gateway), the peer's destinations under the side's policy
    (``peer_services``, keyed as in ``HostView.from_service_objects``), with the peer's VNI."""
    skipped: list[Skipped] = []
    relays: dict[tuple[str, str], VpcServices] = {}
    for (peer_vpc, policy), vni in relay_sides(peerings, skipped).items():
        streams = peer_services.get((peer_vpc, policy), StreamObjects())
        relays[peer_vpc, policy] = VpcServices.from_service_objects(peer_vpc, vni, streams, skipped)
    view = HostView(
        parse_underlay_ip(local_underlay_ip, "local_underlay_ip"),
        tunnel_port=tunnel_port,
        relays=tuple(relays[k] for k in sorted(relays)),
    )
    return view, tuple(sorted(set(skipped)))
