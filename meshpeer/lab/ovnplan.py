"""A lab topology as OVN's northbound sees it: pure (topology + lab plan -> nbctl commands).

The mapping (docs/ovn.md): a VPC is a logical switch behind a distributed logical router
whose switch-side port holds every subnet's gateway; an endpoint is a switch port named as the
lab's VM (its OVS interface's ``iface-id``), with the VM's MAC and IP; a peering (both sides
in the topology) is a pair of peer router ports on a private /30 plus a static route on each
router to every subnet of the other VPC. Export policies, inbound "replies" and custom routes
have no OVN counterpart here: a peering carries everything.

Shards are availability zones: the VPCs of each controller in the topology (one zone when it
names none or one) get their own central databases, ovn-northd and chassis (the hosts of their
VMs), and a peering across zones goes through a transit switch that ``ovn-ic`` creates in both
zones from the interconnection NB: each router has a gateway port on it, bound to its zone's
gateway chassis (the zone's first host, ``ovn-is-interconn``), and static routes to the other
side's subnets.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from meshpeer.controller.model import gateway
from meshpeer.lab.plan import LabPlan
from meshpeer.lab.topology import Topology

# Transit /30s between peered routers: OVN-internal, never on a wire the lab can see.
TRANSIT = ipaddress.IPv4Network("100.64.0.0/16")
NB_PORT = 6641
IC_NB_PORT = 6645
IC_SB_PORT = 6646
IC_NB_SCHEMA = "/usr/share/ovn/ovn-ic-nb.ovsschema"
IC_SB_SCHEMA = "/usr/share/ovn/ovn-ic-sb.ovsschema"
IC = "ovnic"  # the interconnection databases' run directory, in the first zone's namespace
NB_SCHEMA = "/usr/share/ovn/ovn-nb.ovsschema"
SB_SCHEMA = "/usr/share/ovn/ovn-sb.ovsschema"
SB_PORT = 6642
CENTRAL = "ovnc"  # the central namespace is "<lab>-ovnc": the lab's prefix, so 'down' finds it
CENTRAL_HOST_OFFSET = 5  # zone k's management IP: the lab's management subnet + 5 + k
MAX_ZONES = 5  # +5..+9: below the controllers' +10

Command = tuple[str, ...]  # one ovn-nbctl command (joined with "--" into one transaction)


@dataclass(frozen=True)
class Central:
    """Where the OVN databases and ovn-northd run."""

    netns: str
    rundir: str
    ip: str
    fabric_port: str  # its management veth's end on the fabric's management bridge

    @property
    def nb_sock(self) -> str:
        return f"{self.rundir}/ovnnb_db.sock"

    @property
    def sb_sock(self) -> str:
        return f"{self.rundir}/ovnsb_db.sock"

    @property
    def sb_remote(self) -> str:
        """What every host's ovn-controller connects to."""
        return f"tcp:{self.ip}:{SB_PORT}"

    @property
    def sb_listen(self) -> str:
        return f"ptcp:{SB_PORT}:{self.ip}"


def central(plan: LabPlan, zone: int = 0) -> Central:
    """Zone ``zone``'s central namespace: ``<lab>-ovnc`` for the first, ``<lab>-ovnc<k>``."""
    if not 0 <= zone < MAX_ZONES:
        raise ValueError(f"at most {MAX_ZONES} availability zones")
    mgmt = ipaddress.ip_network(plan.mgmt_subnet)
    name = CENTRAL if zone == 0 else f"{CENTRAL}{zone}"
    return Central(
        netns=f"{plan.lab}-{name}",
        rundir=f"{plan.state_dir}/{name}",
        ip=str(mgmt.network_address + CENTRAL_HOST_OFFSET + zone),
        fabric_port=f"m-{name}",
    )


@dataclass(frozen=True)
class Interconnect:
    """The interconnection NB and SB ovsdb-servers (ovn-ic's global databases)."""

    rundir: str
    ip: str  # the first zone's central address

    @property
    def nb_sock(self) -> str:
        return f"{self.rundir}/ovn_ic_nb_db.sock"

    @property
    def sb_sock(self) -> str:
        return f"{self.rundir}/ovn_ic_sb_db.sock"

    @property
    def nb_remote(self) -> str:
        return f"tcp:{self.ip}:{IC_NB_PORT}"

    @property
    def sb_remote(self) -> str:
        return f"tcp:{self.ip}:{IC_SB_PORT}"


