"""Gateway liveness in a lab (issue 14): BFD state, which gateway carries a flow, and a
gateway's death and return. Used by tests/e2e/test_gateways_e2e.py and
benchmarks/gateway_failover.py.

A gateway is killed by stopping its ovs-vswitchd through the lab's supervisor (SIGTERM to the
pid it recorded, no restart until ``revive``): the userspace datapath dies with it, so the
gateway forwards nothing, as a crashed host would.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

from meshpeer.lab import ovs
from meshpeer.lab.plan import HostPlan, LabPlan, VmPlan
from ohc import bfd
from tests.e2e.traffic import Capture, Geneve, Pinger, PingResult
from tests.support.wait import wait_for

SECTION_RE = re.compile(r"^---- (\S+) ----$", re.M)


MIN_TX_RE = re.compile(r"^\s*(Local|Remote) Minimum TX Interval: (\d+)ms", re.M)


def bfd_state(host: HostPlan, gateway_ips: Iterable[str]) -> dict[str, str | None]:
    """Per gateway IP, the host's BFD session toward it: ``down`` (not forwarding), ``up``
    (forwarding), ``fast`` (up, and both ends at the configured interval: the 3-interval
    detection holds; for about a second after coming up BFD still runs at 1 s, RFC 5880
    6.8.3, so a gateway dying then takes ~3 s to notice); None: no BFD port."""
    text = ovs.appctl(host, "bfd/show")
    sections = dict(zip(SECTION_RE.findall(text), SECTION_RE.split(text)[2::2], strict=True))
    out: dict[str, str | None] = {}
    for ip in gateway_ips:
        body = sections.get(bfd.port_name(ip))
        if body is None:
            out[ip] = None
        elif "Forwarding: true" not in body:
            out[ip] = "down"
        else:
            tx = dict(MIN_TX_RE.findall(body))
            remote_up = "Remote Session State: up" in body
            out[ip] = "fast" if remote_up and tx.get("Local") == tx.get("Remote") else "up"
    return out


def sessions(
    hosts: Iterable[HostPlan], gateway_ips: Iterable[str]
) -> dict[tuple[str, str], str | None]:
    ips = list(gateway_ips)
    return {(h.name, ip): st for h in hosts for ip, st in bfd_state(h, ips).items()}


def all_fast(hosts: Iterable[HostPlan], gateway_ips: Iterable[str]) -> bool:
    return all(st == "fast" for st in sessions(hosts, gateway_ips).values())


def carriers(plan: LabPlan, gateways: Iterable[str], vni: int, send: object) -> set[str]:
    """The gateways whose underlay link carries Geneve packets with ``vni`` while ``send()``
    runs (each capture armed before it)."""
    with contextlib.ExitStack() as stack:
        caps = {g: stack.enter_context(Capture(plan, g)) for g in gateways}
        send()  # type: ignore[operator]
        got = {g: cap.stop(expect=1, timeout=5)[0] for g, cap in caps.items()}
    return {g for g, pkts in got.items() if any(p.vni == vni for p in pkts)}


def kill(plan: LabPlan, gateway: HostPlan) -> None:
    """Stop the gateway's ovs-vswitchd (SIGTERM to the pid the supervisor recorded); the
    supervisor leaves it down until ``revive``."""
    ovs.stop_vswitchd(plan, gateway)


def revive(plan: LabPlan, gateway: HostPlan) -> None:
    """Start it again, cold: its OHC reconnects and installs its relay flows."""
    ovs.start_vswitchd(plan, gateway)
    ovs.wait_ready(gateway, [])


@dataclass
class Failover:
    """One gateway killed under ``ping -i 0.01`` from src to dst (``failover``)."""

    dead: str
    other: str
    killed_at: float  # wall time (as ping's -D)
    switched_at: float  # every hypervisor's session: the dead one down, the other up
    result: PingResult
    on_dead: list[Geneve]  # Geneve on the dead gateway's link after the switch
    on_other: list[Geneve]

    def lost_after_switch(self) -> list[int]:
        first_after = min(seq for seq, at in self.result.replies if at > self.switched_at)
        return [s for s in self.result.gaps() if s >= first_after]

    def window_s(self) -> float:
        """The loss window: the longest time between two consecutive replies."""
        times = sorted(at for _, at in self.result.replies)
        return max(b - a for a, b in itertools.pairwise(times))


def failover(
    plan: LabPlan,
    hypervisors: list[HostPlan],
    gateways: dict[str, HostPlan],
    src: VmPlan,
    dst: VmPlan,
    deadline: float,
) -> Failover:
    """Ping ``dst`` from ``src`` at 100 pps; kill the gateway that carries it (found by
    capture); wait until every hypervisor's sessions say so and 20 replies came after that,
    capturing both gateways' links meanwhile; stop; revive the gateway."""
    ips = {g: h.underlay_ip for g, h in gateways.items()}
    with Pinger(src, dst.ip, count=10**6, interval=0.01) as pinger:
        if pinger.wait_reply_after(time.time(), deadline) is None:
            raise AssertionError(f"{src.name} -> {dst.name} gets no reply")

        def some_replies() -> None:
            t = time.time()
            wait_for(lambda: len(pinger.replies_after(t)) >= 5, deadline, what="5 replies")

        busy = sorted(carriers(plan, gateways, dst.vni, some_replies))
        if not busy:
            raise AssertionError(f"{src.name} -> {dst.name} crosses no gateway")
        dead = busy[0]
        other = next(g for g in gateways if g != dead)
        killed_at = time.time()
        kill(plan, gateways[dead])
        try:

            def switched() -> bool:
                s = sessions(hypervisors, [ips[dead], ips[other]])
                return all(
                    s[(h.name, ips[dead])] == "down" and s[(h.name, ips[other])] == "fast"
                    for h in hypervisors
                )

            wait_for(switched, deadline, what=f"every hypervisor sees {dead} down, {other} up")
            switched_at = time.time()
            with Capture(plan, dead) as cap_dead, Capture(plan, other) as cap_other:
                wait_for(
                    lambda: len(pinger.replies_after(switched_at)) >= 20, deadline,
                    what="replies after the switch",
                )  # fmt: skip
                on_other, _ = cap_other.stop(expect=4)
                on_dead, _ = cap_dead.stop()
            result = pinger.stop()
        finally:
            revive(plan, gateways[dead])
    return Failover(dead, other, killed_at, switched_at, result, on_dead, on_other)


