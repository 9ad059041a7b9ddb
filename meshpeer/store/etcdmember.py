"""How an etcd member is started: its command line, from a few typed settings (no I/O).

One spelling for the unit tests' single-member etcd (``tests/support/etcd.py``), the lab's
members in their namespaces and docs/deployment.md's units. ``--max-txn-ops`` and
``--max-request-bytes`` are raised above etcd's defaults (128 operations, 1.5 MiB) because one
change set is one transaction: a 5 000-endpoint batch create is 5 003 operations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ETCD = "/usr/bin/etcd"
MAX_TXN_OPS = 20_000
MAX_REQUEST_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ClientTls:
    """A member's client port on TLS: its certificate and key, and (``client_ca_file``) the
    CA that every client's certificate must be signed by (``--client-cert-auth``)."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    ip: str
    client_port: int = 2379
    peer_port: int = 2380
    secure: bool = False  # clients on https:// (with ClientTls)

    @property
    def client_url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.ip}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.ip}:{self.peer_port}"


def argv(
    member: Member,
    cluster: Sequence[Member],
    data_dir: str,
    token: str,
    also_listen: Sequence[str] = (),
    client_tls: ClientTls | None = None,
    max_txn_ops: int = MAX_TXN_OPS,
) -> list[str]:
    """``etcd`` for ``member`` of a new cluster of ``cluster`` (``token`` keeps two clusters on
    one network apart). Heartbeat and election timeouts are etcd's defaults (100/1000 ms).
    ``also_listen``: more client URLs it listens on, not advertised (the lab's members also
    listen on their namespace's 127.0.0.1, where a plain ``etcdctl`` looks). ``client_tls``:
    clients on TLS (``member.secure``), verified by a CA if it names one. ``max_txn_ops``:
    operations per transaction (the tests lower it to etcd's default, 128)."""
    listen = ",".join([member.client_url, *also_listen])
    secure: list[str] = []
    if client_tls is not None:
        secure = ["--cert-file", client_tls.cert_file, "--key-file", client_tls.key_file]
        if client_tls.client_ca_file:
            secure += ["--client-cert-auth", "--trusted-ca-file", client_tls.client_ca_file]
    return [
        ETCD,
        "--name", member.name,
        "--data-dir", data_dir,
        "--listen-client-urls", listen,
        "--advertise-client-urls", member.client_url,
        "--listen-peer-urls", member.peer_url,
        "--initial-advertise-peer-urls", member.peer_url,
        "--initial-cluster", ",".join(f"{m.name}={m.peer_url}" for m in cluster),
        "--initial-cluster-state", "new",
        "--initial-cluster-token", token,
        "--max-txn-ops", str(max_txn_ops),
        "--max-request-bytes", str(MAX_REQUEST_BYTES),
        "--logger", "zap",
        "--log-outputs", "stderr",
        *secure,
    ]  # fmt: skip
