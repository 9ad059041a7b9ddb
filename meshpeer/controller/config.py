"""The two files a controller shard starts from: its config section and the shard directory.

One writer for every launcher (the lab, the API tests' loopback shards, the scale
simulation); ``meshpeer.options`` declares the options, ``meshpeer.directory``
parses the directory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshpeer import options
from meshpeer.controller import auth


@dataclass(frozen=True)
class ShardConfig:
    """The ``[controller]`` section of one shard's oslo config file."""

    shard: str
    listen_host: str
    listen_port: int
    store_path: str
    api_token: str
    directory_file: str
    heartbeat_interval: float | None = None  # None: the app's default
    grant_ttl: float | None = None  # None: the app's default
    tick_interval: float | None = None  # seconds between re-mints of grants; None: the default
    readonly_token: str | None = None
    api_tokens: str | None = None  # comma-separated, valid beside api_token (rotation)
    readonly_tokens: str | None = None  # comma-separated, valid beside readonly_token
    revoked_hosts: str | None = None  # comma-separated
    operator_tokens_file: str | None = None  # YAML {admin: [..], readonly: [..]}, re-read
    directory_check_interval: float | None = None  # None: the app's default
    # REST connection limits and timeouts (meshpeer.rest.admission.Limits); None: the default.
    max_connections: int | None = None
    max_connections_per_client: int | None = None
    max_channel_subscriptions: int | None = None  # None: the hub's default
    idle_timeout: float | None = None
    header_timeout: float | None = None
    body_timeout: float | None = None
    check_answers: bool = False  # tests: every REST answer checked against the document
    # HTTPS: this shard's certificate and key; the CA that verifies the other shards.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    ca_file: str | None = None
    # The intent store (meshpeer.store.settings): None leaves the option to its default.
    store: str | None = None
    etcd_endpoints: str | None = None
    etcd_prefix: str | None = None
    replica: str | None = None
    advertise_url: str | None = None
    leader_ttl: float | None = None

    def text(self) -> str:
        return options.config_text(options.CONTROLLER, dataclasses.asdict(self))


@dataclass(frozen=True)
class ShardEntry:
    """One shard in the directory: where its REST API is, its VNI block, the VPCs it owns."""

    url: str
    vni_range: tuple[int, int]
    vpcs: Sequence[str]
    replicas: Sequence[str] = ()  # every replica's URL, ``url`` first (none: one process)


def directory_doc(
    shards: Mapping[str, ShardEntry],
    grant_key_hex: str,
    federation_token: str,
    host_key_hex: str | None = None,
) -> dict[str, Any]:
    """The shard directory every shard reads (YAML), with one grant key, id ``k1``, and one
    host key, id ``h1`` (host credentials: :func:`host_credential`). Hosts get it without
    the secrets (``meshpeer.directory.public_doc``)."""
    doc: dict[str, Any] = {
        "shards": {
            name: {
                "url": e.url,
                "vni_range": list(e.vni_range),
                "vpcs": list(e.vpcs),
                **({"replicas": list(e.replicas)} if e.replicas else {}),
            }
            for name, e in shards.items()
        },
        "grant_keys": {"k1": grant_key_hex},
        "federation_token": federation_token,
    }
    if host_key_hex:
        doc["host_keys"] = {HOST_KEY_ID: host_key_hex}
    return doc


HOST_KEY_ID = "h1"


def host_credential(host: str, host_key_hex: str) -> str:
    """The credential of ``host`` under the directory's host key (see :func:`directory_doc`)."""
    return auth.host_token(host, HOST_KEY_ID, bytes.fromhex(host_key_hex))


@dataclass
class LocalShard:
    """A shard process on a loopback address whose files all live in ``workdir`` (the API
    tests' loopback shards and the scale simulation's): where each file is, and its config."""

    name: str
    port: int
    workdir: Path
    token: str
    tls: bool = False  # HTTPS with {name}.pem/.key, signed by the CA in workdir/pki
    address: str = "127.0.0.1"  # where it listens (any of 127.0.0.0/8)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}:{self.port}"

    @property
    def ca_file(self) -> str | None:
        """The CA every shard of ``workdir`` is verified with (None: plain HTTP)."""
        return str(self.workdir / "pki" / "ca.pem") if self.tls else None

    @property
    def tls_prefix(self) -> Path:
        """The shard's certificate and key are this path + ``.pem`` and ``.key``."""
        return self.workdir / f"{self.name}-tls"

    @property
    def conf(self) -> Path:
        return self.workdir / f"{self.name}.conf"

    @property
    def store(self) -> Path:
        return self.workdir / f"{self.name}.db"

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def config(self, directory_file: Path, heartbeat: float | None = None) -> ShardConfig:
        config = ShardConfig(
            self.name, self.address, self.port, str(self.store), self.token,
            str(directory_file), heartbeat,
        )  # fmt: skip
        if not self.tls:
            return config
        return dataclasses.replace(
            config,
            tls_cert_file=f"{self.tls_prefix}.pem",
            tls_key_file=f"{self.tls_prefix}.key",
            ca_file=self.ca_file,
        )
