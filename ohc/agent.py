"""The OHC's subscribers (FIG. 4): follow exactly the streams ``subscriptions.wanted`` names.

Each stream is a resumable StreamClient; its latest objects are kept here. Whenever one
changes, the wanted set is recomputed (new peers appear in a peering stream, the last local
endpoint of a VPC goes away, a grant is re-minted) and clients are started, stopped or given
a fresh credential. ``on_update`` then tells the app to recompile its flows. A stream whose
shard is unreachable keeps its last objects: fail static.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from meshpeer.protocol import ServiceName
from meshpeer.protocol.messages import CloseReason, stream_name
from meshpeer.protocol.stream import ReplicaState
from ohc.subscriptions import Sub, wanted

log = logging.getLogger(__name__)


class Client(Protocol):
    bytes_received: int
    objects_received: int

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def set_auth(self, auth: str | None) -> None: ...


ClientFactory = Callable[
    [Sub, str, Callable[[ReplicaState, Any], None], Callable[[str], None]], Client
]
# Close reasons after which a client reconnects by itself (see meshpeer.streaming.subscriber).
SELF_RETRYING = frozenset({CloseReason.SHUTDOWN.value, CloseReason.GRANT_EXPIRED.value})


class Agent:
    def __init__(
        self,
        host: str,
        shard_urls: list[str],
        vpc_url: Callable[[str], str | None],
        api_token: str,
        make_client: ClientFactory,
        on_update: Callable[[], None],
    ) -> None:
        self.host = host
        self.shard_urls = shard_urls
        self.vpc_url = vpc_url
        self.api_token = api_token
        self.make_client = make_client
        self.on_update = on_update
        self.clients: dict[Sub, Client] = {}
        self.auth: dict[Sub, str] = {}
        self.objects: dict[Sub, dict[str, Any]] = {}
        self.versions: dict[Sub, int] = {}  # stream version of the objects held
        self.closed_bytes = 0  # bytes received by clients since stopped (for the totals)
        self.closed_objects = 0

    def start(self) -> None:
        self.resync()

    def stop(self) -> None:
        for sub in list(self.clients):
            self._drop(sub)

    def streams(self, service: ServiceName) -> dict[Sub, dict[str, Any]]:
        return {s: o for s, o in self.objects.items() if s.service == service}

    def resync(self) -> None:
        """Start, stop or re-credential clients so that exactly the wanted streams run."""
        peering = {s.key: o for s, o in self.streams(ServiceName.PEERING).items()}
        urls: dict[str, str] = {}
        for objs in self.streams(ServiceName.ENDPOINT).values():
            for o in objs.values():
                url = self.vpc_url(str(o.get("vpc")))
                if url is not None:
                    urls[str(o["vpc"])] = url
        want = wanted(
            self.host,
            self.shard_urls,
            urls,
            self.streams(ServiceName.ENDPOINT).values(),
            peering,
            self.api_token,
        )
        for sub in sorted(set(self.clients) - set(want), key=Sub.sort_key):
            self._drop(sub)
        for sub, auth in sorted(want.items(), key=lambda kv: kv[0].sort_key()):
            if sub not in self.clients:
                self.auth[sub] = auth
                client = self.make_client(sub, auth, self._changed(sub), self._closed(sub))
                self.clients[sub] = client
                client.start()
                log.info("ohc %s: following %s", self.host, _describe(sub))
            elif self.auth.get(sub) != auth:
                self.auth[sub] = auth
                self.clients[sub].set_auth(auth)

    def _drop(self, sub: Sub) -> None:
        client = self.clients.pop(sub)
        client.stop()
        self.closed_bytes += client.bytes_received
        self.closed_objects += client.objects_received
        self.auth.pop(sub, None)
        self.objects.pop(sub, None)
        self.versions.pop(sub, None)
        log.info("ohc %s: stopped following %s", self.host, _describe(sub))

    def _closed(self, sub: Sub) -> Callable[[str], None]:
        """A stream the server closed for good (e.g. ``peering-gone`` for the peering whose
        grant opened it) ends its client. If the stream is still wanted, say because another
        local VPC follows the same shared peer stream, a new client starts with the current
        grant; the old objects stay until its snapshot arrives (fail static)."""

        def closed(reason: str) -> None:
            client = self.clients.get(sub)
            if client is None or reason in SELF_RETRYING:
                return
            del self.clients[sub]
            self.closed_bytes += client.bytes_received
            self.closed_objects += client.objects_received
            self.auth.pop(sub, None)
            self.resync()
            if sub not in self.clients:
                self.objects.pop(sub, None)
                self.versions.pop(sub, None)
            self.on_update()

        return closed

    def _changed(self, sub: Sub) -> Callable[[ReplicaState, Any], None]:
        def apply(replica: ReplicaState, _msg: Any) -> None:
            if sub not in self.clients:
                return  # a late message from a stream just dropped
            self.objects[sub] = dict(replica.objects)
            if replica.version is not None:
                self.versions[sub] = replica.version
            if sub.service in (ServiceName.ENDPOINT, ServiceName.PEERING):
                self.resync()
            self.on_update()

        return apply

    def applied_reports(self, versions: Mapping[Sub, int]) -> dict[str, list[dict[str, Any]]]:
        """The body of each shard's applied-version report, by shard URL.

        Own shards (``shard_urls``) take the API token. Any other shard is a peer's: each of
        its streams carries the grant it was subscribed with (its only credential there);
        streams without one are left out."""
        by_url: dict[str, list[dict[str, Any]]] = {}
        for sub, version in sorted(versions.items(), key=lambda kv: kv[0].sort_key()):
            entry: dict[str, Any] = {
                "stream": stream_name(sub.service, sub.key, sub.policy, sub.host),
                "version": version,
            }
            if sub.url not in self.shard_urls:
                grant = self.auth.get(sub)
                if sub.policy is None or grant is None:
                    continue
                entry["grant"] = grant
            by_url.setdefault(sub.url, []).append(entry)
        return by_url

    def received(self) -> dict[str, Any]:
        """What this host was sent: bytes and objects, in total and per stream."""
        per = {
            _describe(s): {"bytes": c.bytes_received, "objects": c.objects_received}
            for s, c in sorted(self.clients.items(), key=lambda kv: kv[0].sort_key())
        }
        return {
            "bytes": self.closed_bytes + sum(c.bytes_received for c in self.clients.values()),
            "objects": self.closed_objects + sum(c.objects_received for c in self.clients.values()),
            "streams": per,
        }

    def complete(self) -> bool:
        """Has every followed stream delivered its first snapshot? Until then the view is
        partial, and flows for the missing streams must not be removed (fail static)."""
        return all(sub in self.objects for sub in self.clients)

    def vpcs_known(self) -> Mapping[str, set[str]]:
        """For tests and status: VPC -> services this host holds objects of."""
        out: dict[str, set[str]] = {}
        for s in self.objects:
            if s.service != ServiceName.ENDPOINT:
                out.setdefault(s.key, set()).add(str(s.service))
        return out


def _describe(sub: Sub) -> str:
    pol = f"@{sub.policy}" if sub.policy else ""
    return f"{sub.service}/{sub.key}{pol} at {sub.url}"
