"""BGP toward on-prem routers, the pure part: sessions wanted, routes learned, routes announced.

A shard runs one BGP speaker (``meshpeer.controller.speaker``, a thin shim over os-ken's).
Everything it decides is here, as functions of the intent and of what the speaker reported:

- ``sessions``: one session per endpoint with a ``bgp`` peer (router, vpn, interconnect), keyed
  by the router's address, with the VPC's AS number and what the VPC announces on it: each of
  its IPv4 subnets, and the subnets each ACTIVE peer exports to it if the peer's side imports
  the VPC's custom routes (so that replies from on-prem find their way back), next hop the
  gateway of the endpoint's subnet (the router reaches it on that segment), and nothing else
  (no transit between routers or VPCs).
- ``Learned`` / ``apply`` / ``forget_peer``: the routes each router announced (its
  adjacency-RIB-in, per router address), updated from the speaker's events (``Update``,
  ``Down``, ``Expire``), in order.
- ``to_text`` / ``restored`` / ``mark_stale`` / ``sweep``: the table is kept in the store (meta,
  not intent), so a restarted shard starts from what it had learned, every route *stale* (still
  published: the hosts keep forwarding) until its router announces it again; what is still
  stale after a grace time is dropped (as BGP graceful restart's stale-path timer). A session
  the shard resets on purpose (what it announces changed) keeps its routes the same way.
- ``announcements`` / ``permitted``: what the shard's one speaker originates, and what each
  session may send of it (the prefixes its VPC won, with its next hop).
- ``dynamic_routes``: the VPC's ``dynamic`` routes: every IPv4 prefix a live session's router
  announced, next hop the session's endpoint (not the BGP next hop, which is the router's
  link address), priority the route's MED (1000 without one, as a static route).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from meshpeer.controller.model import Endpoint, Intent, gateway
from meshpeer.controller.peering import PEERING_PREFIX, Status, View
from policies.overlap import subnet_of

DEFAULT_PRIORITY = 1000  # a learned route without a MED ranks as a static route does
MAX_PRIORITY = 65535
# Routes kept per router: a router that leaks a full internet table (~950k) must not make
# every host of the VPC compile a flow per prefix; announcements past it are ignored.
MAX_ROUTES_PER_ROUTER = 10_000
MIN_PREFIX_LEN = 8  # shorter ones (a default route cut in halves) take a VPC's other traffic
# Never a destination on-prem: link-local (the BGP links, metadata), loopback, "this
# network", multicast and reserved.
SPECIAL = tuple(
    ipaddress.IPv4Network(n)
    for n in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4")
)


@dataclass(frozen=True)
class Session:
    """A BGP session the speaker should hold: to ``peer_ip`` for ``endpoint`` of ``vpc``."""

    peer_ip: str
    peer_asn: int
    local_ip: str
    local_asn: int
    vpc: str
    endpoint: str
    next_hop: str  # the endpoint's IP: where traffic to what it learns goes
    announce: tuple[str, ...]  # the VPC's prefixes, each announced ...
    announce_next_hop: str  # ... with this next hop (the gateway on the endpoint's segment)
    own: tuple[str, ...] = ()  # the VPC's own subnets: a learned route inside one is refused


def peer_prefixes(
    intent: Intent,
    vpc: str,
    states: Mapping[tuple[str, str], Status],
    views: Mapping[str, View],
    importing_only: bool = True,
) -> list[str]:
    """What ``vpc``'s ACTIVE peers export to it; with ``importing_only``, from each peer whose
    side imports ``vpc``'s custom routes (its federation view says so) only."""
    out: list[str] = []
    for p in intent.peerings_of(vpc):
        st = states.get((vpc, p.name))
        back = (views.get(p.peer_vpc) or {}).get(PEERING_PREFIX + vpc)
        if st is None or not st.active or back is None:
            continue
        if back.get("import_custom_routes") or not importing_only:
            out += [str(c) for c in back.get("exported_subnets", ())]
    return out


def session_of(
    intent: Intent,
    e: Endpoint,
    states: Mapping[tuple[str, str], Status],
    views: Mapping[str, View],
) -> Session | None:
    if e.bgp is None:
        return None
    vpc = intent.vpcs[e.vpc]
    segment = vpc.subnet_for(e.ip)
    if segment is None or segment.cidr.version != 4:
        return None
    own = [str(s.cidr) for s in vpc.subnets]
    nets = {_ipv4_prefix(p) for p in own + peer_prefixes(intent, e.vpc, states, views)}
    v4 = sorted(str(n) for n in nets if n is not None)
    return Session(
        peer_ip=str(e.bgp.peer_ip),
        peer_asn=e.bgp.peer_asn,
        local_ip=str(e.bgp.local_ip),
        local_asn=vpc.asn,
        vpc=e.vpc,
        endpoint=e.name,
        next_hop=str(e.ip),
        announce=tuple(v4),
        announce_next_hop=str(gateway(segment.cidr)),
        own=tuple(sorted(own)),
    )


