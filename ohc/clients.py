"""The stream clients an OHC (or a simulated host) uses: one channel per shard, carrying all
of the host's subscriptions to that shard (docs/protocol.md, "Channels")."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from meshpeer.streaming.channel import Channel, Subscription
from meshpeer.streaming.subscriber import Gate
from ohc.subscriptions import Sub


class Channels:
    """A client factory for ``ohc.agent.Agent``: each subscription rides the channel of its
    shard's URL, opened with the host's own ``credential`` (a peer stream's grant goes with
    its subscription). ``gate``: shared by the channels of a process that opens many at once
    (the scale simulation), to bound its connection attempts in flight. ``ca_file``: verifies
    the shards' certificates (https:// URLs). ``replicas``: a shard's URL to every replica's
    (``meshpeer.directory.Directory.replica_urls``): its channel finds the leader."""

    def __init__(
        self,
        credential: str,
        *,
        ca_file: str | None = None,
        heartbeat_timeout: float = 15.0,
        gate: Gate | None = None,
        replicas: Callable[[str], Sequence[str]] | None = None,
    ) -> None:
        self.credential = credential
        self.replicas = replicas
        self.ca_file = ca_file
        self.heartbeat_timeout = heartbeat_timeout
        self.gate = gate
        self.channels: dict[str, Channel] = {}

    def channel(self, url: str) -> Channel:
        found = self.channels.get(url)
        if found is None:
            found = self.channels[url] = Channel(
                url,
                self.credential,
                heartbeat_timeout=self.heartbeat_timeout,
                gate=self.gate,
                ca_file=self.ca_file,
                on_empty=self._forget,
                replicas=self.replicas(url) if self.replicas else (),
            )
        return found

    def take_replicas(self) -> None:
        """Each open channel moves among its shard's replicas as ``replicas`` lists them now
        (the host's directory changed; a channel opened later reads them anyway)."""
        if self.replicas is not None:
            for url, channel in self.channels.items():
                channel.take_replicas(self.replicas(url))

    def _forget(self, channel: Channel) -> None:
        """A channel with no subscription left (every one ended, or moved to a new URL: a
        new leader) has closed its connections: the next subscription opens a new one."""
        if self.channels.get(channel.url) is channel:
            del self.channels[channel.url]

    def __call__(
        self, sub: Sub, auth: str, on_change: Any, on_close: Any, on_http_error: Any = None
    ) -> Subscription:
        made = self.channel(sub.url).subscription(
            sub.service,
            sub.key,
            policy=sub.policy,
            host=sub.host,
            auth=auth,
            on_change=on_change,
            on_close=on_close,
            on_http_error=on_http_error,
        )
        made.narrow(sub.only)  # before it starts: its first subscribe is narrowed
        return made

    def sockets(self) -> int:
        """Connections open now, over every channel."""
        return sum(c.sockets() for c in self.channels.values())

    def stop(self) -> None:
        for channel in list(self.channels.values()):  # each forgets itself
            channel.stop()
