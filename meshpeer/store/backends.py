"""Open the intent store a shard's settings name (the one I/O step after the pure check)."""

from __future__ import annotations

import time

from meshpeer.store import election
from meshpeer.store.contract import IntentStore
from meshpeer.store.election import Leader
from meshpeer.store.etcd import EtcdStore, Gateway, Leadership, Ownership
from meshpeer.store.settings import StoreSettings
from meshpeer.store.sqlite import Store


def open_store(settings: StoreSettings) -> IntentStore:
    if settings.backend == "etcd":
        return EtcdStore.open(
            settings.endpoints,
            settings.prefix,
            ca_file=settings.ca_file,
            client_cert=settings.client_cert,
        )
    assert settings.path is not None  # store_settings checked it
    return Store.open(settings.path)


def ownership(settings: StoreSettings) -> Ownership | None:
    """Where this shard claims its VPCs: etcd's ``<prefix>vpcs/`` (None with SQLite: the
    directory file pins or hashes them)."""
    if settings.backend != "etcd":
        return None
    return Ownership(Gateway.of(settings), settings.deployment_prefix)


def leadership(settings: StoreSettings, shard: str, me: Leader, ttl: float) -> Leadership | None:
    """This replica's side of its shard's election (None with SQLite: one process, no
    election)."""
    if settings.backend != "etcd":
        return None
    ttl = election.lease_ttl(ttl)  # ValueError naming controller.leader_ttl
    gateway = Gateway.of(settings, timeout=max(1.0, ttl / 2))
    return Leadership(gateway, settings.deployment_prefix, shard, me, ttl, time.monotonic)
