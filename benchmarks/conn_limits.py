"""A shard under a connection flood (issue 17): /healthz latency while 20,000 idle and 200
slowloris connections are held, and whether the shard is still itself afterwards.

One real shard process on 127.0.0.1 (tests/api/ctlkit.py, the API tests' launcher) with its
default limits and timeouts, started with this machine's fd limits (the shard raises its soft
limit to the hard one). The flood is held by this process and helper processes (each raises
its soft RLIMIT_NOFILE to the hard one and holds at most ``PER_WORKER`` idle connections: the
hard limit here is 20,000 and cannot be raised in this container). The idle
connections come from 100 loopback addresses (127.0.1.x, 200 each: under the per-client limit,
so the total limit is what they meet), the slowloris ones from 127.0.2.x (a header line every
second, never the end), the /healthz prober from 127.0.0.1 (a new connection per request). No
lab, no root needed beyond raising the fd limit; run it under the lab lock all the same (it
loads the machine):

    flock /tmp/meshpeer-lab.lock .venv/bin/python benchmarks/conn_limits.py [--idle 20000]

Prints a summary and writes benchmarks/results/conn_limits.json. Asserts nothing on time.
"""

from __future__ import annotations

import argparse
import errno
import multiprocessing
import os
import resource
import selectors
import socket
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import common

sys.path.insert(0, common.ROOT)
import contextlib

from tests.api.ctlkit import DEFAULT_LAYOUT, Cluster, Ctl

PER_WORKER = 10_000
PACE = 100
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"


def source(block: int, i: int, per: int) -> str:
    return f"127.0.{block}.{1 + i // per}"


def open_idle(
    port: int, first: int, count: int, per_source: int
) -> tuple[list[socket.socket], int]:
    """``count`` connections that never send a byte (non-blocking connects), numbered from
    ``first`` for their source addresses; paced (``PACE`` per 50 ms) so that the shard's
    listen queue does not overflow and drop handshakes, which would leave connections the
    client believes open and the shard never saw."""
    socks: list[socket.socket] = []
    failed = 0
    for i in range(first, first + count):
        if i % PACE == 0:
            time.sleep(0.05)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.bind((source(1, i, per_source), 0))
            err = s.connect_ex(("127.0.0.1", port))
        except OSError:
            s.close()
            failed += 1
            continue
        if err not in (0, errno.EINPROGRESS):
            s.close()
            failed += 1
            continue
        socks.append(s)
    return socks, failed


class Slowloris:
    """``count`` connections that send a request line, then one header line per ``drip`` s."""

    def __init__(self, port: int, count: int, drip: float = 1.0) -> None:
        self.t0 = time.monotonic()
        self.drip = drip
        self.socks: dict[socket.socket, int] = {}
        for i in range(count):
            s = socket.create_connection(("127.0.0.1", port), 10, (source(2, i, 50), 0))
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n")
            s.setblocking(False)
            self.socks[s] = i
        self.cut: dict[int, float] = {}  # index -> seconds from start until the shard cut it
        self.answers: dict[str, int] = {}  # first answer line -> count
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        for s in self.socks:
            sel.register(s, selectors.EVENT_READ)
        next_drip = time.monotonic()
        while not self._stop.is_set() and len(self.cut) < len(self.socks):
            for key, _ in sel.select(0.1):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if data:
                    line = data.split(b"\r\n", 1)[0].decode("latin-1")
                    self.answers[line] = self.answers.get(line, 0) + 1
                self.cut[self.socks[s]] = time.monotonic() - self.t0
                sel.unregister(s)
            if time.monotonic() >= next_drip:
                next_drip += self.drip
                for s, i in self.socks.items():
                    if i not in self.cut:
                        with contextlib.suppress(OSError):
                            s.send(b"X-Drip: 1\r\n")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for s in self.socks:
            s.close()


def healthz(port: int, timeout: float = 10.0) -> tuple[float, str]:
    """One GET /healthz on a new connection: (seconds, first answer line or the error)."""
    t0 = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout) as s:
            s.sendall(HEALTHZ)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        line = data.split(b"\r\n", 1)[0].decode("latin-1") or "EOF"
    except OSError as exc:
        line = f"error: {type(exc).__name__}"
    return time.perf_counter() - t0, line


def probe(port: int, duration: float, pause: float = 0.05) -> tuple[list[float], dict[str, int]]:
    """/healthz back to back for ``duration`` s: latencies of 200s, and every outcome counted."""
    lat: list[float] = []
    outcomes: dict[str, int] = {}
    end = time.monotonic() + duration
    while time.monotonic() < end:
        took, line = healthz(port)
        outcomes[line] = outcomes.get(line, 0) + 1
        if line.startswith("HTTP/1.1 200"):
            lat.append(took)
        time.sleep(pause)
    return lat, outcomes


def closed_by_peer(s: socket.socket) -> bool:
    try:
        return s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def raise_own_nofile() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def idle_worker(port: int, first: int, count: int, pipe: Connection) -> None:
    """A helper process: open and hold idle connections; on request, count those the shard
    closed; then close them all."""
    raise_own_nofile()
    socks, failed = open_idle(port, first, count, per_source=200)
    pipe.send((len(socks), failed))
    pipe.recv()
    pipe.send(sum(closed_by_peer(s) for s in socks))
    pipe.recv()
    for s in socks:
        s.close()


