"""The controller's resources: typed, immutable, and convertible to and from JSON bodies.

The same JSON form is stored (meshpeer.store) and served (REST), so a restarted controller
serves exactly what it had.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshpeer.protocol.gateways import (
    DEFAULT_FORWARDING,
    DEFAULT_ROLE,
    Forwarding,
    HostRole,
    uses_gateways,
)
from meshpeer.protocol.objects import ip_text as ip_text
from meshpeer.protocol.peering import Inbound
from policies.export import ExportPolicy, parse_export_policy
from policies.routes import DEFAULT_PREFERENCE

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
JsonObject = dict[str, Any]

ENDPOINT_KINDS = ("vm", "ilb", "router", "vpn", "interconnect")
# Kinds that can be a route's next hop: they forward traffic for prefixes beyond themselves.
NEXT_HOP_KINDS = frozenset({"vm", "router", "vpn", "interconnect"})
# Kinds that can hold a BGP session to an on-prem router (as a cloud router's interface).
BGP_KINDS = frozenset({"router", "vpn", "interconnect"})
DEFAULT_ASN = 64512  # a VPC's BGP AS number when it is created without one (a private ASN)
# 2-byte AS numbers no BGP speaker may use as its own or a peer's (a router refuses the OPEN).
RESERVED_ASNS = {
    0: "reserved (RFC 7607)",
    23456: "AS_TRANS, the stand-in for a 4-byte AS number (RFC 6793)",
    65535: "reserved (RFC 7300)",
}


def derived_mac(vpc: str, ip: Address) -> str:
    """Stable, locally administered unicast MAC for an endpoint given none (as in the lab)."""
    digest = hashlib.sha256(f"{vpc}/{ip_text(ip)}".encode()).digest()
    return (b"\x02" + digest[:5]).hex(":")


@functools.lru_cache(maxsize=1024)  # every endpoint write renders its subnet's gateway
def gateway(subnet: Network) -> Address:
    """A subnet's gateway is its first host address (as in GCP and OVN)."""
    return subnet.network_address + 1


def reserved(subnet: Network) -> set[Address]:
    out: set[Address] = {subnet.network_address, gateway(subnet)}
    if isinstance(subnet, ipaddress.IPv4Network):
        out.add(subnet.broadcast_address)
    return out


@dataclass(frozen=True)
class Subnet:
    name: str
    cidr: Network

    def to_json(self) -> JsonObject:
        return {"name": self.name, "cidr": str(self.cidr), "gateway": str(gateway(self.cidr))}

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> Subnet:
        return Subnet(d["name"], ipaddress.ip_network(d["cidr"]))


@dataclass(frozen=True)
class Vpc:
    name: str
    vni: int
    subnets: tuple[Subnet, ...] = ()
    asn: int = DEFAULT_ASN  # its BGP AS number toward on-prem routers (docs/routing.md)

    def subnet_for(self, ip: Address) -> Subnet | None:
        """The subnet holding ``ip`` (``ip in cidr``, on the addresses' integers)."""
        version, value = ip.version, int(ip)
        for v, network, mask, subnet in self._networks:
            if v == version and value & mask == network:
                return subnet
        return None

    @functools.cached_property
    def _networks(self) -> tuple[tuple[int, int, int, Subnet], ...]:
        """(version, network, netmask, subnet) of each subnet, as integers: every endpoint
        write looks its subnet up, and ``ip in cidr`` builds objects each time."""
        return tuple(
            (s.cidr.version, int(s.cidr.network_address), int(s.cidr.netmask), s)
            for s in self.subnets
        )

    def to_json(self) -> JsonObject:
        return {
            "name": self.name,
            "vni": self.vni,
            "subnets": [s.to_json() for s in self.subnets],
            "asn": self.asn,
        }

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> Vpc:
        subnets = tuple(Subnet.from_json(s) for s in d["subnets"])
        return Vpc(d["name"], d["vni"], subnets, d.get("asn", DEFAULT_ASN))


@dataclass(frozen=True)
class BgpPeer:
    """An endpoint's BGP session to an on-prem router: the router's AS number and address,
    and the shard's own address on the link (both link-local IPv4, as a cloud router's)."""

    peer_asn: int
    peer_ip: ipaddress.IPv4Address
    local_ip: ipaddress.IPv4Address

    def to_json(self) -> JsonObject:
        return {
            "peer_asn": self.peer_asn,
            "peer_ip": str(self.peer_ip),
            "local_ip": str(self.local_ip),
        }

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> BgpPeer:
        return BgpPeer(
            d["peer_asn"],
            ipaddress.IPv4Address(d["peer_ip"]),
            ipaddress.IPv4Address(d["local_ip"]),
        )


