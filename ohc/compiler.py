"""The OHC's flow compiler: ``compile_host(view) -> DesiredState``, pure and deterministic.

No I/O, no clock, no counters: the same HostView always gives the same flows and groups
(group ids are hashes of the ILB's identity), so an incrementally maintained view compiles to
exactly what a view rebuilt from scratch compiles to. The flow syncer diffs the result against
what the switch holds.

Every flow passes ``pipeline.check_flow`` as it is built and carries a cookie naming the object
it exists for (``ohc.cookies``). The tables and a packet walk are in ``docs/pipeline.md``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from ohc.cookies import Kind, cookie, object_hash
from ohc.flows import (
    Action,
    Apply,
    Bucket,
    Conntrack,
    DecTtl,
    Flow,
    Goto,
    Group,
    Instruction,
    Learn,
    Match,
    MatchValue,
    Move,
    Output,
    Resubmit,
    SetField,
    ToGroup,
    WriteMetadata,
)
from ohc.model import (
    Address,
    Destination,
    HostView,
    LoadBalancer,
    LocalPort,
    Network,
    PeerView,
    RouteEntry,
    VpcServices,
)
from ohc.pipeline import (
    ALL_METADATA,
    ARP_REPLY,
    ARP_REPLY_TABLE,
    ARP_REQUEST,
    ARP_TARGET,
    BFD_UDP_PORT,
    BFD_VNI,
    CLASSIFY,
    CONTEXT_MASK,
    CT_EST,
    CT_INV,
    CT_REL,
    CT_TRK,
    ETH_ARP,
    ETH_IPV4,
    ETH_IPV6,
    GATEWAY_RELAY,
    INBOUND_CT,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    L3_LOOKUP,
    LB_AFFINITY,
    LB_DELIVER,
    LB_LEARN,
    LB_PICK,
    ND_SOLICIT,
    ND_TARGET,
    OFFLOAD_COUNT,
    OFPP_CONTROLLER,
    OFPP_IN_PORT,
    PIPELINE,
    PORT_MASK,
    PORT_SHIFT,
    ROUTED,
    ROUTED_HOP,
    TUNNEL_DELIVER,
    TUNNEL_DST,
    TUNNEL_SRC,
    VPC_MASK,
    check_flow,
)
from ohc.spillover import bucket_weights
from policies.routes import (
    Lookup,
    PeerRoutes,
    Route,
    RouteDecision,
    decide_routes,
    installed_routes,
)

# Priorities. L3_LOOKUP: exact own addresses beat exact peer addresses beat any prefix route;
# routes are longest-prefix first (100 + prefix length, at most 228).
PRIO_OWN = 1000
PRIO_PEER = 900
PRIO_ROUTE = 100
PRIO_SELF_ARP = 200
PRIO_ND = PRIO_OWN + 1  # a port's neighbour solicitations, above its IPv6 anti-spoofing flow
PRIO_VIP_DELIVER = 1010  # a VIP by backend MAC, above exact addresses
PRIO_DEFAULT = 100
PRIO_PIN = 200  # lb_pick: a packet of a pinned connection, above the select group
PRIO_BRIDGED = 10
PRIO_MISS = 0

MAX_GROUP_ID = 0x7FFF_FFFF


@dataclass(frozen=True)
class DesiredState:
    """The flows and groups a host should hold. ``notes`` explain what was left out and why."""

    flows: frozenset[Flow]
    groups: frozenset[Group]
    notes: tuple[str, ...] = ()

    def text(self) -> str:
        groups = sorted(g.text() for g in self.groups)
        flows = sorted(self.flows, key=lambda f: (f.table, -f.priority, f.text()))
        return "\n".join([*groups, *(f.text() for f in flows)])


def gateway_mac(vni: int) -> str:
    """The fixed MAC of every subnet gateway of the VPC with this VNI (locally administered)."""
    return "02:6d:70:" + ":".join(f"{(vni >> s) & 0xFF:02x}" for s in (16, 8, 0))


def group_id_of(owner: str) -> int:
    """The preferred group id of an ILB in one VPC context (a hash; see ``assign_groups``)."""
    return (object_hash(owner) & MAX_GROUP_ID) or 1


# --- match helpers -------------------------------------------------------------------------


def _eth_type(ip: Address | Network) -> int:
    return ETH_IPV4 if ip.version == 4 else ETH_IPV6


_IP_FIELDS = {(v, d): f"ipv{v}_{d}" for v in (4, 6) for d in ("src", "dst")}  # one str each


def _ip_field(ip: Address | Network, direction: str) -> str:
    return _IP_FIELDS[ip.version, direction]


def _prefix_value(net: Network) -> MatchValue | None:
    """A masked match value; exact for a host prefix, None (no field at all) for /0."""
    if net.prefixlen == 0:
        return None
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net.network_address), str(net.netmask)


def _ip_match(direction: str, where: Address | Network) -> dict[str, MatchValue]:
    """eth_type plus ipvN_src/dst for an address or a prefix."""
    out: dict[str, MatchValue] = {"eth_type": _eth_type(where)}
    if isinstance(where, ipaddress.IPv4Network | ipaddress.IPv6Network):
        value = _prefix_value(where)
        if value is not None:
            out[_ip_field(where, direction)] = value
    else:
        out[_ip_field(where, direction)] = str(where)
    return out


def _address_match(
    out: _Out, direction: str, ip: Address, rest: tuple[tuple[str, MatchValue], ...]
) -> Match:
    """eth_type, ipvN_src/dst of one address, then ``rest`` (fields named after it, in order):
    the match ``add`` would sort out of a dict, built directly. One destination's flows are
    the bulk of a compile, and the dict and the sort were ~15% of it (measured)."""
    eth = ("eth_type", ETH_IPV4 if ip.version == 4 else ETH_IPV6)
    own = (_IP_FIELDS[ip.version, direction], str(ip))
    keep = out.shared
    if keep is None:
        return Match((eth, own, *rest))
    return Match((keep.setdefault(eth, eth), own, *[keep.setdefault(p, p) for p in rest]))


def _vpc(vni: int) -> tuple[int, int]:
    """metadata match: this VPC context, routed or not."""
    return vni, VPC_MASK


def _routed(vni: int) -> tuple[int, int]:
    """metadata match: this VPC context, and only packets sent to the gateway MAC."""
    return vni | ROUTED, CONTEXT_MASK


def _route_priority(net: Network) -> int:
    return PRIO_ROUTE + net.prefixlen


# --- the collector -------------------------------------------------------------------------


class _Out:
    """Flows and groups being built. The first flow for a (table, priority, match) wins."""

    def __init__(self, shared: SharedPairs | None = None) -> None:
        self.flows: dict[tuple[int, int, Match], Flow] = {}
        self.groups: dict[int, Group] = {}
        self.notes: list[str] = []
        # Match pairs many flows hold (VPC metadata, eth_type, a host's tunnel source): one
        # object each, kept by the caller across builds (the engine: ~25 MiB less at 50k
        # peer endpoints). Addresses are each a destination's own and not kept here.
        self.shared = shared
        self._owner: tuple[Kind, str] | None = None
        self._cookie = 0

    def add(
        self,
        table: int,
        priority: int,
        match: dict[str, MatchValue],
        instructions: Iterable[Instruction],
        owner: tuple[Kind, str],
    ) -> None:
        pairs = sorted(match.items())
        if self.shared is not None:
            keep = self.shared
            pairs = [p if p[0] in _OWN_VALUES else keep.setdefault(p, p) for p in pairs]
        self.add_match(table, priority, Match(pairs), tuple(instructions), owner)

    def add_match(
        self,
        table: int,
        priority: int,
        match: Match,
        instructions: tuple[Instruction, ...],
        owner: tuple[Kind, str],
    ) -> None:
        """``add`` with the match built already (``_address_match``)."""
        if owner != self._owner:  # a unit's flows share their owner: hash it once
            self._owner, self._cookie = owner, cookie(*owner)
        flow = check_flow(Flow(table, priority, match, instructions, self._cookie), PIPELINE)
        self.put(flow, owner)

    def put(self, flow: Flow, owner: tuple[Kind, str]) -> None:
        have = self.flows.get(flow.key)
        if have is None:
            self.flows[flow.key] = flow
        elif have.instructions != flow.instructions:
            self.notes.append(f"{owner[0].name} {owner[1]}: conflicts with {have.text()}")

    def note(self, text: str) -> None:
        self.notes.append(text)


# Match pairs and tunnel actions many flows hold: the caller keeps one of each across builds.
SharedPairs = dict[Hashable, Any]
_OWN_VALUES = frozenset(  # match fields whose values are mostly one object's own
    {"ipv4_src", "ipv4_dst", "ipv6_src", "ipv6_dst", "arp_tpa", "arp_spa", "ipv6_nd_target"}
)
_Event = tuple[Flow, tuple[Kind, str]] | str  # a flow put, or a note


class Recorder(_Out):
    """Records what one unit of compilation puts and notes, in order (``ohc.engine``)."""

    def __init__(self, shared: SharedPairs | None = None) -> None:
        super().__init__(shared)
        self.events: list[_Event] = []

    def put(self, flow: Flow, owner: tuple[Kind, str]) -> None:
        self.events.append((flow, owner))

    def note(self, text: str) -> None:
        self.events.append(text)


# --- compiling ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Ctx:
    """One local VPC being compiled, with what it needs from the rest of the host."""

    view: HostView
    vpc: str
    vni: int
    own: VpcServices
    peers: tuple[PeerView, ...]
    ports: tuple[LocalPort, ...]  # this VPC's local ports
    local: dict[tuple[str, Address], LocalPort]  # (vpc, ip) -> local port, every VPC
    local_vpcs: frozenset[str]  # the VPCs in ``local``: most lookups can skip hashing an IP
    subnets: tuple[Network, ...]  # this VPC's own subnets (routes and ports)
    routes: _Routes  # the VPC's route decisions (policies.routes.decide_routes)
    replies_only: frozenset[tuple[str, str]]  # (local VPC, peer VPC): its side says "replies"
    subnet_keys: tuple[tuple[int, int, int], ...] = ()  # ``subnets`` as (version, net, mask)

    def __post_init__(self) -> None:
        keys = tuple((n.version, int(n.network_address), int(n.netmask)) for n in self.subnets)
        object.__setattr__(self, "subnet_keys", keys)

    def one_way(self, peer: PeerView) -> bool:
        """Does this VPC let in only replies from ``peer``? Then what it sends there is
        committed, and what comes from there is checked, in the local port's zone."""
        return (self.vpc, peer.peer_vpc) in self.replies_only

    def takes_replies_only(self) -> bool:
        return any(vpc == self.vpc for vpc, _ in self.replies_only)

    def reaches(self, peer: PeerView, ip: Address) -> bool:
        """Does the effective table send ``ip`` to ``peer``? Only when its longest installed
        prefix is the peer's subnet route (not a local or other peer's route that won)."""
        found = self.routes.reach.get(peer.peer_vpc, _NOWHERE).find(ip)
        return found is not None and found.kind == "subnet" and found.origin == peer.peer_vpc


