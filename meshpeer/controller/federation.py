"""Federation between shards: follow the views of remote peer VPCs, and ask for one now.

A shard needs the federation view of every remote VPC that one of its VPCs peers with. It
keeps one subscription per such VPC (resumable, fail static: the last view stays while the
peer shard is unreachable), all of them to one shard on one channel (one connection and one
keepalive per peer shard, docs/protocol.md "Channels"), and starts or stops subscriptions as
local peerings come and go.
"""

from __future__ import annotations

import logging
from typing import Any

from meshpeer.client import ApiFailure, Client
from meshpeer.controller.auth import shard_token
from meshpeer.controller.shard import ShardState
from meshpeer.protocol import ServiceName
from meshpeer.protocol.stream import ReplicaState
from meshpeer.streaming.channel import Channel, Subscription

log = logging.getLogger(__name__)


class Federation:
    def __init__(self, shard: ShardState, timeout: float = 2.0, ca_file: str | None = None) -> None:
        """``ca_file`` verifies the other shards' certificates (https:// directory URLs)."""
        self.shard = shard
        self.timeout = timeout
        self.ca_file = ca_file
        self.clients: dict[str, Subscription] = {}
        self.urls: dict[str, str] = {}  # where each subscription follows its VPC
        # This shard's own federation credential (meshpeer.controller.auth).
        self.credential = shard_token(shard.name, shard.directory.federation_token)
        self.channels: dict[str, Channel] = {}  # by peer shard URL
        shard.listeners.append(self.sync)

    def sync(self) -> None:
        """Start a stream for each newly needed remote VPC; stop those no longer needed."""
        wanted = self.shard.remote_peer_vpcs()
        moved = {
            v for v in set(self.clients) & wanted if self.urls[v] != self.shard.directory.url_of(v)
        }
        for vpc in sorted(wanted - set(self.clients) | moved):
            url = self.shard.directory.url_of(vpc)
            # a VPC whose shard has a new leader (replicas, docs/store.md): its stream goes on
            # there, resuming with ``since`` from what it has
            old = self.clients.pop(vpc, None)
            if old is not None:
                old.stop()
            channel = self.channels.get(url)
            if channel is None:
                channel = self.channels[url] = Channel(
                    url,
                    self.credential,
                    heartbeat_timeout=15.0,
                    ca_file=self.ca_file,
                    on_empty=self._forget,
                )
            client = channel.subscription(
                ServiceName.FEDERATION,
                vpc,
                on_change=self._on_change(vpc),
                replica=None if old is None else old.replica,
            )
            self.clients[vpc] = client
            self.urls[vpc] = url
            client.start()
            log.info("federation: following VPC %s at %s", vpc, url)
        for vpc in sorted(set(self.clients) - wanted):
            self.clients.pop(vpc).stop()
            self.urls.pop(vpc, None)
            self.shard.forget_remote_view(vpc)
            log.info("federation: stopped following VPC %s", vpc)

    def _forget(self, channel: Channel) -> None:
        """No VPC of that shard followed any more (peerings gone, or its URL changed): the
        channel has closed its connections; forget it."""
        if self.channels.get(channel.url) is channel:
            del self.channels[channel.url]

    def _on_change(self, vpc: str) -> Any:
        def apply(replica: ReplicaState, _msg: object) -> None:
            self.shard.set_remote_view(vpc, dict(replica.objects))

        return apply

    def fetch_view(self, vpc: str) -> dict[str, Any] | None:
        """Ask the owning shard for a VPC's view now (peering-time overlap checks)."""
        url = self.shard.directory.url_of(vpc)
        client = Client(url, self.credential, timeout=self.timeout, ca_file=self.ca_file)
        try:
            view: dict[str, Any] = client.get(f"/v1/federation/vpcs/{vpc}")["view"]
            return view
        except (OSError, ApiFailure, KeyError, ValueError) as exc:
            log.warning("federation: could not fetch VPC %s from %s: %s", vpc, url, exc)
            return None

    def stop(self) -> None:
        for client in self.clients.values():
            client.stop()
        self.clients.clear()
        for channel in list(self.channels.values()):  # each forgets itself
            channel.stop()
        self.channels.clear()
