"""The OHC's OpenFlow pipeline on ``br-int``: every table declared once.

A table says which match fields its flows may use, which tables its flows may go to, and what
happens on a miss (always drop: nothing floods, nothing is learned). ``check_flow`` rejects a
flow that breaks its table's declaration with ``PipelineError``; the compiler calls it on every
flow it builds, so such a bug fails at build time (and in unit tests), never on a switch.

Metadata layout (64 bits, written by the pipeline itself, never by a VM):

==========  =====================================================================
bits 0-23   VPC context: the VNI of the local VPC the packet belongs to
bit 24      ROUTED: the VM sent the packet to its gateway MAC (set by ROUTED_HOP)
bits 32-63  the local ofport a tunnel packet is to be delivered to (TUNNEL_DST)
==========  =====================================================================

``docs/pipeline.md`` documents every table; ``markdown_table()`` renders the registry, and a
unit test requires the document to contain that rendering, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from ohc.flows import (
    CT_NO_TABLE,
    Apply,
    Conntrack,
    Flow,
    Goto,
    Learn,
    Resubmit,
    SetField,
    WriteMetadata,
)

# --- ports and metadata ----------------------------------------------------------------------

# The flow-based Geneve port (remote_ip=flow key=flow) where the lab pins it (ofport_request=1).
# The OHC does not rely on it: it reads the tunnel's and the VMs' ofports from OVSDB
# (ohc/ports.py, HostView.tunnel_port); views built without a switch (tests) default to it.
TUNNEL_PORT = 1
MAX_PORT = 0xFEFF  # OFPP_MAX: higher numbers are reserved ports
OFPP_IN_PORT = 0xFFFFFFF8  # output back out of the port the packet came in on
OFPP_CONTROLLER = 0xFFFFFFFD  # packet-in to the OHC (the IPv6 neighbour responder)

VPC_MASK = 0x00FF_FFFF
ROUTED = 1 << 24
CONTEXT_MASK = VPC_MASK | ROUTED
PORT_SHIFT = 32
PORT_MASK = 0xFFFF_FFFF << PORT_SHIFT
ALL_METADATA = (1 << 64) - 1

ETH_IPV4 = 0x0800
ETH_ARP = 0x0806
ETH_IPV6 = 0x86DD
ARP_REQUEST = 1
ARP_REPLY = 2
IPPROTO_ICMPV6 = 58
IPPROTO_TCP = 6
IPPROTO_UDP = 17
BFD_UDP_PORT = 3784  # BFD control packets (RFC 5881)
BFD_VNI = 0  # the VNI of BFD probes to gateways: no VPC has it (VNIs are 1..2^24-1)
ND_SOLICIT = 135  # ICMPv6 neighbour solicitation


class PipelineError(Exception):
    """A flow that does not fit the declared pipeline: a compiler bug."""


@dataclass(frozen=True)
class Table:
    id: int
    name: str
    matches: frozenset[str]
    next_tables: frozenset[int]
    miss: Literal["drop"] = "drop"
    purpose: str = ""
    writer: str = ""  # the compiler function that writes the table's flows


# what identifies a TCP or UDP connection in a VPC context (lb_affinity's learned flows)
_CONNECTION = ("metadata", "eth_type", "ip_proto", "ipv4_src", "ipv4_dst", "tcp_src", "tcp_dst",
               "udp_src", "udp_dst")  # fmt: skip


def _t(
    id: int, name: str, matches: Iterable[str], nxt: Iterable[int], purpose: str, writer: str
) -> Table:
    return Table(id, name, frozenset(matches), frozenset(nxt), "drop", purpose, writer)


CLASSIFY = 0
ARP_TARGET = 10
ARP_REPLY_TABLE = 11
ND_TARGET = 12
ROUTED_HOP = 20
L3_LOOKUP = 30
OFFLOAD_COUNT = 35
LB_AFFINITY = 36
LB_PICK = 37
LB_LEARN = 38
LB_DELIVER = 39
TUNNEL_DST = 40
TUNNEL_SRC = 41
TUNNEL_DELIVER = 42
INBOUND_CT = 43
GATEWAY_RELAY = 45

# ct_state bits (OVS): a tracked packet of a connection seen before, or related to one (an
# ICMP error about it); never one conntrack found invalid.
CT_NEW = 0x01
CT_EST = 0x02
CT_REL = 0x04
CT_RPL = 0x08
CT_INV = 0x10
CT_TRK = 0x20

TABLES: tuple[Table, ...] = (
    _t(
        CLASSIFY,
        "classify",
        (
            "in_port",
            "eth_src",
            "eth_type",
            "ipv4_src",
            "ipv6_src",
            "ip_proto",
            "icmpv6_type",
            "arp_spa",
            "arp_sha",
            "tunnel_id",
            "udp_dst",
        ),
        (ARP_TARGET, ND_TARGET, ROUTED_HOP, TUNNEL_DST, GATEWAY_RELAY),
        "VM port: anti-spoofing (in_port + eth_src + IP/ARP source) and VPC context into "
        "metadata; ARP and IPv6 neighbour solicitations go to their responders. Tunnel port: a "
        "local VPC's VNI into metadata; on a gateway host, a relayed VPC's VNI to gateway_relay, "
        "and a hypervisor's BFD probe (VNI 0, UDP 3784) straight back to its sender "
        "(tun_ipv4_dst := tun_ipv4_src, out IN_PORT: docs/gateways.md, liveness).",
        "compiler.vpc_flows, port_flows, _classify_ip (VIPs, route prefixes), relay_vpc_flows, "
        "bfd_reflect_flow",
    ),
    _t(
        ARP_TARGET,
        "arp_target",
        ("metadata", "in_port", "eth_type", "arp_op", "arp_tpa"),
        (ARP_REPLY_TABLE,),
        "ARP request for a gateway or known address of the VPC: turn it into a reply *from* "
        "the target (eth_src, arp_op, arp_sha, arp_spa).",
        "compiler._arp_flows; port_flows (never about itself)",
    ),
    _t(
        ARP_REPLY_TABLE,
        "arp_reply",
        ("in_port", "eth_type"),
        (),
        "Finish the reply *to* the requester (eth_dst, arp_tha, arp_tpa are the requesting "
        "port's own, known constants) and send it out IN_PORT.",
        "compiler.port_flows",
    ),
    _t(
        ND_TARGET,
        "nd_target",
        ("metadata", "in_port", "eth_type", "ip_proto", "icmpv6_type", "ipv6_nd_target"),
        (),
        "IPv6 neighbour solicitation for a gateway or known address of the VPC: eth_dst := "
        "the target's MAC, then to the OHC, which answers with an advertisement (ohc/nd.py; "
        "router flag for gateways, by the flow's cookie kind).",
        "compiler._nd_flows; port_flows (never about itself)",
    ),
    _t(
        ROUTED_HOP,
        "routed_hop",
        ("metadata", "eth_dst", "eth_type"),
        (L3_LOOKUP,),
        "Packets to the VPC's gateway MAC are routed: dec_ttl, eth_src := gateway MAC, set "
        "ROUTED. Others go on unchanged (same-subnet traffic).",
        "compiler.vpc_flows",
    ),
    _t(
        L3_LOOKUP,
        "l3_lookup",
        ("metadata", "eth_type", "ipv4_dst", "ipv6_dst"),
        (OFFLOAD_COUNT, LB_AFFINITY, LB_PICK, INBOUND_CT),
        "Per VPC context: own destinations (local port, or Geneve with the own VNI), peer "
        "destinations (routed only; Geneve with the peer's VNI), ILB VIPs (select group), "
        "static and dynamic (BGP-learned, docs/routing.md) routes by longest prefix; subnet "
        "routes without a destination drop, but a peer's subnet when its side says forwarding "
        "gateway: tunnel_id := the peer's VNI, then the select group over the gateways. Toward a "
        "peer this VPC takes only replies from: ct commit in the sending port's zone first; to "
        "a local port whose VPC takes only replies from this one: ct(table=43) instead of output. "
        "An own VIP with spillover backends: resubmit to lb_affinity, then lb_pick.",
        "compiler.port_flows, dest_flows, lb_flows, route_flows",
    ),
    _t(
        OFFLOAD_COUNT,
        "offload_count",
        ("metadata", "eth_type", "ipv4_dst", "ipv6_dst"),
        (),
        "On-demand sides only (docs/gateways.md): reached by resubmit from a peer's subnet "
        "flow to the gateways and from a direct flow of an offloaded destination, so it "
        "counts each (VPC context, destination) pair: a learned flow (no actions, idle "
        "timeout, the side's cookie) per pair the host sends to; the subnet flow here learns "
        "it. Nothing is output here: the resubmitting flow goes on.",
        "compiler.route_flows (on-demand), dest_flows (offloaded)",
    ),
    _t(
        LB_AFFINITY,
        "lb_affinity",
        _CONNECTION,
        (),
        "ILBs with spillover backends only (docs/gateways.md, overload shift): reached by "
        "resubmit from the VIP's flow; holds only flows the switch learned in lb_learn, one per "
        "TCP/UDP connection (VPC context, addresses, ports; idle timeout), whose action loads "
        "its backend's MAC into eth_dst. A miss (a new connection) changes nothing.",
        "compiler.lb_flows (the learner in lb_learn)",
    ),
    _t(
        LB_PICK,
        "lb_pick",
        ("metadata", "eth_type", "ipv4_dst", "eth_dst"),
        (LB_LEARN, LB_DELIVER),
        "ILBs with spillover backends: a packet whose eth_dst lb_affinity set to a backend's MAC "
        "goes on to lb_deliver; any other (a new connection) to the ILB's select group, whose "
        "buckets set eth_dst to their backend's MAC and resubmit to lb_learn (OVS runs a bucket "
        "as an action set: set_field, then one output, group, resubmit or ct; a learn or a "
        "resubmit beside an output is dropped).",
        "compiler.lb_flows",
    ),
    _t(
        LB_LEARN,
        "lb_learn",
        ("metadata", "eth_type", "ip_proto", "ipv4_dst"),
        (LB_DELIVER,),
        "ILBs with spillover backends: per VIP and protocol (TCP, UDP), learn the connection's "
        "flow in lb_affinity (load eth_dst: the backend the bucket chose); every packet then "
        "goes on to lb_deliver.",
        "compiler.lb_flows",
    ),
    _t(
        LB_DELIVER,
        "lb_deliver",
        ("metadata", "eth_type", "ipv4_dst", "eth_dst"),
        (),
        "ILBs with spillover backends: per backend (local, or spillover whatever the share), by "
        "its MAC in eth_dst, forward to it as the plain ILB's bucket would. Its counters are the "
        "packets each backend gets from this host: the load the OHC reads (ohc/spillover.py).",
        "compiler.lb_flows",
    ),
    _t(
        TUNNEL_DST,
        "tunnel_dst",
        ("metadata", "eth_type", "ipv4_dst", "ipv6_dst", "eth_dst"),
        (TUNNEL_SRC,),
        "Tunnel packet for a local endpoint of the VNI's VPC (or a VIP it backs, by eth_dst): "
        "its ofport into metadata.",
        "compiler._tunnel_dst (ports, VIP backends, route next hops)",
    ),
    _t(
        TUNNEL_SRC,
        "tunnel_src",
        ("metadata", "eth_type", "ipv4_src", "ipv6_src", "tun_ipv4_src"),
        (TUNNEL_DELIVER, INBOUND_CT),
        "Source check: the source IP (from the host that owns it) is a destination, VIP or "
        "route prefix this OHC received for the VPC or for a peer it follows; a peer's subnet "
        "also from each gateway host, and from any host when this side sends the peer through "
        "gateways (it knows none of the peer's hosts). From a peer the "
        "VPC takes only replies from: ct(table=43) in the zone of the port it is for.",
        "compiler._source_ok (destinations, VIPs, route prefixes, gateways)",
    ),
    _t(
        TUNNEL_DELIVER,
        "tunnel_deliver",
        ("metadata",),
        (),
        "Output to the ofport chosen by tunnel_dst.",
        "compiler.port_flows",
    ),
    _t(
        INBOUND_CT,
        "inbound_ct",
        ("ct_state", "ct_zone"),
        (),
        "Reached only by ct(table=43), in the zone of a local port whose VPC takes only replies "
        "from a peer (zone = its ofport): a packet of a connection the port opened (+est, or "
        "+rel: an ICMP error about one) goes out to it; a new or invalid one misses and drops.",
        "compiler.port_flows",
    ),
    _t(
        GATEWAY_RELAY,
        "gateway_relay",
        ("tunnel_id", "eth_type", "ipv4_dst", "ipv6_dst"),
        (),
        "Gateway hosts only (docs/gateways.md): a tunnel packet for a destination of a VPC the "
        "gateway relays for, by VNI and address: eth_dst := its MAC, tun_ipv4_dst := its host, "
        "out the tunnel port it came in on (IN_PORT), the VNI unchanged.",
        "compiler.relay_flows",
    ),
)

PIPELINE: Mapping[int, Table] = MappingProxyType({t.id: t for t in TABLES})

# OXM prerequisites of the fields this pipeline uses (OpenFlow 1.3 section 7.2.3.8).
_PREREQS: Mapping[str, tuple[str, frozenset[int]]] = MappingProxyType(
    {
        "ipv4_src": ("eth_type", frozenset({ETH_IPV4})),
        "ipv4_dst": ("eth_type", frozenset({ETH_IPV4})),
        "ipv6_src": ("eth_type", frozenset({ETH_IPV6})),
        "ipv6_dst": ("eth_type", frozenset({ETH_IPV6})),
        "arp_op": ("eth_type", frozenset({ETH_ARP})),
        "arp_spa": ("eth_type", frozenset({ETH_ARP})),
        "arp_tpa": ("eth_type", frozenset({ETH_ARP})),
        "arp_sha": ("eth_type", frozenset({ETH_ARP})),
        "arp_tha": ("eth_type", frozenset({ETH_ARP})),
        "ip_proto": ("eth_type", frozenset({ETH_IPV4, ETH_IPV6})),
        "udp_dst": ("ip_proto", frozenset({IPPROTO_UDP})),
        "udp_src": ("ip_proto", frozenset({IPPROTO_UDP})),
        "tcp_src": ("ip_proto", frozenset({IPPROTO_TCP})),
        "tcp_dst": ("ip_proto", frozenset({IPPROTO_TCP})),
        "icmpv6_type": ("ip_proto", frozenset({IPPROTO_ICMPV6})),
        "ipv6_nd_target": ("icmpv6_type", frozenset({ND_SOLICIT})),
    }
)

_PREREQ_FIELDS = frozenset(_PREREQS)


def check_flow(flow: Flow, tables: Mapping[int, Table] = PIPELINE) -> Flow:
    """Return ``flow`` if it fits its table's declaration, else raise ``PipelineError``.

    One pass over the match and one over the instructions: it runs for every flow compiled
    (~10 us a flow before, 1 s of a cold compile of 100k flows; measured)."""
    table = tables.get(flow.table)
    if table is None:
        raise PipelineError(f"{flow.text()}: table {flow.table} is not declared")
    fields = dict(flow.match)
    if not table.matches.issuperset(fields):
        extra = sorted(set(fields) - table.matches)
        raise PipelineError(
            f"{flow.text()}: table {table.name} does not declare match field(s) {extra}"
        )
    names: list[str] = []  # fields set by actions
    gotos: list[int] = []
    writes = goto_count = 0
    ct = False
    for i in flow.instructions:
        if isinstance(i, Apply):
            for a in i.actions:
                if isinstance(a, SetField):
                    names.append(a.name)
                elif isinstance(a, Conntrack):
                    ct = True
                    if a.table != CT_NO_TABLE:
                        gotos.append(a.table)
                elif isinstance(a, Resubmit):
                    gotos.append(a.table)
                elif isinstance(a, Learn) and a.table not in tables:
                    raise PipelineError(f"{flow.text()}: learns into undeclared table {a.table}")
        elif isinstance(i, Goto):
            gotos.append(i.table)
            goto_count += 1
        elif isinstance(i, WriteMetadata):
            writes += 1
    # only the few fields with a prerequisite are looked at (in C, the set intersections)
    for name in (*_PREREQ_FIELDS.intersection(fields), *_PREREQ_FIELDS.intersection(names)):
        need = _PREREQS[name]
        if fields.get(need[0]) not in need[1]:
            raise PipelineError(f"{flow.text()}: {name} needs {need[0]} in the match")
    if ct and fields.get("eth_type") not in (ETH_IPV4, ETH_IPV6):
        raise PipelineError(f"{flow.text()}: ct needs an IP eth_type in the match")
    if goto_count > 1:
        raise PipelineError(f"{flow.text()}: more than one goto")
    for nxt in gotos:
        if nxt not in table.next_tables:
            raise PipelineError(f"{flow.text()}: table {table.name} may not go to table {nxt}")
    if writes > 1:
        raise PipelineError(f"{flow.text()}: more than one write_metadata")
    return flow


def check_registry(tables: Iterable[Table] = TABLES) -> None:
    """The registry itself: unique ids and names, next tables declared and later (OpenFlow)."""
    seen: dict[int, Table] = {}
    names: set[str] = set()
    for t in tables:
        if t.id in seen or t.name in names:
            raise PipelineError(f"table {t.id} {t.name}: declared twice")
        seen[t.id] = t
        names.add(t.name)
    for t in seen.values():
        for nxt in t.next_tables:
            if nxt not in seen or nxt <= t.id:
                raise PipelineError(f"table {t.name}: next table {nxt} is undeclared or earlier")


def markdown_table(tables: Iterable[Table] = TABLES) -> str:
    """The registry as the markdown table in docs/pipeline.md."""
    rows = [
        "| id | name | matches | next | miss | purpose | written by |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in tables:
        matches = ", ".join(f"`{m}`" for m in sorted(t.matches))
        nxt = ", ".join(str(n) for n in sorted(t.next_tables)) or "-"
        rows.append(
            f"| {t.id} | `{t.name}` | {matches} | {nxt} | {t.miss} | {t.purpose} | `{t.writer}` |"
        )
    return "\n".join(rows)


check_registry()