class IdleFlood:
    def __init__(self, port: int, count: int) -> None:
        ctx = multiprocessing.get_context("fork")
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        for first in range(0, count, PER_WORKER):
            mine, theirs = ctx.Pipe()
            n = min(PER_WORKER, count - first)
            proc = ctx.Process(target=idle_worker, args=(port, first, n, theirs), daemon=True)
            proc.start()
            self.pipes.append(mine)
            self.procs.append(proc)
        opened = [p.recv() for p in self.pipes]
        self.held = sum(o[0] for o in opened)
        self.failed = sum(o[1] for o in opened)

    def closed_by_shard(self) -> int:
        for p in self.pipes:
            p.send("count")
        return sum(p.recv() for p in self.pipes)

    def close(self) -> None:
        for p in self.pipes:
            p.send("close")
        for proc in self.procs:
            proc.join(30)


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def ms(summary: dict[str, float]) -> dict[str, float]:
    return {k: (v if k == "n" else round(v * 1e3, 2)) for k, v in summary.items()}


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    shard_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    raise_own_nofile()
    cluster = Cluster.create(
        workdir, {"ctl1": DEFAULT_LAYOUT["ctl1"]}, heartbeat=5.0, nofile=shard_nofile
    )
    cluster.start_all()
    ctl: Ctl = cluster["ctl1"]
    assert ctl.proc is not None
    pid, port = ctl.proc.pid, ctl.port
    result: dict[str, Any] = {
        "idle": args.idle,
        "slowloris": args.slowloris,
        "hold_s": args.hold,
        "shard_nofile_at_start": list(shard_nofile),
        "shard_nofile_running": list(resource.prlimit(pid, resource.RLIMIT_NOFILE)),
    }
    try:
        base, base_out = probe(port, args.baseline)
        result["healthz_before_ms"] = ms(common.summary(base))
        result["healthz_before_outcomes"] = base_out
        print(f"shard pid {pid}, port {port}; /healthz before: {len(base)} answers")

        t0 = time.monotonic()
        flood = IdleFlood(port, args.idle)
        result["idle_open_s"] = round(time.monotonic() - t0, 2)
        result["idle_held"] = flood.held
        result["idle_connect_failures"] = flood.failed
        slow = Slowloris(port, args.slowloris)
        print(f"holding {flood.held} idle + {len(slow.socks)} slowloris connections")

        peak = [(0.0, fds(pid))]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.5):
                peak.append((round(time.monotonic() - t0, 1), fds(pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        during, during_out = probe(port, args.hold)
        stop.set()
        sampler.join()
        result["healthz_during_ms"] = ms(common.summary(during)) if during else None
        result["healthz_during_outcomes"] = during_out
        result["shard_fds_max"] = max(n for _, n in peak)
        result["shard_fds_every_5s"] = peak[::10]
        result["idle_closed_by_shard"] = flood.closed_by_shard()
        result["slowloris_cut"] = len(slow.cut)
        result["slowloris_cut_after_s"] = (
            {"min": round(min(slow.cut.values()), 2), "max": round(max(slow.cut.values()), 2)}
            if slow.cut
            else None
        )
        result["slowloris_answers"] = slow.answers

        slow.close()
        flood.close()
        t1 = time.monotonic()
        answered = False
        while time.monotonic() - t1 < 60 and not answered:
            answered = healthz(port, 5.0)[1].startswith("HTTP/1.1 200")
        after, after_out = probe(port, args.baseline)
        result["recovered"] = answered and ctl.proc.poll() is None
        result["healthz_after_ms"] = ms(common.summary(after)) if after else None
        result["healthz_after_outcomes"] = after_out
        result["shard_fds_after"] = fds(pid)
        log = ctl.log.read_text(encoding="utf-8", errors="replace")
        result["log_lines"] = {
            "shedding": log.count("shedding connections"),
            "accept failed": log.count("accept failed"),
            "Traceback": log.count("Traceback"),
        }
    finally:
        cluster.stop_all()
    return result


def show(r: dict[str, Any]) -> None:
    def line(name: str, s: dict[str, float] | None) -> str:
        if not s:
            return f"  {name:8} no 200 answers"
        return (
            f"  {name:8} n={s['n']:<5} p50 {s['p50']:7.2f} ms  p99 {s['p99']:7.2f} ms"
            f"  max {s['max']:7.2f} ms"
        )

    print(f"/healthz latency (200 answers), {r['idle']} idle + {r['slowloris']} slowloris held:")
    print(line("before", r["healthz_before_ms"]))
    print(line("during", r["healthz_during_ms"]))
    print(line("after", r["healthz_after_ms"]))
    print(f"  outcomes during: {r['healthz_during_outcomes']}")
    print(
        f"shard fds: max {r['shard_fds_max']} during (limit {r['shard_nofile_running'][0]}),"
        f" {r['shard_fds_after']} after; idle connections it closed to make room:"
        f" {r['idle_closed_by_shard']} of {r['idle']}"
    )
    print(
        f"slowloris cut off: {r['slowloris_cut']} of {r['slowloris']},"
        f" after {r['slowloris_cut_after_s']} s; answers {r['slowloris_answers']}"
    )
    print(f"recovered: {r['recovered']}; log lines: {r['log_lines']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--idle", type=int, default=20_000)
    p.add_argument("--slowloris", type=int, default=200)
    p.add_argument("--hold", type=float, default=45.0, help="seconds of probing while held")
    p.add_argument("--baseline", type=float, default=5.0, help="seconds of probing before/after")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    m = common.machine()
    with common.LoadSampler() as load, tempfile.TemporaryDirectory() as tmp:
        result = run(args, Path(tmp))
    result["machine"] = m
    result["load"] = load.result()
    result["when"] = common.now_utc()
    common.print_machine(m, result["load"])
    show(result)
    common.write_json(result, args.json, "conn_limits.json")


if __name__ == "__main__":
    main()
