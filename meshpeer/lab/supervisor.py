"""The lab's side of supervision: start and stop the supervisor, and tell it what to run.

One supervisor process per lab (meshpeer.lab.supervisord, started by 'lab up' in its own
session, so it outlives the CLI) is the parent of every process the lab starts: shards,
OHCs, ovsdb-server and ovs-vswitchd. The lab tells it what it wants through one small JSON
file per process (a ``supervision.Spec``) under ``<state_dir>/supervised/``; the supervisor
writes what it runs to ``<state_dir>/supervisor.json`` and logs to ``supervisor.log``.

A deliberate stop (``release``) first writes the spec as not wanted, then ends the process by
pid: the supervisor reads the spec again when it sees the exit, so it never restarts a
process the lab stopped, however the two race.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import Any

from meshpeer.lab.plan import LabPlan
from meshpeer.lab.procs import ROOT, alive, read_pidfile, terminate
from meshpeer.lab.sh import LabError
from meshpeer.lab.state import read_json, write_json
from meshpeer.lab.supervision import Spec

READY_TIMEOUT = 10.0


# The supervisor's files, in the lab's state directory (``at(state_dir, NAME)``).
SPECS = "supervised"  # one spec per process: KIND.NAME.json
STATUS = "supervisor.json"  # what it runs: pids, restarts, last exits
PIDFILE = "supervisor.pid"
LOG = "supervisor.log"  # every start, exit and restart


def at(state_dir: str, name: str) -> str:
    return f"{state_dir}/{name}"


def spec_path(state_dir: str, key: str) -> str:
    return f"{state_dir}/{SPECS}/{key}.json"


def read_spec(path: str) -> Spec | None:
    doc = read_json(path)
    try:
        return None if doc is None else Spec.from_json(doc)
    except (KeyError, TypeError):
        return None


def daemon_pid(state_dir: str) -> int | None:
    pid = read_pidfile(at(state_dir, PIDFILE))
    return pid if pid is not None and alive(pid) else None


def start_daemon(plan: LabPlan) -> int:
    """Start the lab's supervisor in its own session; returns its pid once it runs."""
    os.makedirs(at(plan.state_dir, SPECS), exist_ok=True)
    with open(at(plan.state_dir, LOG), "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "meshpeer.lab.supervisord", plan.lab],
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            start_new_session=True,
        )
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        st = read_json(at(plan.state_dir, STATUS))
        if st is not None and st.get("pid") == proc.pid:
            return proc.pid
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    raise LabError(f"the lab's supervisor did not start (see {at(plan.state_dir, LOG)})")


def stop_daemon(state_dir: str) -> list[int]:
    """End the supervisor, which ends its children first; returns pids that would not die."""
    pid = daemon_pid(state_dir)
    return [] if pid is None else terminate([pid], timeout=10.0)


def status(state_dir: str) -> dict[str, Any] | None:
    return read_json(at(state_dir, STATUS))


def processes(state_dir: str) -> list[dict[str, Any]]:
    """Each supervised process: name, kind, pid (None when not running), restarts, wanted."""
    st = status(state_dir) or {}
    out = []
    for p in st.get("processes", []):
        pid = p.get("pid")
        running = pid is not None and alive(pid)
        out.append({**p, "pid": pid if running else None, "running": running})
    return out


def _current(state_dir: str, key: str) -> dict[str, Any] | None:
    return next((p for p in processes(state_dir) if f"{p['kind']}.{p['name']}" == key), None)


def _recorded_pid(state_dir: str, key: str) -> int | None:
    """The pid the supervisor last recorded for ``key`` (None once it reaped the process)."""
    st = status(state_dir) or {}
    return next(
        (p.get("pid") for p in st.get("processes", []) if f"{p['kind']}.{p['name']}" == key), None
    )


def _poke(state_dir: str) -> None:
    pid = daemon_pid(state_dir)
    if pid is None:
        raise LabError(
            f"the lab's supervisor is not running (no live pid in {at(state_dir, PIDFILE)})"
        )
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGUSR1)


def supervise(plan: LabPlan, spec: Spec, timeout: float = READY_TIMEOUT) -> int:
    """Have the supervisor run ``spec`` (and restart it whenever it dies); returns its pid.

    Idempotent: a process that already runs as wanted is left alone."""
    d = plan.state_dir
    now = _current(d, spec.key)
    if now is not None and now["running"] and now["wanted"]:
        return int(now["pid"])
    write_json(spec_path(d, spec.key), spec.to_json())
    _poke(d)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = _current(d, spec.key)
        if now is not None and now["running"] and now["wanted"]:
            return int(now["pid"])
        time.sleep(0.01)
    raise LabError(f"the supervisor did not start {spec.kind} {spec.name} within {timeout}s")


def release(plan: LabPlan, kind: str, name: str) -> None:
    """Stop a supervised process on purpose: no restart until ``supervise`` is called again."""
    d = plan.state_dir
    path = spec_path(d, f"{kind}.{name}")
    spec = read_spec(path)
    if spec is None:
        raise LabError(f"{kind} {name} is not supervised in lab {plan.lab}")
    write_json(path, {**spec.to_json(), "wanted": False})
    pid = _recorded_pid(d, spec.key)
    if pid is None:
        return
    if terminate([pid]):
        raise LabError(f"{kind} {name} (pid {pid}) would not exit")
    # Until the supervisor has seen the exit (as wanted: false), a start right after this
    # would make that exit look like a crash, and a crash restarts warm.
    _poke(d)
    deadline = time.monotonic() + READY_TIMEOUT
    while _recorded_pid(d, spec.key) == pid:
        if time.monotonic() > deadline:
            raise LabError(f"the supervisor did not see {kind} {name} (pid {pid}) exit")
        time.sleep(0.01)
