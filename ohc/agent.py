"""The OHC's subscribers (FIG. 4): follow exactly the streams ``subscriptions.wanted`` names.

Each stream is a resumable StreamClient; its latest objects are kept here. Whenever one
changes, the wanted set is recomputed (new peers appear in a peering stream, the last local
endpoint of a VPC goes away, a grant is re-minted) and clients are started, stopped or given
a fresh credential. ``on_update`` then tells the app to recompile its flows.

How a stream ends decides what happens to its objects (``ending``, pure): a shard that cannot
be reached (connect error, timeout, 5xx, a silent peer) leaves them in place: fail static. A
shard that answers no (a refusal: 401/403/404/410 or another 4xx before the stream starts, or a
``Close`` other than ``shutdown``/``grant-expired``) has revoked them: they are dropped at
once, and the refused stream no longer counts towards ``complete``.

Callbacks come from the clients' green threads, and stopping a client yields to the hub, so
a callback can run while ``resync`` is half done. ``resync`` therefore never nests: a call
made while one runs only asks it to go round once more, and ``_drop`` may be called twice.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Container, Iterable, Mapping
from enum import Enum
from typing import Any, Protocol

from meshpeer.protocol import ServiceName
from meshpeer.protocol.messages import (
    CloseReason,
    Delta,
    ProtocolError,
    stream_name,
)
from meshpeer.protocol.stream import ReplicaState
from ohc.engine import DELETED, StreamChange
from ohc.subscriptions import Sub, parsed, peer_subs, peering_of, same_url, wanted

log = logging.getLogger(__name__)


class Client(Protocol):
    bytes_received: int
    objects_received: int
    used_auth: str | None  # the credential of its latest request

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def set_auth(self, auth: str | None) -> None: ...
    def set_only(self, only: frozenset[str] | None) -> None: ...


ClientFactory = Callable[
    [
        Sub,
        str,
        Callable[[ReplicaState, Any], None],
        Callable[[str], None],
        Callable[[int], None],
    ],
    Client,
]


class Ending(Enum):
    """What the end of a stream (or a failed attempt to open it) means for its objects."""

    REFUSED = "refused"  # the shard answered no: drop the objects now
    UNREACHABLE = "unreachable"  # no answer: keep the objects (fail static) while retrying
    RECONNECT = "reconnect"  # the publisher asked for a reconnect: keep the objects


# Close reasons after which a client reconnects by itself (see meshpeer.streaming.subscriber).
SELF_RETRYING = frozenset({CloseReason.SHUTDOWN.value, CloseReason.GRANT_EXPIRED.value})
# 4xx answers that are not about the request's right to the stream: try again later.
TRANSIENT_4XX = frozenset({408, 429})


def ending(*, status: int | None = None, close: str | None = None) -> Ending:
    """Classify an HTTP status answered to a subscription, or a Close reason.

    A refusal is any 4xx but 408 and 429: 401 (grant missing, expired, badly signed), 403
    (grant for something else, or no ACTIVE peering exporting that policy to us), 404 (no such
    stream: the VPC or the policy's service set is gone), 400 and the rest (a request this
    shard will never serve). Every Close except ``shutdown`` and ``grant-expired`` is one too
    (``peering-gone``: the peering ended). 5xx, 408, 429 and anything else are unreachable.
    """
    if close is not None:
        return Ending.RECONNECT if close in SELF_RETRYING else Ending.REFUSED
    if status is not None and 400 <= status < 500 and status not in TRANSIENT_4XX:
        return Ending.REFUSED
    return Ending.UNREACHABLE


def applied_versions(
    versions: Mapping[Sub, int],
    objects: Mapping[Sub, Mapping[str, Any]],
    followed: Container[Sub] | None = None,
    canonical: Callable[[str], str] = same_url,
) -> dict[Sub, int]:
    """The stream versions a switch synced from ``objects`` can be said to hold.

    A peering stream's version is held back until every peer it lists has delivered its
    services (``versions`` has them): a shard that reads "applied peering version n" as
    "the peering is programmed here" must not hear it while the peer's destinations are
    still on their way (or refused, while the peer's shard has not seen the peering yet).
    ``followed``: the streams the host follows (None: all); a peer service it does not follow
    (a side through the gateways needs no peer destinations, a gateway only them) is not
    waited for. ``canonical``: as in :func:`ohc.subscriptions.peer_subs`.
    """
    out = dict(versions)
    for sub in versions:
        if sub.service != ServiceName.PEERING:
            continue
        for held in (objects.get(sub) or {}).values():
            try:
                peer = peering_of(held)
            except ProtocolError:
                continue  # malformed: subscriptions.wanted skips it too
            subs = peer_subs(peer, sub.host, canonical).values()
            if any(x not in versions for x in subs if followed is None or x in followed):
                del out[sub]
                break
    return out


class Agent:
    def __init__(
        self,
        host: str,
        shard_urls: list[str],
        vpc_url: Callable[[str], str | None],
        api_token: str,
        make_client: ClientFactory,
        on_update: Callable[[], None],
        canonical: Callable[[str], str] = same_url,
    ) -> None:
        """``canonical``: a shard replica's URL to the directory's URL of its shard (a peer
        shard's leader moves; its streams stay the same ones)."""
        self.host = host
        self.canonical = canonical
        self.shard_urls = shard_urls
        self.vpc_url = vpc_url
        self.api_token = api_token
        self.make_client = make_client
        self.on_update = on_update
        self.clients: dict[Sub, Client] = {}
        self.auth: dict[Sub, str] = {}
        self.objects: dict[Sub, Mapping[str, Any]] = {}  # each replica's objects (read-only)
        # What changed since ``take_changes`` last ran: object keys, or None for the whole
        # stream (a snapshot, or the stream gone). The flow engine works from these.
        self.changed: dict[Sub, set[str] | None] = {}
        self.versions: dict[Sub, int] = {}  # stream version of the objects held
        self.refused: dict[Sub, str] = {}  # followed streams whose shard said no, and how
        self.closed_bytes = 0  # bytes received by clients since stopped (for the totals)
        self.closed_objects = 0
        # Which client a callback belongs to: a stream restarted after a Close gets a new
        # serial, so a late callback of the old client changes nothing.
        self._serial: dict[Sub, int] = {}
        self._serials = itertools.count(1)
        self._resyncing = False
        self._again = False
        # Streams the server closed for good: the credential it refused, and why.
        self._closed_with: dict[Sub, tuple[str | None, str]] = {}
        # On-demand sides (local VPC, peer VPC): the addresses sent to directly, whose peer
        # destination objects alone are followed, and the grant for them (the app sets it,
        # then resyncs; ohc/offload.py ``granted``).
        self.offloaded: Mapping[tuple[str, str], tuple[Iterable[object], str]] = {}
        self.only: dict[Sub, frozenset[str] | None] = {}  # each client's destination filter

    def start(self) -> None:
        self.resync()

    def stop(self) -> None:
        for sub in list(self.clients):
            self._drop(sub)

    def streams(self, service: ServiceName) -> dict[Sub, Mapping[str, Any]]:
        return {s: o for s, o in self.objects.items() if s.service == service}

    def resync(self) -> None:
        """Start, stop or re-credential clients so that exactly the wanted streams run.

        Not re-entrant: stopping a client yields, and a callback that then asks for a resync
        only marks it to run once more when the current one is done."""
        if self._resyncing:
            self._again = True
            return
        self._resyncing = True
        try:
            self._again = True
            while self._again:
                self._again = False
                self._resync_once()
        finally:
            self._resyncing = False

    def _resync_once(self) -> None:
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
            self.canonical,
            self.offloaded,
        )
        # Objects of a stream no client follows (its client ended) are never kept.
        for sub in sorted(set(self.objects) - set(want), key=Sub.sort_key):
            self._forget(sub)
        for sub in set(self._closed_with) - set(want):
            del self._closed_with[sub]
        for sub in sorted(set(self.clients) - set(want), key=Sub.sort_key):
            self._drop(sub)
        for sub, auth in sorted(want.items(), key=lambda kv: kv[0].sort_key()):
            if sub not in self.clients:
                self._follow(sub, auth)
                continue
            if self.auth.get(sub) != auth:
                self.auth[sub] = auth
                self.clients[sub].set_auth(auth)
            if self.only.get(sub) != sub.only:  # another busy pair: one snapshot of them
                self.only[sub] = sub.only
                log.info("ohc %s: now following %s", self.host, _describe(sub))
                self.clients[sub].set_only(sub.only)

    def _follow(self, sub: Sub, auth: str) -> None:
        """Start a client. After a Close for good, a restart with the refused credential
        (our own shard has not told us yet that the peering ended) refuses the objects now;
        with another credential (another local VPC's peering shares the stream) they stay
        until its snapshot."""
        refused_auth, why = self._closed_with.pop(sub, (None, ""))
        if why and refused_auth == auth:
            self._refuse(sub, why)
        serial = next(self._serials)
        self._serial[sub] = serial
        self.auth[sub] = auth
        self.only[sub] = sub.only
        client = self.make_client(
            sub,
            auth,
            self._changed(sub, serial),
            self._closed(sub, serial),
            self._http_error(sub, serial),
        )
        self.clients[sub] = client
        log.info("ohc %s: following %s", self.host, _describe(sub))
        client.start()

    def _current(self, sub: Sub, serial: int) -> bool:
        return self._serial.get(sub) == serial and sub in self.clients

    def _drop(self, sub: Sub) -> None:
        """Stop following ``sub`` and forget its objects. Idempotent."""
        client = self.clients.pop(sub, None)
        self._serial.pop(sub, None)
        self._forget(sub)
        self.auth.pop(sub, None)
        self.only.pop(sub, None)
        if client is None:
            return
        self.closed_bytes += client.bytes_received
        self.closed_objects += client.objects_received
        log.info("ohc %s: stopped following %s", self.host, _describe(sub))
        client.stop()  # may yield to other green threads: the bookkeeping is done

    def _forget(self, sub: Sub) -> None:
        if self.objects.pop(sub, None) is not None:
            self.changed[sub] = None
        self.versions.pop(sub, None)
        self.refused.pop(sub, None)

    def _refuse(self, sub: Sub, why: str) -> None:
        """The shard revoked this stream: its objects go now, not when it is unfollowed."""
        had = sub in self.objects
        if self.objects.pop(sub, None) is not None:
            self.changed[sub] = None
        self.versions.pop(sub, None)
        self.refused[sub] = why
        if had:
            log.warning(
                "ohc %s: %s refused (%s): its state dropped", self.host, _describe(sub), why
            )
        if sub.service in (ServiceName.ENDPOINT, ServiceName.PEERING):
            self.resync()  # what it listed is no longer wanted (inside a resync: once more)

    def _closed(self, sub: Sub, serial: int) -> Callable[[str], None]:
        """A stream the server closed. ``shutdown``/``grant-expired``: the client reconnects
        by itself. Any other reason (``peering-gone``) ends the client; the stream's objects
        go with it unless it is still wanted (see ``_follow``)."""

        def closed(reason: str) -> None:
            if not self._current(sub, serial) or ending(close=reason) is Ending.RECONNECT:
                return
            client = self.clients.pop(sub)
            self._serial.pop(sub, None)
            self.auth.pop(sub, None)
            self.closed_bytes += client.bytes_received
            self.closed_objects += client.objects_received
            self._closed_with[sub] = (client.used_auth, f"closed: {reason}")
            self.resync()  # restarts the stream if still wanted (now, or after a running one)
            self.on_update()

        return closed

    def _http_error(self, sub: Sub, serial: int) -> Callable[[int], None]:
        """The shard answered a (re)subscription with ``status``; the client keeps retrying."""

        def failed(status: int) -> None:
            if not self._current(sub, serial) or ending(status=status) is not Ending.REFUSED:
                return
            if self.clients[sub].used_auth != self.auth.get(sub):
                return  # the old credential was refused; the new one is tried next
            self._refuse(sub, f"HTTP {status}")
            self.on_update()

        return failed

    def _changed(self, sub: Sub, serial: int) -> Callable[[ReplicaState, Any], None]:
        def apply(replica: ReplicaState, msg: Any) -> None:
            if not self._current(sub, serial):
                return  # a late message from a stream just dropped
            self.refused.pop(sub, None)
            if sub.service == ServiceName.PEERING:  # parsed once here, for every reader
                touched = [*msg.upserts, *msg.deletes] if isinstance(msg, Delta) else None
                self.objects[sub] = parsed(replica.objects, self.objects.get(sub), touched)
            else:
                self.objects[sub] = replica.objects
            keys = self.changed.get(sub, set())
            if isinstance(msg, Delta) and keys is not None and sub in self.versions:
                keys.update(msg.upserts)
                keys.update(msg.deletes)
                self.changed[sub] = keys
            else:
                self.changed[sub] = None
            if replica.version is not None:
                self.versions[sub] = replica.version
            if sub.service in (ServiceName.ENDPOINT, ServiceName.PEERING):
                self.resync()
            self.on_update()

        return apply

    def take_changes(self, everything: bool = False) -> dict[Sub, StreamChange]:
        """What changed since the last call, for ``FlowEngine.update``: the changed objects of
        each stream (copied: the native thread that compiles them must not see the replicas
        change meanwhile), a whole stream after a snapshot, None for a stream gone.
        ``everything``: every stream whole (an engine starting afresh)."""
        subs = {s: None for s in self.objects} if everything else self.changed
        out: dict[Sub, StreamChange] = {}
        for sub, keys in subs.items():
            objs = self.objects.get(sub)
            if objs is None:
                out[sub] = StreamChange(None)
            elif keys is None:
                out[sub] = StreamChange(dict(objs))
            else:
                out[sub] = StreamChange({k: objs.get(k, DELETED) for k in keys}, partial=True)
        self.changed = {}
        return out

    def applied_reports(
        self, versions: Mapping[Sub, int], objects: Mapping[Sub, Mapping[str, Any]]
    ) -> dict[str, list[dict[str, Any]]]:
        """The body of each shard's applied-version report, by shard URL, for a sync of
        ``objects`` at ``versions`` (peering streams held back as ``applied_versions`` says).

        Every report goes with the host's own credential. A peer stream (one with a policy)
        carries the grant it was subscribed with, at any shard (the shard checks that the
        grant names this host); one without a grant is left out, and so is an own-shard
        stream at a shard not in ``shard_urls``."""
        by_url: dict[str, list[dict[str, Any]]] = {}
        held = applied_versions(versions, objects, self.clients, self.canonical)
        for sub, version in sorted(held.items(), key=lambda kv: kv[0].sort_key()):
            entry: dict[str, Any] = {
                "stream": stream_name(sub.service, sub.key, sub.policy, sub.host),
                "version": version,
            }
            if sub.policy is not None:
                grant = self.auth.get(sub)
                if grant is None:
                    continue
                entry["grant"] = grant
            elif sub.url not in self.shard_urls:
                continue
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
        """Has every followed stream delivered its first snapshot or been refused? Until then
        the view is partial, and flows for the missing streams must not be removed (fail
        static). A refused stream is not missing: its shard answered, and the answer is no."""
        return all(sub in self.objects or sub in self.refused for sub in self.clients)

    def refusals(self) -> dict[str, str]:
        """For status: followed streams whose shard refused them, and how."""
        return {
            _describe(s): why
            for s, why in sorted(self.refused.items(), key=lambda kv: kv[0].sort_key())
        }

    def stream_states(self) -> list[dict[str, Any]]:
        """For the host status report: every followed stream, where, and how it stands:
        ``delivered`` (its objects are held, at ``version``), ``waiting`` (no snapshot yet: its
        flows are kept as they were, fail static) or ``refused`` (its shard said no: ``detail``)."""
        out = []
        for sub in sorted(self.clients, key=Sub.sort_key):
            if sub in self.refused:
                state, detail = "refused", self.refused[sub]
            else:
                state, detail = ("delivered" if sub in self.objects else "waiting"), None
            out.append(
                {
                    "stream": stream_name(sub.service, sub.key, sub.policy, sub.host),
                    "shard": sub.url,
                    "state": state,
                    "version": self.versions.get(sub),
                    "detail": detail,
                }
            )
        return out

    def vpcs_known(self) -> Mapping[str, set[str]]:
        """For tests and status: VPC -> services this host holds objects of."""
        out: dict[str, set[str]] = {}
        for s in self.objects:
            if s.service != ServiceName.ENDPOINT:
                out.setdefault(s.key, set()).add(str(s.service))
        return out


def _describe(sub: Sub) -> str:
    pol = f"@{sub.policy}" if sub.policy else ""
    only = f" for {', '.join(sorted(sub.only))} only" if sub.only is not None else ""
    return f"{sub.service}/{sub.key}{pol}{only} at {sub.url}"
