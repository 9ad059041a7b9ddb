"""Traffic helpers for lab tests: a background 100 pps pinger and Geneve captures.

The pinger runs ``ping -D -O -i 0.01 -c N`` inside a VM's namespace and reads its output live
on a thread, so a test can ask "when did the last reply arrive?" (a cut) or "wait for the
first reply after t" (a restore, a programming latency) while the pinger keeps running.
Timestamps are ping's ``-D`` wall-clock times, comparable with ``time.time()``; ``-O`` makes
ping say when a request went unanswered, so a test can wait until requests were really sent.

How many requests go out in a given time depends on the machine: tests assert which ones were
answered (no gaps), never how many were sent.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

from meshpeer.lab.plan import LabPlan, VmPlan
from meshpeer.lab.probe import until
from meshpeer.lab.sh import netns_cmd

REPLY_RE = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)")
NO_ANSWER_RE = re.compile(r"^\[\d+\.\d+\] no answer yet for icmp_seq=(\d+)")
SUMMARY_RE = re.compile(r"(\d+) packets transmitted, (\d+) received")
GENEVE_RE = re.compile(
    r"IP (\d+\.\d+\.\d+\.\d+)\.\d+ > (\d+\.\d+\.\d+\.\d+)\.6081: Geneve.*?vni (0x[0-9a-f]+)"
    r"(?:.*?IP (\S+) > (\S+): ICMP echo (request|reply))?"
)


@dataclass
class PingResult:
    sent: int
    received: int
    replies: list[tuple[int, float]] = field(default_factory=list)  # (icmp_seq, wall time)

    @property
    def lost(self) -> int:
        return self.sent - self.received

    def missing(self) -> list[int]:
        """icmp_seq numbers that got no reply (of those sent)."""
        got = {seq for seq, _ in self.replies}
        return [s for s in range(1, self.sent + 1) if s not in got]

    def gaps(self) -> list[int]:
        """Requests lost while later ones were answered: the losses that mean something. The
        requests after the last reply were still in flight when the pinger was stopped."""
        last = max((seq for seq, _ in self.replies), default=0)
        return [s for s in self.missing() if s < last]


class LiveOutput:
    """A process's stdout, read line by line on a thread while the process runs."""

    proc: subprocess.Popen[str]

    def _start_reading(self) -> None:
        self._lock = threading.Lock()
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self._lines.append(line)
                self._on_line(line)

    def _on_line(self, line: str) -> None:
        """Called with the lock held, for each line."""

    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)


class Pinger(LiveOutput):
    """``ping -i interval -c count`` from ``src`` to ``dst_ip`` in the background."""

    def __init__(
        self, src: VmPlan, dst_ip: str, count: int = 1000, interval: float = 0.01, wait: float = 1
    ) -> None:
        self.src, self.dst_ip, self.count = src, dst_ip, count
        cmd = ["ping", "-n", "-D", "-O", "-i", str(interval), "-c", str(count), "-W", str(wait)]
        cmd.append(dst_ip)
        self.proc = subprocess.Popen(
            netns_cmd(src.netns, cmd),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self.started = time.time()
        self._replies: list[tuple[int, float]] = []
        self._unanswered: set[int] = set()
        self._start_reading()

    def _on_line(self, line: str) -> None:
        if m := REPLY_RE.match(line):
            self._replies.append((int(m.group(2)), float(m.group(1))))
        elif m := NO_ANSWER_RE.match(line):
            self._unanswered.add(int(m.group(1)))

    def replies(self) -> list[tuple[int, float]]:
        with self._lock:
            return list(self._replies)

    def unanswered(self) -> int:
        """How many requests ping reported as not answered (yet) when it sent the next one."""
        with self._lock:
            return len(self._unanswered)

    def last_reply(self) -> float | None:
        r = self.replies()
        return r[-1][1] if r else None

    def replies_after(self, t: float) -> list[tuple[int, float]]:
        return [r for r in self.replies() if r[1] > t]

    def wait_reply_after(self, t: float, timeout: float) -> float | None:
        """Wall time of the first reply received after ``t``; None if none within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            after = self.replies_after(t)
            if after:
                return after[0][1]
            if time.monotonic() >= deadline or self.proc.poll() is not None:
                return None
            time.sleep(0.01)

    def wait(self, timeout: float = 60) -> PingResult:
        """Wait for ``count`` packets to be sent and answered (or not)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return self.stop()
        return self._result()

    def stop(self) -> PingResult:
        """SIGINT: ping stops sending and prints its summary."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self._result()

    def _result(self) -> PingResult:
        self._reader.join(timeout=5)
        with self._lock:
            text = "".join(self._lines)
            replies = list(self._replies)
        m = SUMMARY_RE.search(text)
        if m is None:
            raise AssertionError(f"no ping summary from {self.src.name} -> {self.dst_ip}:\n{text}")
        return PingResult(int(m.group(1)), int(m.group(2)), replies)

    def __enter__(self) -> Pinger:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass(frozen=True)
class Geneve:
    src: str  # outer (underlay) source
    dst: str
    vni: int
    inner_src: str | None = None
    inner_dst: str | None = None
    icmp: str | None = None  # "request" / "reply" for ICMP echo


class Capture(LiveOutput):
    """``tcpdump`` of Geneve (UDP 6081) on a host's underlay link in the fabric namespace,
    read live (``-l``) on a thread."""

    def __init__(self, plan: LabPlan, host: str) -> None:
        cmd = ["tcpdump", "-l", "-nn", "-i", f"u-{host}", "udp", "port", "6081"]
        self.proc = subprocess.Popen(
            netns_cmd(plan.fabric_netns, cmd),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        assert self.proc.stderr is not None
        while "listening on" not in self.proc.stderr.readline():  # armed after this line
            if self.proc.poll() is not None:
                raise AssertionError(f"tcpdump on u-{host} exited early")
        self._start_reading()

    def packets(self) -> list[Geneve]:
        return [
            Geneve(m[1], m[2], int(m[3], 16), m[4], m[5], m[6])
            for m in (GENEVE_RE.search(line) for line in self.lines())
            if m
        ]

    def stop(self, expect: int = 0, timeout: float = 30) -> tuple[list[Geneve], str]:
        """Once ``expect`` Geneve packets were captured (or ``timeout`` passed), stop; the
        Geneve packets seen and the raw text. SIGINT flushes what tcpdump still holds."""
        until(lambda: len(self.packets()) >= expect, timeout)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)
        return self.packets(), "".join(self.lines())

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
