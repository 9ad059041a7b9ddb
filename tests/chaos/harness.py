"""The chaos suite's load and measurements: a REST write loop per shard, a 100 pps pinger,
and what one scenario measured (docs/reliability.md, "Chaos").

A ``Writer`` creates and deletes endpoints of one VPC on its shard, one host after the other,
and records every write with its answer: acknowledged (2xx), refused (another status) or
unanswered (no answer: the shard was away; such a write may or may not have happened). Each
round deletes the endpoint the previous round created on the round's host and then creates a
new one there, so the last write of every host's endpoint stream, and of the VPC's
destination streams, is a create: once every host has applied the endpoints still present,
it has applied every write before them too (stream versions only grow).

A ``ChaosRun`` runs the pinger and one writer per shard around a fault, and measures:
pings lost (unanswered while later ones were answered) and the largest gap between two
replies; the time from the fault's end until the lab converged (``converged``); and the
acknowledged writes the shards no longer show (``acked_lost``). Tests assert behaviour only
(nothing acknowledged lost, convergence within a generous deadline, traffic after); the
numbers depend on the machine and are printed and written, never asserted.
"""

from __future__ import annotations

import http.client
import ipaddress
import itertools
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from meshpeer.client import ApiFailure
from meshpeer.lab import controllers, ohcs, ovs
from tests.e2e.traffic import Pinger, PingResult
from tests.integration.labkit import Lab
from tests.support.wait import wait_for

PPS = 100
PINGS = 10**6  # more than any scenario sends: each stops its pinger when it has what it needs
CONVERGE_TIMEOUT = 120.0  # generous: the numbers themselves are measured, not asserted
PAUSE = 0.1  # between two rounds of a writer (two writes each)
# The write loop's VPCs, shards and address blocks (tests/chaos/topologies/chaos.yaml).
WRITE_VPCS = {"blue": ("ctl1", "10.101.0.0/16"), "red": ("ctl2", "10.102.0.0/16")}
WRITE_PREFIX = "w"  # names of the write loop's endpoints: w<n>, never reused in a lab


