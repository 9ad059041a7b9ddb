"""The Docker engine the lab talks to: one already running, or one of its own.

A responding engine on ``$DOCKER_HOST`` or ``/var/run/docker.sock`` is used as it is. Otherwise
the lab starts ``dockerd`` with its own socket, exec-root and data-root, no iptables, no IP
forwarding and no bridge (the lab wires every container itself), and records its pid in
``PIDFILE``. The data-root is under ``CACHE_ROOT`` and survives the engine: it is the hosts'
image cache. ``stop_if_idle`` (called by 'lab down') stops that engine once it holds no
container, and leaves nothing of it behind but the cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors

from meshpeer.lab.docker.paths import (
    DATA_ROOT,
    EXEC_ROOT,
    LOCK,
    LOG,
    PIDFILE,
    RUN_DIR,
    SOCKET,
    SYSTEM_SOCKET,
)
from meshpeer.lab.procs import alive, read_pidfile, terminate
from meshpeer.lab.sh import LabError, run
from meshpeer.lab.state import LOGS_ROOT

START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """Held while a lab starts the engine and creates its containers, or removes them and
    stops the engine: a lab going down never stops the engine under another one coming up."""
    with open(LOCK, "a", encoding="ascii") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _client(socket: str) -> Any | None:
    """A client of the engine on ``socket`` if one answers there, else None."""
    if not os.path.exists(socket):
        return None
    client = docker.DockerClient(base_url=f"unix://{socket}", timeout=120)
    try:
        client.ping()
        return client
    except (docker.errors.DockerException, OSError):
        client.close()
        return None


def own_pid() -> int | None:
    """The pid of the engine the lab started, while it runs: the pidfile's pid, if that
    process is a dockerd started with this pidfile. A dockerd killed without removing its
    pidfile leaves a pid another process may get: that one is never taken for it (found by a
    review: the lab would have signalled it)."""
    pid = read_pidfile(PIDFILE)
    return pid if pid is not None and alive(pid) and _is_ours(pid) else None


def _is_ours(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return (
        bool(argv)
        and os.path.basename(argv[0]) == b"dockerd"
        and (f"--pidfile={PIDFILE}".encode() in argv)
    )


def find() -> Any | None:
    """A client of a running engine: the lab's own first, then the system's (the one
    ``DOCKER_HOST`` names, else the default socket)."""
    if own_pid() is not None:
        return _client(SOCKET)
    return _client(system_socket())


def system_socket() -> str:
    host = os.environ.get("DOCKER_HOST", "")
    return host.removeprefix("unix://") if host.startswith("unix://") else SYSTEM_SOCKET


def ensure() -> Any:
    """A client of a running engine; starts the lab's own when none runs. Call it locked."""
    client = find()
    if client is not None:
        return client
    if shutil.which("dockerd") is None:
        raise LabError("the docker backend needs dockerd (Debian docker.io: run scripts/bootstrap)")
    os.makedirs(DATA_ROOT, exist_ok=True)
    os.makedirs(EXEC_ROOT, exist_ok=True)
    os.makedirs(LOGS_ROOT, exist_ok=True)
    cmd = [
        "dockerd",
        f"--data-root={DATA_ROOT}",
        f"--exec-root={EXEC_ROOT}",
        f"--host=unix://{SOCKET}",
        f"--pidfile={PIDFILE}",
        "--iptables=false",
        "--ip-forward=false",
        "--ip-masq=false",
        "--bridge=none",
    ]
    with open(LOG, "ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        client = _client(SOCKET)
        if client is not None:
            # Nothing runs in an engine that was not running: containers it still holds were
            # left when it died with labs up (their 'down' could not reach it). Its data-root
            # is the lab's own, so they are all the lab's.
            for stale in client.containers.list(all=True):
                stale.remove(force=True, v=True)
            return client
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    if proc.returncode is None:  # still ours: not reaped, so its pid is still its own
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    _remove_run_dir()
    raise LabError(f"dockerd did not start within {START_TIMEOUT:.0f}s (see {LOG})")


def stop_if_idle() -> bool:
    """Stop the engine the lab started when it holds no container; True if it stopped.
    Call it locked. An engine the lab did not start is never touched."""
    pid = own_pid()
    if pid is None:
        _remove_run_dir()  # what a killed engine may have left
        return False
    client = _client(SOCKET)
    if client is not None:
        try:
            if client.containers.list(all=True):
                return False
        finally:
            client.close()
    if terminate([pid], timeout=STOP_TIMEOUT):
        raise LabError(f"dockerd (pid {pid}) would not exit")
    _remove_run_dir()
    return True


def mounts_under(*prefixes: str) -> list[str]:
    """Mount points at or below any of ``prefixes`` (in this mount namespace)."""
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if any(p == x or p.startswith(f"{x}/") for x in prefixes)]


def _remove_run_dir() -> None:
    """Unmount what the engine left mounted below its run directory, then remove it."""
    for point in sorted(mounts_under(RUN_DIR, f"{DATA_ROOT}/overlay2"), reverse=True):
        run(["umount", "--lazy", point], check=False)
    shutil.rmtree(RUN_DIR, ignore_errors=True)
