"""Shared helpers for the lab benchmarks: a lab for the duration of a `with`, machine facts
(including the load average, since other people may run tests on the same machine), OHC
processes by pid, percentiles, and the JSON result files in benchmarks/results/.

A benchmark runs as a script (`.venv/bin/python benchmarks/NAME.py`), so it imports this as
``common`` from its own directory.
"""

from __future__ import annotations

import compileall
import contextlib
import datetime
import glob
import json
import os
import platform
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from meshpeer.client import Client
from meshpeer.lab import build, controllers, ohcs, ovs, teardown
from meshpeer.lab.cli import load_topology
from meshpeer.lab.plan import HostPlan, LabPlan
from meshpeer.lab.procs import alive, read_pidfile
from meshpeer.lab.topology import Topology

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPOLOGIES = os.path.join(ROOT, "benchmarks", "topologies")
RESULTS = os.path.join(ROOT, "benchmarks", "results")


# --- the lab ---------------------------------------------------------------------------------


@dataclass
class Lab:
    name: str
    plan: LabPlan
    topo: Topology
    up_s: float

    def client(self, vpc: str, timeout: float = 30.0) -> Client:
        """A REST client for the shard owning ``vpc``."""
        owner = next(v.controller for v in self.topo.vpcs if v.name == vpc)
        c = next(x for x in self.plan.controllers if x.name == owner)
        return controllers.client(self.plan, c, self.plan.api_token, timeout=timeout)

    def host(self, name: str) -> HostPlan:
        return self.plan.host(name)


PACKAGES = ("meshpeer", "ohc", "policies", "ryu_apps")


def byte_compile() -> None:
    """What ``scripts/bootstrap`` does: a .pyc for each module of the checkout that has none or
    a stale one. A deployed meshpeer has them (pip compiles what it installs); a checkout
    edited or merged since its bootstrap, on a machine that sets PYTHONDONTWRITEBYTECODE,
    made every process of the lab compile those modules again at each start (docs/decisions.md,
    "Cold start of the OHC": 37 of 137 modules stale, ~55 ms of each OHC's start)."""
    for package in PACKAGES:
        compileall.compile_dir(os.path.join(ROOT, package), quiet=1, workers=0)


@contextlib.contextmanager
def lab(topology: str, name: str, quiet: bool = False, tls: bool = True) -> Iterator[Lab]:
    """`lab up` from a topology file, and always `lab down` afterwards (also on failure).
    ``tls=False``: the shards serve plain HTTP (`lab up --plain-http`)."""
    topo = load_topology(topology)
    progress = (lambda _line: None) if quiet else (lambda line: print(f"  {line}", flush=True))
    byte_compile()
    t0 = time.monotonic()
    try:
        plan, up_s = build.fresh(topo, name, progress=progress, tls=tls)
        yield Lab(name, plan, topo, up_s)
    finally:
        keep = os.environ.get("MESHPEER_BENCH_LOGS")  # copy the lab's logs there first
        if keep:
            for path in glob.glob(f"/run/meshpeer/{name}/**/*.log", recursive=True):
                rel = os.path.relpath(path, f"/run/meshpeer/{name}").replace("/", "_")
                os.makedirs(keep, exist_ok=True)
                shutil.copy(path, os.path.join(keep, rel))
        t1 = time.monotonic()
        teardown.down(name)
        if not quiet:
            total = time.monotonic() - t0
            print(f"  [lab {name}] down in {time.monotonic() - t1:.2f}s (lab held {total:.1f}s)")


def topology(name: str) -> str:
    return os.path.join(TOPOLOGIES, name)


# --- on-host controllers ---------------------------------------------------------------------


def ohc_pid(h: HostPlan) -> int | None:
    pid = read_pidfile(f"{h.rundir}/ohc.pid")
    return pid if pid is not None and alive(pid) else None


def stop_ohc(plan: LabPlan, h: HostPlan) -> None:
    """Stop one host's OHC through the lab (flows stay: fail_mode=secure): its supervisor
    does not restart it."""
    ohcs.stop(plan, h)


def start_ohc(plan: LabPlan, h: HostPlan) -> None:
    ohcs.start(plan, h)


