"""Topology files: parse and validate before anything is created.

The keys are a contract shared with later issues and external test files. Validation is
pure and collects every error with its path (``endpoints[3].host: unknown host 'hv9'``)
so a user fixes a file in one pass instead of one error per run.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeGuard, TypeVar

from meshpeer.controller.model import DEFAULT_ASN, RESERVED_ASNS, reserved
from meshpeer.protocol.gateways import (
    DEFAULT_FORWARDING,
    DEFAULT_ROLE,
    FORWARDING,
    HOST_ROLES,
    Forwarding,
    HostRole,
    choice,
)
from meshpeer.protocol.peering import INBOUND, Inbound
from policies.export import PolicyError, parse_export_policy
from policies.routes import MAX_PREFERENCE, MIN_PREFERENCE

T = TypeVar("T")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

ENDPOINT_KINDS = ("vm", "ilb", "router", "vpn", "interconnect")
# Kinds that get a network namespace with a real interface in the lab.
NAMESPACED_KINDS = frozenset({"vm", "router", "vpn", "interconnect"})
# Names end up in netns and interface names (15 chars max), so keep them short and plain.
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")
RESERVED_NAMES = frozenset({"fabric", "mgmt", "root"})
VNI_MAX = (1 << 24) - 1
ASN_MAX = 65535  # os-ken 4.2.2's BGP speaker takes 2-byte AS numbers only
# Endpoint kinds an on-prem router can sit behind (its BGP session is the endpoint's).
ONPREM_ATTACH_KINDS = frozenset({"vpn", "interconnect", "router"})


class TopologyError(Exception):
    """All problems found in one topology file."""

    def __init__(self, errors: Sequence[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = list(errors)


@dataclass(frozen=True)
class Controller:
    name: str
    replicas: int = 1  # processes of this shard, one leading (needs ``etcd``, docs/lab.md)


@dataclass(frozen=True)
class Etcd:
    """The lab's etcd cluster: ``members`` namespaces ``etcd1``.. (docs/lab.md, "etcd")."""

    members: int = 3


MAX_REPLICAS = 3
ETCD_MEMBERS = (1, 3, 5)  # odd: a quorum survives (members - 1) / 2 of them gone


@dataclass(frozen=True)
class Host:
    name: str
    role: HostRole = DEFAULT_ROLE  # a gateway runs no endpoints (docs/gateways.md)


@dataclass(frozen=True)
class Vpc:
    name: str
    controller: str
    subnets: tuple[Network, ...]
    vni: int | None = None
    asn: int | None = None  # the VPC's BGP AS number toward its on-prem routers


@dataclass(frozen=True)
class OnpremHost:
    name: str
    ip: ipaddress.IPv4Address


@dataclass(frozen=True)
class Onprem:
    """An on-prem router (BIRD in its own namespace) behind a VPC endpoint, with a LAN per
    prefix it announces over BGP and a host namespace on each LAN (docs/lab.md, "On-prem")."""

    name: str
    asn: int
    attach: str  # the endpoint (vpn, interconnect or router) whose IP the router holds
    prefixes: tuple[ipaddress.IPv4Network, ...]
    hosts: tuple[OnpremHost, ...] = ()


@dataclass(frozen=True)
class Backend:
    endpoint: str
    weight: int


@dataclass(frozen=True)
class Endpoint:
    name: str
    vpc: str
    ip: Address
    kind: str = "vm"
    host: str | None = None
    mac: str | None = None
    backends: tuple[Backend, ...] = ()
    # Plumbed in the lab but not created at its controller by 'lab up': tests and the demo
    # create it later through the REST API (e.g. to time programming latency).
    defer: bool = False
    spillover: tuple[Backend, ...] = ()  # ILBs: backends in peered VPCs (docs/gateways.md)

    @property
    def namespaced(self) -> bool:
        return self.kind in NAMESPACED_KINDS


