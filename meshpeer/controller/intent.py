"""Semantic validation of intent changes: pure functions from (intent, request) to a change.

Each function either returns what to write or raises IntentError naming the field, so a
rejected request leaves the store untouched. Structural checks (types, unknown fields, CIDR
syntax) happen earlier, at the REST edge.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from meshpeer.controller.model import (
    BGP_KINDS,
    DEFAULT_ASN,
    NEXT_HOP_KINDS,
    RESERVED_ASNS,
    Address,
    Backend,
    BgpPeer,
    Endpoint,
    Host,
    Intent,
    Network,
    Peering,
    Route,
    Spillover,
    Subnet,
    Vpc,
    derived_mac,
    reserved,
)
from meshpeer.directory import Directory
from meshpeer.protocol.gateways import DEFAULT_FORWARDING, DEFAULT_ROLE, Forwarding, HostRole
from meshpeer.protocol.peering import Inbound
from policies.export import ExportPolicy
from policies.overlap import find_overlaps
from policies.routes import DEFAULT_PREFERENCE

# Addresses an OHC never programs for an endpoint (ohc/model.py parse_ip skips them): a subnet
# may not overlap any, so every address it hands out is one a host can use.
NOT_UNICAST: tuple[tuple[Network, str], ...] = tuple(
    (ipaddress.ip_network(net), why)
    for net, why in (
        ("0.0.0.0/32", "unspecified"),
        ("127.0.0.0/8", "loopback"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("ff00::/8", "multicast"),
    )
)


class IntentError(Exception):
    """A rejected change. ``status`` is the HTTP status the REST layer answers with."""

    def __init__(self, status: int, field: str | None, detail: str) -> None:
        super().__init__(f"{field}: {detail}" if field else detail)
        self.status = status
        self.field = field
        self.detail = detail


def not_found(field: str | None, detail: str) -> IntentError:
    return IntentError(404, field, detail)


def conflict(field: str | None, detail: str) -> IntentError:
    return IntentError(409, field, detail)


def bad(field: str | None, detail: str) -> IntentError:
    return IntentError(400, field, detail)


def need_vpc(intent: Intent, vpc: str) -> Vpc:
    found = intent.vpcs.get(vpc)
    if found is None:
        raise not_found("vpc", f"no VPC {vpc!r} on this shard")
    return found


# --- VPCs and subnets -------------------------------------------------------------------


def owned_elsewhere(directory: Directory, name: str, owner: str, shard: str) -> IntentError:
    url = directory.shards[owner].url if owner in directory.shards else "not in the directory"
    return conflict(
        "name",
        f"VPC {name!r} belongs to shard {owner!r} ({url}), "
        f"not {shard!r}: create it there (GET /v1/placement/{name} on any shard says where)",
    )


def check_claim(directory: Directory, name: str, owner: str, shard: str) -> None:
    """``owner`` is what ``shard``'s claim of VPC ``name`` in etcd answered."""
    if owner != shard:
        raise owned_elsewhere(directory, name, owner, shard)


def new_vpc(
    intent: Intent,
    directory: Directory,
    shard: str,
    name: str,
    subnets: Sequence[Subnet],
    vni: int | None,
    asn: int | None = None,
) -> Vpc:
    if name in intent.vpcs:
        raise conflict("name", f"VPC {name!r} already exists")
    owner = directory.creator_conflict(name, shard)
    if owner is not None:
        raise owned_elsewhere(directory, name, owner, shard)
    lo, hi = directory.shards[shard].vni_range
    used = {v.vni for v in intent.vpcs.values()}
    if vni is None:
        vni = next((n for n in range(lo, hi + 1) if n not in used), None)
        if vni is None:
            raise conflict("vni", f"no free VNI left in this shard's range {lo}-{hi}")
    elif not lo <= vni <= hi:
        raise conflict("vni", f"VNI {vni} is outside this shard's range {lo}-{hi}")
    elif vni in used:
        other = next(v.name for v in intent.vpcs.values() if v.vni == vni)
        raise conflict("vni", f"VNI {vni} is already used by VPC {other!r}")
    if asn in RESERVED_ASNS:
        raise bad("asn", f"AS number {asn} is {RESERVED_ASNS[asn]}: not usable by a VPC")
    vpc = Vpc(name, vni, asn=DEFAULT_ASN if asn is None else asn)
    for i, s in enumerate(subnets):
        vpc = add_subnet(intent, vpc, s, {}, field=f"subnets[{i}]")
    return vpc