@dataclass(frozen=True)
class Write:
    op: str  # "create" or "delete"
    name: str
    ip: str
    host: str
    status: int | None  # None: no answer (refused connection, timeout, reset)
    at: float

    @property
    def acked(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


_numbers = itertools.count(1)  # one sequence for every writer of the run: names never repeat


class Writer:
    """Creates and deletes endpoints of ``vpc`` on its shard until ``stop``."""

    def __init__(self, lab: Lab, vpc: str, hosts: list[str]) -> None:
        shard, block = WRITE_VPCS[vpc]
        self.vpc, self.shard, self.hosts = vpc, shard, hosts
        self.net = ipaddress.ip_network(block)
        self.client = controllers.client(lab.plan, _controller(lab, shard), lab.plan.api_token, 5.0)
        self.writes: list[Write] = []
        self.alive: dict[str, Write] = {}  # host -> the acknowledged create still standing
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Writer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after the current round (so the last write of each host is a create)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    def acked(self) -> int:
        with self._lock:
            return sum(w.acked for w in self.writes)

    def _run(self) -> None:
        for k in itertools.count():
            if self._stop.is_set():
                return
            host = self.hosts[k % len(self.hosts)]
            old = self.alive.pop(host, None)
            if old is not None and not self._write("delete", old.name, old.ip, host).acked:
                self.alive[host] = old  # maybe still there: try again next time
            n = next(_numbers)
            ip = self.address(n)
            made = self._write("create", f"{WRITE_PREFIX}{n}", ip, host)
            if made.acked:
                self.alive[host] = made
            self._stop.wait(PAUSE)

    def address(self, n: int) -> str:
        """The n-th address of the block: away from its gateway (the first address), and
        neither .0 nor .255 (legal in a /16, but confusing to read)."""
        return str(self.net.network_address + 256 * (1 + n // 200) + 10 + n % 200)

    def _write(self, op: str, name: str, ip: str, host: str) -> Write:
        base = f"/v1/vpcs/{self.vpc}/endpoints"
        try:
            if op == "create":
                body = {"name": name, "ip": ip, "host": host}
                status, _ = self.client.request("POST", base, body)
            else:
                status, _ = self.client.request("DELETE", f"{base}/{name}")
        except (OSError, http.client.HTTPException):
            status = None
        w = Write(op, name, ip, host, status, time.time())
        with self._lock:
            self.writes.append(w)
        return w

    def present(self) -> dict[str, str]:
        """The write loop's endpoints the shard shows now: name -> IP."""
        eps = self.client.get(f"/v1/vpcs/{self.vpc}/endpoints")["endpoints"]
        return {e["name"]: e["ip"] for e in eps if _is_written(e["name"])}

    def lost(self, present: dict[str, str]) -> list[Write]:
        with self._lock:
            return acked_lost(self.writes, set(present))

    def programmed(self, names: list[str]) -> bool:
        """Every host that must act on these endpoints' last writes has applied them."""
        for name in names:
            status, body = self.client.request("GET", f"/v1/vpcs/{self.vpc}/endpoints/{name}")
            if status != 200 or not body["programmed"]:
                return False
        return True

    def pending_on(self, host: str) -> bool:
        """Some endpoint this loop created and still has is not applied on ``host`` yet."""
        for w in list(self.alive.values()):
            status, body = self.client.request("GET", f"/v1/vpcs/{self.vpc}/endpoints/{w.name}")
            if status == 200 and host in body["pending_hosts"]:
                return True
        return False

    def written_ips(self) -> set[str]:
        """Addresses of every create that may have happened (acknowledged or unanswered)."""
        with self._lock:
            return {w.ip for w in self.writes if w.op == "create" and not _refused(w)}


def acked_lost(writes: list[Write], present: set[str]) -> list[Write]:
    """Acknowledged writes that ``present`` (the names the shard shows) contradicts: the last
    acknowledged write of a name decides whether it must be there, unless a later write of it
    got no answer (it may or may not have happened). A refused write (an answer, not 2xx)
    changed nothing."""
    last: dict[str, Write] = {}
    unsure: set[str] = set()
    for w in writes:
        if w.acked:
            last[w.name] = w
            unsure.discard(w.name)
        elif w.status is None:
            unsure.add(w.name)
    return [
        w
        for name, w in last.items()
        if name not in unsure and (name in present) != (w.op == "create")
    ]


def _refused(w: Write) -> bool:
    return w.status is not None and not w.acked


def _is_written(name: str) -> bool:
    return name.startswith(WRITE_PREFIX) and name[len(WRITE_PREFIX) :].isdigit()


def _controller(lab: Lab, name: str) -> Any:
    return next(c for c in lab.plan.controllers if c.name == name)


def largest_gap(result: PingResult) -> tuple[float, float]:
    """The longest time between two consecutive replies (the loss window), and when it
    began (wall time; 0 without replies)."""
    times = sorted(at for _, at in result.replies)
    return max(((b - a, a) for a, b in itertools.pairwise(times)), default=(0.0, 0.0))


def flows_naming(lab: Lab, ips: set[str]) -> dict[str, list[str]]:
    """Host -> the addresses among ``ips`` that a flow on its br-int still matches or sets."""
    out: dict[str, list[str]] = {}
    for h in lab.plan.hosts:
        text = ovs.ofctl(h, "dump-flows", "--no-stats")
        found = set(re.findall(r"=(\d+\.\d+\.\d+\.\d+)(?![0-9])", text)) & ips
        if found:
            out[h.name] = sorted(found)
    return out


@dataclass
class Row:
    """One scenario's numbers (a row of the table in docs/reliability.md)."""

    scenario: str
    pings_sent: int = 0
    pings_lost: int = 0
    largest_gap_s: float = 0.0
    gap_after_fault_s: float = 0.0  # when the largest gap began, from the fault
    fault_s: float = 0.0  # from the fault until it ended (or the process was back)
    converge_s: float | None = None  # from the fault's end until the lab converged
    writes: int = 0
    writes_acked: int = 0
    writes_unanswered: int = 0
    acked_lost: int = 0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "notes"} | {"notes": self.notes}


class ChaosRun:
    """Pinger and write loops around one fault. Use as a context manager; call ``fault()``
    when the fault begins, ``healed()`` when it ended, then ``finish()``."""

    def __init__(self, lab: Lab, scenario: str, src: str = "b1", dst: str = "r1") -> None:
        self.lab, self.row = lab, Row(scenario)
        self.src, self.dst = src, dst
        hosts = [h.name for h in lab.plan.hosts]
        self.writers = [Writer(lab, vpc, hosts) for vpc in WRITE_VPCS]
        self.pinger: Pinger | None = None
        self.t_loaded = self.t_fault = self.t_heal = 0.0

    def __enter__(self) -> ChaosRun:
        self.pinger = Pinger(self.lab.vm(self.src), self.lab.vm(self.dst).ip, count=PINGS)
        assert self.pinger.wait_reply_after(time.time(), 30), f"{self.src} -> {self.dst} before"
        for w in self.writers:
            w.start()
        wait_for(lambda: all(w.acked() >= 4 for w in self.writers), 60, what="writes before")
        self.t_loaded = time.time()  # the write loops run from here on
        return self

    def __exit__(self, *exc: object) -> None:
        for w in self.writers:
            w.stop()
        if self.pinger is not None:
            self.pinger.__exit__()

    def fault(self) -> None:
        self.t_fault = time.time()

    def healed(self) -> None:
        """The fault ended: the write loops stop (after their round), convergence is timed
        from now."""
        self.t_heal = time.time()
        self.row.fault_s = round(self.t_heal - self.t_fault, 3)
        for w in self.writers:
            w.stop()

    def converged(self) -> bool:
        """Every host has applied the shards' latest versions: every write-loop endpoint
        still present is programmed (each host that must act reported it applied), no host
        holds a flow for one that is gone, and every OHC's last sync was complete."""
        try:
            return self._converged()
        except (OSError, http.client.HTTPException, ApiFailure):
            return False  # a shard not answering yet: not converged

    def _converged(self) -> bool:
        for w in self.writers:
            if not w.programmed(sorted(w.present())):
                return False
        for h in self.lab.plan.hosts:
            last = (ohcs.status(h) or {}).get("last_sync") or {}
            if not last.get("complete"):
                return False
        gone = set().union(*(w.written_ips() - set(w.present().values()) for w in self.writers))
        return not flows_naming(self.lab, gone)

    def finish(self) -> Row:
        """Wait for convergence, for traffic after it, and count what was lost."""
        assert self.pinger is not None
        wait_for(self.converged, CONVERGE_TIMEOUT, step=0.1, what="the lab to converge")
        self.row.converge_s = round(time.time() - self.t_heal, 3)
        after = self.pinger.wait_reply_after(time.time(), 30)
        assert after is not None, f"{self.src} -> {self.dst} after the lab converged"
        result = self.pinger.stop()
        self.row.pings_sent, self.row.pings_lost = result.sent, len(result.gaps())
        gap, began = largest_gap(result)
        self.row.largest_gap_s, self.row.gap_after_fault_s = (
            round(gap, 3),
            round(began - self.t_fault, 3),
        )
        for w in self.writers:
            lost = w.lost(w.present())
            self.row.notes += [f"acknowledged {x.op} of {w.vpc}/{x.name} lost" for x in lost]
            self.row.acked_lost += len(lost)
            self.row.writes += len(w.writes)
            self.row.writes_acked += w.acked()
            self.row.writes_unanswered += sum(x.status is None for x in w.writes)
        return self.row


def table(rows: list[Row]) -> Iterator[str]:
    """The results as a Markdown table (printed, and pasted into docs/reliability.md)."""
    yield (
        "| scenario | pings sent | lost | largest gap | fault | time to converge"
        " | writes (acked, unanswered) | acked writes lost |"
    )
    yield "|---|---|---|---|---|---|---|---|"
    for r in rows:
        conv = "-" if r.converge_s is None else f"{r.converge_s:.2f} s"
        yield (
            f"| {r.scenario} | {r.pings_sent:,} | {r.pings_lost} | {r.largest_gap_s:.2f} s"
            f" | {r.fault_s:.1f} s | {conv} | {r.writes} ({r.writes_acked}, "
            f"{r.writes_unanswered}) | {r.acked_lost} |"
        )