def interconnect(plan: LabPlan) -> Interconnect:
    return Interconnect(rundir=f"{plan.state_dir}/{IC}", ip=central(plan, 0).ip)


def vpc_zones(topo: Topology) -> dict[str, int]:
    """Each VPC's availability zone: one per controller that owns VPCs, in topology order."""
    names = list(dict.fromkeys(v.controller for v in topo.vpcs))
    return {v.name: names.index(v.controller) for v in topo.vpcs}


def zone_count(topo: Topology) -> int:
    return len(set(vpc_zones(topo).values()))


def zone_name(zone: int) -> str:
    return f"az{zone + 1}"


def host_zones(topo: Topology, plan: LabPlan) -> dict[str, int]:
    """Each host's zone: its VMs' VPCs' (a host without VMs: the first zone). ValueError if a
    host holds VMs of two zones (an OVN chassis belongs to one)."""
    zones = vpc_zones(topo)
    out: dict[str, int] = {}
    for vm in plan.vms:
        if out.setdefault(vm.host, zones[vm.vpc]) != zones[vm.vpc]:
            raise ValueError(f"host {vm.host!r} holds VMs of two availability zones")
    return {h.name: out.get(h.name, 0) for h in plan.hosts}


def gateways(topo: Topology, plan: LabPlan) -> dict[int, str]:
    """Each zone's interconnection gateway chassis: its first host."""
    out: dict[int, str] = {}
    for host, zone in host_zones(topo, plan).items():
        out.setdefault(zone, host)
    return out


def transit(a: str, b: str) -> str:
    """The transit switch of peering (a, b) (as ``peered_pairs`` orders it)."""
    return f"ts-{a}-{b}"


def cross_pairs(topo: Topology) -> list[tuple[str, str]]:
    """The peerings whose sides are in different zones."""
    z = vpc_zones(topo)
    return [(a, b) for a, b in peered_pairs(topo) if z[a] != z[b]]


def switch(vpc: str) -> str:
    return f"ls-{vpc}"


def router(vpc: str) -> str:
    return f"lr-{vpc}"


def router_mac(k: int) -> str:
    """The k-th router port's MAC (locally administered, unicast)."""
    return ":".join(f"{b:02x}" for b in (2, 10, *k.to_bytes(4, "big")))


def peered_pairs(topo: Topology) -> list[tuple[str, str]]:
    """Each peering once, (a, b) in topology order, when both sides declared it."""
    sides = {(p.vpc, p.peer) for p in topo.peerings}
    out: list[tuple[str, str]] = []
    for p in topo.peerings:
        if (p.peer, p.vpc) in sides and (p.peer, p.vpc) not in out:
            out.append((p.vpc, p.peer))
    return out


def vpc_commands(topo: Topology, vpc: str, k: int) -> list[Command]:
    """Switch, router and the port pair between them; ``k`` numbers the router port's MAC."""
    v = topo.vpc(vpc)
    ls, lr = switch(vpc), router(vpc)
    nets = [f"{gateway(s)}/{s.prefixlen}" for s in v.subnets]
    lrp, lsp = f"lrp-{vpc}", f"lsp-{vpc}-lr"
    return [
        ("ls-add", ls),
        ("lr-add", lr),
        ("lrp-add", lr, lrp, router_mac(k), *nets),
        ("lsp-add", ls, lsp),
        ("lsp-set-type", lsp, "router"),
        ("lsp-set-addresses", lsp, "router"),
        ("lsp-set-options", lsp, f"router-port={lrp}"),
    ]


def port_commands(vpc: str, name: str, mac: str, ip: str) -> list[Command]:
    """One endpoint: a switch port the host's ovn-controller binds by the VM's iface-id."""
    return [("lsp-add", switch(vpc), name), ("lsp-set-addresses", name, f"{mac} {ip}")]