def add_subnet(
    intent: Intent,
    vpc: Vpc,
    subnet: Subnet,
    peer_ranges: Mapping[str, Sequence[Network]],
    field: str = "cidr",
) -> Vpc:
    """A subnet may not overlap its VPC's other subnets, nor any peer's ranges, nor an address
    no host can program (NOT_UNICAST); a /0 is a default route, not a subnet."""
    if any(s.name == subnet.name for s in vpc.subnets):
        raise conflict(
            f"{field}.name" if field != "cidr" else "name",
            f"subnet {subnet.name!r} already exists in VPC {vpc.name!r}",
        )
    if subnet.cidr.num_addresses < 4:
        raise bad(
            field, f"subnet {subnet.cidr} is too small: it needs room for a gateway and endpoints"
        )
    if subnet.cidr.prefixlen == 0:
        raise bad(field, f"{subnet.cidr} is a default route, not a subnet")
    for net, why in NOT_UNICAST:
        if net.version == subnet.cidr.version and net.overlaps(subnet.cidr):
            raise bad(
                field, f"subnet {subnet.cidr} overlaps {net} ({why}), which no host can program"
            )
    for ov in find_overlaps([subnet.cidr], [s.cidr for s in vpc.subnets]):
        raise conflict(
            field, f"{ov.local} {ov.relation} {ov.peer}, already a subnet of VPC {vpc.name!r}"
        )
    _check_peer_overlap([subnet.cidr], peer_ranges, field)
    return replace(vpc, subnets=(*vpc.subnets, subnet))


def _check_peer_overlap(
    local: Sequence[Network], peer_ranges: Mapping[str, Sequence[Network]], field: str
) -> None:
    for peer, ranges in sorted(peer_ranges.items()):
        for ov in find_overlaps(local, ranges):
            raise conflict(
                field,
                f"{ov.local} {ov.relation} {ov.peer} of peer VPC {peer!r}: peered VPCs may not overlap",
            )


def remove_subnet(intent: Intent, vpc: Vpc, name: str) -> Vpc:
    subnet = next((s for s in vpc.subnets if s.name == name), None)
    if subnet is None:
        raise not_found("subnet", f"no subnet {name!r} in VPC {vpc.name!r}")
    users = [e.name for e in intent.endpoints_of(vpc.name) if e.ip in subnet.cidr]
    if users:
        raise conflict("subnet", f"subnet {name!r} still has endpoints: {', '.join(users)}")
    return replace(vpc, subnets=tuple(s for s in vpc.subnets if s.name != name))


def check_vpc_delete(intent: Intent, name: str) -> Vpc:
    vpc = need_vpc(intent, name)
    live = {
        "peerings": [p.name for p in intent.peerings_of(name)],
        "endpoints": [e.name for e in intent.endpoints_of(name)],
        "routes": [r.name for r in intent.routes_of(name)],
    }
    held = [f"{k}: {', '.join(v)}" for k, v in live.items() if v]
    if held:
        raise conflict("vpc", f"VPC {name!r} still has {'; '.join(held)}; delete them first")
    return vpc


# --- endpoints -------------------------------------------------------------------------