_NOT_ROUTED = "its effective route is not the peer's subnet route"
_Entries = dict[tuple[Route, bool], tuple[RouteEntry, PeerView | None]]
_NOWHERE = Lookup(())


@dataclass(frozen=True)
class _Routes:
    """One VPC's route decisions, the routes they are about, and per peer VPC the installed
    routes that decide which of the peer's addresses it is sent (``Ctx.reaches``)."""

    decisions: tuple[RouteDecision, ...]
    entries: _Entries  # (route, from a peer) -> the route as received, and from which peer
    reach: dict[str, Lookup]


def _decide(own: VpcServices, peers: Iterable[PeerView]) -> _Routes:
    """``policies.routes.decide_routes`` over the routes this host was sent (the peer's service
    set is shared by every peer under one policy: the local peering's flag filters)."""
    entries: _Entries = {}

    def taken(routes: Iterable[RouteEntry], via: PeerView | None) -> tuple[Route, ...]:
        """The usable routes (a static route needs its next hop), each remembered once."""
        kept: list[Route] = []
        for r in routes:
            hop = "" if r.next_hop is None else str(r.next_hop.ip)
            route = Route(r.prefix, r.kind, r.vpc, hop, r.priority)
            key = (route, via is not None)
            if (r.kind == "subnet" or r.next_hop is not None) and key not in entries:
                entries[key] = (r, via)
                kept.append(route)
        return tuple(kept)

    local = taken(own.routes, None)
    peers = tuple(peers)
    imports = [
        PeerRoutes(taken(p.services.routes, p), p.import_custom_routes, p.preference) for p in peers
    ]
    decisions = decide_routes(local, imports)
    table = Lookup(installed_routes(decisions))
    reach = {
        p.peer_vpc: table.around(r.prefix for r in p.services.routes if r.kind == "subnet")
        for p in peers
    }
    return _Routes(decisions, entries, reach)


