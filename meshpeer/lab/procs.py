"""Process liveness and termination by pid: the lab ends only what it started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def alive(pid: int) -> bool:
    """True while the process runs. A zombie counts as gone.

    Daemons started with --detach are reparented to the namespace's init; if that init
    does not reap, a killed daemon lingers in state Z forever, holding no resources.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # Field 3 follows the parenthesised command name, which may itself contain spaces.
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def read_pidfile(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def terminate(pids: Iterable[int], timeout: float = 2.0) -> list[int]:
    """SIGTERM, wait, then SIGKILL what is left; returns pids that still would not die."""
    pending = {p for p in pids if alive(p)}
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 1.0)):
        for p in pending:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
        deadline = time.monotonic() + wait
        while pending and time.monotonic() < deadline:
            pending = {p for p in pending if alive(p)}
            if pending:
                time.sleep(0.01)
        if not pending:
            break
    return sorted(pending)


def manager_cmd(cmd: Sequence[str], log: str | Path) -> list[str]:
    """A ``meshpeer-manager`` command that logs to ``log`` and only there.

    The manager writes its log records to the file (``--log-file``, no stderr copy), and the
    process's own stdout and stderr (a traceback before logging starts, a crash) are to be
    appended to the same file: one file per process, nothing to cross-check against a twin."""
    return [*cmd, "--log-file", str(log)]


def spawn_manager(cmd: Sequence[str], log: str | Path, **popen: Any) -> subprocess.Popen[bytes]:
    """Start a ``manager_cmd`` with its stdout and stderr appended to its log."""
    with open(log, "ab") as out:
        return subprocess.Popen(manager_cmd(cmd, log), stdout=out, stderr=out, **popen)


def write_secret(path: str | Path, text: str) -> None:
    """Write a file only its owner may read (0600 from its creation, also when replaced)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