def new_endpoint(
    intent: Intent,
    vpc_name: str,
    name: str,
    kind: str,
    ip: Address,
    mac: str | None,
    host: str | None,
    backends: Sequence[Backend],
    bgp: BgpPeer | None = None,
    spillover: Sequence[Spillover] = (),
) -> Endpoint:
    vpc = need_vpc(intent, vpc_name)
    if (vpc_name, name) in intent.endpoints:
        raise conflict("name", f"endpoint {name!r} already exists in VPC {vpc_name!r}")
    subnet = vpc.subnet_for(ip)
    if subnet is None:
        nets = ", ".join(str(s.cidr) for s in vpc.subnets) or "none"
        raise bad("ip", f"{ip} is outside every subnet of VPC {vpc_name!r} ({nets})")
    if ip in _reserved(subnet.cidr):
        raise bad("ip", f"{ip} is reserved in {subnet.cidr} (network, gateway or broadcast)")
    clash = intent.endpoint_with(vpc_name, ip)
    if clash is not None:
        raise conflict("ip", f"{ip} is already used by endpoint {clash.name!r}")
    if kind == "ilb":
        if host is not None:
            raise bad("host", "an ILB is a virtual IP and has no host")
        if not backends:
            raise bad("backends", "an ILB needs at least one backend")
        for i, b in enumerate(backends):
            target = intent.endpoints.get((vpc_name, b.endpoint))
            if target is None:
                raise bad(
                    f"backends[{i}].endpoint", f"no endpoint {b.endpoint!r} in VPC {vpc_name!r}"
                )
            if target.kind == "ilb":
                raise bad(f"backends[{i}].endpoint", f"{b.endpoint!r} is an ILB, not a backend")
        if len({b.endpoint for b in backends}) != len(backends):
            raise bad("backends", "a backend is listed twice")
        check_spillover(intent, vpc_name, ip, spillover)
    else:
        if host is None:
            raise bad("host", f"a {kind} endpoint needs a host")
        if backends:
            raise bad("backends", "only an ILB has backends")
        if spillover:
            raise bad("spillover", "only an ILB has spillover backends")
    mac = mac.lower() if mac else derived_mac(vpc_name, ip)
    same_mac = intent.endpoint_with(vpc_name, mac)
    if same_mac is not None:
        raise conflict("mac", f"MAC {mac} is already used by endpoint {same_mac.name!r}")
    ep = Endpoint(vpc_name, name, kind, ip, mac, host, tuple(backends), None, tuple(spillover))
    return ep if bgp is None else set_bgp(intent, ep, bgp)


def check_spillover(intent: Intent, vpc: str, vip: Address, spillover: Sequence[Spillover]) -> None:
    """An ILB's spillover backends (IPv4 VIPs only): each in a VPC this one peers with and
    that peers back, an existing non-ILB IPv4 endpoint of it that its side toward this VPC
    exports (else its hosts would never get it: docs/gateways.md, overload shift). A peer VPC
    of another shard is refused: its endpoints and sides are not known here."""
    if spillover and vip.version != 4:
        raise bad("spillover", f"spillover backends are for IPv4 VIPs only, not {vip}")
    peers = {p.peer_vpc for p in intent.peerings_of(vpc)}
    for i, s in enumerate(spillover):
        if s.vpc == vpc:
            raise bad(f"spillover[{i}].vpc", "a spillover backend is in a peered VPC, not this one")
        if s.vpc not in peers:
            raise bad(f"spillover[{i}].vpc", f"VPC {vpc!r} does not peer with {s.vpc!r}")
        if s.vpc not in intent.vpcs:
            raise bad(f"spillover[{i}].vpc", f"VPC {s.vpc!r} is not on this shard")
        back = next((p for p in intent.peerings_of(s.vpc) if p.peer_vpc == vpc), None)
        if back is None:
            raise bad(f"spillover[{i}].vpc", f"VPC {s.vpc!r} does not peer back with {vpc!r}")
        target = intent.endpoints.get((s.vpc, s.endpoint))
        where = f"spillover[{i}].endpoint"
        if target is None or target.kind == "ilb":
            what = "an ILB" if target else "not an endpoint"
            raise bad(where, f"{s.vpc}/{s.endpoint} is {what} of VPC {s.vpc!r}")
        if target.ip.version != 4:
            raise bad(where, f"{s.vpc}/{s.endpoint} ({target.ip}) is not of the VIP's IP version")
        if not back.export.exports_ip(target.ip):
            raise bad(where, f"{s.vpc}'s side {back.name!r} does not export {target.ip}")
    if len({(s.vpc, s.endpoint) for s in spillover}) != len(spillover):
        raise bad("spillover", "a spillover backend is listed twice")


@dataclass(frozen=True)
class NewEndpoint:
    """One item of a batch create: ``new_endpoint``'s arguments after the VPC."""

    name: str
    kind: str
    ip: Address
    mac: str | None
    host: str | None
    backends: tuple[Backend, ...] = ()
    bgp: BgpPeer | None = None
    spillover: tuple[Spillover, ...] = ()

    def check(self, intent: Intent, vpc: str) -> Endpoint:
        """The endpoint, as ``new_endpoint`` decides it."""
        return new_endpoint(
            intent, vpc, self.name, self.kind, self.ip, self.mac, self.host, self.backends,
            self.bgp, self.spillover,
        )  # fmt: skip


