"""A real single-member etcd for tests: its own data directory and loopback ports, stopped after.

``etcd_server()`` skips the test (with the reason printed by ``-ra``) only when the etcd binary
is absent (``scripts/bootstrap`` installs it); a server that does not come up is a failure.
"""

from __future__ import annotations

import base64
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

from meshpeer import pki
from meshpeer.client import Client
from meshpeer.store import StoreError, etcdmember
from meshpeer.store.etcd import Gateway
from meshpeer.store.etcdplan import b64
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


def _healthy(url: str, tls: EtcdTls | None = None) -> bool:
    if tls is not None:  # a client certificate: ask through the store's own client
        gateway = Gateway([url], 2.0, tls.ca_file, tls.client_cert)
        try:
            return bool(gateway.call("maintenance/status", {}, idempotent=True))
        except StoreError:
            return False
        finally:
            gateway.close()
    client = Client(url, None, timeout=2.0)
    try:
        status, body = client.request("GET", "/health")
    except OSError:
        return False
    finally:
        client.close()
    return status == 200 and isinstance(body, dict) and body.get("health") == "true"


@dataclass(frozen=True)
class EtcdTls:
    """Members on https:// with ``--client-cert-auth``: certificates from a CA of the test's
    own (``meshpeer.pki``); ``client_cert`` is one that CA signed for a shard."""

    ca_file: str
    server: etcdmember.ClientTls
    client_cert: tuple[str, str]

    @classmethod
    def make(cls, directory: str) -> EtcdTls:
        ca = pki.make_ca(directory, "meshpeer test etcd CA")
        server = pki.issue_server(ca, f"{directory}/etcd", "etcd", ["127.0.0.1"], client_too=True)
        client = pki.issue_client(ca, f"{directory}/shard", "ctl1")
        member = etcdmember.ClientTls(server.cert_file, server.key_file, ca.cert_file)
        return cls(ca.cert_file, member, (client.cert_file, client.key_file))


@dataclass
class EtcdCluster:
    """Members on 127.0.0.1, each killable (SIGKILL) and startable again on its data dir."""

    members: list[etcdmember.Member]
    workdir: str
    procs: dict[str, subprocess.Popen[bytes]]
    tls: EtcdTls | None = None
    max_txn_ops: int = etcdmember.MAX_TXN_OPS

    @property
    def urls(self) -> list[str]:
        return [m.client_url for m in self.members]

    def start(self, name: str) -> None:
        member = next(m for m in self.members if m.name == name)
        server = self.tls.server if self.tls else None
        data = f"{self.workdir}/{name}"
        argv = etcdmember.argv(
            member,
            self.members,
            data,
            "meshpeer-test",
            client_tls=server,
            max_txn_ops=self.max_txn_ops,
        )
        with open(f"{self.workdir}/{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def wait_healthy(self, names: list[str] | None = None) -> None:
        for m in self.members:
            if names is not None and m.name not in names:
                continue
            proc = self.procs[m.name]

            def up(m: etcdmember.Member = m, proc: subprocess.Popen[bytes] = proc) -> bool:
                return _healthy(m.client_url, self.tls) or proc.poll() is not None

            wait_for(
                up,
                timeout=30.0,
                step=0.05,
                what=f"etcd {m.name} to answer /health",
            )
            if proc.poll() is not None:
                with open(f"{self.workdir}/{m.name}.log") as f:
                    raise AssertionError(f"etcd exited {proc.returncode}: {f.read()[-2000:]}")


@contextmanager
def etcd_cluster(
    size: int = 1, tls: bool = False, max_txn_ops: int = etcdmember.MAX_TXN_OPS
) -> Iterator[EtcdCluster]:
    """``size`` etcd members with their own data dirs and loopback ports; killed after.
    ``tls``: clients on https:// with client certificates (``EtcdCluster.tls``)."""
    if not os.path.exists(etcdmember.ETCD):
        pytest.skip(f"{etcdmember.ETCD} absent: run scripts/bootstrap (Debian etcd-server)")
    workdir = tempfile.mkdtemp(prefix="meshpeer-etcd-")
    members = [
        etcdmember.Member(f"t{i + 1}", "127.0.0.1", _free_port(), _free_port(), secure=tls)
        for i in range(size)
    ]
    cluster = EtcdCluster(members, workdir, {}, EtcdTls.make(workdir) if tls else None, max_txn_ops)
    try:
        for m in members:
            cluster.start(m.name)
        cluster.wait_healthy()
        yield cluster
    finally:
        for name in list(cluster.procs):
            cluster.kill(name)
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def etcd_server() -> Iterator[EtcdServer]:
    """One member: its URL, pid and data dir."""
    with etcd_cluster(1) as cluster:
        (member,) = cluster.members
        yield EtcdServer(member.client_url, cluster.procs[member.name].pid, cluster.workdir)


def put_key(url: str, key: str, value: str | bytes | None) -> None:
    """What an operator's ``etcdctl put`` (None: ``etcdctl del``) does, at member ``url``."""
    gateway = Gateway([url])
    try:
        if value is None:
            gateway.call("kv/deleterange", {"key": b64(key)}, idempotent=True)
        else:
            raw = value.encode() if isinstance(value, str) else value
            put = {"key": b64(key), "value": base64.b64encode(raw).decode()}
            gateway.call("kv/put", put, idempotent=True)
    finally:
        gateway.close()