@dataclass(frozen=True)
class Peering:
    vpc: str
    peer: str
    # Raw export policy; ``policies`` owns its meaning and validation.
    export: Mapping[str, Any] | None = None
    # What vpc's side lets in from peer: "all", or only "replies" to vpc's own connections.
    inbound: Inbound = "all"
    # vpc's side: does it import peer's custom (static and dynamic) routes, and how much it prefers them over other
    # peers' routes to the same prefix (higher wins; None: the controller's default).
    import_custom_routes: bool = False
    preference: int | None = None
    # How vpc's hosts send to peer: direct, through the gateway hosts, or on-demand.
    forwarding: Forwarding = DEFAULT_FORWARDING


@dataclass(frozen=True)
class Topology:
    controllers: tuple[Controller, ...]
    hosts: tuple[Host, ...]
    vpcs: tuple[Vpc, ...]
    endpoints: tuple[Endpoint, ...]
    peerings: tuple[Peering, ...] = ()
    onprem: tuple[Onprem, ...] = ()
    etcd: Etcd | None = None  # None: every shard keeps its intent in SQLite

    def vpc(self, name: str) -> Vpc:
        return next(v for v in self.vpcs if v.name == name)

    def endpoints_on(self, host: str) -> list[Endpoint]:
        return [e for e in self.endpoints if e.host == host]


@dataclass
class _Checker:
    """Accumulates errors; every ``want_*`` returns a usable value or None."""

    errors: list[str] = field(default_factory=list)

    def err(self, path: str, msg: str) -> None:
        self.errors.append(f"{path}: {msg}")

    def mapping(
        self, raw: object, path: str, required: Sequence[str], optional: Sequence[str]
    ) -> Mapping[str, Any] | None:
        if not isinstance(raw, Mapping):
            self.err(path, f"expected a mapping, got {type(raw).__name__}")
            return None
        ok = True
        for key in raw:
            if key not in required and key not in optional:
                self.err(f"{path}.{key}", "unknown key")
                ok = False
        for key in required:
            if key not in raw:
                self.err(f"{path}.{key}", "required key missing")
                ok = False
        return raw if ok else None

    def items(self, raw: object, path: str) -> list[tuple[str, object]]:
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.err(path, f"expected a list, got {type(raw).__name__}")
            return []
        return [(f"{path}[{i}]", item) for i, item in enumerate(raw)]

    def name(self, raw: object, path: str) -> str | None:
        if not isinstance(raw, str) or not NAME_RE.match(raw):
            self.err(path, f"bad name {raw!r}: want [a-z][a-z0-9]*, at most 12 characters")
            return None
        return raw

    def network(self, raw: object, path: str) -> Network | None:
        if not isinstance(raw, str):
            self.err(path, f"bad CIDR {raw!r}: expected a string")
            return None
        try:
            return ipaddress.ip_network(raw, strict=True)
        except ValueError as exc:
            self.err(path, f"bad CIDR {raw!r}: {exc}")
            return None

    def address(self, raw: object, path: str) -> Address | None:
        try:
            return ipaddress.ip_address(raw) if isinstance(raw, str) else None
        except ValueError:
            pass
        self.err(path, f"bad IP address {raw!r}")
        return None

    def ref(self, raw: object, path: str, what: str, known: Mapping[str, object]) -> str | None:
        if not isinstance(raw, str) or raw not in known:
            self.err(path, f"unknown {what} {raw!r}")
            return None
        return raw


def subnet_of(vpc: Vpc, ip: Address) -> Network | None:
    return next((s for s in vpc.subnets if s.version == ip.version and ip in s), None)


MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


