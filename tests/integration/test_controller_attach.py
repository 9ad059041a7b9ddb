"""An os-ken app started by meshpeer-manager attaches to br-int without flushing it.

Adding or removing an active controller on a bridge flushes its flows. The lab gives
br-int a passive listener from birth and the app connects out to it, so connecting,
disconnecting and reconnecting leave the installed flows alone.
"""

from __future__ import annotations

import os
import subprocess
import sys

from meshpeer.lab.procs import spawn_manager, terminate
from meshpeer.lab.sh import netns_cmd
from tests.integration.labkit import ROOT, Lab
from tests.support.wait import wait_for

FLOW = "table=0,priority=7,in_port=10,actions=drop"


def start_probe(lab: Lab, log: str) -> subprocess.Popen[bytes]:
    h = lab.host("hv1")
    cmd = [
        sys.executable, "-m", "meshpeer.manager", "tests.integration.apps.probe",
        "--ofp-switch-address-list", "127.0.0.1:6653",
        "--ofp-listen-host", "127.0.0.1", "--ofp-tcp-listen-port", "6654",
    ]  # fmt: skip
    return spawn_manager(netns_cmd(h.netns, cmd), log, cwd=ROOT)


def logged(path: str, needle: str, count: int, timeout: float = 30) -> None:
    """Wait until ``needle`` occurs ``count`` times in the file at ``path``."""

    def text() -> str:
        if not os.path.exists(path):
            return ""
        with open(path, encoding="utf-8") as f:
            return f.read()

    wait_for(lambda: text().count(needle) >= count, timeout, 0.1, f"{needle!r} x{count} in {path}")


def test_connect_and_reconnect_keep_flows(lab: Lab, tmp_path: object) -> None:
    lab.clear_flows()
    lab.add_flows("hv1", [FLOW])
    log = os.path.join(str(tmp_path), "probe.log")
    dpid = f"dpid={lab.host('hv1').br_int_dpid}"
    for attempt in (1, 2):
        proc = start_probe(lab, log)
        try:
            logged(log, f"PROBE connected {dpid}", attempt)
            assert "in_port=10 actions=drop" in lab.flows("hv1")
        finally:
            terminate([proc.pid])
            proc.wait()
        assert "in_port=10 actions=drop" in lab.flows("hv1")
