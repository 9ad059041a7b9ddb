"""Observing the lab's data plane: Geneve captures on the fabric, and reachability over time."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from meshpeer.lab.matrix import ping
from meshpeer.lab.plan import LabPlan, VmPlan
from meshpeer.lab.sh import netns_cmd

GENEVE_RE = re.compile(
    r"IP (\d+\.\d+\.\d+\.\d+)\.\d+ > (\d+\.\d+\.\d+\.\d+)\.6081: Geneve.*?vni (0x[0-9a-f]+)"
)


@dataclass(frozen=True)
class GenevePacket:
    src: str
    dst: str
    vni: int


def capture_geneve(
    plan: LabPlan, host: str, during: Callable[[], object], count: int = 4
) -> list[GenevePacket]:
    """Geneve packets seen on a host's underlay link (in the fabric) while ``during`` runs."""
    proc = subprocess.Popen(
        netns_cmd(
            plan.fabric_netns,
            ["tcpdump", "-l", "-nn", "-i", f"u-{host}", "-c", str(count), "udp", "port", "6081"],
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        while "listening on" not in proc.stderr.readline():
            if proc.poll() is not None:
                raise RuntimeError("tcpdump exited before capturing")
        during()
        out, _ = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return [GenevePacket(m[1], m[2], int(m[3], 16)) for m in GENEVE_RE.finditer(out)]


def until(check: Callable[[], bool], timeout: float, interval: float = 0.02) -> float | None:
    """Seconds until ``check()`` holds, or None if it never did within ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(interval)
    return None


def answers(src: VmPlan, dst_ip: str, wait: float = 0.2) -> Callable[[], bool]:
    """A one-packet reachability check (waiting ``wait`` seconds for the reply), for polling."""

    def check() -> bool:
        return ping(src, dst_ip, count=1, timeout_s=wait)

    return check


Pairs = list[tuple[VmPlan, VmPlan]]


def vpc_pairs(plan: LabPlan, vpc_a: str, vpc_b: str, skip: Collection[str] = ()) -> Pairs:
    """Every ordered pair of VMs between two VPCs, both ways (``skip``: VM names left out,
    e.g. deferred VMs not created yet)."""
    vms = [v for v in plan.vms if v.name not in skip]
    return [(a, b) for a in vms for b in vms if {a.vpc, b.vpc} == {vpc_a, vpc_b} and a.vpc != b.vpc]


def answering(pairs: Pairs, wait: float = 0.2) -> list[str]:
    """The pairs (``"a->b"``) whose one-packet ping was answered, all probed at once."""

    def probe(p: tuple[VmPlan, VmPlan]) -> bool:
        return answers(p[0], p[1].ip, wait)()

    with ThreadPoolExecutor(max_workers=max(1, len(pairs))) as pool:
        got = list(pool.map(probe, pairs))
    return [f"{a.name}->{b.name}" for (a, b), ok in zip(pairs, got, strict=True) if ok]
