"""The flow compiler's input: what one host knows, as frozen, validated values.

Everything here is built from the JSON objects the OHC receives on its subscriptions (the
shapes written by ``meshpeer/controller/mux.py``): the endpoint meta-service for this host,
each local VPC's own destination/forwarding/load-balancer services, its peering service, and
the peer VPCs' services under the peer's export policy. A subscription is untrusted input (a
peer controller is another administrative domain): an object with a bad IP, MAC, VNI or
shape is skipped and reported as a ``Skipped``; the rest of the view is still built. Peering
objects are parsed by the type their writer uses (``meshpeer.protocol.peering.PeeringObject``).

Beyond shape, ``HostView.from_service_objects`` checks what a peer may claim: a peer's objects
must carry the peer's VNI (from our own controller's peering object), and a peer VNI may not
be the VNI of another local VPC. Otherwise a peer could make this host send (or accept)
packets on a VNI the peering never granted.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from meshpeer.protocol.gateways import DEFAULT_FORWARDING, Forwarding, GatewayHop, uses_gateways
from meshpeer.protocol.messages import ProtocolError
from meshpeer.protocol.peering import MAX_VNI, Inbound, PeeringObject
from ohc.flows import OFPP_ANY
from ohc.pipeline import MAX_PORT, TUNNEL_PORT
from policies.routes import DEFAULT_PREFERENCE

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_SHARED_HOSTS = 4096  # underlay addresses one DestIndex shares among its destinations
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
JsonObject = Mapping[str, Any]
ServiceObjects = Mapping[str, JsonObject]  # object key -> object, as a stream holds them
# (VPC, export policy or None for its own services, VNI) -> ip_keys of destinations kept apart
TakenIps = Callable[[str, str | None, int], Container[tuple[int, int]]]
RouteKind = Literal["subnet", "static", "dynamic"]

MAX_WEIGHT = 0xFFFF  # OpenFlow bucket weight is 16 bits
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class BadObject(ValueError):
    """A subscription object that cannot be used; the message says why."""


@dataclass(frozen=True, order=True)
class Skipped:
    """One object left out of a HostView, and why (for the OHC's log and status)."""

    service: str
    key: str
    reason: str


# --- field validation ---------------------------------------------------------------------


def _str(obj: JsonObject, name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not value:
        raise BadObject(f"{name}: expected a non-empty string, got {value!r}")
    return value


class TextIPv4(ipaddress.IPv4Address):
    """An IPv4 address that keeps the canonical text it was parsed from.

    Each destination's addresses are rendered into its flows' matches and actions; at 50k
    destinations ``str(IPv4Address)`` alone took ~1 s of a cold compile (measured), and
    parsing a dotted quad through ``ipaddress`` another ~1 s. Equal, hashed and ordered as
    the plain address."""

    __slots__ = ("_text",)

    def __init__(self, address: str | int) -> None:  # text: a DOTTED_QUAD
        if isinstance(address, str):
            self._ip = int.from_bytes(socket.inet_aton(address), "big")
            self._text = address
        else:  # ``ip + 1`` and friends build their result from an int
            super().__init__(address)
            self._text = super().__str__()

    def __str__(self) -> str:
        return self._text

    def __reduce__(self) -> tuple[type[TextIPv4], tuple[str]]:
        return TextIPv4, (self._text,)


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # no leading zeros
DOTTED_QUAD = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")  # IPv4 text as str() prints it


def parse_ip(value: object, what: str = "ip") -> Address:
    if not isinstance(value, str):
        raise BadObject(f"{what}: expected an address string, got {value!r}")
    try:
        ip = TextIPv4(value) if DOTTED_QUAD.fullmatch(value) else ipaddress.ip_address(value)
    except ValueError as e:
        raise BadObject(f"{what}: {e}") from None
    if ip.version == 4:  # as below, on the integer: 0.0.0.0, 224/4, 127/8 (~3 us less each)
        n = int(ip)
        if n == 0 or n >> 28 == 0xE or n >> 24 == 127:
            raise BadObject(f"{what}: {ip} cannot be an endpoint address")
        if n == 0xFFFF_FFFF:
            raise BadObject(f"{what}: broadcast address")
    elif ip.is_unspecified or ip.is_multicast or ip.is_loopback:
        raise BadObject(f"{what}: {ip} cannot be an endpoint address")
    return ip


def parse_underlay_ip(value: object, what: str = "host_ip") -> ipaddress.IPv4Address:
    ip = parse_ip(value, what)
    if not isinstance(ip, ipaddress.IPv4Address):
        raise BadObject(f"{what}: the underlay is IPv4 (tun_ipv4_dst), got {ip}")
    return ip


def parse_mac(value: object, what: str = "mac") -> str:
    lower = value.lower() if isinstance(value, str) else ""
    if not _MAC_RE.fullmatch(lower):
        raise BadObject(f"{what}: expected aa:bb:cc:dd:ee:ff, got {value!r}")
    mac = value if lower == value else lower  # keep the received string: one copy, not two
    if int(mac[:2], 16) & 1:
        raise BadObject(f"{what}: {mac} is a multicast/broadcast MAC")
    if mac == "00:00:00:00:00:00":
        raise BadObject(f"{what}: the zero MAC")
    return mac


def parse_vni(value: object, what: str = "vni") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_VNI:
        raise BadObject(f"{what}: expected an integer in 1..{MAX_VNI}, got {value!r}")
    return value


def parse_prefix(value: object, what: str = "prefix") -> Network:
    if not isinstance(value, str):
        raise BadObject(f"{what}: expected a CIDR string, got {value!r}")
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as e:
        raise BadObject(f"{what}: {e}") from None


def _int(value: object, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BadObject(f"{what}: expected an integer in {lo}..{hi}, got {value!r}")
    return value


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
    def from_service_objects(obj: JsonObject, ofport: object) -> LocalPort:
        """From one endpoint meta-service object and the ofport OVS gave its interface."""
        ip = parse_ip(obj.get("ip"))
        prefix = None if obj.get("prefix") is None else parse_prefix(obj.get("prefix"))
        gateway = None if obj.get("gateway") is None else parse_ip(obj.get("gateway"), "gateway")
        if prefix is not None and (ip.version != prefix.version or ip not in prefix):
            raise BadObject(f"ip {ip} is not inside its prefix {prefix}")
        if gateway is not None and (prefix is None or gateway not in prefix or gateway == ip):
            raise BadObject(f"gateway {gateway} is not a gateway of {prefix} for {ip}")
        return LocalPort(
            vpc=_str(obj, "vpc"),
            name=_str(obj, "name"),
            ip=ip,
            mac=parse_mac(obj.get("mac")),
            vni=parse_vni(obj.get("vni")),
            ofport=_int(ofport, "ofport", 1, MAX_PORT),
            prefix=prefix,
            gateway=gateway,
        )


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
        """From a destination-service object (also a route's next hop or an ILB backend).
        ``hosts`` (underlay address text -> parsed) shares one address among the many
        destinations on one host: 4 MiB at 50k peer endpoints."""
        raw = obj.get("host_ip")
        if raw is None:
            raise BadObject("not placed on a host (host_ip is null)")
        host_ip = hosts.get(raw) if hosts is not None and type(raw) is str else None
        if host_ip is None:
            host_ip = parse_underlay_ip(raw)
            if hosts is not None and len(hosts) < MAX_SHARED_HOSTS:
                hosts[str(raw)] = host_ip
        return Destination(
            vpc=vpc,
            name=name,
            ip=parse_ip(obj.get("ip")),
            mac=parse_mac(obj.get("mac")),
            vni=parse_vni(obj.get("vni")),
            host_ip=host_ip,
        )


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
    def from_service_objects(vpc: str, key: str, obj: JsonObject) -> RouteEntry:
        """From a forwarding-service object; a static route's next hop may be null (unusable)."""
        prefix = parse_prefix(obj.get("prefix"))
        kind = obj.get("kind")
        if kind == "subnet":
            gw = obj.get("gateway")
            gateway = None if gw is None else parse_ip(gw, "gateway")
            if gateway is not None and gateway not in prefix:
                raise BadObject(f"gateway {gateway} outside {prefix}")
            return RouteEntry(vpc, prefix, "subnet", None, 0, key, gateway)
        if kind != "static" and kind != "dynamic":  # dynamic: learned over BGP, same shape
            raise BadObject(f"kind: expected 'subnet', 'static' or 'dynamic', got {kind!r}")
        priority = _int(obj.get("priority", 1000), "priority", 0, 65535)
        hop = obj.get("next_hop")
        next_hop = None
        if hop is not None:
            if not isinstance(hop, Mapping):
                raise BadObject(f"next_hop: expected an object, got {hop!r}")
            try:
                next_hop = Destination.from_service_objects(vpc, f"{key}:next_hop", hop)
            except BadObject as e:
                raise BadObject(f"next_hop: {e}") from None
            if next_hop.ip.version != prefix.version:
                raise BadObject(f"next_hop {next_hop.ip} is not of the prefix's IP version")
        return RouteEntry(vpc, prefix, kind, next_hop, priority, key)


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
    spillover: tuple[tuple[Destination, int], ...] = ()

    @staticmethod
    def from_service_objects(
        vpc: str, name: str, obj: JsonObject, skipped: list[Skipped] | None = None
    ) -> LoadBalancer:
        """From a load-balancer object; a bad backend is left out (and reported)."""
        vip = parse_ip(obj.get("vip"), "vip")
        vni = parse_vni(obj.get("vni"))
        backends = _backends(obj, "backends", (vpc, name), vip, vni, skipped)
        spillover = _backends(obj, "spillover", (vpc, name), vip, None, skipped)
        mac = parse_mac(obj.get("mac"))
        return LoadBalancer(vpc, name, vip, mac, vni, backends, spillover)


def _backends(
    obj: JsonObject,
    key: str,
    lb: tuple[str, str],
    vip: Address,
    vni: int | None,
    skipped: list[Skipped] | None,
) -> tuple[tuple[Destination, int], ...]:
    """A load-balancer object's list ``key``, sorted by VPC and name; a bad entry is left out
    (and reported). ``vni``: the one each must have (None: a spillover backend's is its own
    VPC's, which must be another than the ILB's)."""
    raw = obj.get(key, [])
    if not isinstance(raw, list):
        raise BadObject(f"{key}: expected a list, got {raw!r}")
    found: dict[tuple[str, str], tuple[Destination, int]] = {}
    for i, b in enumerate(raw):
        try:
            if not isinstance(b, Mapping):
                raise BadObject(f"expected an object, got {b!r}")
            bname = _str(b, "endpoint")
            bvpc = lb[0] if vni is not None else _str(b, "vpc")
            weight = _int(b.get("weight", 1), "weight", 0, MAX_WEIGHT)
            if b.get("healthy", True) is not True or weight == 0:
                continue
            dest = Destination.from_service_objects(bvpc, bname, b)
            if vni is not None and dest.vni != vni:
                raise BadObject(f"vni {dest.vni} is not the load balancer's {vni}")
            if vni is None and bvpc == lb[0]:
                raise BadObject(f"a spillover backend is in a peer VPC, not in {bvpc}")
            if dest.ip.version != vip.version:
                raise BadObject(f"{dest.ip} is not of the VIP's IP version")
            if (bvpc, bname) in found:
                raise BadObject(f"backend {bname} listed twice")
            found[(bvpc, bname)] = (dest, weight)
        except BadObject as e:
            if skipped is not None:
                skipped.append(Skipped("loadbalancer", f"{lb[0]}/{lb[1]}/{key}[{i}]", str(e)))
    return tuple(found[k] for k in sorted(found))


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
                d = Destination.from_service_objects(vpc, key, _obj(objects.destinations[key]))
                _same_vni(d.vni, vni)
                k = ip_key(d.ip)
                if k in dests:
                    raise BadObject(f"ip {d.ip} already belongs to {dests[k].name}")
                dests[k] = d
            except BadObject as e:
                skipped.append(Skipped("destination", f"{vpc}/{key}", str(e)))
        routes: list[RouteEntry] = []
        for key in sorted(objects.forwarding):
            try:
                obj = _obj(objects.forwarding[key])
                _same_vni(parse_vni(obj.get("vni")), vni)
                r = RouteEntry.from_service_objects(vpc, key, obj)
                if r.next_hop is not None:
                    _same_vni(r.next_hop.vni, vni)
                routes.append(r)
            except BadObject as e:
                skipped.append(Skipped("forwarding", f"{vpc}/{key}", str(e)))
        lbs: dict[Address, LoadBalancer] = {}
        for key in sorted(objects.load_balancers):
            try:
                lb = LoadBalancer.from_service_objects(
                    vpc, key, _obj(objects.load_balancers[key]), skipped
                )
                _same_vni(lb.vni, vni)
                if ip_key(lb.vip) in dests or ip_key(lb.vip) in taken or lb.vip in lbs:
                    raise BadObject(f"vip {lb.vip} is already in use")
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
        peerings: Mapping[str, ServiceObjects],
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
                    po = PeeringObject.parse(objs[key])
                    peer_vpc, peer_vni = po.peer_vpc, po.peer_vni
                    if peer_vpc == vpc:
                        raise BadObject("a VPC cannot peer with itself")
                    if owners.get(peer_vni, peer_vpc) != peer_vpc:
                        raise BadObject(
                            f"peer_vni {peer_vni} belongs to local VPC {owners[peer_vni]}"
                        )
                    if peer_vpc in vni_of and vni_of[peer_vpc] != peer_vni:
                        raise BadObject(
                            f"peer_vni {peer_vni} is not {peer_vpc}'s VNI {vni_of[peer_vpc]}"
                        )
                    if any(p.vpc == vpc and p.peer_vpc == peer_vpc for p in peers):
                        raise BadObject(f"{vpc} already follows {peer_vpc}")
                except (BadObject, ProtocolError) as e:
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


def _obj(value: object) -> JsonObject:
    if not isinstance(value, Mapping):
        raise BadObject(f"expected an object, got {type(value).__name__}")
    return value


def _same_vni(got: int, want: int) -> None:
    if got != want:
        raise BadObject(f"vni {got} is not the VPC's VNI {want}")


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
            obj = _obj(endpoints[key])
            vpc, name = _str(obj, "vpc"), _str(obj, "name")
            ofport = ofports.get((vpc, name))
            if ofport is None:
                raise BadObject("no OpenFlow port yet (interface not attached)")
            p = LocalPort.from_service_objects(obj, ofport)
            if p.ofport == tunnel_port:
                raise BadObject(f"ofport {p.ofport} is the tunnel port's")
            if vni_of.get(p.vpc, p.vni) != p.vni:
                raise BadObject(f"vni {p.vni} differs from {p.vpc}'s VNI {vni_of[p.vpc]}")
            if any(v == p.vni and k != p.vpc for k, v in vni_of.items()):
                raise BadObject(f"vni {p.vni} is another local VPC's")
            if p.ofport in used_ports or (p.vpc, p.ip) in used_ips:
                raise BadObject(f"ofport {p.ofport} or ip {p.ip} already in use on this host")
        except BadObject as e:
            skipped.append(Skipped("endpoint", key, str(e)))
            continue
        vni_of.setdefault(p.vpc, p.vni)
        used_ports.add(p.ofport)
        used_ips.add((p.vpc, p.ip))
        ports.append(p)
    return tuple(sorted(ports, key=lambda p: (p.vpc, p.name)))


def relay_view(
    local_underlay_ip: str,
    peerings: Mapping[str, ServiceObjects],
    peer_services: Mapping[tuple[str, str], StreamObjects],
    tunnel_port: int | None = TUNNEL_PORT,
) -> tuple[HostView, tuple[Skipped, ...]]:
    """The view of a gateway host (docs/gateways.md): no ports and no VPC of its own; per
    peering side that sends through the gateways (``peerings``: VPC -> the objects of its
    peering stream for this gateway), the peer's destinations under the side's policy
    (``peer_services``, keyed as in ``HostView.from_service_objects``), with the peer's VNI."""
    skipped: list[Skipped] = []
    relays: dict[tuple[str, str], VpcServices] = {}
    for vpc in sorted(peerings):
        for key in sorted(peerings[vpc]):
            try:
                po = PeeringObject.parse(peerings[vpc][key])
            except ProtocolError as e:
                skipped.append(Skipped("peering", f"{vpc}/{key}", str(e)))
                continue
            k = (po.peer_vpc, po.policy_id)
            if uses_gateways(po.forwarding) and k not in relays:
                streams = peer_services.get(k, StreamObjects())
                relays[k] = VpcServices.from_service_objects(
                    po.peer_vpc, po.peer_vni, streams, skipped
                )
    view = HostView(
        parse_underlay_ip(local_underlay_ip, "local_underlay_ip"),
        tunnel_port=tunnel_port,
        relays=tuple(relays[k] for k in sorted(relays)),
    )
    return view, tuple(sorted(set(skipped)))
