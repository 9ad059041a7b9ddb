"""The objects of the destination, forwarding, load-balancer and endpoint services: one wire
contract for their writer and their reader (the peering service's is ``.peering``).

The shard builds each object as one of these values and sends ``to_json()``
(``meshpeer/controller/mux.py``); the OHC reads each with ``parse``, which validates every
field it uses of what is, on its side, untrusted input (a peer's shard is another
administrative domain) and raises ``BadObject`` naming the field (``next_hop.ip``,
``backends[2].weight``). What an object means to a host (its VPC's VNI, addresses already
taken, a backend's health) is decided by the OHC (``ohc/model.py``), not here. Shapes and keys:
docs/protocol.md.

Addresses are kept parsed (``ipaddress`` values; dotted IPv4 text as ``TextIPv4``, which keeps
its text). ``kind`` and ``host`` of a destination or endpoint are informational (no host uses
them): a value that is not a string reads as absent rather than refusing the object.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from meshpeer.protocol.messages import JsonObject, ProtocolError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
RouteKind = Literal["subnet", "static", "dynamic"]
ROUTE_KINDS: tuple[RouteKind, ...] = get_args(RouteKind)

MAX_VNI = (1 << 24) - 1  # Geneve VNIs are 24 bits
MAX_PRIORITY = 65535
DEFAULT_PRIORITY = 1000  # a custom route's priority when its object has none
MAX_WEIGHT = 0xFFFF  # an OpenFlow bucket weight is 16 bits
MAX_SHARED_HOSTS = 4096  # underlay addresses one ``hosts`` table shares among destinations
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class BadObject(ProtocolError):
    """A service object (or one of its fields) that cannot be used: ``field`` names it."""


# --- fields ---------------------------------------------------------------------------------


def ip_text(ip: Address) -> str:
    """``str(ip)``, rendered in C for IPv4: ``ipaddress`` does it in Python, and a batch create
    of 5,000 endpoints spent a sixth of its commit there (py-spy on the shard)."""
    return socket.inet_ntoa(ip.packed) if ip.version == 4 else str(ip)


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
    """An endpoint address: not unspecified, multicast, loopback or broadcast."""
    if not isinstance(value, str):
        raise BadObject(what, f"expected an address string, got {value!r}")
    try:
        ip = TextIPv4(value) if DOTTED_QUAD.fullmatch(value) else ipaddress.ip_address(value)
    except ValueError as e:
        raise BadObject(what, str(e)) from None
    if ip.version == 4:  # as below, on the integer: 0.0.0.0, 224/4, 127/8 (~3 us less each)
        n = int(ip)
        if n == 0 or n >> 28 == 0xE or n >> 24 == 127:
            raise BadObject(what, f"{ip} cannot be an endpoint address")
        if n == 0xFFFF_FFFF:
            raise BadObject(what, "broadcast address")
    elif ip.is_unspecified or ip.is_multicast or ip.is_loopback:
        raise BadObject(what, f"{ip} cannot be an endpoint address")
    return ip


def parse_underlay_ip(value: object, what: str = "host_ip") -> ipaddress.IPv4Address:
    ip = parse_ip(value, what)
    if not isinstance(ip, ipaddress.IPv4Address):
        raise BadObject(what, f"the underlay is IPv4 (tun_ipv4_dst), got {ip}")
    return ip


def parse_mac(value: object, what: str = "mac") -> str:
    """A unicast MAC, lower case."""
    lower = value.lower() if isinstance(value, str) else ""
    if not _MAC_RE.fullmatch(lower):
        raise BadObject(what, f"expected aa:bb:cc:dd:ee:ff, got {value!r}")
    mac = value if lower == value else lower  # keep the received string: one copy, not two
    if int(mac[:2], 16) & 1:
        raise BadObject(what, f"{mac} is a multicast/broadcast MAC")
    if mac == "00:00:00:00:00:00":
        raise BadObject(what, "the zero MAC")
    return mac


def parse_int(value: object, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BadObject(what, f"expected an integer in {lo}..{hi}, got {value!r}")
    return value


def parse_vni(value: object, what: str = "vni") -> int:
    return parse_int(value, what, 1, MAX_VNI)


def parse_prefix(value: object, what: str = "prefix") -> Network:
    if not isinstance(value, str):
        raise BadObject(what, f"expected a CIDR string, got {value!r}")
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as e:
        raise BadObject(what, str(e)) from None


def parse_text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise BadObject(what, f"expected a non-empty string, got {value!r}")
    return value


def _mapping(value: object, what: str) -> Mapping[str, object]:
    if type(value) is not dict and not isinstance(value, Mapping):
        raise BadObject(what, f"expected an object, got {type(value).__name__}")
    return value


def _info(value: object) -> str | None:
    """An informational text field: a string, or absent."""
    return value if isinstance(value, str) else None


# --- objects --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DestinationObject:
    """Where an endpoint of a VPC lives (keyed by the endpoint's name in its stream): its
    address, MAC, VPC's VNI and host. ``host_ip`` (the host's underlay address) is None for an
    endpoint on no registered host: no host can send to it; ``parse`` takes only an IPv4
    one (the tunnel's). Also a route's next hop and, inside a backend, an ILB's member."""

    ip: Address
    mac: str
    vni: int
    host_ip: Address | None
    kind: str | None = None
    host: str | None = None

    def to_json(self) -> JsonObject:
        return destination_json(self.ip, self.mac, self.vni, self.host_ip, self.kind, self.host)

    @staticmethod
    def parse(obj: object) -> DestinationObject:
        o = _mapping(obj, "destination")
        ip, mac, vni, host_ip = destination_fields(o)
        return DestinationObject(ip, mac, vni, host_ip, _info(o.get("kind")), _info(o.get("host")))


def destination_json(
    ip: Address,
    mac: str,
    vni: int,
    host_ip: Address | None,
    kind: str | None = None,
    host: str | None = None,
) -> JsonObject:
    """``DestinationObject(...).to_json()`` without building the object: the shard writes
    one per endpoint and export policy, and the object took a third of that (0.9 us of
    2.4 us, measured)."""
    return {
        "ip": ip_text(ip),
        "mac": mac,
        "vni": vni,
        "kind": kind,
        "host": host,
        "host_ip": None if host_ip is None else ip_text(host_ip),
    }


Placement = tuple[Address, str, int, ipaddress.IPv4Address | None]


def destination_fields(
    obj: object, hosts: dict[str, ipaddress.IPv4Address] | None = None
) -> Placement:
    """What a host uses of a destination object: ``ip``, ``mac``, ``vni`` and ``host_ip``,
    validated as ``DestinationObject.parse`` does, without building the object (the OHC's
    50k peer destinations: 50 ms of a 1.5 s cold compile, measured). ``hosts`` (underlay
    address text -> parsed), when given, shares one address among the many destinations on
    one host: 4 MiB at 50k peer endpoints."""
    o = _mapping(obj, "destination")
    ip = parse_ip(o.get("ip"))
    mac = parse_mac(o.get("mac"))
    vni = parse_vni(o.get("vni"))
    raw = o.get("host_ip")
    host_ip = None if raw is None or hosts is None or type(raw) is not str else hosts.get(raw)
    if host_ip is None and raw is not None:
        host_ip = parse_underlay_ip(raw)
        if hosts is not None and len(hosts) < MAX_SHARED_HOSTS:
            hosts[str(raw)] = host_ip
    return ip, mac, vni, host_ip


@dataclass(frozen=True, slots=True)
class RouteObject:
    """One entry of the forwarding service: a subnet of the VPC (keyed ``subnet:<prefix>``,
    with its gateway address), or a custom route, static (``static:<name>``) or learned over
    BGP (``dynamic``), via a next-hop endpoint (None: the endpoint is gone)."""

    prefix: Network
    kind: RouteKind
    vni: int
    gateway: Address | None = None  # a subnet's
    priority: int = DEFAULT_PRIORITY  # a custom route's
    next_hop: DestinationObject | None = None  # a custom route's

    def to_json(self) -> JsonObject:
        head: JsonObject = {"prefix": str(self.prefix), "kind": self.kind, "vni": self.vni}
        if self.kind == "subnet":
            return head | {"gateway": None if self.gateway is None else ip_text(self.gateway)}
        hop = None if self.next_hop is None else self.next_hop.to_json()
        return head | {"priority": self.priority, "next_hop": hop}

    @staticmethod
    def parse(obj: object) -> RouteObject:
        o = _mapping(obj, "route")
        prefix = parse_prefix(o.get("prefix"))
        kind = next((k for k in ROUTE_KINDS if o.get("kind") == k), None)
        if kind is None:
            raise BadObject(
                "kind", f"expected one of {', '.join(ROUTE_KINDS)}, got {o.get('kind')!r}"
            )
        vni = parse_vni(o.get("vni"))
        if kind == "subnet":
            gw = o.get("gateway")
            gateway = None if gw is None else parse_ip(gw, "gateway")
            if gateway is not None and gateway not in prefix:
                raise BadObject("gateway", f"{gateway} outside {prefix}")
            return RouteObject(prefix, kind, vni, gateway)
        priority = parse_int(o.get("priority", DEFAULT_PRIORITY), "priority", 0, MAX_PRIORITY)
        hop = o.get("next_hop")
        next_hop = None
        if hop is not None:
            try:
                next_hop = DestinationObject.parse(_mapping(hop, "next_hop"))
            except BadObject as e:
                field = e.field if e.field == "next_hop" else f"next_hop.{e.field}"
                raise BadObject(field, e.detail) from None
            if next_hop.ip.version != prefix.version:
                raise BadObject("next_hop.ip", f"{next_hop.ip} is not of the prefix's IP version")
        return RouteObject(prefix, kind, vni, None, priority, next_hop)


@dataclass(frozen=True, slots=True)
class BackendObject:
    """A member of a load balancer: an endpoint of its VPC, where it lives (on a host: a
    backend with a null ``host_ip`` cannot be parsed), and its share."""

    endpoint: str
    weight: int
    destination: DestinationObject
    healthy: bool = True

    def to_json(self) -> JsonObject:
        return {
            "endpoint": self.endpoint,
            "weight": self.weight,
            "healthy": self.healthy,
            **self.destination.to_json(),
        }

    @staticmethod
    def parse(obj: object) -> BackendObject:
        """A ``healthy`` that is not ``true`` is unhealthy (a host sends to none of those)."""
        o = _mapping(obj, "backend")
        endpoint = parse_text(o.get("endpoint"), "endpoint")
        weight = parse_int(o.get("weight", 1), "weight", 0, MAX_WEIGHT)
        healthy = o.get("healthy", True) is True
        destination = DestinationObject.parse(o)
        if destination.host_ip is None:
            raise BadObject("host_ip", "null: a backend on no host")
        return BackendObject(endpoint, weight, destination, healthy)


@dataclass(frozen=True, slots=True)
class SpilloverObject:
    """A spillover backend of a load balancer: an endpoint of a peered VPC (``vpc``, never the
    load balancer's own) that takes a share of its new connections while the local backends
    are overloaded (docs/gateways.md, "Overload shift"); where it lives, with its own VPC's
    VNI, and its share. ``destination`` None: the entry names the endpoint only (a peer
    stream's: that VPC's hosts know their own endpoints, and no other VPC learns where it
    lives); such an entry has weight 1 and is healthy, and is written ``{vpc, endpoint}``."""

    vpc: str
    endpoint: str
    weight: int = 1
    destination: DestinationObject | None = None
    healthy: bool = True

    def named(self) -> SpilloverObject:
        """The entry as a peer stream carries it: the names only."""
        return SpilloverObject(self.vpc, self.endpoint)

    def to_json(self) -> JsonObject:
        if self.destination is None:
            return {"vpc": self.vpc, "endpoint": self.endpoint}
        backend = BackendObject(self.endpoint, self.weight, self.destination, self.healthy)
        return {"vpc": self.vpc, **backend.to_json()}

    @staticmethod
    def parse(obj: object) -> SpilloverObject:
        """A ``healthy`` that is not ``true`` is unhealthy (a host sends to none of those). An
        entry with none of ``ip``, ``mac``, ``vni``, ``host_ip`` names the endpoint only."""
        o = _mapping(obj, "spillover")
        vpc = parse_text(o.get("vpc"), "vpc")
        if all(k not in o for k in _PLACEMENT):
            return SpilloverObject(vpc, parse_text(o.get("endpoint"), "endpoint"))
        backend = BackendObject.parse(o)
        return SpilloverObject(
            vpc, backend.endpoint, backend.weight, backend.destination, backend.healthy
        )


_PLACEMENT = ("ip", "mac", "vni", "host_ip")


@dataclass(frozen=True, slots=True)
class LoadBalancerObject:
    """An internal load balancer (keyed by its name): a VIP of the VPC over weighted backends,
    each an endpoint listed once, of the VIP's VNI and IP version; and its spillover backends
    in peered VPCs, each (VPC, endpoint) listed once, of the VIP's IP version, with its own
    VPC's VNI (absent on the wire when there is none)."""

    vip: Address
    mac: str
    vni: int
    backends: tuple[BackendObject, ...] = ()
    spillover: tuple[SpilloverObject, ...] = ()

    def to_json(self) -> JsonObject:
        out: JsonObject = {
            "vip": ip_text(self.vip),
            "mac": self.mac,
            "vni": self.vni,
            "backends": [b.to_json() for b in self.backends],
        }
        if self.spillover:
            out["spillover"] = [s.to_json() for s in self.spillover]
        return out

    @staticmethod
    def parse(
        obj: object, bad_backend: Callable[[str, BadObject], None] | None = None
    ) -> LoadBalancerObject:
        """With ``bad_backend``, a backend or spillover entry that cannot be parsed is left out
        and handed to it with its place (``backends[2]``, ``spillover[0]``: the rest of the
        load balancer is still usable); without, it fails the whole object."""
        o = _mapping(obj, "loadbalancer")
        vip = parse_ip(o.get("vip"), "vip")
        mac = parse_mac(o.get("mac"))
        vni = parse_vni(o.get("vni"))

        def entries(key: str) -> list[object]:
            raw = o.get(key, [])
            if not isinstance(raw, list):
                raise BadObject(key, f"expected a list, got {raw!r}")
            return raw

        def check(d: DestinationObject, own: bool) -> None:
            if own and d.vni != vni:
                raise BadObject("vni", f"{d.vni} is not the load balancer's {vni}")
            if d.ip.version != vip.version:
                raise BadObject("ip", f"{d.ip} is not of the VIP's IP version")

        def failed(place: str, e: BadObject) -> None:
            if bad_backend is None:
                raise BadObject(f"{place}.{e.field}", e.detail) from None
            bad_backend(place, e)

        backends: dict[str, BackendObject] = {}
        for i, b in enumerate(entries("backends")):
            try:
                backend = BackendObject.parse(b)
                check(backend.destination, True)
                if backend.endpoint in backends:
                    raise BadObject("endpoint", f"{backend.endpoint} is listed twice")
                backends[backend.endpoint] = backend
            except BadObject as e:
                failed(f"backends[{i}]", e)
        spillover: dict[tuple[str, str], SpilloverObject] = {}
        for i, b in enumerate(entries("spillover")):
            try:
                spill = SpilloverObject.parse(b)
                if spill.destination is not None:
                    check(spill.destination, False)
                if (spill.vpc, spill.endpoint) in spillover:
                    raise BadObject("endpoint", f"{spill.vpc}/{spill.endpoint} is listed twice")
                spillover[(spill.vpc, spill.endpoint)] = spill
            except BadObject as e:
                failed(f"spillover[{i}]", e)
        return LoadBalancerObject(
            vip, mac, vni, tuple(backends.values()), tuple(spillover.values())
        )


@dataclass(frozen=True, slots=True)
class EndpointObject:
    """An endpoint on the host that follows the endpoint (meta-)service, keyed
    ``<vpc>.<name>``: what its port needs (address, MAC, VNI, subnet and gateway)."""

    vpc: str
    name: str
    ip: Address
    mac: str
    vni: int
    prefix: Network | None = None  # the subnet it is in (None: in none)
    gateway: Address | None = None  # that subnet's gateway address
    kind: str | None = None

    def to_json(self) -> JsonObject:
        return endpoint_json(
            self.vpc, self.name, self.ip, self.mac, self.vni, self.prefix, self.gateway, self.kind
        )

    @staticmethod
    def parse(obj: object) -> EndpointObject:
        o = _mapping(obj, "endpoint")
        ip = parse_ip(o.get("ip"))
        prefix = None if o.get("prefix") is None else parse_prefix(o.get("prefix"))
        gateway = None if o.get("gateway") is None else parse_ip(o.get("gateway"), "gateway")
        if prefix is not None and (ip.version != prefix.version or ip not in prefix):
            raise BadObject("ip", f"{ip} is not inside its prefix {prefix}")
        if gateway is not None and (prefix is None or gateway not in prefix or gateway == ip):
            raise BadObject("gateway", f"{gateway} is not a gateway of {prefix} for {ip}")
        return EndpointObject(
            vpc=parse_text(o.get("vpc"), "vpc"),
            name=parse_text(o.get("name"), "name"),
            ip=ip,
            mac=parse_mac(o.get("mac")),
            vni=parse_vni(o.get("vni")),
            prefix=prefix,
            gateway=gateway,
            kind=_info(o.get("kind")),
        )


def endpoint_json(
    vpc: str,
    name: str,
    ip: Address,
    mac: str,
    vni: int,
    prefix: Network | None,
    gateway: Address | None,
    kind: str | None = None,
) -> JsonObject:
    """``EndpointObject(...).to_json()`` without building the object (as ``destination_json``:
    the shard writes one per endpoint)."""
    return {
        "vpc": vpc,
        "name": name,
        "kind": kind,
        "ip": ip_text(ip),
        "mac": mac,
        "vni": vni,
        "prefix": None if prefix is None else network_text(prefix),
        "gateway": None if gateway is None else ip_text(gateway),
    }


@functools.lru_cache(maxsize=4096)
def network_text(net: Network) -> str:
    """``str(net)``, once per network: every endpoint object of a subnet carries its prefix,
    and ``ipaddress`` renders it in Python (5 % of a batch create, py-spy on the shard)."""
    return str(net)