@dataclass(frozen=True)
class Backend:
    endpoint: str
    weight: int = 1


@dataclass(frozen=True)
class Spillover:
    """A backend of an ILB in a peered VPC: it takes a share of the ILB's new connections
    while the local backends are overloaded (docs/gateways.md, overload shift)."""

    vpc: str
    endpoint: str
    weight: int = 1

    def to_json(self) -> JsonObject:
        return {"vpc": self.vpc, "endpoint": self.endpoint, "weight": self.weight}


@dataclass(frozen=True)
class Endpoint:
    vpc: str
    name: str
    kind: str
    ip: Address
    mac: str
    host: str | None = None  # None for an ILB: a VIP lives on no host
    backends: tuple[Backend, ...] = ()
    bgp: BgpPeer | None = None  # router, vpn and interconnect endpoints only
    spillover: tuple[Spillover, ...] = ()  # ILBs only: backends in peered VPCs

    def to_json(self) -> JsonObject:
        d: JsonObject = {
            "name": self.name,
            "vpc": self.vpc,
            "kind": self.kind,
            "ip": ip_text(self.ip),
            "mac": self.mac,
            "host": self.host,
        }
        if self.kind == "ilb":
            d["backends"] = [{"endpoint": b.endpoint, "weight": b.weight} for b in self.backends]
            d["spillover"] = [s.to_json() for s in self.spillover]
        if self.bgp is not None:
            d["bgp"] = self.bgp.to_json()
        return d

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> Endpoint:
        return Endpoint(
            vpc=d["vpc"],
            name=d["name"],
            kind=d["kind"],
            ip=ipaddress.ip_address(d["ip"]),
            mac=d["mac"],
            host=d.get("host"),
            backends=tuple(Backend(b["endpoint"], b["weight"]) for b in d.get("backends", ())),
            bgp=BgpPeer.from_json(d["bgp"]) if d.get("bgp") else None,
            spillover=tuple(
                Spillover(s["vpc"], s["endpoint"], s["weight"]) for s in d.get("spillover", ())
            ),
        )


@dataclass(frozen=True)
class Peering:
    """One side of a peering: this VPC's wish to peer, and what it exports to the peer."""

    vpc: str
    name: str
    peer_vpc: str
    export: ExportPolicy = field(default_factory=ExportPolicy)
    import_custom_routes: bool = False
    # What this side lets in from the peer: "all", or only "replies" to connections its own
    # endpoints opened (conntrack on this VPC's hosts; docs/policies.md, "One-way peering").
    inbound: Inbound = "all"
    # How much this side prefers the peer's routes over other peers' to the same prefix:
    # higher wins (policies/routes.py, rule 3; docs/routing.md).
    preference: int = DEFAULT_PREFERENCE
    # How this side's hosts send to the peer: direct, via the gateways, or on-demand
    # (docs/gateways.md).
    forwarding: Forwarding = DEFAULT_FORWARDING

    def to_json(self) -> JsonObject:
        return {
            "name": self.name,
            "vpc": self.vpc,
            "peer_vpc": self.peer_vpc,
            "export": self.export.as_config(),
            "export_policy_id": self.export.policy_id,
            "import_custom_routes": self.import_custom_routes,
            "inbound": self.inbound,
            "preference": self.preference,
            "forwarding": self.forwarding,
        }

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> Peering:
        """A record written before ``preference`` or ``forwarding`` existed loads at the default."""
        return Peering(
            vpc=d["vpc"],
            name=d["name"],
            peer_vpc=d["peer_vpc"],
            export=parse_export_policy(d.get("export"), "export"),
            import_custom_routes=d.get("import_custom_routes", False),
            inbound=d.get("inbound", "all"),
            preference=d.get("preference", DEFAULT_PREFERENCE),
            forwarding=d.get("forwarding", DEFAULT_FORWARDING),
        )


@dataclass(frozen=True)
class Route:
    """A static (custom) route: prefix via an endpoint of the VPC (router, VPN, ...)."""

    vpc: str
    name: str
    prefix: Network
    next_hop: Address
    priority: int = 1000

    def to_json(self) -> JsonObject:
        return {
            "name": self.name,
            "vpc": self.vpc,
            "prefix": str(self.prefix),
            "next_hop": str(self.next_hop),
            "priority": self.priority,
        }

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> Route:
        return Route(
            d["vpc"],
            d["name"],
            ipaddress.ip_network(d["prefix"]),
            ipaddress.ip_address(d["next_hop"]),
            d["priority"],
        )


