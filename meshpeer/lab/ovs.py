"""One Open vSwitch per lab host: its own ovsdb-server and userspace ovs-vswitchd.

Every daemon gets its own run/log/db/sysconf directory and explicit pidfile and unixctl
paths, so several hosts (and several labs) never share a socket. The whole bridge layout
is written to the database before ovs-vswitchd starts, so the switch comes up complete in
one step instead of reconfiguring once per command. Both daemons run in the foreground as
children of the lab's supervisor, which restarts them; a crashed ovs-vswitchd comes back warm
(``warm_restart_begin``/``warm_restart_finish``, from the copy ``save_flows`` keeps).
"""

from __future__ import annotations

import os
import socket
import time

from meshpeer.lab import hosts, supervisor
from meshpeer.lab.plan import GENEVE_OFPORT, HostPlan, LabPlan, VmPlan
from meshpeer.lab.procs import alive, read_pidfile
from meshpeer.lab.sh import LabError, run
from meshpeer.lab.supervision import Spec

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
DAEMONS = ("ovs-vswitchd", "ovsdb-server")
OF_PROTOCOLS = "OpenFlow13,OpenFlow14,OpenFlow15"


def env(host: HostPlan) -> dict[str, str]:
    d = host.rundir
    return {"OVS_RUNDIR": d, "OVS_LOGDIR": d, "OVS_DBDIR": d, "OVS_SYSCONFDIR": d}


def db(host: HostPlan) -> str:
    return f"unix:{host.rundir}/db.sock"


def ctl(host: HostPlan, daemon: str = "ovs-vswitchd") -> str:
    """Absolute unixctl path: ovs-appctl -t with a bare name would look in the wrong rundir."""
    return f"{host.rundir}/{daemon}.ctl"


def appctl_targeted(host: HostPlan, cmd: list[str]) -> list[str]:
    """``ovs-appctl ARGS`` without a target gets ``-t`` the host's ovs-vswitchd socket: with
    an explicit ``--unixctl`` path, ovs-appctl's own lookup (pidfile -> NAME.PID.ctl) misses it."""
    if cmd[:1] != ["ovs-appctl"] or any(
        a in ("-t", "--target") or a.startswith("--target=") for a in cmd
    ):
        return cmd
    return ["ovs-appctl", "-t", ctl(host), *cmd[1:]]


def bridge_mgmt(host: HostPlan, bridge: str = "br-int") -> str:
    return f"unix:{host.rundir}/{bridge}.mgmt"


def vsctl(host: HostPlan, *args: str, timeout: float = 10.0) -> str:
    return run(
        ["ovs-vsctl", f"--db={db(host)}", "--timeout=10", *args],
        env=env(host),
        timeout=timeout,
    ).stdout


def appctl(host: HostPlan, *args: str, daemon: str = "ovs-vswitchd") -> str:
    return run(["ovs-appctl", "-t", ctl(host, daemon), *args], env=env(host)).stdout


def ofctl(host: HostPlan, *args: str, bridge: str = "br-int", stdin: str | None = None) -> str:
    """ovs-ofctl against a bridge's management socket (humans and tests only)."""
    cmd, rest = args[0], args[1:]
    return run(
        ["ovs-ofctl", "-O", "OpenFlow15", cmd, bridge_mgmt(host, bridge), *rest],
        env=env(host),
        stdin=stdin,
    ).stdout


