"""A lab topology as OVN's northbound sees it: pure (topology + lab plan -> nbctl commands).

The mapping (docs/ovn.md): a VPC is a logical switch behind a distributed logical router
whose switch-side port holds every subnet's gateway; an endpoint is a switch port named as the
lab's VM (its OVS interface's ``iface-id``), with the VM's MAC and IP; a peering (both sides
in the topology) is a pair of peer router ports on a private /30 plus a static route on each
router to every subnet of the other VPC. Export policies, inbound "replies" and custom routes
have no OVN counterpart here: a peering carries everything.
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
NB_SCHEMA = "/usr/share/ovn/ovn-nb.ovsschema"
SB_SCHEMA = "/usr/share/ovn/ovn-sb.ovsschema"
SB_PORT = 6642
CENTRAL = "ovnc"  # the central namespace is "<lab>-ovnc": the lab's prefix, so 'down' finds it
CENTRAL_HOST_OFFSET = 5  # its management IP: the lab's management subnet + 5

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


def central(plan: LabPlan) -> Central:
    mgmt = ipaddress.ip_network(plan.mgmt_subnet)
    return Central(
        netns=f"{plan.lab}-{CENTRAL}",
        rundir=f"{plan.state_dir}/{CENTRAL}",
        ip=str(mgmt.network_address + CENTRAL_HOST_OFFSET),
        fabric_port=f"m-{CENTRAL}",
    )


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


def peering_commands(topo: Topology, a: str, b: str, k: int, mac_base: int) -> list[Command]:
    """Peer router ports on the k-th transit /30, and a route each way to the other's IPv4
    subnets."""
    if 4 * (k + 1) > TRANSIT.num_addresses:
        raise ValueError(f"more than {TRANSIT.num_addresses // 4} peerings")
    ip_a, ip_b = TRANSIT.network_address + 4 * k + 1, TRANSIT.network_address + 4 * k + 2
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


def nb_commands(topo: Topology, plan: LabPlan) -> list[Command]:
    """The whole northbound configuration of ``topo``'s VPCs, VMs and peerings."""
    out: list[Command] = []
    for k, v in enumerate(topo.vpcs, start=1):
        out += vpc_commands(topo, v.name, k)
    for vm in plan.vms:
        out += port_commands(vm.vpc, vm.name, vm.mac, vm.ip)
    base = len(topo.vpcs) + 1
    for k, (a, b) in enumerate(peered_pairs(topo)):
        out += peering_commands(topo, a, b, k, base + 2 * k)
    return out


def nbctl_args(commands: list[Command]) -> list[str]:
    """Commands as one ovn-nbctl transaction's arguments."""
    args: list[str] = []
    for c in commands:
        args += ["--", *c]
    return args
