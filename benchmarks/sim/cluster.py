"""Real controller processes on loopback for the scale simulation (like tests/api/ctlkit.py).

Writes the shard directory and one config per shard, optionally preloads each shard's SQLite
store with the scenario's intent (the same JSON bodies the REST API would store), starts each
controller through ``benchmarks/sim/ctl_main.py`` and stops it by pid.

Each shard listens on its own loopback address (127.0.1.N). With ``tls`` (the default, as in
the lab) a CA made here signs one certificate per shard for its name and that address, every
shard serves HTTPS, and every client verifies it: a certificate of another shard is refused.
Hosts are known by their own credentials (the directory's host key), as real OHCs are.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from meshpeer import pki
from meshpeer.client import Client
from meshpeer.controller.config import LocalShard, ShardEntry, directory_doc, host_credential
from meshpeer.controller.model import Endpoint, Host, Peering, Subnet, Vpc, derived_mac, store_key
from meshpeer.lab.procs import spawn_manager
from meshpeer.store.sqlite import Change, Store
from policies.export import parse_export_policy

from .scenario import Scenario

ROOT = Path(__file__).resolve().parents[2]
VNI_SPAN = 100_000


def free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        port: int = s.getsockname()[1]
        return port


def proc_stat(pid: int) -> dict[str, float]:
    """CPU seconds (user+system) and VmRSS/VmHWM (MiB) of a live process."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14, 15)
    out = {"cpu_s": cpu, "rss_mib": 0.0, "hwm_mib": 0.0}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                out["rss_mib"] = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                out["hwm_mib"] = int(line.split()[1]) / 1024
    return out


@dataclass
class Ctl(LocalShard):
    proc: subprocess.Popen[bytes] | None = None

    def client(self, timeout: float = 600.0) -> Client:
        return Client(self.url, self.token, timeout=timeout, ca_file=self.ca_file)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


@dataclass
class Cluster:
    workdir: Path
    scenario: Scenario
    wsgi_max: int
    heartbeat: float = 5.0
    tls: bool = True  # HTTPS with a CA made here (False: plain HTTP, --plain-http)
    token: str = field(default_factory=lambda: "api-" + secrets.token_hex(16))
    fed_token: str = field(default_factory=lambda: "fed-" + secrets.token_hex(16))
    grant_key: str = field(default_factory=lambda: secrets.token_hex(32))
    host_key: str = field(default_factory=lambda: secrets.token_hex(32))
    ctls: dict[str, Ctl] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(self.scenario.shards, 1):
            address = f"127.0.1.{i}"
            ctl = Ctl(name, free_port(address), self.workdir, self.token, self.tls, address)
            self.ctls[name] = ctl
        if self.tls:
            ca = pki.make_ca(str(self.workdir / "pki"), "meshpeer scale simulation CA")
            for ctl in self.ctls.values():
                pki.issue_server(ca, str(ctl.tls_prefix), ctl.name, [ctl.address, ctl.name])

    @property
    def ca_file(self) -> str | None:
        return str(self.workdir / "pki" / "ca.pem") if self.tls else None

    def host_token(self, host: str) -> str:
        """The credential of ``host`` (what its OHC holds)."""
        return host_credential(host, self.host_key)

    @property
    def directory_file(self) -> Path:
        return self.workdir / "directory.yaml"

    def vni_range(self, shard: str) -> tuple[int, int]:
        i = self.scenario.shards.index(shard)
        return 1000 + i * VNI_SPAN, 1000 + (i + 1) * VNI_SPAN - 1

    def write(self) -> None:
        sc = self.scenario
        shards = {
            name: ShardEntry(
                ctl.url, self.vni_range(name), [v for v in sc.vpcs if sc.shard_of[v] == name]
            )
            for name, ctl in self.ctls.items()
        }
        doc = directory_doc(shards, self.grant_key, self.fed_token, self.host_key)
        self.directory_file.write_text(yaml.safe_dump(doc), encoding="utf-8")
        for ctl in self.ctls.values():
            conf = ctl.config(self.directory_file, self.heartbeat)
            if self.wsgi_max > 0:  # every simulated host connects from 127.0.0.1
                conf = replace(
                    conf, max_connections=self.wsgi_max, max_connections_per_client=self.wsgi_max
                )
            ctl.conf.write_text(conf.text(), encoding="utf-8")

    # --- store preload -------------------------------------------------------------------

    def resources(self, shard: str, with_endpoints: bool = True) -> list[Any]:
        """Everything the REST API would have stored on ``shard`` for the scenario."""
        sc = self.scenario
        lo, _ = self.vni_range(shard)
        mine = [v for v in sc.vpcs if sc.shard_of[v] == shard]
        out: list[Any] = []
        vpcs = {}
        for i, v in enumerate(mine):
            vpcs[v] = Vpc(v, lo + i, (Subnet("s0", _net(sc.subnet(v))),))
            out.append(vpcs[v])
        for h, name in enumerate(sc.hosts):
            out.append(Host(name, _addr(sc.underlay(h))))
        for v in mine:
            for p in sc.peers[v]:
                export = parse_export_policy(sc.export_of(v, p), "export")
                out.append(Peering(v, f"to-{p}", p, export))
        if with_endpoints:
            for e in sc.endpoints:
                if e.vpc in vpcs:
                    ip = _addr(e.ip)
                    out.append(Endpoint(e.vpc, e.name, "vm", ip, derived_mac(e.vpc, ip), e.host))
        return out

    def preload(self) -> None:
        for name, ctl in self.ctls.items():
            store = Store.open(str(ctl.store), synchronous="NORMAL")
            try:
                res = self.resources(name)
                store.commit([Change(*store_key(r), r.to_json()) for r in res])
            finally:
                store.close()

    # --- processes -----------------------------------------------------------------------

    def start(self, profile_dir: Path | None = None) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(":")
        for ctl in self.ctls.values():
            cmd = [
                sys.executable, str(ROOT / "benchmarks" / "sim" / "ctl_main.py"),
                "ryu_apps.controller", "--config-file", str(ctl.conf),
            ]  # fmt: skip
            e = dict(env)
            if profile_dir is not None:
                e["MESHPEER_BENCH_PROFILE"] = str(profile_dir / f"{ctl.name}.prof")
            ctl.proc = spawn_manager(cmd, ctl.log, cwd=ROOT, env=e)
        for ctl in self.ctls.values():
            self._wait_healthy(ctl)

    def _wait_healthy(self, ctl: Ctl, timeout: float = 300.0) -> None:
        probe = Client(ctl.url, None, timeout=2.0, ca_file=ctl.ca_file)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert ctl.proc is not None
            if ctl.proc.poll() is not None:
                raise RuntimeError(f"controller {ctl.name} exited; see {ctl.log}")
            try:
                if probe.request("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"controller {ctl.name} not healthy after {timeout}s")

    def stats(self) -> dict[str, dict[str, float]]:
        return {n: proc_stat(c.pid) for n, c in self.ctls.items() if c.proc is not None}

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGUSR1 first when profiling (dumps the profile), then SIGTERM, then SIGKILL; by pid."""
        for ctl in self.ctls.values():
            if ctl.proc is not None and ctl.proc.poll() is None:
                ctl.proc.send_signal(sig)
        deadline = time.monotonic() + 5.0
        for ctl in self.ctls.values():
            proc, ctl.proc = ctl.proc, None
            if proc is None:
                continue
            try:
                proc.wait(max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _net(cidr: str) -> Any:
    return ipaddress.ip_network(cidr)


def _addr(ip: str) -> Any:
    return ipaddress.ip_address(ip)
