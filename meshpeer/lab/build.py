"""'lab up': execute a LabPlan in stages, hosts in parallel, one progress line per stage.

Links are created directly inside their namespaces (``ip link add ... netns A type veth
peer ... netns B``) so nothing but the root management veth ever touches the root
namespace, and many iproute2 commands go through one ``ip -batch`` process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from meshpeer.lab import controllers, etcd, hosts, ohcs, onprem, ovs, state, supervisor, teardown
from meshpeer.lab.plan import DOCKER, NETNS, HostPlan, LabPlan, VmPlan, make_plan
from meshpeer.lab.progress import Note, Progress, Ticker
from meshpeer.lab.sh import ip_batch, run
from meshpeer.lab.topology import Topology

T = TypeVar("T")
VM_MTU = 1400  # Geneve adds 50 bytes on a 1500-byte underlay; bigger packets vanish silently


def parallel(fn: Callable[[T], object], items: Iterable[T]) -> None:
    """Run fn over items on threads; re-raise the first failure."""
    items = list(items)
    if not items:
        return
    with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
        for fut in [pool.submit(fn, i) for i in items]:
            fut.result()


def fresh(
    topo: Topology,
    lab: str,
    progress: Progress = print,
    keep_failed: bool = False,
    tls: bool = True,
    backend: str = NETNS,
) -> tuple[LabPlan, float]:
    """Replace lab ``lab`` with a new one built from ``topo``; clean up if building fails.
    ``tls``: shards serve HTTPS with certificates from a CA made for this lab. ``backend``:
    the hosts are namespaces (NETNS) or containers (DOCKER)."""
    teardown.down(lab)
    plan = make_plan(topo, lab, state.free_index(lab), controllers.new_secrets(), tls, backend)
    try:
        return plan, up(plan, topo, progress)
    except BaseException:
        if not keep_failed:
            progress(f"[lab {lab}] up failed: removing what was created")
            teardown.down(lab)
        raise


def up(plan: LabPlan, topo: Topology, progress: Progress = print) -> float:
    """Build the lab; returns the elapsed seconds. The caller cleans up on failure."""
    start = time.monotonic()
    state.save(plan, "creating")

    def stage(name: str, fn: Callable[[Note], str]) -> None:
        t0 = time.monotonic()
        with Ticker(progress, f"[lab {plan.lab}] {name:<10}") as ticker:
            detail = fn(ticker.note)
        progress(f"[lab {plan.lab}] {name:<10} {detail} ({time.monotonic() - t0:.2f}s)")

    if plan.backend == DOCKER:
        stage("containers", lambda note: hosts.create(plan, note))
    stage("netns", lambda _: _namespaces(plan))
    stage("links", lambda _: _links(plan))
    stage("addresses", lambda _: _addresses(plan))
    stage("supervisor", lambda _: f"pid {supervisor.start_daemon(plan)}")
    stage("ovs", lambda _: _switches(plan))
    stage("underlay", lambda _: _underlay(plan))
    if plan.onprem:
        stage("onprem", lambda _: _onprem(plan))
    if plan.etcd:
        stage("etcd", lambda _: etcd.up(plan))
    if plan.controllers:
        stage("controllers", lambda _: _controllers(plan, topo))
        stage("ohcs", lambda _: _ohcs(plan))
        t_intent = time.time()
        stage("intent", lambda note: f"{controllers.apply_intent(plan, topo, note)} REST calls")
        stage("programmed", lambda note: _programmed(plan, t_intent, note))
    state.save(plan, "up")
    return time.monotonic() - start


def _programmed(plan: LabPlan, since: float, note: Note) -> str:
    ohcs.wait_settled(plan, since, note=note)
    return "every OHC synced"


def _namespaces(plan: LabPlan) -> str:
    names = hosts.namespaces_to_add(plan)
    ip_batch([f"netns add {n}" for n in names])
    return f"{len(names)} namespaces"


def _links(plan: LabPlan) -> str:
    fab = plan.fabric_netns
    lines = [f"link add {plan.root_mgmt_if} type veth peer name m-root netns {fab}"]
    for h in plan.hosts:
        lines.append(f"link add ul0 netns {h.netns} type veth peer name u-{h.name} netns {fab}")
        lines.append(f"link add mgmt0 netns {h.netns} type veth peer name m-{h.name} netns {fab}")
    for c in plan.mgmt_members():
        lines.append(f"link add mgmt0 netns {c.netns} type veth peer name m-{c.name} netns {fab}")
    for vm in plan.vms:
        host_ns = plan.host(vm.host).netns
        lines.append(
            f"link add eth0 netns {vm.netns} address {vm.mac} mtu {VM_MTU} type veth"
            f" peer name {vm.host_port} netns {host_ns} mtu {VM_MTU}"
        )
    lines += onprem.link_lines(plan)
    ip_batch(lines)
    return f"{len(lines)} veth pairs"


def _fabric_lines(plan: LabPlan) -> list[str]:
    lines = ["link set lo up"]
    for br in ("fab", "mgmt"):
        lines += [f"link add {br} type bridge forward_delay 0 stp_state 0", f"link set {br} up"]
    ports = [("mgmt", "m-root")]
    ports += [("fab", f"u-{h.name}") for h in plan.hosts]
    ports += [("mgmt", f"m-{h.name}") for h in plan.hosts]
    ports += [("mgmt", f"m-{c.name}") for c in plan.mgmt_members()]
    for br, port in ports:
        lines += [f"link set {port} master {br}", f"link set {port} up"]
    return lines


def _host_lines(plan: LabPlan, h: HostPlan) -> list[str]:
    lines = ["link set lo up", "link set ul0 up", *_mgmt_lines(plan, h.mgmt_ip)]
    lines += [f"link set {vm.host_port} up" for vm in plan.vms_on(h.name)]
    return lines


def _mgmt_lines(plan: LabPlan, ip: str) -> list[str]:
    prefix = plan.mgmt_subnet.split("/")[1]
    return [f"addr add {ip}/{prefix} dev mgmt0", "link set mgmt0 up"]


def vm_lines(vm: VmPlan) -> list[str]:
    nodad = " nodad" if ":" in vm.ip else ""
    return [
        "link set lo up",
        f"addr add {vm.ip}/{vm.prefixlen} dev eth0{nodad}",
        "link set eth0 up",
        f"route add default via {vm.gateway} dev eth0",
        *(f"addr add {vip}/{128 if ':' in vip else 32} dev lo" for vip in vm.vips),
    ]


def vm_sysctl(vm: VmPlan) -> None:
    """TCP across the userspace datapath needs tx checksum offload off on the VM side."""
    v6 = ":" in vm.ip
    script = ["ethtool -K eth0 tx off >/dev/null"]
    if v6:
        script.append("sysctl -qw net.ipv6.conf.eth0.accept_ra=0")
    else:  # no IPv6 chatter (router solicitations, MLD) from IPv4-only VMs
        script.append("sysctl -qw net.ipv6.conf.all.disable_ipv6=1")
    if vm.vips:  # an ILB backend (direct server return), configured as for LVS-DR: ARP
        # only for eth0's own address, so the switch's anti-spoofing accepts its requests.
        script.append("sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2")
    run(["sh", "-ec", " && ".join(script)], netns=vm.netns)


def _addresses(plan: LabPlan) -> str:
    prefix = plan.mgmt_subnet.split("/")[1]
    jobs: list[tuple[str | None, list[str]]] = [
        (None, [f"addr add {plan.root_mgmt_ip}/{prefix} dev {plan.root_mgmt_if}",
                f"link set {plan.root_mgmt_if} up"]),
        (plan.fabric_netns, _fabric_lines(plan)),
    ]  # fmt: skip
    jobs += [(h.netns, _host_lines(plan, h)) for h in plan.hosts]
    jobs += [
        (c.netns, ["link set lo up", *_mgmt_lines(plan, c.mgmt_ip)]) for c in plan.mgmt_members()
    ]
    jobs += [(vm.netns, vm_lines(vm)) for vm in plan.vms]
    jobs += [(r.controller_netns, onprem.shard_lines(r)) for r in plan.onprem]
    jobs += [(h.netns, onprem.host_lines(h)) for h in plan.onprem_hosts]
    parallel(lambda job: ip_batch(job[1], netns=job[0]), jobs)
    # after the VM stage: a router's namespace also holds its endpoint's eth0 (and its lo)
    parallel(lambda r: ip_batch(onprem.router_lines(plan, r), netns=r.netns), plan.onprem)
    parallel(vm_sysctl, plan.vms)
    parallel(onprem.router_sysctl, plan.onprem)
    parallel(onprem.host_sysctl, plan.onprem_hosts)
    return f"{len(jobs)} namespaces configured"


def _switches(plan: LabPlan) -> str:
    parallel(lambda h: ovs.start(plan, h), plan.hosts)
    return f"{len(plan.hosts)} switches, {len(plan.vms)} VM ports"


def _underlay(plan: LabPlan) -> str:
    prefix = plan.underlay_subnet.split("/")[1]

    def one(h: HostPlan) -> None:
        ip_batch(
            [f"addr add {h.underlay_ip}/{prefix} dev br-phy", "link set br-phy up"], netns=h.netns
        )
        ovs.set_tunnel_neighbours(plan, h)

    parallel(one, plan.hosts)
    return f"{len(plan.hosts)} VTEPs on {plan.underlay_subnet}"


def _onprem(plan: LabPlan) -> str:
    for r in plan.onprem:
        onprem.write_config(r)
        onprem.start(plan, r)
    return f"{len(plan.onprem)} BIRD routers, {len(plan.onprem_hosts)} on-prem hosts"


def _controllers(plan: LabPlan, topo: Topology) -> str:
    controllers.write_configs(plan, topo)
    for c in plan.controllers:  # the first replica first: it leads, where the directory says
        controllers.start(plan, c, controllers.replicas(c)[0])
    parallel(lambda c: controllers.wait_serving(plan, c), plan.controllers)
    for c in plan.controllers:
        controllers.start(plan, c)  # the standbys (idempotent for the first)
    parallel(lambda c: controllers.wait_healthy(plan, c), plan.controllers)
    standbys = sum(c.replicas - 1 for c in plan.controllers)
    return f"{len(plan.controllers)} shards ({standbys} standbys) on {plan.mgmt_subnet}"


def _ohcs(plan: LabPlan) -> str:
    for h in plan.hosts:
        ohcs.start(plan, h)
    return f"{len(plan.hosts)} on-host controllers"