def transit_ips(k: int) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    """The two router addresses on the k-th transit /30."""
    if 4 * (k + 1) > TRANSIT.num_addresses:
        raise ValueError(f"more than {TRANSIT.num_addresses // 4} peerings")
    return TRANSIT.network_address + 4 * k + 1, TRANSIT.network_address + 4 * k + 2


def peering_commands(topo: Topology, a: str, b: str, k: int, mac_base: int) -> list[Command]:
    """Peer router ports on the k-th transit /30, and a route each way to the other's IPv4
    subnets."""
    ip_a, ip_b = transit_ips(k)
    pa, pb = f"lrp-{a}-to-{b}", f"lrp-{b}-to-{a}"
    out: list[Command] = [
        ("lrp-add", router(a), pa, router_mac(mac_base), f"{ip_a}/30", f"peer={pb}"),
        ("lrp-add", router(b), pb, router_mac(mac_base + 1), f"{ip_b}/30", f"peer={pa}"),
    ]
    out += [("lr-route-add", router(a), str(s), str(ip_b)) for s in _v4(topo, b)]
    out += [("lr-route-add", router(b), str(s), str(ip_a)) for s in _v4(topo, a)]
    return out


def _v4(topo: Topology, vpc: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The subnets a peering routes: IPv4 only, as its transit /30 (docs/ovn.md)."""
    return [s for s in topo.vpc(vpc).subnets if s.version == 4]


@dataclass(frozen=True)
class Side:
    """One router's side of a peering across zones."""

    vpc: str
    other: str
    ts: str  # the peering's transit switch
    ip: ipaddress.IPv4Address  # this router's address on it
    peer_ip: ipaddress.IPv4Address  # the other router's
    mac: str
    gateway: str  # this zone's gateway chassis


def gateway_side_commands(topo: Topology, s: Side) -> list[Command]:
    """``s.vpc``'s router port on the transit switch, a gateway port on its zone's gateway
    chassis, and routes to ``s.other``'s subnets via the other router."""
    lrp, lsp = f"lrp-{s.vpc}-to-{s.other}", f"lsp-{s.vpc}-to-{s.other}"
    out: list[Command] = [
        ("lrp-add", router(s.vpc), lrp, s.mac, f"{s.ip}/30"),
        ("lrp-set-gateway-chassis", lrp, s.gateway, "1"),
        ("lsp-add", s.ts, lsp),
        ("lsp-set-type", lsp, "router"),
        ("lsp-set-addresses", lsp, "router"),
        ("lsp-set-options", lsp, f"router-port={lrp}"),
    ]
    return out + [
        ("lr-route-add", router(s.vpc), str(n), str(s.peer_ip)) for n in _v4(topo, s.other)
    ]


def nb_commands(topo: Topology, plan: LabPlan, zone: int = 0) -> list[Command]:
    """The whole northbound configuration of zone ``zone``: its VPCs, VMs and peerings (one
    zone when the topology has at most one controller)."""
    zones = vpc_zones(topo)
    gws = gateways(topo, plan) if zone_count(topo) > 1 else {}
    out: list[Command] = []
    for k, v in enumerate(topo.vpcs, start=1):
        if zones[v.name] == zone:
            out += vpc_commands(topo, v.name, k)
    for vm in plan.vms:
        if zones[vm.vpc] == zone:
            out += port_commands(vm.vpc, vm.name, vm.mac, vm.ip)
    base = len(topo.vpcs) + 1
    for k, (a, b) in enumerate(peered_pairs(topo)):
        if zones[a] == zones[b] == zone:
            out += peering_commands(topo, a, b, k, base + 2 * k)
        elif zone in (zones[a], zones[b]):
            ip_a, ip_b = transit_ips(k)
            mac_a, mac_b = router_mac(base + 2 * k), router_mac(base + 2 * k + 1)
            ts, gw = transit(a, b), gws[zone]
            side = (
                Side(a, b, ts, ip_a, ip_b, mac_a, gw)
                if zones[a] == zone
                else Side(b, a, ts, ip_b, ip_a, mac_b, gw)
            )
            out += gateway_side_commands(topo, side)
    return out


def nbctl_args(commands: list[Command]) -> list[str]:
    """Commands as one ovn-nbctl transaction's arguments."""
    args: list[str] = []
    for c in commands:
        args += ["--", *c]
    return args