@dataclass(frozen=True)
class Host:
    """A hypervisor known to this shard: where its endpoints' packets are tunnelled to."""

    name: str
    underlay_ip: Address
    # hypervisor: runs endpoints; gateway: forwards between hosts (docs/gateways.md)
    role: HostRole = DEFAULT_ROLE

    def to_json(self) -> JsonObject:
        return {"name": self.name, "underlay_ip": ip_text(self.underlay_ip), "role": self.role}

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> Host:
        """A record written before ``role`` existed is a hypervisor's."""
        return Host(d["name"], ipaddress.ip_address(d["underlay_ip"]), d.get("role", DEFAULT_ROLE))


Resource = Vpc | Endpoint | Peering | Route | Host
KINDS: dict[str, Any] = {
    "vpc": Vpc,
    "endpoint": Endpoint,
    "peering": Peering,
    "route": Route,
    "host": Host,
}


def store_key(res: Resource) -> tuple[str, str]:
    """(kind, key) under which a resource is stored."""
    if type(res) is Endpoint:  # by far the most written
        return "endpoint", f"{res.vpc}/{res.name}"
    if isinstance(res, Vpc):
        return "vpc", res.name
    if isinstance(res, Host):
        return "host", res.name
    return _KIND_OF[type(res)], f"{res.vpc}/{res.name}"


_ATTR = {
    "vpc": "vpcs",
    "endpoint": "endpoints",
    "peering": "peerings",
    "route": "routes",
    "host": "hosts",
}


