"""On-host controllers in the lab: one per host, inside the host's namespace beside OVS.

The OHC is the OpenFlow controller of its br-int only: it connects out to the bridge's
passive listener on 127.0.0.1 (so connecting never flushes flows) and reaches the
controller shards over the management network.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from meshpeer import options
from meshpeer.controller.config import host_credential
from meshpeer.lab import hosts, ovs, supervisor
from meshpeer.lab.plan import OF_LISTEN_PORT, HostPlan, LabPlan
from meshpeer.lab.procs import ROOT, alive, manager_cmd, read_pidfile, write_secret
from meshpeer.lab.progress import Note, no_note
from meshpeer.lab.sh import LabError
from meshpeer.lab.supervision import Spec

OHC_APP = "ohc.app"
KIND = "ohc"
METRICS_PORT = 9465  # each OHC's /metrics on 127.0.0.1 in its host's namespace (docs/metrics.md)


def config_text(plan: LabPlan, h: HostPlan) -> str:
    values = {
        "host": h.name,
        "underlay_ip": h.underlay_ip,
        "role": h.role,
        "api_token": credential(plan, h.name),
        "directory_file": plan.hosts_directory_file,
        "ovsdb": ovs.db(h),
        "status_file": f"{h.rundir}/ohc.status.json",
        "ca_file": plan.ca_file,
        "metrics_port": METRICS_PORT,
    }
    return options.config_text(options.OHC, values)


def credential(plan: LabPlan, host: str) -> str:
    """The host's own credential: its OHC's, nobody else's (docs/security.md)."""
    return host_credential(host, plan.host_key)


def start(plan: LabPlan, h: HostPlan) -> int:
    """Start the host's OHC, supervised; returns its pid. Idempotent while it runs."""
    conf = f"{h.rundir}/ohc.conf"
    write_secret(conf, config_text(plan, h))  # it holds the host's credential: 0600
    cmd = [
        sys.executable, "-m", "meshpeer.manager", OHC_APP,
        "--config-file", conf,
        "--pid-file", f"{h.rundir}/ohc.pid",
        "--ofp-switch-address-list", f"127.0.0.1:{OF_LISTEN_PORT}",
        "--ofp-listen-host", "127.0.0.1",
        "--ofp-tcp-listen-port", str(OF_LISTEN_PORT + 1),
    ]  # fmt: skip
    log = f"{h.rundir}/ohc.log"
    spec = Spec(h.name, KIND, tuple(manager_cmd(hosts.host_cmd(plan, h, cmd), log)), log, cwd=ROOT)
    return supervisor.supervise(plan, spec)


def stop(plan: LabPlan, h: HostPlan) -> None:
    """Stop one host's OHC on purpose (its flows stay): the supervisor does not restart it."""
    supervisor.release(plan, KIND, h.name)


def running(h: HostPlan) -> bool:
    pid = read_pidfile(f"{h.rundir}/ohc.pid")
    return pid is not None and alive(pid)


def status(h: HostPlan) -> dict[str, Any] | None:
    try:
        with open(f"{h.rundir}/ohc.status.json", encoding="utf-8") as f:
            data: dict[str, Any] = json.load(f)
            return data
    except (OSError, ValueError):
        return None


def wait_settled(
    plan: LabPlan,
    since: float,
    quiet: float = 0.5,
    timeout: float = 20.0,
    note: Note = no_note,
) -> float:
    """Wait until every OHC has synced after ``since`` with all its ports, then stayed quiet.

    A heuristic until applied versions are reported to the shards: good enough for the lab
    to hand over a programmed data plane. Returns the seconds waited. ``note`` hears how
    many have settled (the lab's progress ticker).
    """
    start = time.time()
    while time.time() - start < timeout:
        settled = 0
        for h in plan.hosts:
            st = status(h) or {}
            last = st.get("last_sync") or {}
            # Deferred VMs have no port until they are created through the REST API.
            want = {f"{v.vpc}/{v.name}" for v in plan.vms_on(h.name) if not v.defer}
            at = last.get("at", 0)
            if at >= since and want <= set(st.get("ports", {})) and time.time() - at >= quiet:
                settled += 1
        note(f"{settled}/{len(plan.hosts)} OHCs synced")
        if settled == len(plan.hosts):
            return time.time() - start
        time.sleep(0.05)
    raise LabError(f"on-host controllers did not settle within {timeout}s")