def compile_host(view: HostView) -> DesiredState:
    """Every flow and group this host's ``br-int`` should hold for ``view``."""
    return _compile(view)


def contexts(view: HostView) -> tuple[Ctx, ...]:
    """One ``Ctx`` per local VPC, in compile order (sorted by name). Reads no destinations:
    the engine (``ohc.engine``) builds them from a view whose services hold none."""
    local = {(p.vpc, p.ip): p for p in view.local_ports}
    local_vpcs = frozenset(vpc for vpc, _ in local)
    vni_of = view.vpc_vni()
    replies_only = frozenset((p.vpc, p.peer_vpc) for p in view.peers if p.inbound == "replies")
    out = []
    for vpc in sorted(vni_of):
        own = view.own_of(vpc) or VpcServices(vpc, vni_of[vpc])
        ports = tuple(p for p in view.local_ports if p.vpc == vpc)
        subnets = {r.prefix for r in own.routes if r.kind == "subnet"}
        subnets |= {p.prefix for p in ports if p.prefix is not None}
        out.append(
            Ctx(
                view,
                vpc,
                vni_of[vpc],
                own,
                view.peers_of(vpc),
                ports,
                local,
                local_vpcs,
                tuple(sorted(subnets, key=lambda n: (n.version, str(n)))),
                _decide(own, view.peers_of(vpc)),
                replies_only,
            )
        )
    return tuple(out)


def dest_context(ctx: Ctx, peer: PeerView | None) -> tuple[Hashable, ...]:
    """Everything ``dest_flows`` reads besides the destination and its local port (own
    destinations: ``peer`` None): keep in step with it and the helpers it calls."""
    parts: tuple[Hashable, ...] = (
        ctx.vpc,
        ctx.vni,
        ctx.view.local_underlay_ip,
        ctx.view.tunnel_port,
    )
    if peer is not None:
        reach = ctx.routes.reach.get(peer.peer_vpc)
        parts += (peer.peer_vpc, peer.policy_id, ctx.subnets, reach)
        # one-way either side: commit toward the peer; a ct check at its local ports
        parts += (ctx.one_way(peer), (peer.peer_vpc, ctx.vpc) in ctx.replies_only)
        parts += (peer.forwarding,)  # offloaded destinations: the engine redoes those
    return parts


def _compile(view: HostView) -> DesiredState:
    out = _Out()
    infra_flows(out)
    groups = assign_groups(view, view.vpc_vni())
    for ctx in contexts(view):
        vpc_flows(out, ctx)
        for p in ctx.ports:  # local ports first: they win over stream copies of themselves
            port_flows(out, ctx, p)
        for d in ctx.own.destinations:
            dest_flows(out, ctx, d, None)
        for lb in ctx.own.load_balancers:
            lb_flows(out, ctx, lb, None, groups)
        for peer in ctx.peers:
            for d in peer.services.destinations:
                dest_flows(out, ctx, d, peer)
            for lb in peer.services.load_balancers:
                lb_flows(out, ctx, lb, peer, groups)
        route_flows(out, ctx, groups)
    relay_all(out, view)
    return DesiredState(
        frozenset(out.flows.values()), frozenset(out.groups.values()), tuple(out.notes)
    )


def infra_flows(out: _Out) -> None:
    for table in PIPELINE.values():
        out.add(table.id, PRIO_MISS, {}, (), (Kind.INFRA, f"miss/{table.name}"))
    out.add(ROUTED_HOP, PRIO_BRIDGED, {}, (Goto(L3_LOOKUP),), (Kind.INFRA, "bridged"))


def vpc_flows(out: _Out, ctx: Ctx) -> None:
    """Tunnel classification, the routed hop and the gateway ARP answers of one VPC."""
    owner = (Kind.VPC, ctx.vpc)
    gw = gateway_mac(ctx.vni)
    if ctx.view.tunnel_port is None:
        out.note(f"{ctx.vpc}: br-int has no tunnel port: nothing to or from other hosts")
    else:
        out.add(
            CLASSIFY,
            PRIO_OWN,
            {"in_port": ctx.view.tunnel_port, "tunnel_id": ctx.vni},
            (WriteMetadata(ctx.vni, ALL_METADATA), Goto(TUNNEL_DST)),
            owner,
        )
    for eth_type in (ETH_IPV4, ETH_IPV6):  # dec_ttl needs an IP match (OVS: MATCH_INCONSISTENT)
        out.add(
            ROUTED_HOP,
            PRIO_DEFAULT,
            {"metadata": _vpc(ctx.vni), "eth_dst": gw, "eth_type": eth_type},
            (
                Apply((DecTtl(), SetField("eth_src", gw))),
                WriteMetadata(ROUTED, ROUTED),
                Goto(L3_LOOKUP),
            ),
            owner,
        )
    gateways = {r.gateway for r in ctx.own.routes if r.kind == "subnet" and r.gateway}
    gateways |= {p.gateway for p in ctx.ports if p.gateway is not None}
    for ip in sorted(gateways, key=lambda a: (a.version, int(a))):
        _arp_flows(out, ctx, ip, gw, owner)