def parse(raw: object) -> Topology:
    """Validate a loaded topology document; raise TopologyError listing every problem."""
    c = _Checker()
    top = c.mapping(
        raw,
        "topology",
        ["hosts", "vpcs"],
        ["controllers", "endpoints", "peerings", "onprem", "etcd"],
    )
    if top is None:
        raise TopologyError(c.errors)

    names: dict[str, str] = {}  # every name shares one namespace: netns names derive from it

    def unique(name: str | None, path: str) -> str | None:
        if name is None:
            return None
        if name in RESERVED_NAMES:
            c.err(path, f"name {name!r} is reserved by the lab")
            return None
        if name in names:
            c.err(path, f"duplicate name {name!r} (first used at {names[name]})")
            return None
        names[name] = path
        return name

    controllers = _parse_list(c, top.get("controllers"), "controllers", unique, _controller)
    etcd = _etcd(c, top.get("etcd"), controllers, unique)
    hosts = _parse_list(c, top.get("hosts"), "hosts", unique, _host)
    ctl_names = {x.name: x for x in controllers}
    vpcs = _parse_list(c, top.get("vpcs"), "vpcs", unique, lambda c, m, p: _vpc(c, m, p, ctl_names))
    _check_vnis(c, vpcs)
    vpc_by = {v.name: v for v in vpcs}
    host_by = {h.name: h for h in hosts}
    endpoints = _parse_list(
        c,
        top.get("endpoints"),
        "endpoints",
        unique,
        lambda c, m, p: _endpoint(c, m, p, vpc_by, host_by),
    )
    _check_endpoint_ips(c, endpoints)
    _check_backends(c, endpoints, top.get("endpoints"))
    peerings = _parse_peerings(c, top.get("peerings"), vpc_by)
    _check_spillover_peers(c, endpoints, peerings, top.get("endpoints"))
    ep_by = {e.name: e for e in endpoints}
    onprem = _parse_list(
        c, top.get("onprem"), "onprem", unique, lambda c, m, p: _onprem(c, m, p, ep_by, vpc_by)
    )
    _check_onprem(c, onprem, unique)
    if c.errors:
        raise TopologyError(c.errors)
    return Topology(
        tuple(controllers),
        tuple(hosts),
        tuple(vpcs),
        tuple(endpoints),
        tuple(peerings),
        tuple(onprem),
        etcd,
    )


def _parse_list(
    c: _Checker,
    raw: object,
    path: str,
    unique: Callable[[str | None, str], str | None],
    build: Callable[[_Checker, Mapping[str, Any], str], T | None],
) -> list[T]:
    out: list[T] = []
    for p, item in c.items(raw, path):
        before = len(c.errors)
        m = c.mapping(item, p, ["name"], _OPTIONAL_KEYS[path])
        if m is None:
            continue
        name = unique(c.name(m["name"], f"{p}.name"), f"{p}.name")
        obj = build(c, m, p)
        if obj is not None and name is not None and len(c.errors) == before:
            out.append(obj)
    return out


_OPTIONAL_KEYS: dict[str, list[str]] = {
    "controllers": ["replicas"],
    "hosts": ["role"],
    "vpcs": ["controller", "subnets", "vni", "asn"],
    "endpoints": ["vpc", "host", "ip", "kind", "mac", "backends", "spillover", "defer"],
    "onprem": ["asn", "attach", "prefixes", "hosts"],
}


def _controller(c: _Checker, m: Mapping[str, Any], p: str) -> Controller | None:
    replicas = m.get("replicas", 1)
    if not _int_in(replicas, 1, MAX_REPLICAS):
        c.err(f"{p}.replicas", f"bad replicas {replicas!r}: want an integer 1..{MAX_REPLICAS}")
        return None
    return Controller(m["name"], replicas)