def sessions(
    intent: Intent,
    states: Mapping[tuple[str, str], Status] | None = None,
    views: Mapping[str, View] | None = None,
) -> dict[str, Session]:
    """Every session wanted by this shard's intent, by router address (``states`` and
    ``views``: the peerings' states and the peers' federation views)."""
    out: dict[str, Session] = {}
    for e in intent.bgp_endpoints():
        s = session_of(intent, e, states or {}, views or {})
        if s is not None:
            out[s.peer_ip] = s
    return out


def announcements(wanted: Mapping[str, Session]) -> tuple[dict[str, str], list[str]]:
    """The prefixes the speaker originates, each with its next hop, and the conflicts left out.

    The speaker has one table for the whole shard: two VPCs announcing the same prefix with
    different next hops cannot both be served; the first VPC by name keeps it (and the other
    is reported, once per prefix)."""
    out: dict[str, str] = {}
    owner: dict[str, str] = {}
    conflicts: list[str] = []
    for s in sorted(wanted.values(), key=lambda s: (s.vpc, s.endpoint)):
        for p in s.announce:
            if p not in out:
                out[p], owner[p] = s.announce_next_hop, s.vpc
            elif out[p] != s.announce_next_hop and owner[p] != s.vpc:
                conflicts.append(
                    f"{p}: announced for VPC {owner[p]!r}, not also for {s.vpc!r}"
                    f" (one table per shard)"
                )
    return out, sorted(set(conflicts))


def permitted(s: Session, announce: Mapping[str, str]) -> tuple[str, ...]:
    """What the session's router may be sent of the speaker's table ``announce``: the
    session's prefixes its VPC won (originated with its next hop), not one another VPC of
    the shard won in a conflict (its router would be sent the winner's route; found by a
    review)."""
    return tuple(p for p in s.announce if announce.get(p) == s.announce_next_hop)


@dataclass(frozen=True)
class Learned:
    """One route a router announced."""

    prefix: str
    med: int | None = None
    stale: bool = False  # restored after a restart or kept across a reset, not announced again yet


# router address -> prefix -> route: each router's adjacency-RIB-in as the speaker reported it
LearnedTable = Mapping[str, Mapping[str, Learned]]


@dataclass(frozen=True)
class Update:
    """One announcement (or withdrawal) of ``prefix`` by the router at ``peer_ip``."""

    peer_ip: str
    prefix: str
    withdraw: bool
    med: int | None = None


@dataclass(frozen=True)
class Down:
    """The session to ``peer_ip`` went down: what it announced goes with it; its stale routes
    (kept from before a restart or a deliberate reset) wait for their ``Expire``."""

    peer_ip: str


@dataclass(frozen=True)
class Expire:
    """The grace time of ``peer_ip``'s stale routes is over: those not announced again go."""

    peer_ip: str


Event = Update | Down | Expire


def apply(table: LearnedTable, events: Iterable[Event]) -> dict[str, dict[str, Learned]]:
    """The table after ``events``, in order (one copy of the table for the whole batch: a
    router's full table arrives as thousands of updates). Applying a batch twice gives the
    same table: a batch that failed to be stored is applied again as a whole."""
    out = {k: dict(v) for k, v in table.items()}
    for u in events:
        routes = out.setdefault(u.peer_ip, {})
        if isinstance(u, Down | Expire):
            keep = {p: r for p, r in routes.items() if r.stale == isinstance(u, Down)}
            routes.clear()
            routes.update(keep)
        elif u.withdraw:
            routes.pop(u.prefix, None)
        elif u.prefix in routes or len(routes) < MAX_ROUTES_PER_ROUTER:
            routes[u.prefix] = Learned(u.prefix, u.med)
        if not routes:
            del out[u.peer_ip]
    return out


def learn(
    table: LearnedTable, peer_ip: str, prefix: str, withdraw: bool, med: int | None = None
) -> dict[str, dict[str, Learned]]:
    """The table after one announcement or withdrawal from ``peer_ip``."""
    return apply(table, [Update(peer_ip, prefix, withdraw, med)])


def forget_peer(table: LearnedTable, peer_ip: str) -> dict[str, dict[str, Learned]]:
    """The table without anything ``peer_ip`` announced (its session is no longer wanted)."""
    return {k: dict(v) for k, v in table.items() if k != peer_ip}