def _arp_flows(out: _Out, ctx: Ctx, ip: Address, mac: str, owner: tuple[Kind, str]) -> None:
    """Answer "who has ``ip``?" with ``mac``: ARP for IPv4, neighbour discovery for IPv6."""
    if ip.version != 4:
        _nd_flows(out, ctx, ip, mac, owner)
        return
    # First half of the ARP reply: make the request a reply from (ip, mac).
    out.add(
        ARP_TARGET,
        PRIO_DEFAULT,
        {
            "metadata": _vpc(ctx.vni),
            "eth_type": ETH_ARP,
            "arp_op": ARP_REQUEST,
            "arp_tpa": str(ip),
        },
        (
            Apply(
                (
                    SetField("eth_src", mac),
                    SetField("arp_op", ARP_REPLY),
                    SetField("arp_sha", mac),
                    SetField("arp_spa", str(ip)),
                )
            ),
            Goto(ARP_REPLY_TABLE),
        ),
        owner,
    )


def _nd_match(ctx: Ctx, target: Address) -> dict[str, MatchValue]:
    return {
        "metadata": _vpc(ctx.vni),
        "eth_type": ETH_IPV6,
        "ip_proto": IPPROTO_ICMPV6,
        "icmpv6_type": ND_SOLICIT,
        "ipv6_nd_target": str(target),
    }


def _nd_flows(out: _Out, ctx: Ctx, ip: Address, mac: str, owner: tuple[Kind, str]) -> None:
    """A solicitation for ``ip`` goes to the OHC with the answer's MAC in eth_dst.

    OpenFlow 1.3's OXM fields cannot turn a solicitation into an advertisement (the option
    changes type; the flags are no standard field), so, as OVN does, the OHC builds the answer
    (``ohc.nd``); the flow supplies the MAC and its cookie says whether it is a router."""
    out.add(
        ND_TARGET,
        PRIO_DEFAULT,
        _nd_match(ctx, ip),
        (Apply((SetField("eth_dst", mac), Output(OFPP_CONTROLLER))),),
        owner,
    )


def _classify_ip(
    out: _Out,
    ctx: Ctx,
    p: LocalPort,
    source: Address | Network,
    priority: int,
    owner: tuple[Kind, str],
) -> None:
    """Anti-spoofing: packets from port ``p`` with its MAC and this source enter the VPC."""
    out.add(
        CLASSIFY,
        priority,
        {"in_port": p.ofport, "eth_src": p.mac, **_ip_match("src", source)},
        (WriteMetadata(ctx.vni, ALL_METADATA), Goto(ROUTED_HOP)),
        owner,
    )


def _tunnel_dst(
    out: _Out,
    ctx: Ctx,
    p: LocalPort,
    dst: Address | Network,
    priority: int,
    owner: tuple[Kind, str],
    by_mac: bool = False,
) -> None:
    """Tunnel ingress: packets of this VPC for ``dst`` are for port ``p`` (source checked next)."""
    match: dict[str, MatchValue] = {"metadata": _vpc(ctx.vni), **_ip_match("dst", dst)}
    if by_mac:
        match["eth_dst"] = p.mac
    out.add(
        TUNNEL_DST,
        priority,
        match,
        (WriteMetadata(p.ofport << PORT_SHIFT, PORT_MASK), Goto(TUNNEL_SRC)),
        owner,
    )


def port_flows(out: _Out, ctx: Ctx, p: LocalPort) -> None:
    owner = (Kind.PORT, f"{p.vpc}/{p.name}")
    _classify_ip(out, ctx, p, p.ip, PRIO_OWN, owner)
    if p.ip.version == 4:
        out.add(
            CLASSIFY,
            PRIO_OWN,
            {
                "in_port": p.ofport,
                "eth_src": p.mac,
                "eth_type": ETH_ARP,
                "arp_spa": str(p.ip),
                "arp_sha": p.mac,
            },
            (WriteMetadata(ctx.vni, ALL_METADATA), Goto(ARP_TARGET)),
            owner,
        )
        # Never answer a port about its own address (gratuitous ARP, duplicate checks).
        out.add(
            ARP_TARGET,
            PRIO_SELF_ARP,
            {
                "metadata": _vpc(ctx.vni),
                "in_port": p.ofport,
                "eth_type": ETH_ARP,
                "arp_op": ARP_REQUEST,
                "arp_tpa": str(p.ip),
            },
            (),
            owner,
        )
        out.add(
            ARP_REPLY_TABLE,
            PRIO_DEFAULT,
            {"in_port": p.ofport, "eth_type": ETH_ARP},
            (
                Apply(
                    (
                        SetField("eth_dst", p.mac),
                        SetField("arp_tha", p.mac),
                        SetField("arp_tpa", str(p.ip)),
                        Output(OFPP_IN_PORT),
                    )
                ),
            ),
            owner,
        )
    else:
        out.add(
            CLASSIFY,
            PRIO_ND,
            {
                "in_port": p.ofport,
                "eth_src": p.mac,
                **_ip_match("src", p.ip),
                "ip_proto": IPPROTO_ICMPV6,
                "icmpv6_type": ND_SOLICIT,
            },
            (WriteMetadata(ctx.vni, ALL_METADATA), Goto(ND_TARGET)),
            owner,
        )
        out.add(ND_TARGET, PRIO_SELF_ARP, {**_nd_match(ctx, p.ip), "in_port": p.ofport}, (), owner)
    _arp_flows(out, ctx, p.ip, p.mac, owner)
    out.add(
        L3_LOOKUP,
        PRIO_OWN,
        {"metadata": _vpc(ctx.vni), **_ip_match("dst", p.ip)},
        (Apply((SetField("eth_dst", p.mac), Output(p.ofport))),),
        owner,
    )
    _tunnel_dst(out, ctx, p, p.ip, PRIO_OWN, owner)
    out.add(
        TUNNEL_DELIVER,
        PRIO_DEFAULT,
        {"metadata": (ctx.vni | p.ofport << PORT_SHIFT, VPC_MASK | PORT_MASK)},
        (Apply((Output(p.ofport),)),),
        owner,
    )
    if ctx.takes_replies_only():
        for state in (CT_EST, CT_REL):  # a connection the port opened, or an error about one
            out.add(
                INBOUND_CT,
                PRIO_DEFAULT,
                {"ct_zone": p.ofport, "ct_state": (CT_TRK | state, CT_TRK | state | CT_INV)},
                (Apply((Output(p.ofport),)),),
                owner,
            )


