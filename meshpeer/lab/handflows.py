"""Hand-written L2 flows in ovs-ofctl text, to prove the lab's plumbing before an OHC exists.

For humans and tests only: the OHC builds typed flows from the pipeline registry.
"""

from __future__ import annotations

from collections.abc import Sequence

from meshpeer.lab.plan import GENEVE_OFPORT, LabPlan, VmPlan


def vm_named(plan: LabPlan, name: str) -> VmPlan:
    return next(v for v in plan.vms if v.name == name)


def tunnel_flows(plan: LabPlan, host: str, pairs: Sequence[tuple[str, str]]) -> list[str]:
    """L2 test flows so that each (src, dst) VM pair with src on this host can talk.

    Same host: output to the port. Other host: Geneve with the VPC's VNI to that host's
    underlay IP. Broadcasts (ARP) go to every destination of the source. Arriving tunnel
    traffic is delivered by VNI and destination MAC.
    """
    flows = []
    for vm in plan.vms_on(host):
        for dl_dst in (vm.mac, "ff:ff:ff:ff:ff:ff"):
            flows.append(
                f"priority=10,in_port={GENEVE_OFPORT},tun_id={vm.vni},dl_dst={dl_dst},actions=output:{vm.ofport}"
            )
    by_src: dict[str, list[str]] = {}
    for src, dst in pairs:
        s, d = vm_named(plan, src), vm_named(plan, dst)
        if s.host != host:
            continue
        if d.host == host:
            out = f"output:{d.ofport}"
        else:
            ul = plan.host(d.host).underlay_ip
            out = f"set_field:{d.vni}->tun_id,set_field:{ul}->tun_dst,output:{GENEVE_OFPORT}"
        flows.append(f"priority=10,in_port={s.ofport},dl_dst={d.mac},actions={out}")
        by_src.setdefault(src, []).append(out)
    for src, outs in by_src.items():
        port = vm_named(plan, src).ofport
        flows.append(
            f"priority=10,in_port={port},dl_dst=ff:ff:ff:ff:ff:ff,actions={','.join(outs)}"
        )
    return flows