def bridge_layout(host: HostPlan, vms: list[VmPlan]) -> list[str]:
    """ovs-vsctl arguments for br-int, br-phy, the Geneve port and the VM ports (one txn)."""
    args = [
        "--", "init",
        # Userspace TSO breaks tunnels in OVS 3.1: keep it off explicitly.
        "--", "set", "Open_vSwitch", ".", "other_config:userspace-tso-enable=false",
        "--", "add-br", "br-int",
        "--", "set", "bridge", "br-int", "datapath_type=netdev", "fail_mode=secure",
        f"other-config:datapath-id={host.br_int_dpid}", f"protocols={OF_PROTOCOLS}",
        # Passive listener from the first moment: the OHC connects out to it, so the
        # bridge never goes from 0 to 1 controller (which would flush its flows).
        "--", "set-controller", "br-int", host.of_target,
        # A busy OHC (a first sync of 100k flows) must not be dropped for a late echo reply
        # (the default probe is 5 s); a dead OHC still leaves the flows in place. Packet-ins
        # (IPv6 neighbour solicitations for the OHC to answer) are capped at OVS's minimum
        # rate limit, so a VM cannot flood its host's OHC.
        "--", "set", "controller", "br-int", "inactivity_probe=30000",
        "controller_rate_limit=100", "controller_burst_limit=25",
        "--", "add-br", "br-phy",
        "--", "set", "bridge", "br-phy", "datapath_type=netdev",
        f"other-config:datapath-id={host.br_phy_dpid}",
        f"other-config:hwaddr={host.underlay_mac}",
        "--", "add-port", "br-phy", "ul0",
        "--", "add-port", "br-int", "geneve0",
        "--", "set", "interface", "geneve0", "type=geneve",
        "options:remote_ip=flow", "options:key=flow", f"ofport_request={GENEVE_OFPORT}",
    ]  # fmt: skip
    for vm in vms:
        args += [
            "--", "add-port", "br-int", vm.host_port,
            "--", "set", "interface", vm.host_port, f"ofport_request={vm.ofport}",
            f"external_ids:iface-id={vm.name}", f"external_ids:vpc={vm.vpc}",
            f"external_ids:attached-mac={vm.mac}",
        ]  # fmt: skip
    return args


DAEMON_ARGS = ["--no-chdir", "-vconsole:off", "-vfile:info"]  # in the foreground: supervised


def daemon_spec(plan: LabPlan, host: HostPlan, daemon: str, args: list[str]) -> Spec:
    """One OVS daemon of ``host`` as the lab's supervisor runs it (and runs it again)."""
    d = host.rundir
    cmd = [
        daemon, *args, f"--pidfile={d}/{daemon}.pid", f"--unixctl={ctl(host, daemon)}",
        f"--log-file={d}/{daemon}.log", *DAEMON_ARGS,
    ]  # fmt: skip
    return Spec(
        name=host.name,
        kind=daemon,
        cmd=tuple(hosts.host_cmd(plan, host, cmd)),
        output=f"{d}/{daemon}.log",
        env=tuple(sorted(env(host).items())),
    )


def ovsdb_spec(plan: LabPlan, host: HostPlan) -> Spec:
    d = host.rundir
    return daemon_spec(plan, host, "ovsdb-server", [f"{d}/conf.db", f"--remote=punix:{d}/db.sock"])


def vswitchd_spec(plan: LabPlan, host: HostPlan) -> Spec:
    return daemon_spec(plan, host, "ovs-vswitchd", [db(host), "--disable-system"])


def start(plan: LabPlan, host: HostPlan) -> None:
    """Create the database, write the layout, then start ovs-vswitchd on it (supervised)."""
    d = host.rundir
    os.makedirs(d, exist_ok=True)
    run(["ovsdb-tool", "create", f"{d}/conf.db", SCHEMA], env=env(host))
    supervisor.supervise(plan, ovsdb_spec(plan, host))
    wait_socket(f"{d}/db.sock")
    vms = plan.vms_on(host.name)
    run(["ovs-vsctl", f"--db={db(host)}", "--no-wait", *bridge_layout(host, vms)], env=env(host))
    start_vswitchd(plan, host)
    wait_ready(host, [vm.host_port for vm in vms])


def start_vswitchd(plan: LabPlan, host: HostPlan) -> int:
    """A cold start (or start again after ``stop_vswitchd``): no flows until its OHC syncs."""
    return supervisor.supervise(plan, vswitchd_spec(plan, host))