def new_endpoints(intent: Intent, vpc: str, items: Sequence[NewEndpoint]) -> list[Endpoint]:
    """A batch of new endpoints, each decided as ``new_endpoint`` decides with the ones before
    it in place: names, addresses, MACs and BGP addresses are unique across the batch too, and
    an ILB may list earlier ones as backends. All or nothing: a refusal names the item
    (``endpoints[3].ip``), and the intent is left as it was either way (the batch is put in
    place to be checked, then taken out; the caller commits it). O(batch)."""
    made: list[Endpoint] = []
    try:
        for i, it in enumerate(items):
            try:
                ep = it.check(intent, vpc)
            except IntentError as exc:
                field = f"endpoints[{i}]" + (f".{exc.field}" if exc.field else "")
                raise IntentError(exc.status, field, exc.detail) from None
            intent.put(ep)
            made.append(ep)
    finally:
        for ep in reversed(made):
            intent.drop("endpoint", f"{ep.vpc}/{ep.name}")
    return made


@functools.lru_cache(maxsize=1024)
def _reserved(subnet: Network) -> frozenset[Address]:
    """``reserved(subnet)``, built once per subnet rather than per endpoint written."""
    return frozenset(reserved(subnet))


LINK_LOCAL = ipaddress.IPv4Network("169.254.0.0/16")


def set_bgp(intent: Intent, ep: Endpoint, bgp: BgpPeer | None) -> Endpoint:
    """The endpoint with its BGP session set (None: removed). eBGP over link-local IPv4:
    the shard's one BGP speaker tells its sessions apart by the router's address, so a
    router address is used by one endpoint of this shard at most, and is never the shard's
    side of another session (docs/routing.md)."""
    if bgp is None:
        return replace(ep, bgp=None)
    if ep.kind not in BGP_KINDS:
        kinds = ", ".join(sorted(BGP_KINDS))
        raise bad("bgp", f"a {ep.kind} endpoint holds no BGP session: only {kinds} do")
    if ep.ip.version != 4:
        raise bad("bgp", "BGP sessions are IPv4 only: the endpoint has an IPv6 address")
    for field, ip in (("bgp.peer_ip", bgp.peer_ip), ("bgp.local_ip", bgp.local_ip)):
        if ip not in LINK_LOCAL or ip in (LINK_LOCAL.network_address, LINK_LOCAL[-1]):
            raise bad(field, f"{ip} is not a link-local unicast address (169.254.0.0/16)")
    if bgp.peer_ip == bgp.local_ip:
        raise bad("bgp.local_ip", "the shard's address and the router's must differ")
    if bgp.peer_asn in RESERVED_ASNS:
        why = RESERVED_ASNS[bgp.peer_asn]
        raise bad("bgp.peer_asn", f"AS number {bgp.peer_asn} is {why}: not usable by a router")
    asn = intent.vpcs[ep.vpc].asn
    if bgp.peer_asn == asn:
        raise bad("bgp.peer_asn", f"{asn} is the VPC's own AS number: only eBGP is supported")
    for other in intent.bgp_endpoints():  # the few with a session, not every endpoint
        if other.bgp is None or (other.vpc, other.name) == (ep.vpc, ep.name):
            continue
        if other.bgp.peer_ip == bgp.peer_ip:
            raise conflict(
                "bgp.peer_ip",
                f"{bgp.peer_ip} is already the router of endpoint {other.vpc}/{other.name}",
            )
        if other.bgp.local_ip == bgp.peer_ip:
            raise conflict(
                "bgp.peer_ip",
                f"{bgp.peer_ip} is the shard's address of endpoint {other.vpc}/{other.name}'s"
                " session: it cannot be a router's",
            )
        if other.bgp.peer_ip == bgp.local_ip:
            raise conflict(
                "bgp.local_ip",
                f"{bgp.local_ip} is the router of endpoint {other.vpc}/{other.name}: it cannot"
                " be the shard's address",
            )
    return replace(ep, bgp=bgp)