# ct zones are the local ports' ofports (<= 0xFEFF): the sending port's for a commit, and
# the receiving port's for a check, which tunnel_dst put in metadata bits 32-47.
COMMIT_IN_SENDER_ZONE = Conntrack(commit=True, zone_field="in_port")
CHECK_IN_RECEIVER_ZONE = Conntrack(zone_field="metadata", zone_start=PORT_SHIFT, table=INBOUND_CT)
# the instructions of every source check: one tuple each, not one per flow
_CHECK_IN_RECEIVER_ZONE = (Apply((CHECK_IN_RECEIVER_ZONE,)),)
_TO_TUNNEL_DELIVER = (Goto(TUNNEL_DELIVER),)


def _forward(ctx: Ctx, d: Destination) -> tuple[Action, ...] | None:
    """Actions that take a packet to ``d``: its local port, or Geneve to its host with its VNI.
    A local port whose VPC lets in only replies from this one gets it through conntrack."""
    port = _local_port(ctx, d)
    if port is not None:
        if d.vpc != ctx.vpc and (d.vpc, ctx.vpc) in ctx.replies_only:
            check = Conntrack(zone=port.ofport, table=INBOUND_CT)
            return SetField("eth_dst", port.mac), check
        return SetField("eth_dst", port.mac), Output(port.ofport)
    if d.host_ip == ctx.view.local_underlay_ip or ctx.view.tunnel_port is None:
        return None  # said to be on this host but not attached here, or no tunnel: nowhere
    return (
        SetField("eth_dst", d.mac),
        SetField("tunnel_id", d.vni),
        SetField("tun_ipv4_dst", str(d.host_ip)),
        Output(ctx.view.tunnel_port),
    )


def _local_port(ctx: Ctx, d: Destination) -> LocalPort | None:
    return ctx.local.get((d.vpc, d.ip)) if d.vpc in ctx.local_vpcs else None


def _is_remote(ctx: Ctx, d: Destination) -> bool:
    return d.host_ip != ctx.view.local_underlay_ip


def _inside_own_subnet(ctx: Ctx, ip: Address) -> bool:
    version, n = ip.version, int(ip)
    return any(v == version and n & mask == net for v, net, mask in ctx.subnet_keys)


def _source_ok(
    out: _Out,
    ctx: Ctx,
    source: Address | Network,
    host_ip: ipaddress.IPv4Address | None,
    priority: int,
    owner: tuple[Kind, str],
    peer: PeerView | None = None,
) -> None:
    """Tunnel ingress: accept ``source`` for this VPC when it comes from ``host_ip`` (None:
    from any host); from a peer the VPC lets in only replies from, only as far as conntrack
    says (table 43)."""
    one_way = peer is not None and ctx.one_way(peer)
    ingress = _CHECK_IN_RECEIVER_ZONE if one_way else _TO_TUNNEL_DELIVER
    if isinstance(source, ipaddress.IPv4Address | ipaddress.IPv6Address) and host_ip is not None:
        # one destination's source check: the bulk of a compile (``_address_match``)
        tunnel = (("metadata", _vpc(ctx.vni)), ("tun_ipv4_src", str(host_ip)))
        out.add_match(
            TUNNEL_SRC, priority, _address_match(out, "src", source, tunnel), ingress, owner
        )
        return
    match: dict[str, MatchValue] = {"metadata": _vpc(ctx.vni), **_ip_match("src", source)}
    if host_ip is not None:
        match["tun_ipv4_src"] = str(host_ip)
    out.add(TUNNEL_SRC, priority, match, ingress, owner)


def _toward(ctx: Ctx, peer: PeerView | None, actions: tuple[Action, ...]) -> Apply:
    """Actions toward ``peer``: committed first (in the sender's zone) if this VPC lets in only
    replies from it, so that the answers find their connection."""
    if peer is not None and ctx.one_way(peer):
        return Apply((COMMIT_IN_SENDER_ZONE, *actions))
    return Apply(actions)


def _peer_owner(kind: Kind, name: str, peer: PeerView) -> tuple[Kind, str]:
    return kind, f"{peer.peer_vpc}/{name}@{peer.policy_id}"


def dest_flows(out: _Out, ctx: Ctx, d: Destination, peer: PeerView | None) -> None:
    if peer is None:
        owner, priority, meta = (Kind.DEST, f"{d.vpc}/{d.name}"), PRIO_OWN, _vpc(ctx.vni)
    else:
        if peer.via_gateways and d.ip not in peer.offloaded:
            return  # the gateways hold the peer's endpoints, not this host (docs/gateways.md)
        if _inside_own_subnet(ctx, d.ip):
            out.note(
                f"{ctx.vpc}: peer destination {d.vpc}/{d.name} {d.ip} is inside a local subnet"
            )
            return
        if not ctx.reaches(peer, d.ip):
            out.note(f"{ctx.vpc}: peer destination {d.vpc}/{d.name} {d.ip}: {_NOT_ROUTED}")
            return
        owner, priority = _peer_owner(Kind.PEER_DEST, d.name, peer), PRIO_PEER
        meta = _routed(ctx.vni)
    actions = _forward(ctx, d)
    if actions is None:
        out.note(f"{ctx.vpc}: {owner[1]} claims this host but has no local port")
        return
    if peer is not None and peer.on_demand:  # an offloaded pair is still counted
        actions = (*actions[:1], RESUBMIT_COUNT, *actions[1:])
    if out.shared is not None:  # the tunnel actions are the host's, not the destination's
        keep = out.shared
        actions = (actions[0], *(keep.setdefault(a, a) for a in actions[1:]))
    match = _address_match(out, "dst", d.ip, (("metadata", meta),))
    out.add_match(L3_LOOKUP, priority, match, (_toward(ctx, peer, actions),), owner)
    if peer is None:
        _arp_flows(out, ctx, d.ip, d.mac, owner)
    if _is_remote(ctx, d):
        _source_ok(out, ctx, d.ip, d.host_ip, priority, owner, peer)