def _etcd(
    c: _Checker,
    raw: object,
    controllers: Sequence[Controller],
    unique: Callable[[str | None, str], str | None],
) -> Etcd | None:
    """The ``etcd`` key; replicas need it (they elect their leader there)."""
    if raw is None:
        for i, ctl in enumerate(controllers):
            if ctl.replicas > 1:
                c.err(f"controllers[{i}].replicas", "replicas need the etcd store: add etcd")
        return None
    m = c.mapping(raw, "etcd", [], ["members"])
    if m is None:
        return None
    members = m.get("members", 3)
    if not _int_in(members, 1, max(ETCD_MEMBERS)) or members not in ETCD_MEMBERS:
        want = ", ".join(map(str, ETCD_MEMBERS))
        c.err("etcd.members", f"bad members {members!r}: want one of {want}")
        return None
    if not controllers:
        c.err("etcd", "an etcd cluster needs controllers to use it")
        return None
    for k in range(members):  # the members' names share the lab's one namespace of names
        unique(f"etcd{k + 1}", "etcd.members")
    return Etcd(members)


def _host(c: _Checker, m: Mapping[str, Any], p: str) -> Host | None:
    role = choice(m.get("role", DEFAULT_ROLE), HOST_ROLES)
    if role is None:
        c.err(f"{p}.role", f"expected one of {', '.join(HOST_ROLES)}, got {m['role']!r}")
        return None
    return Host(m["name"], role)


def _vpc(
    c: _Checker, m: Mapping[str, Any], p: str, controllers: Mapping[str, Controller]
) -> Vpc | None:
    ctl = m.get("controller")
    if ctl is not None or controllers:
        ctl = c.ref(ctl, f"{p}.controller", "controller", controllers)
    subnets: list[Network] = []
    raw_subnets = m.get("subnets")
    if not isinstance(raw_subnets, list) or not raw_subnets:
        c.err(f"{p}.subnets", "expected a non-empty list of CIDRs")
    for sp, s in c.items(raw_subnets if isinstance(raw_subnets, list) else [], f"{p}.subnets"):
        net = c.network(s, sp)
        if net is None:
            continue
        if net.num_addresses < 4:
            c.err(sp, f"subnet {net} too small: need room for a gateway and endpoints")
            continue
        clash = next((o for o in subnets if o.version == net.version and _overlap(o, net)), None)
        if clash is not None:
            c.err(sp, f"subnet {net} overlaps {clash} in the same VPC")
            continue
        subnets.append(net)
    vni = m.get("vni")
    if vni is not None and (
        not isinstance(vni, int) or isinstance(vni, bool) or not 1 <= vni <= VNI_MAX
    ):
        c.err(f"{p}.vni", f"bad VNI {vni!r}: want an integer 1..{VNI_MAX}")
        return None
    asn = m.get("asn")
    if asn is not None and not _asn(c, asn, f"{p}.asn"):
        return None
    return Vpc(m["name"], ctl or "", tuple(subnets), vni, asn)


def _asn(c: _Checker, asn: object, path: str) -> bool:
    """A usable AS number (1..ASN_MAX, not reserved), else an error at ``path``."""
    if not _int_in(asn, 1, ASN_MAX):
        c.err(path, f"bad AS number {asn!r}: want an integer 1..{ASN_MAX}")
        return False
    if asn in RESERVED_ASNS:
        c.err(path, f"AS number {asn} is {RESERVED_ASNS[asn]}: not usable")
        return False
    return True


def _int_in(v: object, lo: int, hi: int) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _overlap(a: Network, b: Network) -> bool:
    return a.network_address in b or b.network_address in a


def _check_vnis(c: _Checker, vpcs: Sequence[Vpc]) -> None:
    seen: dict[int, str] = {}
    for i, v in enumerate(vpcs):
        if v.vni is None:
            continue
        if v.vni in seen:
            c.err(f"vpcs[{i}].vni", f"VNI {v.vni} already used by VPC {seen[v.vni]!r}")
        seen[v.vni] = v.name


