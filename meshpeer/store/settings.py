"""Which intent store a shard opens, checked at the edge (its config) with the field named.

Pure: :func:`store_settings` reads the ``[controller]`` values and says what to open;
:func:`meshpeer.store.backends.open_store` opens it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Backend = Literal["sqlite", "etcd"]
BACKENDS: tuple[Backend, ...] = ("sqlite", "etcd")


@dataclass(frozen=True, slots=True)
class StoreSettings:
    backend: Backend
    path: str | None  # sqlite: the file
    endpoints: tuple[str, ...]  # etcd: the members' client URLs
    prefix: str  # etcd: this shard's store is under it
    ca_file: str | None
    deployment_prefix: str = ""  # etcd: every shard's keys (directory, claims) are under it
    client_cert: tuple[str, str] | None = None  # etcd: (certificate, key) presented to etcd


def shard_prefix(deployment_prefix: str, shard: str) -> str:
    """Where shard ``shard`` keeps its intent in etcd."""
    return f"{deployment_prefix}shards/{shard}/store/"


def store_settings(values: Mapping[str, object], shard: str) -> StoreSettings:
    """The store ``[controller]`` ``values`` name; ValueError naming the field if they do not
    make one."""
    backend = values.get("store") or "sqlite"
    if backend not in BACKENDS:
        raise ValueError(f"controller.store: sqlite or etcd, not {backend!r}")
    path = values.get("store_path") or None
    ca = values.get("etcd_ca_file") or None
    prefix = str(values.get("etcd_prefix") or "/meshpeer/")
    if backend == "sqlite":
        if not isinstance(path, str):
            raise ValueError("controller.store_path: required with store = sqlite")
        return StoreSettings("sqlite", path, (), "", None)
    raw = values.get("etcd_endpoints")
    endpoints = tuple(u.strip() for u in str(raw or "").split(",") if u.strip())
    if not endpoints:
        raise ValueError("controller.etcd_endpoints: required with store = etcd")
    for url in endpoints:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"controller.etcd_endpoints: {url!r} is not an http(s):// URL")
    if not (prefix.startswith("/") and prefix.endswith("/")):
        raise ValueError(f"controller.etcd_prefix: starts and ends with '/', not {prefix!r}")
    ca_file = ca if isinstance(ca, str) else None
    cert, key = values.get("etcd_cert_file") or None, values.get("etcd_key_file") or None
    if (cert is None) != (key is None):
        raise ValueError("controller.etcd_cert_file: goes with controller.etcd_key_file")
    client_cert = (str(cert), str(key)) if cert is not None else None
    if client_cert and any(not url.startswith("https://") for url in endpoints):
        raise ValueError("controller.etcd_cert_file: every etcd_endpoints URL must be https://")
    shard_at = shard_prefix(prefix, shard)
    return StoreSettings("etcd", None, endpoints, shard_at, ca_file, prefix, client_cert)
