"""A container per lab host, and how the lab runs a command in it.

Each host is a container of the hosts' image (``image.tag()``) with no network of Docker's
(``network_mode=none``), ``NET_ADMIN``/``NET_RAW`` and ``/dev/net/tun`` (the userspace
datapath's taps). Its network namespace gets the name the netns lab gives the host's
namespace (``ip netns attach``), so the lab's links, addresses, VM ports and probes are the
same code on both backends.

The host's daemons (ovsdb-server, ovs-vswitchd, the OHC) run in the container's mount, UTS,
IPC and network namespaces (``enter_cmd``): the image's OVS, the container's hostname and
filesystem. The container shares the machine's PID namespace, so the lab's one supervisor stays
their parent (it learns of a death at once and restarts it, warm for ovs-vswitchd) and every
pidfile holds a pid the lab can signal, as in the netns lab.

Mounted into each container: the lab's state directory (read-write: sockets, databases, logs,
status files, the lab's CA and directory), the checkout with its .venv and the venv's base
Python (read-only; the image holds that Python's shared libraries). Nothing is installed at
run time.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from meshpeer.lab import hosts
from meshpeer.lab.docker import daemon, image
from meshpeer.lab.plan import HostPlan, LabPlan
from meshpeer.lab.procs import ROOT
from meshpeer.lab.progress import Note, no_note
from meshpeer.lab.sh import LabError, ip_batch
from meshpeer.lab.state import read_json, write_json

LABEL = "meshpeer.lab"  # every container of lab L carries meshpeer.lab=L
CAPS = ["NET_ADMIN", "NET_RAW"]


def record_path(plan: LabPlan) -> str:
    """Each host's container id and init pid, written once the containers run."""
    return f"{plan.state_dir}/containers.json"


def mounts(plan: LabPlan) -> dict[str, dict[str, str]]:
    ro = {ROOT: {"bind": ROOT, "mode": "ro"}}
    if sys.base_prefix != "/usr":  # not Debian's own (pyenv, /usr/local): mount it too
        ro[sys.base_prefix] = {"bind": sys.base_prefix, "mode": "ro"}
    return {plan.state_dir: {"bind": plan.state_dir, "mode": "rw"}, **ro}


def create(plan: LabPlan, note: Note = no_note) -> str:
    """Start the engine if needed, build the image if needed, run one container per host and
    name its network namespace ``host.netns``. Returns what it did, for the progress line;
    ``note`` hears which step it is at (an image build takes ~40 s, once per machine)."""
    with daemon.locked():
        note("starting the engine")
        client = daemon.ensure()
        built = image.ensure(client, note)
        note("running the containers")
        # left by this lab's last run in an engine that kept running (the system's)
        for stale in client.containers.list(all=True, filters={"label": f"{LABEL}={plan.lab}"}):
            stale.remove(force=True, v=True)
        record: dict[str, Any] = {}

        def run_one(h: HostPlan) -> None:
            c = client.containers.run(
                image.tag(),
                ["sleep", "infinity"],
                name=hosts.container_name(plan, h),
                hostname=h.name,
                labels={LABEL: plan.lab},
                network_mode="none",
                pid_mode="host",
                cap_add=CAPS,
                devices=["/dev/net/tun:/dev/net/tun:rwm"],
                volumes=mounts(plan),
                detach=True,
            )
            c.reload()
            record[h.name] = {"id": c.id, "name": c.name, "pid": int(c.attrs["State"]["Pid"])}

        try:
            for h in plan.hosts:  # one at a time: in parallel no faster on 2 cores (engine-bound)
                run_one(h)
        finally:
            write_json(record_path(plan), record)  # 'down' finds them by label in any case
            client.close()
    ip_batch([f"netns attach {h.netns} {record[h.name]['pid']}" for h in plan.hosts])
    return f"{len(plan.hosts)} containers of {built}"


def pid(plan: LabPlan, host: HostPlan) -> int:
    entry = (read_json(record_path(plan)) or {}).get(host.name)
    if entry is None:
        raise LabError(f"host {host.name} of lab {plan.lab} has no container")
    return int(entry["pid"])


def enter_cmd(plan: LabPlan, host: HostPlan, cmd: list[str]) -> list[str]:
    """``cmd`` as run inside ``host``'s container (same pid namespace: see the module doc)."""
    target = pid(plan, host)
    return ["nsenter", f"--target={target}", "--mount", "--uts", "--ipc", "--net", "--", *cmd]


def remove(lab: str) -> int:
    """Remove every container of ``lab`` (running or not), then stop the lab's own engine if
    that left it empty. Returns how many containers were removed."""
    if daemon.own_pid() is None and not os.path.exists(daemon.system_socket()):
        return 0  # no engine: no container (and the netns lab pays nothing for this)
    with daemon.locked():
        client = daemon.find()
        found = []
        if client is not None:
            found = client.containers.list(all=True, filters={"label": f"{LABEL}={lab}"})
            try:
                for c in found:
                    c.remove(force=True, v=True)
            finally:
                client.close()
        daemon.stop_if_idle()
    return len(found)