def _endpoint(
    c: _Checker,
    m: Mapping[str, Any],
    p: str,
    vpcs: Mapping[str, Vpc],
    hosts: Mapping[str, Host],
) -> Endpoint | None:
    kind = m.get("kind", "vm")
    if kind not in ENDPOINT_KINDS:
        c.err(f"{p}.kind", f"unknown kind {kind!r}: want one of {', '.join(ENDPOINT_KINDS)}")
        return None
    vpc_name = c.ref(m.get("vpc"), f"{p}.vpc", "VPC", vpcs)
    if "ip" not in m:
        c.err(f"{p}.ip", "required key missing")
    ip = c.address(m.get("ip"), f"{p}.ip") if "ip" in m else None
    host: str | None = None
    if kind == "ilb":
        if "host" in m:
            c.err(f"{p}.host", "an ILB is a VIP and has no host")
    else:
        host = c.ref(m.get("host"), f"{p}.host", "host", hosts)
        if host is not None and hosts[host].role == "gateway":
            c.err(f"{p}.host", f"{host!r} is a gateway host: it runs no endpoints")
            host = None
        for key in ("backends", "spillover"):
            if key in m:
                c.err(f"{p}.{key}", f"only an ILB has {key}")
    mac = m.get("mac")
    if mac is not None and (not isinstance(mac, str) or not MAC_RE.match(mac.lower())):
        c.err(f"{p}.mac", f"bad MAC {mac!r}")
        mac = None
    elif mac is not None and int(mac[:2], 16) & 1:
        c.err(f"{p}.mac", f"MAC {mac!r} is multicast")
        mac = None
    if vpc_name is None or ip is None:
        return None
    vpc = vpcs[vpc_name]
    subnet = subnet_of(vpc, ip)
    if subnet is None:
        nets = ", ".join(str(s) for s in vpc.subnets)
        c.err(f"{p}.ip", f"{ip} is outside VPC {vpc_name!r} subnets ({nets})")
        return None
    if ip in reserved(subnet):
        c.err(f"{p}.ip", f"{ip} is reserved in {subnet} (network, gateway or broadcast)")
        return None
    defer = m.get("defer", False)
    if not isinstance(defer, bool):
        c.err(f"{p}.defer", f"expected true or false, got {defer!r}")
        return None
    return Endpoint(m["name"], vpc_name, ip, kind, host, mac.lower() if mac else None, (), defer)


def _check_endpoint_ips(c: _Checker, endpoints: Sequence[Endpoint]) -> None:
    seen: dict[tuple[str, Address], str] = {}
    for i, e in enumerate(endpoints):
        key = (e.vpc, e.ip)
        if key in seen:
            c.err(f"endpoints[{i}].ip", f"{e.ip} already used by {seen[key]!r} in VPC {e.vpc!r}")
        seen[key] = e.name


def _check_backends(c: _Checker, endpoints: list[Endpoint], raw: object) -> None:
    """Attach ILB backends once every endpoint is known (backends may be in any VPC)."""
    if not isinstance(raw, list):
        return
    by_name = {e.name: e for e in endpoints}
    for i, item in enumerate(raw):
        if (
            not isinstance(item, Mapping)
            or item.get("kind") != "ilb"
            or item.get("name") not in by_name
        ):
            continue
        idx = endpoints.index(by_name[item["name"]])
        lists: dict[str, list[Backend]] = {"backends": [], "spillover": []}
        for key, backends in lists.items():
            for bp, b in c.items(item.get(key), f"endpoints[{i}].{key}"):
                bm = c.mapping(b, bp, ["endpoint"], ["weight"])
                if bm is None:
                    continue
                target = c.ref(bm["endpoint"], f"{bp}.endpoint", "endpoint", by_name)
                weight = bm.get("weight", 1)
                if not _int_in(weight, 1, 65535):
                    c.err(f"{bp}.weight", f"bad weight {weight!r}: want an integer 1..65535")
                    continue
                if target is not None and not by_name[target].namespaced:
                    c.err(f"{bp}.endpoint", f"{target!r} is not a backend-capable endpoint")
                    continue
                own = target is not None and by_name[target].vpc == endpoints[idx].vpc
                if key == "spillover" and own:
                    c.err(f"{bp}.endpoint", f"{target!r} is in the ILB's VPC: not a peer's")
                    continue
                if target is not None:
                    backends.append(Backend(target, weight))
        endpoints[idx] = replace(
            endpoints[idx],
            backends=tuple(lists["backends"]),
            spillover=tuple(lists["spillover"]),
        )


