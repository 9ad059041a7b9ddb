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

import time

from meshpeer.lab import build, hosts, ovs, supervisor, teardown
from meshpeer.lab.ovnplan import (
    NB_PORT,
    NB_SCHEMA,
    SB_SCHEMA,
    Central,
    Command,
    central,
    nb_commands,
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

    for tool in ("ovn-northd", "ovn-controller", "ovn-nbctl", "ovn-sbctl"):
        if shutil.which(tool) is None:
            return f"OVN is not installed ({tool} missing; scripts/bootstrap installs it)"
    return None


def up(topo: Topology, lab: str, progress: Progress = print) -> LabPlan:
    """A fresh OVN lab for ``topo`` (which must have no controllers); cleaned up on failure."""
    if topo.controllers:
        raise LabError("an OVN lab has no meshpeer controllers: drop 'controllers' from it")
    plan, _ = build.fresh(topo, lab, progress, tls=False)
    try:
        t0 = time.monotonic()
        c = central(plan)
        _central_link(plan, c)
        start_central(plan, c)
        build.parallel(lambda h: start_host(plan, c, h), plan.hosts)
        wait_chassis(c, [h.name for h in plan.hosts])
        nbctl(c, nb_commands(topo, plan), wait="hv")
        progress(f"[lab {lab}] ovn        {len(plan.hosts)} chassis, NB applied and on every "
                 f"host ({time.monotonic() - t0:.2f}s)")  # fmt: skip
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
    ends = [(c.netns, "mgmt0"), (fab, c.fabric_port)]
    ends += [(h.netns, "mgmt0") for h in plan.hosts] + [(fab, f"m-{h.name}") for h in plan.hosts]
    build.parallel(lambda e: _offload_off(*e), ends)


def _offload_off(netns: str, dev: str) -> None:
    run(["ethtool", "-K", dev, "tx", "off", "tso", "off", "gso", "off"], netns=netns)


def _spec(netns: str, rundir: str, name: str, kind: str, cmd: list[str]) -> Spec:
    full = [*cmd, f"--pidfile={rundir}/{kind}.pid", f"--log-file={rundir}/{kind}.log", *DAEMON_ARGS]
    return Spec(
        name=name,
        kind=kind,
        cmd=tuple(netns_cmd(netns, full)),
        output=f"{rundir}/{kind}.log",
        env=tuple(sorted(ovn_env(rundir).items())),
    )


def start_central(plan: LabPlan, c: Central) -> None:
    """NB and SB ovsdb-servers, then ovn-northd; the SB listens on the management network."""
    d = c.rundir
    run(["mkdir", "-p", d])
    for db, schema in (("ovnnb_db", NB_SCHEMA), ("ovnsb_db", SB_SCHEMA)):
        run(["ovsdb-tool", "create", f"{d}/{db}.db", schema])
    nb = ["ovsdb-server", f"{d}/ovnnb_db.db", f"--remote=punix:{c.nb_sock}",
          f"--remote=ptcp:{NB_PORT}:{c.ip}", f"--unixctl={d}/ovnnb_db.ctl"]  # fmt: skip
    sb = ["ovsdb-server", f"{d}/ovnsb_db.db", f"--remote=punix:{c.sb_sock}",
          "--remote=db:OVN_Southbound,SB_Global,connections", f"--unixctl={d}/ovnsb_db.ctl"]  # fmt: skip
    supervisor.supervise(plan, _spec(c.netns, d, "central", "ovn-nb", nb))
    supervisor.supervise(plan, _spec(c.netns, d, "central", "ovn-sb", sb))
    ovs.wait_socket(c.nb_sock)
    ovs.wait_socket(c.sb_sock)
    run(["ovn-sbctl", f"--db=unix:{c.sb_sock}", f"--timeout={WAIT_S:.0f}",
         "--", "set-connection", c.sb_listen,
         "--", "set", "connection", ".", f"inactivity_probe={PROBE_MS}"])  # fmt: skip
    northd = ["ovn-northd", f"--ovnnb-db=unix:{c.nb_sock}", f"--ovnsb-db=unix:{c.sb_sock}",
              f"--unixctl={d}/ovn-northd.ctl"]  # fmt: skip
    supervisor.supervise(plan, _spec(c.netns, d, "central", "ovn-northd", northd))


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


def start_host(plan: LabPlan, c: Central, host: HostPlan) -> None:
    """Make ``host`` a chassis: its identity and tunnel endpoint in OVS, then ovn-controller."""
    ovs.vsctl(
        host, "set", "Open_vSwitch", ".",
        f"external_ids:system-id={host.name}", f"external_ids:ovn-remote={c.sb_remote}",
        "external_ids:ovn-encap-type=geneve", f"external_ids:ovn-encap-ip={host.underlay_ip}",
        f"external_ids:ovn-remote-probe-interval={PROBE_MS}", "external_ids:ovn-bridge=br-int",
    )  # fmt: skip
    supervisor.supervise(plan, controller_spec(plan, host))


def sbctl(c: Central, *args: str, timeout: float = WAIT_S) -> str:
    cmd = ["ovn-sbctl", f"--db=unix:{c.sb_sock}", f"--timeout={timeout:.0f}", *args]
    return run(cmd, timeout=timeout + 5).stdout


def wait_chassis(c: Central, names: list[str], timeout: float = WAIT_S) -> None:
    """Until every host's ovn-controller has registered its chassis."""
    deadline = time.monotonic() + timeout
    got: set[str] = set()
    while time.monotonic() < deadline:
        got = set(sbctl(c, "--bare", "--columns=name", "list", "Chassis").split())
        if got >= set(names):
            return
        time.sleep(0.1)
    raise LabError(f"chassis not registered after {timeout}s: {sorted(set(names) - got)}")


def nbctl(c: Central, commands: list[Command], wait: str = "", timeout: float = WAIT_S) -> str:
    """One NB transaction; ``wait``: "sb" until ovn-northd has put it in the SB, "hv" until
    every chassis has applied it too, within ``timeout`` seconds (LabError past it)."""
    opts = [f"--db=unix:{c.nb_sock}", f"--timeout={timeout:.0f}"]
    if wait:
        opts.append(f"--wait={wait}")
    return run(["ovn-nbctl", *opts, *nbctl_args(commands)], timeout=timeout + 5).stdout
