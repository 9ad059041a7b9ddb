"""'lab down': remove everything a lab created, whether or not 'up' finished."""

from __future__ import annotations

import glob
import os
import shutil

from meshpeer.lab import hosts, state, supervisor
from meshpeer.lab.procs import alive, read_pidfile, terminate
from meshpeer.lab.sh import LabError, ip_batch, run


def lab_netns(lab: str) -> list[str]:
    out = run(["ip", "netns", "list"]).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(f"{lab}-")]


def lab_pids(lab: str, namespaces: list[str]) -> set[int]:
    """Daemons from the lab's pidfiles, plus anything still running in its namespaces."""
    pids = set()
    for path in glob.glob(f"{state.state_dir(lab)}/**/*.pid", recursive=True):
        pid = read_pidfile(path)
        if pid is not None and alive(pid):
            pids.add(pid)
    for ns in namespaces:
        res = run(["ip", "netns", "pids", ns], check=False)
        pids.update(int(p) for p in res.stdout.split() if p.isdigit())
    pids.discard(os.getpid())
    return pids


def down(lab: str) -> dict[str, int]:
    """Idempotent. Returns counts of what was removed."""
    # The supervisor first: it ends its children, and must not restart what is ended below.
    stuck = supervisor.stop_daemon(state.state_dir(lab))
    if stuck:
        raise LabError(f"the lab's supervisor would not exit: {stuck}")
    raw = state.load_raw(lab) or {}
    containers = hosts.remove(lab, raw.get("plan", {}).get("backend"))
    namespaces = lab_netns(lab)
    stuck = terminate(lab_pids(lab, namespaces))
    if stuck:
        raise LabError(f"processes would not exit: {stuck}")
    ip_batch([f"netns del {ns}" for ns in namespaces])
    root_if = f"{lab}-mgmt"
    if run(["ip", "link", "show", root_if], check=False).returncode == 0:
        run(["ip", "link", "del", root_if])
    logs = keep_logs(lab)
    shutil.rmtree(state.state_dir(lab), ignore_errors=True)
    return {"namespaces": len(namespaces), "containers": containers, "logs": logs}


def keep_logs(lab: str) -> int:
    """Move the lab's logs and OHC status files to ``state.logs_dir(lab)``, replacing those of
    the lab's previous run, so that a failure can still be read after 'down'. Returns how many
    files were kept (0 leaves an older run's logs alone)."""
    src = state.state_dir(lab)
    files = [
        p
        for pattern in ("**/*.log", "**/*.status.json")
        for p in glob.glob(f"{src}/{pattern}", recursive=True)
    ]
    if not files:
        return 0
    dst = state.logs_dir(lab)
    shutil.rmtree(dst, ignore_errors=True)
    for path in files:
        target = os.path.join(dst, os.path.relpath(path, src))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.move(path, target)
    return len(files)