def _check_spillover_peers(
    c: _Checker, endpoints: Sequence[Endpoint], peerings: Sequence[Peering], raw: object
) -> None:
    """An ILB's spillover backend is in a VPC that peers with the ILB's both ways, as the
    shard requires (docs/gateways.md): named here rather than by the shard's 400 once the lab
    is built."""
    sides = {(p.vpc, p.peer) for p in peerings}
    by_name = {e.name: e for e in endpoints}
    items = raw if isinstance(raw, list) else []
    names = [m.get("name") if isinstance(m, Mapping) else None for m in items]
    for ilb in endpoints:
        for j, s in enumerate(ilb.spillover):
            target = by_name[s.endpoint]
            if (ilb.vpc, target.vpc) not in sides or (target.vpc, ilb.vpc) not in sides:
                i = names.index(ilb.name)
                c.err(
                    f"endpoints[{i}].spillover[{j}].endpoint",
                    f"{s.endpoint!r} is in VPC {target.vpc!r}, which does not peer with "
                    f"{ilb.vpc!r} both ways (peerings)",
                )


def _parse_peerings(c: _Checker, raw: object, vpcs: Mapping[str, Vpc]) -> list[Peering]:
    out: list[Peering] = []
    seen: set[tuple[str, str]] = set()
    for p, item in c.items(raw, "peerings"):
        before = len(c.errors)
        m = c.mapping(
            item,
            p,
            ["vpc", "peer"],
            ["export", "inbound", "import_custom_routes", "preference", "forwarding"],
        )
        if m is None:
            continue
        vpc = c.ref(m["vpc"], f"{p}.vpc", "VPC", vpcs)
        peer = c.ref(m["peer"], f"{p}.peer", "VPC", vpcs)
        export = m.get("export")
        if export is not None:
            _check_export(c, export, f"{p}.export")
        inbound = next((i for i in INBOUND if i == m.get("inbound", "all")), None)
        if inbound is None:
            c.err(f"{p}.inbound", f"expected one of {', '.join(INBOUND)}, got {m['inbound']!r}")
        imports = m.get("import_custom_routes", False)
        if not isinstance(imports, bool):
            c.err(f"{p}.import_custom_routes", f"expected true or false, got {imports!r}")
        preference = m.get("preference")
        if preference is not None and not _int_in(preference, MIN_PREFERENCE, MAX_PREFERENCE):
            c.err(
                f"{p}.preference",
                f"bad preference {preference!r}: want an integer"
                f" {MIN_PREFERENCE}..{MAX_PREFERENCE}",
            )
        forwarding = choice(m.get("forwarding", DEFAULT_FORWARDING), FORWARDING)
        if forwarding is None:
            c.err(
                f"{p}.forwarding",
                f"expected one of {', '.join(FORWARDING)}, got {m['forwarding']!r}",
            )
        if len(c.errors) > before or vpc is None or peer is None or inbound is None:
            continue  # the file is refused anyway: no duplicate checks
        if vpc == peer:
            c.err(f"{p}.peer", f"VPC {vpc!r} cannot peer with itself")
        elif (vpc, peer) in seen:
            c.err(p, f"duplicate peering {vpc!r} -> {peer!r}")
        else:
            seen.add((vpc, peer))
            raw_export = export if isinstance(export, Mapping) else None
            fwd = forwarding or DEFAULT_FORWARDING
            out.append(Peering(vpc, peer, raw_export, inbound, imports, preference, fwd))
    return out


