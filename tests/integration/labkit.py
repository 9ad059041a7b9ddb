"""Helpers for tests on a real lab: run the CLI, reach into namespaces, dump on failure."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from meshpeer.lab import ovs, state
from meshpeer.lab.expect import expect
from meshpeer.lab.handflows import vm_named
from meshpeer.lab.plan import HostPlan, LabPlan, VmPlan
from meshpeer.lab.sh import netns_cmd, run
from meshpeer.lab.topology import Topology

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOPOLOGIES = os.path.join(ROOT, "tests", "integration", "topologies")
E2E_TOPOLOGIES = os.path.join(ROOT, "tests", "e2e", "topologies")
TCP_BYTES = os.path.join(ROOT, "tests", "integration", "tcp_bytes.py")
_names = itertools.count()


def missing_requirements() -> str | None:
    """Why lab tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "lab tests need root (network namespaces, OVS daemons)"
    for tool in ("ovs-vswitchd", "ovsdb-server", "ovs-vsctl", "ip", "ethtool", "tcpdump", "iperf3"):
        if shutil.which(tool) is None:
            return f"lab tests need {tool} (run scripts/bootstrap)"
    probe = f"mpprobe{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "cannot create network namespaces here"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def new_lab_name() -> str:
    """Unique per test process, short enough for interface names."""
    return f"i{os.getpid() % 1000}{next(_names)}"[:6]


def lab_cli(lab: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "meshpeer.lab", "--lab", lab, *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


@dataclass
class Lab:
    name: str
    plan: LabPlan

    def host(self, name: str) -> HostPlan:
        return self.plan.host(name)

    def vm(self, name: str) -> VmPlan:
        return vm_named(self.plan, name)

    def sh(self, name: str, *cmd: str, check: bool = True, timeout: float = 30) -> str:
        ns = self.plan.netns_of(name)
        assert ns is not None, name
        return run(cmd, netns=ns, check=check, timeout=timeout).stdout

    def ping(self, src: str, dst: str, count: int = 1, size: int = 56, df: bool = False) -> bool:
        args = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", "-s", str(size)]
        if df:
            args += ["-M", "do"]
        res = run([*args, self.vm(dst).ip], netns=self.vm(src).netns, check=False, timeout=30)
        return res.returncode == 0

    def tcp_transfer(self, client: str, server: str, nbytes: int = 4 << 20) -> tuple[int, float]:
        """Send ``nbytes`` over TCP from ``client`` to ``server``: (bytes the server received,
        the rate in bit/s). The rate depends on the machine: print it, assert the bytes."""
        srv = self.vm(server)
        sink = subprocess.Popen(
            netns_cmd(srv.netns, [sys.executable, TCP_BYTES, "sink", srv.ip, "5201"]),
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert sink.stdout is not None
            assert sink.stdout.readline().strip() == "listening", "the TCP sink did not start"
            t0 = time.monotonic()
            self.sh(
                client, sys.executable, TCP_BYTES, "send", srv.ip, "5201", str(nbytes), timeout=120
            )
            received = int(sink.communicate(timeout=60)[0].strip() or 0)
            return received, received * 8 / (time.monotonic() - t0)
        finally:
            if sink.poll() is None:
                sink.kill()
                sink.wait()

    def hosts_with_flows_for(self, ip: str) -> list[str]:
        """Hosts whose br-int still holds a flow that matches on or sets ``ip``."""
        pattern = re.compile("=" + re.escape(ip) + r"(?![0-9])")
        return [h.name for h in self.plan.hosts if pattern.search(ovs.ofctl(h, "dump-flows"))]

    def add_flows(self, host: str, flows: Sequence[str]) -> None:
        """Hand-written test flows (ovs-ofctl text is for tests and humans only)."""
        ovs.ofctl(self.host(host), "add-flows", "-", stdin="\n".join(flows) + "\n")

    def flows(self, host: str) -> str:
        return ovs.ofctl(self.host(host), "dump-flows", "--no-stats")

    def clear_flows(self) -> None:
        for h in self.plan.hosts:
            ovs.ofctl(h, "del-flows")

    def diagnostics(self) -> str:
        out = [f"==== lab {self.name} diagnostics"]
        for h in self.plan.hosts:
            for what, fn in (
                ("flows", lambda h=h: ovs.ofctl(h, "dump-flows")),
                ("ports", lambda h=h: ovs.ofctl(h, "dump-ports-desc")),
                ("tnl/neigh", lambda h=h: ovs.appctl(h, "tnl/neigh/show")),
            ):
                try:
                    out.append(f"--- {h.name} {what}\n{fn()}")
                except Exception as exc:  # diagnostics must never mask the real failure
                    out.append(f"--- {h.name} {what}: {exc}")
            log = f"{h.rundir}/ovs-vswitchd.log"
            if os.path.exists(log):
                with open(log, encoding="utf-8", errors="replace") as f:
                    out.append(
                        f"--- {h.name} ovs-vswitchd.log (tail)\n" + "".join(f.readlines()[-30:])
                    )
        return "\n".join(out)


@contextlib.contextmanager
def running(topology: str, directory: str = TOPOLOGIES) -> Iterator[Lab]:
    """A lab from ``directory/topology`` for the duration of a with block; always torn down."""
    lab = bring_up(topology, directory)
    try:
        yield lab
    finally:
        lab_cli(lab.name, "down")


def bring_up(topology: str, directory: str = TOPOLOGIES) -> Lab:
    """A new lab from ``directory/topology``, under a name no other test uses."""
    name = new_lab_name()
    lab_cli(name, "up", os.path.join(directory, topology))
    plan = state.load(name)
    assert plan is not None
    return Lab(name, plan)


def check_matrix(lab: Lab, topo: Topology) -> None:
    """`scripts/lab matrix --json` equals meshpeer.lab.expect for every ordered pair."""
    pairs = json.loads(lab_cli(lab.name, "matrix", "--json").stdout)["pairs"]
    got = {(p["src"], p["dst"]): p["reachable"] for p in pairs}
    live = [e for e in topo.endpoints if not e.defer]
    wrong = []
    for a in live:
        for b in live:
            if a.name == b.name:
                continue
            want = expect(topo, a, b)
            if got[(a.name, b.name)] != want.reachable:
                wrong.append(f"{a.name} -> {b.name}: got {got[(a.name, b.name)]}, want {want}")
    assert not wrong, "\n".join(wrong)
    assert len(got) == len(topo.endpoints) * (len(topo.endpoints) - 1)
    # A deferred endpoint is plumbed but unknown to its controller: nobody reaches it.
    deferred = {e.name for e in topo.endpoints if e.defer}
    assert not [k for k, ok in got.items() if ok and deferred & set(k)], got
    print(f"\n[{lab.name}] matrix: {sum(got.values())}/{len(got)} ordered pairs reachable")