def _lb_owner(vpc: str, lb: LoadBalancer, peer: PeerView | None) -> str:
    """An ILB's identity in local VPC ``vpc``'s context: its group id and cookie derive from it."""
    where = "" if peer is None else f"@{peer.policy_id}"
    return f"{vpc}|{lb.vpc}/{lb.name}{where}"


def _gateways_owner(vpc: str, peer: PeerView) -> str:
    """The identity of the select group over the gateways toward ``peer`` in ``vpc``."""
    return f"{vpc}|gateways@{peer.peer_vpc}"


def assign_groups(view: HostView, vni_of: dict[str, int]) -> dict[str, int]:
    """Group id per ILB identity: its hash, probing past a (rare) collision in sorted order."""
    owners: list[str] = []
    for vpc in sorted(vni_of):
        own = view.own_of(vpc)
        for lb in own.load_balancers if own else ():
            owners.append(_lb_owner(vpc, lb, None))
        for peer in view.peers_of(vpc):
            for lb in peer.services.load_balancers:
                owners.append(_lb_owner(vpc, lb, peer))
            if peer.via_gateways and peer.gateways:
                owners.append(_gateways_owner(vpc, peer))
    ids: dict[str, int] = {}
    used: set[int] = set()
    for owner in sorted(owners):
        gid = group_id_of(owner)
        while gid in used:
            gid = gid % MAX_GROUP_ID + 1
        ids[owner] = gid
        used.add(gid)
    return ids


def lb_cookie(vpc: str, name: str) -> int:
    """The cookie of VPC ``vpc``'s own ILB ``name`` in its context: the OHC reads the load
    of one with spillover backends by it (lb_deliver's flows of its local backends) and
    keys the share it decides by it (ohc/spillover.py)."""
    return cookie(Kind.LB, f"{vpc}|{vpc}/{name}")


def lb_flows(
    out: _Out, ctx: Ctx, lb: LoadBalancer, peer: PeerView | None, groups: dict[str, int]
) -> None:
    name = _lb_owner(ctx.vpc, lb, peer)
    if peer is None:
        owner, priority, meta = (Kind.LB, name), PRIO_OWN, _vpc(ctx.vni)
        if lb.spillover and lb.vip.version == 4:
            _spill_lb_flows(out, ctx, lb, groups[name])
            return
    else:
        _spill_backend_flows(out, ctx, lb, (Kind.PEER_LB, name))
        if _inside_own_subnet(ctx, lb.vip):
            out.note(f"{ctx.vpc}: peer VIP {lb.vpc}/{lb.name} {lb.vip} is inside a local subnet")
            return
        if not ctx.reaches(peer, lb.vip):
            out.note(f"{ctx.vpc}: peer VIP {lb.vpc}/{lb.name} {lb.vip}: {_NOT_ROUTED}")
            return
        owner, priority, meta = (Kind.PEER_LB, name), PRIO_PEER, _routed(ctx.vni)
    buckets = []
    for dest, weight in lb.backends:
        actions = _forward(ctx, dest)
        if actions is None:
            out.note(f"{ctx.vpc}: backend {dest.vpc}/{dest.name} of {name} has no local port")
            continue
        buckets.append(Bucket(actions, weight))
        if _is_remote(ctx, dest):  # direct server return: replies come from the VIP
            _source_ok(out, ctx, lb.vip, dest.host_ip, priority, owner, peer)
        elif peer is None:
            port = ctx.local[(dest.vpc, dest.ip)]
            _classify_ip(out, ctx, port, lb.vip, PRIO_OWN, owner)
            _tunnel_dst(out, ctx, port, lb.vip, PRIO_VIP_DELIVER, owner, by_mac=True)
    if not buckets:
        return
    gid = groups[name]
    out.groups[gid] = Group(gid, "select", tuple(buckets))
    out.add(
        L3_LOOKUP,
        priority,
        {"metadata": meta, **_ip_match("dst", lb.vip)},
        (_toward(ctx, peer, (ToGroup(gid),)),),
        owner,
    )
    if peer is None:
        _arp_flows(out, ctx, lb.vip, lb.mac, owner)