def check_endpoint_delete(intent: Intent, vpc: str, name: str) -> Endpoint:
    need_vpc(intent, vpc)
    ep = intent.endpoints.get((vpc, name))
    if ep is None:
        raise not_found("endpoint", f"no endpoint {name!r} in VPC {vpc!r}")
    ilbs = [e.name for e in intent.endpoints_of(vpc) if any(b.endpoint == name for b in e.backends)]
    if ilbs:
        raise conflict("endpoint", f"{name!r} is a backend of ILB {', '.join(ilbs)}")
    spilling = [
        f"{e.vpc}/{e.name}"
        for v in sorted(intent.spilling_into(vpc))
        for e in intent.endpoints_of(v)
        if any((s.vpc, s.endpoint) == (vpc, name) for s in e.spillover)
    ]
    if spilling:
        raise conflict("endpoint", f"{name!r} is a spillover backend of ILB {', '.join(spilling)}")
    routes = [r.name for r in intent.routes_of(vpc) if r.next_hop == ep.ip]
    if routes:
        raise conflict("endpoint", f"{name!r} is the next hop of route {', '.join(routes)}")
    return ep


# --- peerings and routes --------------------------------------------------------------


@dataclass(frozen=True)
class PeerFacts:
    """What this shard knows of a peer VPC (from its own store or from federation)."""

    exists: bool
    ranges: tuple[Network, ...] = ()


def new_peering(
    intent: Intent,
    vpc_name: str,
    name: str,
    peer_vpc: str,
    export: ExportPolicy,
    import_custom_routes: bool,
    peer: PeerFacts | None,
    inbound: Inbound = "all",
    preference: int = DEFAULT_PREFERENCE,
    forwarding: Forwarding = DEFAULT_FORWARDING,
) -> Peering:
    """``peer`` is None when the peer's shard could not be asked: accepted, INACTIVE for now."""
    vpc = need_vpc(intent, vpc_name)
    if (vpc_name, name) in intent.peerings:
        raise conflict("name", f"peering {name!r} already exists in VPC {vpc_name!r}")
    if peer_vpc == vpc_name:
        raise bad("peer_vpc", f"VPC {vpc_name!r} cannot peer with itself")
    other = next((p for p in intent.peerings_of(vpc_name) if p.peer_vpc == peer_vpc), None)
    if other is not None:
        raise conflict(
            "peer_vpc", f"VPC {vpc_name!r} already peers with {peer_vpc!r} (peering {other.name!r})"
        )
    if peer is not None:
        if not peer.exists:
            raise not_found("peer_vpc", f"VPC {peer_vpc!r} does not exist on its shard")
        _check_peer_overlap([s.cidr for s in vpc.subnets], {peer_vpc: peer.ranges}, "peer_vpc")
    return Peering(
        vpc_name, name, peer_vpc, export, import_custom_routes, inbound, preference, forwarding
    )


def check_peering(intent: Intent, vpc: str, name: str) -> Peering:
    need_vpc(intent, vpc)
    found = intent.peerings.get((vpc, name))
    if found is None:
        raise not_found("peering", f"no peering {name!r} in VPC {vpc!r}")
    return found


def new_route(
    intent: Intent, vpc_name: str, name: str, prefix: Network, next_hop: Address, priority: int
) -> Route:
    vpc = need_vpc(intent, vpc_name)
    if (vpc_name, name) in intent.routes:
        raise conflict("name", f"route {name!r} already exists in VPC {vpc_name!r}")
    if prefix.version != next_hop.version:
        raise bad("next_hop", f"next hop {next_hop} is not of the same IP family as {prefix}")
    hop = next((e for e in intent.endpoints_of(vpc_name) if e.ip == next_hop), None)
    if hop is None:
        raise bad("next_hop", f"{next_hop} is not an endpoint of VPC {vpc_name!r}")
    if hop.kind not in NEXT_HOP_KINDS:
        raise bad("next_hop", f"{hop.name!r} is an {hop.kind} and cannot be a next hop")
    for s in vpc.subnets:
        if prefix.version == s.cidr.version and prefix.subnet_of(s.cidr):  # type: ignore[arg-type]
            raise conflict("prefix", f"{prefix} is inside subnet {s.cidr}: subnet routes win")
    return Route(vpc_name, name, prefix, next_hop, priority)


def check_route(intent: Intent, vpc: str, name: str) -> Route:
    need_vpc(intent, vpc)
    found = intent.routes.get((vpc, name))
    if found is None:
        raise not_found("route", f"no route {name!r} in VPC {vpc!r}")
    return found


def new_host(name: str, underlay_ip: Address, role: HostRole = DEFAULT_ROLE) -> Host:
    return Host(name, underlay_ip, role)