def has_direct_flow(host: HostPlan, ip: str) -> bool:
    """Does the host's l3_lookup (table 30) hold a flow for exactly ``ip``: the direct path of
    an offloaded pair (the pair counters in table 35 name it too, so they are not counted)."""
    pattern = re.compile(rf"table=30,.*nw_dst={re.escape(ip)}[, ]")
    return any(pattern.search(line) for line in ovs.ofctl(host, "dump-flows").splitlines())


@dataclass
class Offload:
    """One busy pair moved to the direct path (``offload``)."""

    started_at: float  # the pinger's first reply
    offloaded_at: float  # the direct flow seen on the source host (by polling: an upper bound)
    result: PingResult
    captured: list[Geneve]  # on the source host's link after the direct flow appeared


def offload(
    plan: LabPlan, src_host: HostPlan, src: VmPlan, dst: VmPlan, deadline: float
) -> Offload:
    """Ping ``dst`` from ``src`` at 100 pps until the source host holds a direct flow for it,
    then capture the source host's link until 20 more replies came; stop."""
    with Pinger(src, dst.ip, count=10**6, interval=0.01) as pinger:
        first = pinger.wait_reply_after(0, deadline)
        if first is None:
            raise AssertionError(f"{src.name} -> {dst.name} gets no reply")
        wait_for(lambda: has_direct_flow(src_host, dst.ip), deadline, what="the pair offloaded")
        offloaded_at = time.time()
        with Capture(plan, src_host.name) as cap:
            wait_for(
                lambda: len(pinger.replies_after(offloaded_at)) >= 20, deadline,
                what="replies after the offload",
            )  # fmt: skip
            captured, _ = cap.stop(expect=1)
        result = pinger.stop()
    return Offload(first, offloaded_at, result, captured)