def _spill_lb_flows(out: _Out, ctx: Ctx, lb: LoadBalancer, gid: int) -> None:
    """An own IPv4 ILB with spillover backends: connection affinity (tables lb_affinity,
    lb_pick, lb_learn, lb_deliver), and a share of the new connections (``HostView.spill_share``) to the
    spillover backends in the peers this host follows (docs/gateways.md, overload shift)."""
    name = _lb_owner(ctx.vpc, lb, None)
    owner, meta = (Kind.LB, name), _vpc(ctx.vni)
    vip: dict[str, MatchValue] = {"metadata": meta, "eth_type": ETH_IPV4, "ipv4_dst": str(lb.vip)}
    spill = []
    for dest, weight in lb.spillover:
        peer = next((p for p in ctx.peers if p.peer_vpc == dest.vpc), None)
        if peer is None or peer.peer_vni != dest.vni or ctx.one_way(peer):
            out.note(
                f"{ctx.vpc}: spillover {dest.vpc}/{dest.name} of {name}: not a peer it follows"
            )
        elif (dest.vpc, ctx.vpc) in ctx.replies_only:  # it takes no new connection from here
            out.note(f"{ctx.vpc}: spillover {dest.vpc}/{dest.name} of {name}: replies only")
        else:
            spill.append((dest, weight))
    sides: list[list[tuple[Destination, int, tuple[Action, ...], tuple[Kind, str]]]] = [[], []]
    pinned: set[str] = set()
    for side, kind, backends in ((0, Kind.LB, lb.backends), (1, Kind.SPILL, tuple(spill))):
        for dest, weight in backends:
            actions = _forward(ctx, dest)
            if actions is None or dest.mac in pinned:
                out.note(f"{ctx.vpc}: backend {dest.vpc}/{dest.name} of {name}: no way there")
                continue
            pinned.add(dest.mac)
            sides[side].append((dest, weight, actions, (kind, name)))
            pin = {**vip, "eth_dst": dest.mac}
            out.add(LB_PICK, PRIO_PIN, pin, (Goto(LB_DELIVER),), (kind, name))
            out.add(LB_DELIVER, PRIO_DEFAULT, pin, (Apply(actions),), (kind, name))
            if _is_remote(ctx, dest):  # direct server return: replies come from the VIP
                _source_ok(out, ctx, lb.vip, dest.host_ip, PRIO_OWN, owner)
            elif side == 0:
                port = ctx.local[(dest.vpc, dest.ip)]
                _classify_ip(out, ctx, port, lb.vip, PRIO_OWN, owner)
                _tunnel_dst(out, ctx, port, lb.vip, PRIO_VIP_DELIVER, owner, by_mac=True)
    local, peer_side = sides
    share = ctx.view.spill_share(lb_cookie(ctx.vpc, lb.name))
    weights = bucket_weights(tuple(b[1] for b in local), tuple(b[1] for b in peer_side), share)
    buckets = [  # an action set in OVS: set_field, then the resubmit (no output beside it)
        Bucket((SetField("eth_dst", b[0].mac), Resubmit(LB_LEARN)), w)
        for chosen, ws in zip((local, peer_side), weights, strict=True)
        for b, w in zip(chosen, ws, strict=False)
    ]
    if not buckets:
        return
    out.groups[gid] = Group(gid, "select", tuple(buckets))
    out.add(LB_PICK, PRIO_DEFAULT, vip, (Apply((ToGroup(gid),)),), owner)
    lookup = (Apply((Resubmit(LB_AFFINITY),)), Goto(LB_PICK))
    out.add(L3_LOOKUP, PRIO_OWN, {"metadata": meta, **_ip_match("dst", lb.vip)}, lookup, owner)
    _arp_flows(out, ctx, lb.vip, lb.mac, owner)
    learned = cookie(Kind.AFFINITY, name)
    for proto, ports in (
        (IPPROTO_TCP, ("tcp_src", "tcp_dst")),
        (IPPROTO_UDP, ("udp_src", "udp_dst")),
    ):
        learn = Learn(
            LB_AFFINITY,
            PRIO_DEFAULT,
            ctx.view.affinity_s,
            learned,
            (("eth_type", ETH_IPV4), ("ip_proto", proto)),
            ("metadata", "ipv4_src", "ipv4_dst", *ports),
            ("eth_dst",),
        )
        on = (Apply((learn,)), Goto(LB_DELIVER))
        out.add(LB_LEARN, PRIO_DEFAULT, {**vip, "ip_proto": proto}, on, owner)
    out.add(LB_LEARN, PRIO_BRIDGED, vip, (Goto(LB_DELIVER),), owner)  # not pinned (ICMP)


def _spill_backend_flows(out: _Out, ctx: Ctx, lb: LoadBalancer, owner: tuple[Kind, str]) -> None:
    """A peer's ILB that lists a local port of this VPC as a spillover backend (by its name:
    the peer's stream carries no more): the port may answer from the VIP, and a tunnel packet
    for the VIP with its MAC goes to it."""
    for vpc, endpoint in lb.spill_names if lb.vip.version == 4 else ():
        port = next((p for p in ctx.ports if p.name == endpoint), None) if vpc == ctx.vpc else None
        if port is not None:
            _classify_ip(out, ctx, port, lb.vip, PRIO_OWN, owner)
            _tunnel_dst(out, ctx, port, lb.vip, PRIO_VIP_DELIVER, owner, by_mac=True)


def route_flows(out: _Out, ctx: Ctx, groups: dict[str, int]) -> None:
    """The VPC's effective route table (``_decide``) as prefix flows."""
    for dec in ctx.routes.decisions:
        if not dec.installed:
            continue
        entry, via = ctx.routes.entries[(dec.route, dec.from_peer)]
        if via is None:
            owner, meta = (Kind.ROUTE, f"{entry.vpc}/{entry.name}"), _vpc(ctx.vni)
        else:
            owner = _peer_owner(Kind.PEER_ROUTE, entry.name, via)
            meta = _routed(ctx.vni)
        match = {"metadata": meta, **_ip_match("dst", entry.prefix)}
        priority = _route_priority(entry.prefix)
        if entry.next_hop is None and via is not None:
            _peer_subnet_flows(out, ctx, entry.prefix, via, priority, owner, groups)
            continue
        if entry.next_hop is None:  # a subnet: only its known addresses are reachable
            out.add(L3_LOOKUP, priority, match, (), owner)
            continue
        actions = _forward(ctx, entry.next_hop)
        if actions is None:
            out.note(f"{ctx.vpc}: next hop of route {owner[1]} has no local port")
            continue
        out.add(L3_LOOKUP, priority, match, (_toward(ctx, via, actions),), owner)
        hop = entry.next_hop
        if _is_remote(ctx, hop):
            _source_ok(out, ctx, entry.prefix, hop.host_ip, priority, owner, via)
        elif via is None:
            port = ctx.local[(hop.vpc, hop.ip)]
            _classify_ip(out, ctx, port, entry.prefix, priority, owner)
            _tunnel_dst(out, ctx, port, entry.prefix, priority, owner)


