"""A real single-member etcd for tests: its own data directory and loopback ports, stopped after.

``etcd_server()`` skips the test (with the reason printed by ``-ra``) only when the etcd binary
is absent (``scripts/bootstrap`` installs it); a server that does not come up is a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from meshpeer.client import Client
from meshpeer.store import etcdmember
from tests.support.wait import wait_for


@dataclass(frozen=True)
class EtcdServer:
    url: str
    pid: int
    data_dir: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        status, body = Client(url, None, timeout=2.0).request("GET", "/health")
    except OSError:
        return False
    return status == 200 and isinstance(body, dict) and body.get("health") == "true"


@contextmanager
def etcd_server() -> Iterator[EtcdServer]:
    if not os.path.exists(etcdmember.ETCD):
        pytest.skip(f"{etcdmember.ETCD} absent: run scripts/bootstrap (Debian etcd-server)")
    workdir = tempfile.mkdtemp(prefix="meshpeer-etcd-")
    member = etcdmember.Member("t1", "127.0.0.1", _free_port(), _free_port())
    argv = etcdmember.argv(member, [member], f"{workdir}/data", "meshpeer-test")
    with open(f"{workdir}/etcd.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(
            lambda: _healthy(member.client_url) or proc.poll() is not None,
            timeout=30.0,
            step=0.05,
            what="etcd to answer /health",
        )
        if proc.poll() is not None:
            with open(f"{workdir}/etcd.log") as f:
                raise AssertionError(f"etcd exited {proc.returncode}: {f.read()[-2000:]}")
        yield EtcdServer(member.client_url, proc.pid, workdir)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)
