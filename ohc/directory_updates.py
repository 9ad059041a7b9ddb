"""The shard directory an OHC runs with: its file's to start, then what its own shard publishes.

The OHC's ``directory_file`` is the bootstrap: it needs at least the host's own shard (its
``url``, and ``replicas`` if it has several processes), listed first. The OHC follows that
shard's ``directory`` stream (docs/protocol.md, "Directory": every shard, its URL, replicas,
VNI range and the VPCs it owns by name, pinned or claimed in etcd; never a secret) and runs with
each directory it publishes: a shard added there is followed (its endpoint stream) and
registered with, without a restart; a shard removed is no longer followed; a VPC pinned or
claimed elsewhere moves (its streams are followed at its owner). A published directory that does
not check out (``meshpeer.protocol.directory.PublicDirectory.parse``) is refused whole and
logged, and the directory running stays; so does the running one while the shard cannot be
reached (fail static), or answers no (an older shard that publishes no directory).

:func:`take_published` decides (pure); :class:`HostDirectory` holds the current directory
behind the callables the agent, its channels and the reporter keep; :class:`DirectoryFollower`
is the subscription (a shim).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from meshpeer.directory import Directory, Shard
from meshpeer.protocol import ServiceName
from meshpeer.protocol.directory import DIRECTORY_KEY, BadDirectory, PublicDirectory
from meshpeer.protocol.stream import ReplicaState
from ohc.agent import Client, ClientFactory
from ohc.subscriptions import Sub

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Update:
    """A published directory taken: the new one, and which shards it added, removed or
    changed (URL, replicas, VNI range or owned VPCs) against the one running before."""

    directory: Directory
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def take_published(running: Directory, objects: Mapping[str, Any], home: str) -> Update:
    """``running`` with the shards of a ``directory`` stream's ``objects`` published by shard
    ``home`` (which they must list). Raises BadDirectory naming the field: the caller keeps
    ``running``."""
    shards = dict(PublicDirectory.parse(objects, listing=home).shards)
    before = running.shards
    return Update(
        dataclasses.replace(running, shards=shards),
        tuple(sorted(set(shards) - set(before))),
        tuple(sorted(set(before) - set(shards))),
        tuple(sorted(n for n in shards if n in before and shards[n] != before[n])),
    )


def home_shard(directory: Directory) -> str:
    """The shard a host learns the directory from: the first its file lists."""
    return next(iter(directory.shards))


class HostDirectory:
    """The directory an OHC runs with (``current``, replaced by each update taken) behind
    methods that always read the current one: the agent, the channels and the reporter keep
    these, so they follow an update without being rebuilt."""

    def __init__(self, bootstrap: Directory) -> None:
        self.current = bootstrap
        self.home = home_shard(bootstrap)

    @property
    def shards(self) -> Mapping[str, Shard]:
        return self.current.shards

    def urls(self) -> list[str]:
        """Every shard's URL (the agent follows the host's endpoint stream at each)."""
        return sorted(s.url for s in self.current.shards.values())

    def url_of(self, vpc: str) -> str:
        return self.current.url_of(vpc)

    def replica_urls(self, url: str) -> tuple[str, ...]:
        return self.current.replica_urls(url)

    def canonical_url(self, url: str) -> str:
        return self.current.canonical_url(url)

    def take(self, objects: Mapping[str, Any]) -> Update:
        """Run with the published ``objects`` (BadDirectory: the current one stays)."""
        update = take_published(self.current, objects, self.home)
        self.current = update.directory
        return update


class DirectoryFollower:
    """Follows the ``directory`` stream at the host's own shard (on its channel, as the
    agent's streams) and hands each change that checks out to ``on_update``; it moves to the
    shard's new URL when the directory changes it."""

    def __init__(
        self,
        host: str,
        known: HostDirectory,
        make_client: ClientFactory,
        credential: str,
        on_update: Callable[[Update], None],
    ) -> None:
        self.host = host
        self.known = known
        self.make_client = make_client
        self.credential = credential
        self.on_update = on_update
        self.client: Client | None = None
        self.url: str | None = None
        self.refused: str | None = None  # why the last published directory was refused
        self.last_status: int | None = None  # the last refusal's, logged once

    def start(self) -> None:
        self.url = self.known.shards[self.known.home].url
        sub = Sub(self.url, ServiceName.DIRECTORY, DIRECTORY_KEY)
        self.client = self.make_client(
            sub, self.credential, self._changed, self._closed, self._http_error
        )
        self.client.start()

    def stop(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.stop()

    def _changed(self, replica: ReplicaState, msg: Any) -> None:
        home = self.known.home
        try:
            update = self.known.take(replica.objects)
        except BadDirectory as exc:
            self.refused = str(exc)
            log.error(
                "ohc %s: the directory shard %s publishes is refused, the running one stays: %s",
                self.host, home, exc,
            )  # fmt: skip
            return
        self.refused = None
        self.last_status = None
        if not update:
            return
        log.info(
            "ohc %s: directory from shard %s taken: added %s, removed %s, changed %s",
            self.host, home, list(update.added), list(update.removed), list(update.changed),
        )  # fmt: skip
        self.on_update(update)
        if self.known.shards[home].url != self.url:  # its URL moved: follow it there
            self.stop()
            self.start()

    def _closed(self, reason: str) -> None:
        log.warning("ohc %s: the directory stream was closed (%s)", self.host, reason)

    def _http_error(self, status: int) -> None:
        if status == self.last_status:
            return  # it retries: said once
        self.last_status = status
        if status == 404:
            log.warning("ohc %s: shard %s publishes no directory (an older shard?): the "
                        "file's stays", self.host, self.known.home)  # fmt: skip
        else:
            log.warning("ohc %s: the directory stream was refused (HTTP %s)", self.host, status)
