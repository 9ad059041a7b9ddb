"""OVN on the lab's own hosts: the meshpeer lab's namespaces, links, userspace switches and
supervisor, with OVN's control plane in place of shards and OHCs (docs/ovn.md).

``up`` builds the lab as 'lab up' does for a topology without controllers (hosts, VMs, br-int
and br-phy with the underlay IP on br-phy's internal port), then adds a central namespace
(``<lab>-ovnc``: NB and SB ovsdb-servers and ovn-northd, their own run/db directory), an
ovn-controller on every host (own ``OVS_RUNDIR``/``OVN_RUNDIR``), and the topology's
northbound configuration (``ovnplan``). Every daemon is a child of the lab's supervisor and
lives under the lab's state directory and prefix, so ``down`` (the meshpeer lab's teardown)
stops each by pid and removes every namespace and link, also after a failed ``up``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from functools import partial

from meshpeer.lab import build, hosts, ovnplan, ovs, supervisor, teardown
from meshpeer.lab.ovnplan import (
    IC_NB_PORT,
    IC_NB_SCHEMA,
    IC_SB_PORT,
    IC_SB_SCHEMA,
    NB_PORT,
    NB_SCHEMA,
    SB_SCHEMA,
    Central,
    Command,
    Interconnect,
    nbctl_args,
)
from meshpeer.lab.plan import HostPlan, LabPlan
from meshpeer.lab.progress import Progress
from meshpeer.lab.sh import LabError, ip_batch, netns_cmd, run
from meshpeer.lab.supervision import Spec
from meshpeer.lab.topology import Topology

# The SB server's and the hosts' probes: the 5 s defaults drop a busy ovn-controller (a big
# batch) or a busy server; a dead peer is still found, a minute later.
PROBE_MS = 60000
WAIT_S = 30.0  # every wait is bounded (ovn-nbctl --timeout, polls with deadlines)
DAEMON_ARGS = ["--no-chdir", "-vconsole:off", "-vfile:info"]  # in the foreground: supervised


def ovn_env(rundir: str) -> dict[str, str]:
    """One run directory per namespace: ovn-controller 23.03 has no ``--unixctl``, so without
    this every instance would put its control socket in the same default place."""
    return {"OVN_RUNDIR": rundir, "OVN_LOGDIR": rundir, "OVN_DBDIR": rundir}


def missing() -> str | None:
    """Why OVN cannot run here (None when it can)."""
    import shutil

    for tool in ("ovn-northd", "ovn-controller", "ovn-nbctl", "ovn-sbctl", "ovn-ic"):
        if shutil.which(tool) is None:
            return f"OVN is not installed ({tool} missing; scripts/bootstrap installs it)"
    return None


def up(topo: Topology, lab: str, progress: Progress = print) -> LabPlan:
    """A fresh OVN lab for ``topo``; cleaned up on failure. Its controllers run nothing: each
    one that owns VPCs is an availability zone (its own central databases and ovn-northd, the
    chassis of its VMs' hosts), zones joined by ``ovn-ic`` (docs/ovn.md)."""
    plan, _ = build.fresh(dataclasses.replace(topo, controllers=()), lab, progress, tls=False)
    try:
        t0 = time.monotonic()
        n = ovnplan.zone_count(topo)
        zones = ovnplan.host_zones(topo, plan)
        gws = set(ovnplan.gateways(topo, plan).values()) if n > 1 else set()
        cs = [ovnplan.central(plan, z) for z in range(n)]
        build.parallel(lambda e: _offload_off(*e), _host_mgmt_ends(plan))
        for z, c in enumerate(cs):
            _central_link(plan, c)
            start_central(plan, c, ovnplan.zone_name(z) if n > 1 else "")
        if n > 1:
            ic = ovnplan.interconnect(plan)
            start_interconnect(plan, ic)
            for c in cs:
                start_ic(plan, c, ic)
        build.parallel(lambda h: start_host(plan, cs[zones[h.name]], h, h.name in gws), plan.hosts)
        for z, c in enumerate(cs):
            wait_chassis(c, [h for h, hz in zones.items() if hz == z])
        if n > 1:
            transit_switches(topo, cs, ic)
        for z, c in enumerate(cs):
            nbctl(c, ovnplan.nb_commands(topo, plan, z), wait="hv")
        progress(f"[lab {lab}] ovn        {len(plan.hosts)} chassis in {n} zone(s), NB applied "
                 f"and on every host ({time.monotonic() - t0:.2f}s)")  # fmt: skip
    except BaseException:
        progress(f"[lab {lab}] ovn up failed: removing what was created")
        down(lab)
        raise
    return plan


def down(lab: str) -> dict[str, int]:
    """The meshpeer lab's teardown: the central namespace and its daemons carry the lab's prefix
    and state directory, so nothing else is needed."""
    return teardown.down(lab)


def _central_link(plan: LabPlan, c: Central) -> None:
    ip_batch([f"netns add {c.netns}"])
    fab = plan.fabric_netns
    prefix = plan.mgmt_subnet.split("/")[1]
    ip_batch([f"link add mgmt0 netns {c.netns} type veth peer name {c.fabric_port} netns {fab}"])
    ip_batch([f"link set {c.fabric_port} master mgmt", f"link set {c.fabric_port} up"], netns=fab)
    ip_batch(["link set lo up", f"addr add {c.ip}/{prefix} dev mgmt0", "link set mgmt0 up"],
             netns=c.netns)  # fmt: skip
    # The SB session over veths: checksum offload off on every veth of the path (docs/ovn.md).
    build.parallel(lambda e: _offload_off(*e), [(c.netns, "mgmt0"), (fab, c.fabric_port)])


def _host_mgmt_ends(plan: LabPlan) -> list[tuple[str, str]]:
    """Both ends of every host's management veth (its ovn-controller's SB session)."""
    fab = plan.fabric_netns
    return [(h.netns, "mgmt0") for h in plan.hosts] + [(fab, f"m-{h.name}") for h in plan.hosts]


def _offload_off(netns: str, dev: str) -> None:
    run(["ethtool", "-K", dev, "tx", "off", "tso", "off", "gso", "off"], netns=netns)


def _spec(c: Central | Interconnect, netns: str, kind: str, cmd: list[str]) -> Spec:
    d = c.rundir
    full = [*cmd, f"--pidfile={d}/{kind}.pid", f"--log-file={d}/{kind}.log", *DAEMON_ARGS]
    return Spec(
        name=os.path.basename(d),  # ovnc, ovnc1, ..., ovnic: one per zone
        kind=kind,
        cmd=tuple(netns_cmd(netns, full)),
        output=f"{d}/{kind}.log",
        env=tuple(sorted(ovn_env(d).items())),
    )


def _db_server(
    plan: LabPlan, c: Central | Interconnect, netns: str, kind: str, schema: str, remotes: list[str]
) -> None:
    """One ovsdb-server for a fresh database made from ``schema``, supervised, until it
    listens on its unix socket (``<rundir>/<kind>.sock``)."""
    d = c.rundir
    run(["mkdir", "-p", d])
    run(["ovsdb-tool", "create", f"{d}/{kind}.db", schema])
    cmd = ["ovsdb-server", f"{d}/{kind}.db", f"--remote=punix:{d}/{kind}.sock", *remotes,
           f"--unixctl={d}/{kind}.ctl"]  # fmt: skip
    supervisor.supervise(plan, _spec(c, netns, kind, cmd))
    ovs.wait_socket(f"{d}/{kind}.sock")


def start_central(plan: LabPlan, c: Central, zone: str = "") -> None:
    """NB and SB ovsdb-servers, then ovn-northd; the SB listens on the management network.
    ``zone``: the availability zone's name (``NB_Global.name``, what ovn-ic knows it by)."""
    _db_server(plan, c, c.netns, "ovnnb_db", NB_SCHEMA, [f"--remote=ptcp:{NB_PORT}:{c.ip}"])
    sb_remotes = ["--remote=db:OVN_Southbound,SB_Global,connections"]
    _db_server(plan, c, c.netns, "ovnsb_db", SB_SCHEMA, sb_remotes)
    run(["ovn-sbctl", f"--db=unix:{c.sb_sock}", f"--timeout={WAIT_S:.0f}",
         "--", "set-connection", c.sb_listen,
         "--", "set", "connection", ".", f"inactivity_probe={PROBE_MS}"])  # fmt: skip
    if zone:
        nbctl(c, [("init",), ("set", "NB_Global", ".", f"name={zone}")])
    northd = ["ovn-northd", f"--ovnnb-db=unix:{c.nb_sock}", f"--ovnsb-db=unix:{c.sb_sock}",
              f"--unixctl={c.rundir}/ovn-northd.ctl"]  # fmt: skip
    supervisor.supervise(plan, _spec(c, c.netns, "ovn-northd", northd))


def start_interconnect(plan: LabPlan, ic: Interconnect) -> None:
    """The interconnection NB and SB, in the first zone's namespace, on the management
    network."""
    netns = ovnplan.central(plan, 0).netns
    for kind, schema, port in (
        ("ovn_ic_nb_db", IC_NB_SCHEMA, IC_NB_PORT),
        ("ovn_ic_sb_db", IC_SB_SCHEMA, IC_SB_PORT),
    ):
        _db_server(plan, ic, netns, kind, schema, [f"--remote=ptcp:{port}:{ic.ip}"])
    run(["ovn-ic-nbctl", f"--db=unix:{ic.nb_sock}", f"--timeout={WAIT_S:.0f}", "init"])


def start_ic(plan: LabPlan, c: Central, ic: Interconnect) -> None:
    """Zone ``c``'s ovn-ic: its NB/SB by unix socket, the interconnection databases over TCP."""
    cmd = ["ovn-ic", f"--ovnnb-db=unix:{c.nb_sock}", f"--ovnsb-db=unix:{c.sb_sock}",
           f"--ic-nb-db={ic.nb_remote}", f"--ic-sb-db={ic.sb_remote}",
           f"--unixctl={c.rundir}/ovn-ic.ctl"]  # fmt: skip
    supervisor.supervise(plan, _spec(c, c.netns, "ovn-ic", cmd))


def transit_switches(topo: Topology, cs: list[Central], ic: Interconnect) -> None:
    """One transit switch per peering across zones, in the interconnection NB, until ovn-ic
    has made it a logical switch in every zone (bounded)."""
    names = [ovnplan.transit(a, b) for a, b in ovnplan.cross_pairs(topo)]
    if not names:
        return
    args = [x for ts in names for x in ("--", "ts-add", ts)]
    run(["ovn-ic-nbctl", f"--db=unix:{ic.nb_sock}", f"--timeout={WAIT_S:.0f}", *args])
    for c in cs:
        wait_for(partial(_has_switches, c, set(names)), f"transit switches {names} in {c.netns}")


def _has_switches(c: Central, names: set[str]) -> bool:
    cmd = ["ovn-nbctl", f"--db=unix:{c.nb_sock}", f"--timeout={WAIT_S:.0f}", "--bare",
           "--columns=name", "list", "Logical_Switch"]  # fmt: skip
    return names <= set(run(cmd, timeout=WAIT_S + 5).stdout.split())


def wait_for(done: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Until ``done()`` (polled every 0.1 s); LabError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise LabError(f"not {what} after {timeout:.0f}s")
        time.sleep(0.1)


def controller_spec(plan: LabPlan, host: HostPlan) -> Spec:
    d = host.rundir
    cmd = ["ovn-controller", ovs.db(host), f"--pidfile={d}/ovn-controller.pid",
           f"--log-file={d}/ovn-controller.log", *DAEMON_ARGS]  # fmt: skip
    return Spec(
        name=host.name,
        kind="ovn-controller",
        cmd=tuple(hosts.host_cmd(plan, host, cmd)),
        output=f"{d}/ovn-controller.log",
        env=tuple(sorted({**ovs.env(host), **ovn_env(d)}.items())),
    )


def start_host(plan: LabPlan, c: Central, host: HostPlan, gateway: bool = False) -> None:
    """Make ``host`` a chassis of ``c``'s zone: its identity and tunnel endpoint in OVS, then
    ovn-controller. ``gateway``: its zone's interconnection gateway (``ovn-is-interconn``)."""
    ovs.vsctl(
        host, "set", "Open_vSwitch", ".",
        f"external_ids:system-id={host.name}", f"external_ids:ovn-remote={c.sb_remote}",
        "external_ids:ovn-encap-type=geneve", f"external_ids:ovn-encap-ip={host.underlay_ip}",
        f"external_ids:ovn-remote-probe-interval={PROBE_MS}", "external_ids:ovn-bridge=br-int",
        f"external_ids:ovn-is-interconn={str(gateway).lower()}",
    )  # fmt: skip
    supervisor.supervise(plan, controller_spec(plan, host))


def sbctl(c: Central, *args: str, timeout: float = WAIT_S) -> str:
    cmd = ["ovn-sbctl", f"--db=unix:{c.sb_sock}", f"--timeout={timeout:.0f}", *args]
    return run(cmd, timeout=timeout + 5).stdout


def wait_chassis(c: Central, names: list[str], timeout: float = WAIT_S) -> None:
    """Until every host's ovn-controller has registered its chassis."""

    def registered() -> bool:
        return set(sbctl(c, "--bare", "--columns=name", "list", "Chassis").split()) >= set(names)

    wait_for(registered, f"chassis {names} registered in {c.netns}", timeout)


def nbctl(c: Central, commands: list[Command], wait: str = "", timeout: float = WAIT_S) -> str:
    """One NB transaction; ``wait``: "sb" until ovn-northd has put it in the SB, "hv" until
    every chassis has applied it too, within ``timeout`` seconds (LabError past it)."""
    opts = [f"--db=unix:{c.nb_sock}", f"--timeout={timeout:.0f}"]
    if wait:
        opts.append(f"--wait={wait}")
    return run(["ovn-nbctl", *opts, *nbctl_args(commands)], timeout=timeout + 5).stdout
