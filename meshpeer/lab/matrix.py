"""Reachability matrix: ping every ordered pair of VMs and on-prem hosts once, in parallel."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from meshpeer.lab.plan import LabPlan, OnpremHostPlan, VmPlan, family
from meshpeer.lab.sh import run

Pingable = VmPlan | OnpremHostPlan


@dataclass(frozen=True)
class Pair:
    src: str
    dst: str
    reachable: bool
    note: str = ""


def ping(src: Pingable, dst_ip: str, count: int = 1, timeout_s: float = 1) -> bool:
    cmd = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", f"{timeout_s:g}"]
    if family(dst_ip) == 6:
        cmd.append("-6")
    res = run([*cmd, dst_ip], netns=src.netns, check=False, timeout=count * timeout_s + 5)
    return res.returncode == 0


def matrix(plan: LabPlan, skip_deferred: bool = False) -> list[Pair]:
    """Ping every ordered pair once: VMs, and the hosts behind on-prem routers. ``skip_deferred``
    leaves out VMs not yet created at their controller: probing them early leaves failed ARP
    entries that slow them later."""
    vms: list[Pingable] = [v for v in plan.vms if not (skip_deferred and v.defer)]
    vms += plan.onprem_hosts
    pairs = [(a, b) for a in vms for b in vms if a.name != b.name]

    def probe(p: tuple[Pingable, Pingable]) -> Pair:
        a, b = p
        if family(a.ip) != family(b.ip):
            return Pair(a.name, b.name, False, "address family differs")
        return Pair(a.name, b.name, ping(a, b.ip))

    with ThreadPoolExecutor(max_workers=32) as pool:
        return list(pool.map(probe, pairs))


def render(plan: LabPlan, pairs: list[Pair]) -> str:
    """Rows are sources, columns destinations; 'ok' reachable, '.' not, '-' self."""
    got = {(p.src, p.dst): p.reachable for p in pairs}
    names = [v.name for v in plan.vms] + [h.name for h in plan.onprem_hosts]
    width = max([len(n) for n in names] + [4])
    lines = [" " * width + " " + " ".join(n.rjust(width) for n in names)]
    for a in names:
        cells = ["-" if a == b else ("ok" if got.get((a, b)) else ".") for b in names]
        lines.append(a.rjust(width) + " " + " ".join(c.rjust(width) for c in cells))
    n_ok = sum(p.reachable for p in pairs)
    lines.append(f"{n_ok}/{len(pairs)} ordered pairs reachable")
    return "\n".join(lines)
