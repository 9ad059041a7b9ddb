"""'lab attach': a VM plugged into a host's br-int the ordinary way, for an endpoint made over the API.

The lab's own VMs come from the topology file. A VPC created through the REST API has no VM in
the topology, so this plugs one in as an operator would on any OVS host (docs/attach.md): a
namespace with a veth whose host end is added to br-int with plain ``ovs-vsctl add-port``
(OVS picks the ofport) and the external_ids the OHC reads. The namespace carries the lab's
prefix, so 'down' removes it, and ``exec NAME`` finds it.
"""

from __future__ import annotations

import ipaddress

from meshpeer.controller.model import derived_mac
from meshpeer.lab import build, ovs, teardown
from meshpeer.lab.build import VM_MTU
from meshpeer.lab.plan import LabPlan, VmPlan
from meshpeer.lab.sh import LabError, ip_batch


def attach(plan: LabPlan, name: str, host: str, vpc: str, iface: str, mac: str | None) -> VmPlan:
    """``iface`` is the VM's address with its subnet's prefix length, e.g. ``10.5.0.11/24``."""
    if plan.netns_of(name) is not None or f"{plan.lab}-{name}" in teardown.lab_netns(plan.lab):
        raise LabError(f"lab {plan.lab!r} already has something named {name!r}")
    if not any(h.name == host for h in plan.hosts):
        raise LabError(f"no host named {host!r} in lab {plan.lab!r}")
    try:
        addr = ipaddress.ip_interface(iface)
    except ValueError as exc:
        raise LabError(f"--ip: want ADDRESS/PREFIXLEN, e.g. 10.5.0.11/24 ({exc})") from exc
    h = plan.host(host)
    vm = VmPlan(
        name=name,
        vpc=vpc,
        kind="vm",
        host=host,
        netns=f"{plan.lab}-{name}",
        ip=str(addr.ip),
        prefixlen=addr.network.prefixlen,
        gateway=str(next(addr.network.hosts())),  # the subnet's first address, as meshpeer's
        mac=mac or derived_mac(vpc, addr.ip),  # the controller derives the same MAC
        vni=0,  # not known to the lab: the VPC lives only in its shard
        host_port=f"v-{name}"[:15],
        ofport=0,  # OVS assigns it
    )
    ip_batch(
        [
            f"netns add {vm.netns}",
            f"link add eth0 netns {vm.netns} address {vm.mac} mtu {VM_MTU} type veth"
            f" peer name {vm.host_port} netns {h.netns} mtu {VM_MTU}",
        ]
    )
    ip_batch([f"link set {vm.host_port} up"], netns=h.netns)
    ip_batch(build.vm_lines(vm), netns=vm.netns)
    build.vm_sysctl(vm)
    ovs.vsctl(h, "add-port", "br-int", vm.host_port, "--", "set", "interface", vm.host_port,
              f"external_ids:iface-id={name}", f"external_ids:vpc={vpc}",
              f"external_ids:attached-mac={vm.mac}")  # fmt: skip
    return vm