def _peer_subnet_flows(
    out: _Out,
    ctx: Ctx,
    prefix: Network,
    peer: PeerView,
    priority: int,
    owner: tuple[Kind, str],
    groups: dict[str, int],
) -> None:
    """A peer's subnet: the peer's packets are accepted from every gateway (the peer's side
    may send through them); toward the peer, only its known addresses (direct), or, when this
    side says gateway, the whole subnet through the select group over the gateways, tagged
    with the peer's VNI. Such a side knows none of the peer's hosts, so it accepts the
    subnet from any host (replies the peer's hosts send directly; docs/gateways.md)."""
    for hop in peer.gateways:
        _source_ok(out, ctx, prefix, ipaddress.IPv4Address(hop.underlay_ip), priority, owner, peer)
    match = {"metadata": _routed(ctx.vni), **_ip_match("dst", prefix)}
    gid = groups.get(_gateways_owner(ctx.vpc, peer))
    if not peer.via_gateways or gid is None or ctx.view.tunnel_port is None:
        if peer.via_gateways:
            out.note(f"{ctx.vpc}: {owner[1]}: no gateway (or no tunnel port) to send it to")
        out.add(L3_LOOKUP, priority, match, (), owner)
        return
    _source_ok(out, ctx, prefix, None, priority - 1, owner, peer)
    tunnel = ctx.view.tunnel_port
    buckets = tuple(
        Bucket(
            (SetField("tun_ipv4_dst", hop.underlay_ip), Output(tunnel)),
            hop.weight,
            ctx.view.watch_port(hop.underlay_ip),
        )
        for hop in peer.gateways
    )
    out.groups[gid] = Group(gid, "select", buckets)
    actions: tuple[Action, ...] = (SetField("tunnel_id", peer.peer_vni), ToGroup(gid))
    if peer.on_demand:
        actions = (RESUBMIT_COUNT, *actions)
        _offload_learner(out, ctx, peer, prefix, owner)
    out.add(L3_LOOKUP, priority, match, (_toward(ctx, peer, actions),), owner)


RESUBMIT_COUNT = Resubmit(OFFLOAD_COUNT)
# offload_count: a learned pair's flow, above the subnet flow that learns it (the learner
# would otherwise learn the pair again at each packet, and OVS resets a relearned flow's counters)
OFFLOAD_PRIORITY = PRIO_DEFAULT
OFFLOAD_LEARNER_PRIORITY = PRIO_BRIDGED


def offload_cookie(vpc: str, peer_vpc: str) -> int:
    """The cookie of the flows an on-demand side ``vpc`` -> ``peer_vpc`` learns: the OHC
    reads their counters by it (ohc/offload.py)."""
    return cookie(Kind.OFFLOAD, f"{vpc}@{peer_vpc}")


def _offload_learner(
    out: _Out, ctx: Ctx, peer: PeerView, prefix: Network, owner: tuple[Kind, str]
) -> None:
    """An on-demand side: a packet to the peer's subnet that no learned flow counts yet
    learns one for its (VPC context, destination), idle for ``peer.offload_idle_s``."""
    learn = Learn(
        OFFLOAD_COUNT,
        OFFLOAD_PRIORITY,
        peer.offload_idle_s,
        offload_cookie(ctx.vpc, peer.peer_vpc),
        (("eth_type", _eth_type(prefix)),),
        ("metadata", _ip_field(prefix, "dst")),
    )
    match = {"metadata": _routed(ctx.vni), **_ip_match("dst", prefix)}
    out.add(OFFLOAD_COUNT, OFFLOAD_LEARNER_PRIORITY, match, (Apply((learn,)),), owner)


def relay_all(out: _Out, view: HostView) -> None:
    """A gateway host's flows: BFD reflection (once it relays for some VPC), every VPC it
    relays for, and each destination there."""
    relay_base(out, view)
    for relay in view.relays:
        for d in relay.destinations:
            relay_flows(out, view, d)


def relay_base(out: _Out, view: HostView) -> None:
    """A gateway host's flows but those per destination (``ohc.engine`` compiles those one
    by one): BFD reflection and each VNI it relays for. Their keys are not a destination's,
    so emitting them first is the order ``relay_all`` wins keys in."""
    if view.relays:
        bfd_reflect_flow(out, view)
    for relay in view.relays:
        relay_vpc_flows(out, view, relay.vni)


def bfd_reflect_flow(out: _Out, view: HostView) -> None:
    """A gateway host: a hypervisor's BFD control packet (VNI 0, UDP 3784, from the BFD port
    it keeps toward this gateway) goes straight back to it, unchanged, out of the tunnel port
    it came in on. The hypervisor's BFD session then sees its own packets come back and is up
    while this gateway's datapath forwards (docs/gateways.md, liveness)."""
    if view.tunnel_port is None:
        return
    out.add(
        CLASSIFY,
        PRIO_OWN,
        {
            "in_port": view.tunnel_port,
            "tunnel_id": BFD_VNI,
            "eth_type": ETH_IPV4,
            "ip_proto": IPPROTO_UDP,
            "udp_dst": BFD_UDP_PORT,
        },
        (Apply((Move("tun_ipv4_src", "tun_ipv4_dst"), Output(OFPP_IN_PORT))),),
        (Kind.RELAY, "bfd"),
    )


def relay_vpc_flows(out: _Out, view: HostView, vni: int) -> None:
    """A gateway host: tunnel packets with a VNI it relays for go to ``gateway_relay``."""
    if view.tunnel_port is None:
        out.note(f"vni {vni}: br-int has no tunnel port: nothing to relay")
        return
    out.add(
        CLASSIFY,
        PRIO_OWN,
        {"in_port": view.tunnel_port, "tunnel_id": vni},
        (Goto(GATEWAY_RELAY),),
        (Kind.RELAY, f"vni/{vni}"),
    )


def relay_flows(out: _Out, view: HostView, d: Destination) -> None:
    """A gateway host: a packet for ``d`` (by its VNI and address) goes on to ``d``'s host,
    back out of the tunnel port, with ``d``'s MAC."""
    if view.tunnel_port is None:
        return
    out.add(
        GATEWAY_RELAY,
        PRIO_DEFAULT,
        {"tunnel_id": d.vni, **_ip_match("dst", d.ip)},
        (
            Apply(
                (
                    SetField("eth_dst", d.mac),
                    SetField("tun_ipv4_dst", str(d.host_ip)),
                    Output(OFPP_IN_PORT),
                )
            ),
        ),
        (Kind.RELAY, f"{d.vpc}/{d.name}@{d.vni}"),
    )
