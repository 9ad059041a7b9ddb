"""The lab's supervisor: ``python -m meshpeer.lab.supervisord LAB`` (started by 'lab up').

It is the parent of every process the lab starts, so it learns of a death at once (SIGCHLD
wakes it) and reaps it (no zombies). It restarts a process that dies while the lab wants it
(``meshpeer.lab.supervision.decide``) with the same command line, and logs every start, exit
and restart to ``supervisor.log``. A restarted ovs-vswitchd is a warm restart
(``meshpeer.lab.ovs.warm_restart_*``): flows, groups and tunnel neighbours are restored under
``flow-restore-wait`` before the switch forwards again. For that it keeps a copy of each
br-int's flows, taken after every sync its OHC reports (the OHC's status file changes).

On SIGTERM ('lab down') it ends its children (SIGTERM, then SIGKILL), reaps them and exits.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from meshpeer.lab import ovs, state, supervisor
from meshpeer.lab.plan import HostPlan, LabPlan
from meshpeer.lab.procs import terminate
from meshpeer.lab.supervision import Action, Seen, Spec, copy_due, decide, exited, started

log = logging.getLogger("meshpeer.lab.supervisor")
TICK = 0.05  # longest sleep between two looks (a child's death or a poke wakes it sooner)


@dataclass
class Child:
    spec: Spec
    seen: Seen = field(default_factory=Seen)
    proc: subprocess.Popen[bytes] | None = None
    hook: threading.Thread | None = None  # a warm restart's second half, still running
    last_exit: dict[str, Any] | None = None


class Supervisor:
    def __init__(self, plan: LabPlan) -> None:
        self.plan = plan
        self.dir = supervisor.at(plan.state_dir, supervisor.SPECS)
        self.children: dict[str, Child] = {}
        self.specs_mtime = -1
        self.stopping = False
        self.dirty = True
        # host -> (mtime of the OHC status file last copied, when that copy was taken)
        self.snapshots: dict[str, tuple[float, float]] = {}
        rfd, wfd = os.pipe()
        for fd in (rfd, wfd):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        self.wake_fd = rfd
        signal.set_wakeup_fd(wfd)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the select
        signal.signal(signal.SIGUSR1, lambda *_: None)  # the lab changed a spec

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    # --- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        log.info("supervisor of lab %s running as pid %d", self.plan.lab, os.getpid())
        while not self.stopping:
            self._load_specs()
            for child in list(self.children.values()):
                self._reap(child)
            for child in list(self.children.values()):
                self._act(child)
            self._snapshot_flows()
            if self.dirty:
                self._write_status()
            with contextlib.suppress(InterruptedError):
                select.select([self.wake_fd], [], [], TICK)
            with contextlib.suppress(BlockingIOError):
                os.read(self.wake_fd, 512)
        self._shutdown()

    def _load_specs(self) -> None:
        try:
            mtime = os.stat(self.dir).st_mtime_ns
        except FileNotFoundError:
            return
        # A directory's mtime has the kernel's coarse clock: a spec written in the same tick
        # as the last look leaves it unchanged. Look again while it changed within a second.
        if mtime == self.specs_mtime and time.time_ns() - mtime > 1_000_000_000:
            return
        self.specs_mtime = mtime
        for name in sorted(os.listdir(self.dir)):
            if not name.endswith(".json"):
                continue
            spec = supervisor.read_spec(f"{self.dir}/{name}")
            if spec is None:
                continue
            child = self.children.setdefault(spec.key, Child(spec))
            if child.spec != spec:
                child.spec = spec
                self.dirty = True

    def _reap(self, child: Child) -> None:
        if child.proc is None:
            return
        code = child.proc.poll()
        if code is None:
            return
        # Read the spec again now: a deliberate stop wrote it before ending the process.
        fresh = supervisor.read_spec(supervisor.spec_path(self.plan.state_dir, child.spec.key))
        if fresh is not None:
            child.spec = fresh
        now = time.time()
        child.seen = exited(child.seen, now, child.spec.wanted)
        child.last_exit = {"pid": child.proc.pid, "code": code, "at": now}
        what = "crashed, restarting" if child.spec.wanted else "stopped by the lab"
        log.log(
            logging.WARNING if child.spec.wanted else logging.INFO,
            "%s %s (pid %d) exited with code %s: %s",
            child.spec.kind, child.spec.name, child.proc.pid, code, what,
        )  # fmt: skip
        child.proc = None
        self.dirty = True

    def _act(self, child: Child) -> None:
        action = decide(child.spec.wanted, child.seen, time.time())
        if action is Action.NONE:
            return
        warm = action is Action.RESTART
        host = self._host(child.spec)
        if warm and child.spec.kind == "ovs-vswitchd" and host is not None:
            self._guard(f"{host.name}: flow-restore-wait", ovs.warm_restart_begin, host)
        try:
            child.proc = spawn(child.spec)
        except OSError as exc:
            log.error("%s %s: cannot start: %s", child.spec.kind, child.spec.name, exc)
            child.seen = exited(started(child.seen, time.time(), warm), time.time(), True)
            return
        child.seen = started(child.seen, time.time(), warm)
        self.dirty = True
        log.info(
            "%s %s %s as pid %d%s",
            child.spec.kind, child.spec.name, "restarted" if warm else "started", child.proc.pid,
            f" (restart {child.seen.restarts})" if warm else "",
        )  # fmt: skip
        if warm and child.spec.kind == "ovs-vswitchd" and host is not None:
            child.hook = threading.Thread(
                target=self._guard,
                args=(f"{host.name}: warm restart", ovs.warm_restart_finish, self.plan, host),
                daemon=True,
            )
            child.hook.start()

    def _guard(self, what: str, fn: Any, *args: Any) -> None:
        t0 = time.monotonic()
        try:
            fn(*args)
            log.info("%s done in %.3fs", what, time.monotonic() - t0)
        except Exception as exc:
            log.error("%s failed: %s", what, exc)

    def _host(self, spec: Spec) -> HostPlan | None:
        return next((h for h in self.plan.hosts if h.name == spec.name), None)

    # --- flow copies for a warm restart --------------------------------------------------------

    def _snapshot_flows(self) -> None:
        """After the syncs an OHC reports (once they are quiet), keep a copy of its br-int's
        flows and groups."""
        for h in self.plan.hosts:
            child = self.children.get(f"ovs-vswitchd.{h.name}")
            if child is None or child.proc is None or (child.hook and child.hook.is_alive()):
                continue
            try:
                mtime = os.stat(f"{h.rundir}/ohc.status.json").st_mtime
            except FileNotFoundError:
                continue
            copied, copied_at = self.snapshots.get(h.name, (None, None))
            now = time.time()
            ohc = self.children.get(f"ohc.{h.name}")
            ohc_started_at = ohc.seen.started_at if ohc is not None and ohc.proc else None
            if not copy_due(now, mtime, copied, copied_at, ohc_started_at):
                continue
            try:
                ovs.save_flows(h)
            except Exception as exc:
                log.warning("%s: cannot save br-int's flows: %s", h.name, exc)
            self.snapshots[h.name] = (mtime, now)

    # --- status and shutdown -------------------------------------------------------------------

    def _write_status(self) -> None:
        procs = [
            {
                "name": c.spec.name,
                "kind": c.spec.kind,
                "pid": c.proc.pid if c.proc is not None else None,
                "wanted": c.spec.wanted,
                "restarts": c.seen.restarts,
                "started_at": c.seen.started_at,
                "last_exit": c.last_exit,
            }
            for c in sorted(self.children.values(), key=lambda c: c.spec.key)
        ]
        state.write_json(
            supervisor.at(self.plan.state_dir, supervisor.STATUS),
            {"pid": os.getpid(), "processes": procs},
        )
        self.dirty = False

    def _shutdown(self) -> None:
        live = {c.proc.pid: c for c in self.children.values() if c.proc is not None}
        log.info("supervisor stopping: ending %d processes", len(live))
        stuck = terminate(live)
        for c in live.values():
            if c.proc is not None and c.proc.pid not in stuck:
                c.proc.wait()  # reap: this process is their parent
                c.proc = None
        self._write_status()
        log.info("supervisor stopped%s", f"; would not exit: {stuck}" if stuck else "")


def spawn(spec: Spec) -> subprocess.Popen[bytes]:
    """Start one process with its stdout and stderr appended to its log, in its own session."""
    with open(spec.output, "ab") as out:
        return subprocess.Popen(
            list(spec.cmd),
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            cwd=spec.cwd,
            env={**os.environ, **dict(spec.env)},
            start_new_session=True,
        )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    plan = state.load(args[0])
    if plan is None:
        print(f"supervisor: lab {args[0]!r} has no state file", file=sys.stderr)
        return 1
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    sup = Supervisor(plan)
    with open(supervisor.at(plan.state_dir, supervisor.PIDFILE), "w", encoding="ascii") as f:
        f.write(f"{os.getpid()}\n")
    sup.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