@dataclass
class Intent:
    """Everything one shard holds, keyed like the store.

    Decision functions only read it and return changes; the controller shell applies
    committed changes with ``put``/``drop`` (in place: copying 20k endpoints per write
    would make every write O(n)).
    """

    vpcs: dict[str, Vpc] = field(default_factory=dict)
    endpoints: dict[tuple[str, str], Endpoint] = field(default_factory=dict)
    peerings: dict[tuple[str, str], Peering] = field(default_factory=dict)
    routes: dict[tuple[str, str], Route] = field(default_factory=dict)
    hosts: dict[str, Host] = field(default_factory=dict)

    # Secondary indexes, maintained by put/drop: per-VPC and per-host reads stay proportional
    # to what they return (a shard may hold 20k endpoints over 100 VPCs).
    _by_vpc: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict, repr=False)
    _by_host: dict[str, dict[tuple[str, str], Endpoint]] = field(default_factory=dict, repr=False)
    _placed: dict[tuple[str, str], int] = field(default_factory=dict, repr=False)  # -> count
    _addr: dict[tuple[str, object], Endpoint] = field(default_factory=dict, repr=False)
    _bgp: dict[tuple[str, str], Endpoint] = field(default_factory=dict, repr=False)
    _spill: dict[tuple[str, str], Endpoint] = field(default_factory=dict, repr=False)  # ILBs

    def _of(self, attr: str, vpc: str) -> list[Any]:
        items = self._by_vpc.get(attr, {}).get(vpc, {})
        return [items[name] for name in sorted(items)]

    def endpoints_of(self, vpc: str) -> list[Endpoint]:
        return self._of("endpoints", vpc)

    def peerings_of(self, vpc: str) -> list[Peering]:
        return self._of("peerings", vpc)

    def spilling_into(self, vpc: str) -> set[str]:
        """The VPCs with an ILB that has a spillover backend in ``vpc``: its endpoints and
        export are in their load-balancer objects (docs/gateways.md)."""
        return {e.vpc for e in self._spill.values() if any(s.vpc == vpc for s in e.spillover)}

    def routes_of(self, vpc: str) -> list[Route]:
        return self._of("routes", vpc)

    def endpoint_with(self, vpc: str, ip_or_mac: Address | str) -> Endpoint | None:
        """The endpoint of ``vpc`` holding this IP address or MAC, if any (O(1))."""
        return self._addr.get((vpc, ip_or_mac))

    def bgp_endpoints(self) -> list[Endpoint]:
        """Endpoints holding a BGP session, by (VPC, name)."""
        return [self._bgp[k] for k in sorted(self._bgp)]

    def endpoints_on(self, host: str) -> list[Endpoint]:
        on = self._by_host.get(host, {})
        return [on[k] for k in sorted(on)]

    def placements(self) -> set[tuple[str, str]]:
        """(vpc, host) of every endpoint that has a host."""
        return set(self._placed)

    def placed(self, vpc: str, host: str | None) -> bool:
        """Does ``host`` hold at least one endpoint of ``vpc``? (O(1))"""
        return (vpc, host) in self._placed

    def hosts_of(self, vpc: str) -> list[str]:
        """Hosts holding at least one endpoint of ``vpc``."""
        return sorted(h for v, h in self._placed if v == vpc)

    def gateway_hosts(self) -> list[str]:
        """The registered gateway hosts (docs/gateways.md)."""
        return sorted(h.name for h in self.hosts.values() if h.role == "gateway")

    def relay_hosts(self, vpc: str) -> list[str]:
        """The gateway hosts that relay for ``vpc``: every one, if a side of ``vpc`` sends
        through the gateways, else none. They follow ``vpc``'s peering stream and, with its
        grants, those peers' destinations, though ``vpc`` has no endpoint on them."""
        if any(uses_gateways(p.forwarding) for p in self.peerings_of(vpc)):
            return self.gateway_hosts()
        return []

    def get(self, kind: str, key: str) -> Resource | None:
        """The resource stored as (kind, key), if any."""
        found: Resource | None = getattr(self, _ATTR[kind]).get(_map_key(kind, key))
        return found

    def put(self, res: Resource) -> None:
        kind, mkey = _map_key_of(res)
        attr = _ATTR[kind]
        table = getattr(self, attr)
        if mkey in table:
            self._drop(attr, mkey)
        table[mkey] = res
        if isinstance(res, _IN_VPC):
            self._by_vpc.setdefault(attr, {}).setdefault(res.vpc, {})[res.name] = res
        if isinstance(res, Endpoint):
            self._addr[(res.vpc, res.ip)] = self._addr[(res.vpc, res.mac)] = res
            if res.bgp is not None:
                self._bgp[(res.vpc, res.name)] = res
            if res.spillover:
                self._spill[(res.vpc, res.name)] = res
        if isinstance(res, Endpoint) and res.host:
            self._by_host.setdefault(res.host, {})[(res.vpc, res.name)] = res
            place = (res.vpc, res.host)
            self._placed[place] = self._placed.get(place, 0) + 1

    def drop(self, kind: str, key: str) -> None:
        self._drop(_ATTR[kind], _map_key(kind, key))

    def _drop(self, attr: str, mkey: Any) -> None:
        old = getattr(self, attr).pop(mkey, None)
        if old is None:
            return
        if isinstance(old, _IN_VPC):
            self._by_vpc.get(attr, {}).get(old.vpc, {}).pop(old.name, None)
        if isinstance(old, Endpoint):
            self._addr.pop((old.vpc, old.ip), None)
            self._addr.pop((old.vpc, old.mac), None)
            self._bgp.pop((old.vpc, old.name), None)
            self._spill.pop((old.vpc, old.name), None)
        if isinstance(old, Endpoint) and old.host:
            self._by_host.get(old.host, {}).pop((old.vpc, old.name), None)
            place = (old.vpc, old.host)
            self._placed[place] -= 1
            if not self._placed[place]:
                del self._placed[place]
            if not self._by_host.get(old.host):
                self._by_host.pop(old.host, None)

    @staticmethod
    def from_records(bodies: Mapping[tuple[str, str], Mapping[str, Any]]) -> Intent:
        intent = Intent()
        for (kind, _key), body in bodies.items():
            intent.put(KINDS[kind].from_json(body))
        return intent


def _map_key(kind: str, key: str) -> Any:
    return key if kind in ("vpc", "host") else tuple(key.split("/", 1))


def _map_key_of(res: Resource) -> tuple[str, Any]:
    """(kind, key in the Intent's dicts) of a resource: ``_map_key`` of its ``store_key``."""
    if isinstance(res, _BY_NAME):
        return store_key(res)
    return _KIND_OF[type(res)], (res.vpc, res.name)


_KIND_OF: dict[type, str] = {Endpoint: "endpoint", Peering: "peering", Route: "route"}
# tuples, not ``A | B``: a union is built again at every call (Intent.put runs per endpoint)
_IN_VPC = (Endpoint, Peering, Route)
_BY_NAME = (Vpc, Host)