def _check_export(c: _Checker, raw: object, path: str) -> None:
    try:
        parse_export_policy(raw, path)
    except PolicyError as exc:
        c.err(exc.field, exc.detail)


def _onprem(
    c: _Checker,
    m: Mapping[str, Any],
    p: str,
    endpoints: Mapping[str, Endpoint],
    vpcs: Mapping[str, Vpc],
) -> Onprem | None:
    before = len(c.errors)
    asn = m.get("asn")
    good_asn = _asn(c, asn, f"{p}.asn")
    attach = c.ref(m.get("attach"), f"{p}.attach", "endpoint", endpoints)
    if attach is not None:
        e = endpoints[attach]
        vpc_asn = vpcs[e.vpc].asn or DEFAULT_ASN
        if good_asn and asn == vpc_asn:
            c.err(f"{p}.asn", f"{asn} is VPC {e.vpc!r}'s own AS number: only eBGP is supported")
        if e.kind not in ONPREM_ATTACH_KINDS:
            kinds = ", ".join(sorted(ONPREM_ATTACH_KINDS))
            c.err(f"{p}.attach", f"{attach!r} is a {e.kind}: an on-prem router attaches to {kinds}")
        elif e.ip.version != 4:
            c.err(f"{p}.attach", f"{attach!r} has an IPv6 address: BGP here is IPv4 only")
        elif not vpcs[e.vpc].controller:
            c.err(f"{p}.attach", f"VPC {e.vpc!r} has no controller to hold the BGP session")
    prefixes: list[ipaddress.IPv4Network] = []
    raw = m.get("prefixes")
    if not isinstance(raw, list) or not raw:
        c.err(f"{p}.prefixes", "expected a non-empty list of IPv4 CIDRs")
    for pp, x in c.items(raw if isinstance(raw, list) else [], f"{p}.prefixes"):
        net = c.network(x, pp)
        if net is None:
            continue
        if not isinstance(net, ipaddress.IPv4Network) or net.num_addresses < 4:
            c.err(pp, f"{net}: want an IPv4 prefix of at least 4 addresses (a LAN)")
        elif any(_overlap(net, o) for o in prefixes):
            c.err(pp, f"{net} overlaps another prefix of this router")
        else:
            prefixes.append(net)
    hosts: list[OnpremHost] = []
    for hp, h in c.items(m.get("hosts"), f"{p}.hosts"):
        hm = c.mapping(h, hp, ["name", "ip"], [])
        if hm is None:
            continue
        name = c.name(hm["name"], f"{hp}.name")
        ip = c.address(hm["ip"], f"{hp}.ip")
        if name is None or ip is None:
            continue
        lan = next((n for n in prefixes if ip in n), None)
        if not isinstance(ip, ipaddress.IPv4Address) or lan is None:
            c.err(f"{hp}.ip", f"{ip} is in none of the router's prefixes")
        elif ip in reserved(lan):
            c.err(f"{hp}.ip", f"{ip} is reserved in {lan} (network, gateway or broadcast)")
        else:
            hosts.append(OnpremHost(name, ip))
    if len(c.errors) != before or attach is None or not isinstance(asn, int):
        return None
    return Onprem(m["name"], asn, attach, tuple(prefixes), tuple(hosts))


def _check_onprem(
    c: _Checker, onprem: Sequence[Onprem], unique: Callable[[str | None, str], str | None]
) -> None:
    """On-prem host names share the lab's one namespace of names; one router per endpoint."""
    attached: dict[str, str] = {}
    for i, r in enumerate(onprem):
        if r.attach in attached:
            c.err(f"onprem[{i}].attach", f"{r.attach!r} already has router {attached[r.attach]!r}")
        attached[r.attach] = r.name
        for k, h in enumerate(r.hosts):
            unique(h.name, f"onprem[{i}].hosts[{k}].name")