def ohc_status(h: HostPlan) -> dict[str, Any]:
    return ohcs.status(h) or {}


def rss_mib(pid: int | None) -> float | None:
    """Resident set size of a process in MiB (VmRSS), None if it is gone."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds a process has used so far."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


def dump_flows(h: HostPlan) -> str:
    return ovs.ofctl(h, "dump-flows", "--no-stats")


# --- numbers ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between closest ranks."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "min": min(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


# --- the machine and its load ----------------------------------------------------------------


def loadavg() -> tuple[float, float, float]:
    return os.getloadavg()


def other_labs(own: str) -> list[str]:
    """Labs of other people running on this machine right now (state dirs under /run)."""
    found = [os.path.basename(os.path.dirname(p)) for p in glob.glob("/run/meshpeer/*/state.json")]
    return sorted(x for x in found if x != own)


class LoadSampler:
    """Samples the 1-minute load average every ``interval`` seconds while a benchmark runs."""

    def __init__(self, interval: float = 2.0) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(loadavg()[0])
            self._stop.wait(self.interval)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def result(self) -> dict[str, float]:
        xs = self.samples or [loadavg()[0]]
        return {
            "min": round(min(xs), 2),
            "mean": round(statistics.fmean(xs), 2),
            "max": round(max(xs), 2),
        }


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.splitlines()[0].strip() if out else "?"


def machine(lab_name: str = "") -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="ascii") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    mem_gib = 0.0
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="ascii") as f:
        mem_gib = int(next(ln for ln in f if ln.startswith("MemTotal")).split()[1]) / 2**20
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "mem_gib": round(mem_gib, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "ovs": _first_line(["ovs-vswitchd", "--version"]),
        "loadavg": [round(x, 2) for x in loadavg()],
        "other_labs": other_labs(lab_name),
    }


def now_utc() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- results ---------------------------------------------------------------------------------


def write_json(result: dict[str, Any], path: str | None, default_name: str) -> str:
    out = path or os.path.join(RESULTS, default_name)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"wrote {os.path.relpath(out, ROOT)}")
    return out


def print_machine(m: dict[str, Any], load: dict[str, float] | None = None) -> None:
    la = m["loadavg"]
    line = f"machine: {m['cpus']} cpus ({m['cpu_model']}), load avg at start {la[0]:.2f}"
    if load:
        line += f", during run 1-min min/mean/max {load['min']:.2f}/{load['mean']:.2f}/{load['max']:.2f}"
    print(line)
    if m["other_labs"]:
        print(f"other labs running on this machine: {', '.join(m['other_labs'])}")


# --- controller shards -----------------------------------------------------------------------


def controller_pid(plan: LabPlan, name: str) -> int | None:
    pid = read_pidfile(f"{plan.state_dir}/{name}/controller.pid")
    return pid if pid is not None and alive(pid) else None


def wait_shards_quiet(
    plan: LabPlan, window: float = 0.5, busy: float = 0.05, timeout: float = 20.0
) -> float:
    """Wait until every shard process used under ``busy`` CPU seconds in the last ``window``
    seconds (a batch of creates is still being published and stored for a while after its
    answer); returns the seconds waited (``timeout`` at most)."""
    t0 = time.monotonic()
    pids = [p for c in plan.controllers if (p := controller_pid(plan, c.name)) is not None]
    before = [cpu_seconds(p) or 0.0 for p in pids]
    while time.monotonic() - t0 < timeout:
        time.sleep(window)
        now = [cpu_seconds(p) or 0.0 for p in pids]
        if all(b - a < busy for a, b in zip(before, now, strict=True)):
            break
        before = now
    return round(time.monotonic() - t0, 2)


def stop_controller(plan: LabPlan, name: str) -> None:
    """Stop one shard process through the lab: its supervisor does not restart it."""
    controllers.stop(plan, next(x for x in plan.controllers if x.name == name))


def start_controller(plan: LabPlan, name: str) -> None:
    c = next(x for x in plan.controllers if x.name == name)
    controllers.start(plan, c)
    controllers.wait_healthy(plan, c, timeout=120)