def to_text(table: LearnedTable) -> str:
    """The table as the store keeps it (canonical JSON: equal tables, equal text)."""
    doc = {
        ip: {p: r.med for p, r in sorted(routes.items())} for ip, routes in sorted(table.items())
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def restored(text: str | None) -> dict[str, dict[str, Learned]]:
    """A kept table, every route stale; anything that does not parse is dropped (the routers
    announce it again anyway)."""
    try:
        doc = json.loads(text) if text else {}
    except ValueError:
        return {}
    if not isinstance(doc, dict):
        return {}
    out: dict[str, dict[str, Learned]] = {}
    for ip, routes in doc.items():
        if not isinstance(routes, dict):
            continue
        out[ip] = {
            p: Learned(p, med if isinstance(med, int) else None, stale=True)
            for p, med in routes.items()
            if isinstance(p, str)
        }
    return {ip: routes for ip, routes in out.items() if routes}


def mark_stale(table: LearnedTable, peer_ip: str) -> dict[str, dict[str, Learned]]:
    """The table with everything ``peer_ip`` announced stale: its session is reset on purpose
    and its routes stay published until the router announces them again (or they expire)."""
    return {
        ip: {p: replace(r, stale=True) if ip == peer_ip else r for p, r in routes.items()}
        for ip, routes in table.items()
    }


def sweep(table: LearnedTable) -> dict[str, dict[str, Learned]]:
    """The table without the routes still stale (not announced again since the restart)."""
    return apply(table, [Expire(ip) for ip in sorted(table)])


@dataclass(frozen=True)
class DynamicRoute:
    """A route of ``vpc`` learned over BGP: ``prefix`` via endpoint ``endpoint``."""

    vpc: str
    prefix: str
    endpoint: str
    next_hop: str  # the endpoint's IP
    peer_ip: str  # the router that announced it
    priority: int = DEFAULT_PRIORITY

    @property
    def name(self) -> str:
        """Its object id in the VPC's forwarding stream."""
        return f"dynamic:{self.prefix}:{self.endpoint}"


def accepted(s: Session, prefix: str, peers: Iterable[str] = ()) -> bool:
    """Is a prefix the router announced a route of the VPC? Not if it is no valid IPv4
    prefix, shorter than /8 (a default route from on-prem, whole or in halves, would take
    the VPC's other traffic: not accepted here), in a special range (link-local, loopback,
    multicast, reserved), or if it matches or fits inside one of the VPC's own subnets or
    one its ACTIVE peers export (``peers``): on-prem must not take the VPC's or its peers'
    addresses (a local route beats a peer's; found by a review), as a cloud router ignores
    such routes."""
    net = _ipv4_prefix(prefix)
    if net is None or net.prefixlen < MIN_PREFIX_LEN:
        return False
    if any(net.overlaps(special) for special in SPECIAL):
        return False
    taken = [*s.own, *peers]
    return not any(
        isinstance(n := ipaddress.ip_network(t), ipaddress.IPv4Network) and subnet_of(net, n)
        for t in taken
    )


def dynamic_routes(
    wanted: Mapping[str, Session],
    table: LearnedTable,
    peers: Mapping[str, Iterable[str]] | None = None,
) -> dict[str, tuple[DynamicRoute, ...]]:
    """Each VPC's dynamic routes, from the routes its sessions' routers announced and
    ``accepted`` (``peers``: per VPC, the subnets its ACTIVE peers export to it). A route
    from an address no session is wanted for any more is dropped."""
    out: dict[str, list[DynamicRoute]] = {}
    for peer_ip in sorted(table):
        s = wanted.get(peer_ip)
        if s is None:
            continue
        exported = tuple((peers or {}).get(s.vpc, ()))
        for prefix in sorted(table[peer_ip]):
            net = _ipv4_prefix(prefix)
            if net is None or not accepted(s, prefix, exported):
                continue
            med = table[peer_ip][prefix].med
            priority = DEFAULT_PRIORITY if med is None else min(med, MAX_PRIORITY)
            out.setdefault(s.vpc, []).append(
                DynamicRoute(s.vpc, str(net), s.endpoint, s.next_hop, peer_ip, priority)
            )
    return {vpc: tuple(routes) for vpc, routes in out.items()}


def status(
    vpc: str,
    wanted: Mapping[str, Session],
    table: LearnedTable,
    established: Iterable[str],
    routes: Iterable[DynamicRoute],
) -> list[dict[str, object]]:
    """``GET /v1/vpcs/{vpc}/bgp``: the VPC's sessions, whether each is up, what it announces
    and what its router announced (``stale``: kept from before a restart, not announced
    again yet; ``accepted``: one of the VPC's dynamic ``routes``)."""
    up = set(established)
    taken = {(r.peer_ip, r.prefix) for r in routes}
    return [
        {
            "endpoint": s.endpoint,
            "peer_ip": s.peer_ip,
            "peer_asn": s.peer_asn,
            "local_ip": s.local_ip,
            "local_asn": s.local_asn,
            "established": ip in up,
            "announced": list(s.announce),
            "announced_next_hop": s.announce_next_hop,
            "learned": [
                {
                    "prefix": r.prefix,
                    "med": r.med,
                    "stale": r.stale,
                    "accepted": (ip, str(_ipv4_prefix(p))) in taken,
                }
                for p, r in sorted(table.get(ip, {}).items())
            ],
        }
        for ip, s in sorted(wanted.items())
        if s.vpc == vpc
    ]


def changed_vpcs(
    before: Mapping[str, Iterable[DynamicRoute]], after: Mapping[str, Iterable[DynamicRoute]]
) -> frozenset[str]:
    return frozenset(
        v for v in set(before) | set(after) if tuple(before.get(v, ())) != tuple(after.get(v, ()))
    )


def _ipv4_prefix(text: str) -> ipaddress.IPv4Network | None:
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError:
        return None
    return net if isinstance(net, ipaddress.IPv4Network) else None