def stop_vswitchd(plan: LabPlan, host: HostPlan) -> None:
    """Stop ovs-vswitchd on purpose (ovsdb-server stays): the supervisor leaves it down."""
    supervisor.release(plan, "ovs-vswitchd", host.name)


def wait_socket(path: str, timeout: float = 10.0) -> None:
    """Until a daemon accepts connections on its unix socket."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(path)
                return
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise LabError(f"nothing accepts connections on {path} ({exc})") from exc
        time.sleep(0.005)


def set_tunnel_neighbours(plan: LabPlan, host: HostPlan) -> None:
    """Seed the tunnel neighbour cache with every other host's VTEP: otherwise the first packet
    to each remote host is dropped while OVS resolves the remote VTEP's MAC."""
    for other in plan.hosts:
        if other.name != host.name:
            appctl(host, "tnl/neigh/set", "br-phy", other.underlay_ip, other.underlay_mac)


# --- warm restart: what ovs-ctl's restart does with ovs-save, for a daemon that died ------------


def saved_flows_path(host: HostPlan) -> str:
    return f"{host.rundir}/br-int.saved"


def save_flows(host: HostPlan) -> None:
    """Keep br-int's groups and flows as one ``ovs-ofctl bundle`` file (see ovs-save)."""
    groups = ofctl(host, "dump-groups")
    flows = ofctl(host, "dump-flows", "--no-stats", "--no-names")
    lines = [f"group add {ln.strip()}" for ln in groups.splitlines() if ln.startswith(" ")]
    lines += [f"flow add {ln.strip()}" for ln in flows.splitlines() if ln.startswith(" ")]
    tmp = saved_flows_path(host) + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(f"{ln}\n" for ln in lines))
    os.replace(tmp, saved_flows_path(host))


def warm_restart_begin(host: HostPlan) -> None:
    """Before ovs-vswitchd starts again: it must not forward (nor connect to its controller)
    until its flows are back."""
    vsctl(host, "--no-wait", "set", "Open_vSwitch", ".", "other_config:flow-restore-wait=true")


def warm_restart_finish(plan: LabPlan, host: HostPlan) -> None:
    """Once the new ovs-vswitchd runs: tunnel neighbours, then groups and flows in one bundle,
    then forwarding. flow-restore-wait is cleared whatever fails: a switch that never
    forwards is worse than one that waits for its OHC's resync."""
    try:
        wait_socket(bridge_mgmt(host).removeprefix("unix:"))
        wait_socket(ctl(host))
        set_tunnel_neighbours(plan, host)
        if os.path.exists(saved_flows_path(host)):
            ofctl(host, "bundle", saved_flows_path(host))
    finally:
        vsctl(host, "--no-wait", "--if-exists", "remove", "Open_vSwitch", ".", "other_config",
              "flow-restore-wait=true")  # fmt: skip


def wait_ready(host: HostPlan, ports: list[str], timeout: float = 10.0) -> None:
    """Wait until br-phy exists in the kernel and every port has its OpenFlow number."""
    names = ["geneve0", *ports]
    query = [x for n in names for x in ("--", "get", "Interface", n, "ofport")]
    deadline = time.monotonic() + timeout
    got: list[str] = []
    while time.monotonic() < deadline:
        if run(["ip", "-n", host.netns, "link", "show", "br-phy"], check=False).returncode == 0:
            got = vsctl(host, *query).split()
            if len(got) == len(names) and all(o.isdigit() and int(o) > 0 for o in got):
                return
        time.sleep(0.02)
    raise LabError(
        f"{host.name}: OVS not ready after {timeout}s (ofports {dict(zip(names, got, strict=False))})"
    )


def pids(host: HostPlan) -> list[int]:
    found = (read_pidfile(f"{host.rundir}/{d}.pid") for d in DAEMONS)
    return [p for p in found if p is not None and alive(p)]
