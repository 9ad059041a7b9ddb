"""Subscriber side of a channel: every subscription to one shard on one connection.

A :class:`Channel` keeps one long-lived ``GET /v1/channel`` (NDJSON frames, each naming its
subscription, and one keepalive per connection) and sends subscribe and unsubscribe requests
to ``POST /v1/channels/{id}`` over a second, kept-alive connection: at most two connections
per (subscriber, shard), whatever the number of subscriptions (docs/protocol.md, "Channels").

A :class:`Subscription` is one stream carried by a channel. It keeps its own
:class:`~meshpeer.protocol.stream.ReplicaState` and resumes with its own ``since``; the shard
checks each subscription's right on its own, so a refused or closed subscription ends alone
(its callbacks say why) while the others on the channel go on. It has the interface of
:class:`~meshpeer.streaming.subscriber.StreamClient` (``start``, ``stop``, ``set_auth``,
``wait``, the counters and callbacks), so the OHC's agent and the shard's federation use
either.

Everything runs on the eventlet hub: a reader green thread per channel (the stream) and a
control green thread (the requests). Callbacks run in the reader's thread and may start or
stop subscriptions.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import eventlet
import eventlet.event
from eventlet.green import socket as green_socket

from meshpeer.protocol.codec import DEFAULT_MAX_LINE, FrameDecoder
from meshpeer.protocol.messages import (
    CHANNEL_HEADER,
    CHANNEL_ID_RE,
    MAX_CHANNEL_ENTRIES,
    Close,
    Delta,
    ErrorMsg,
    Frame,
    Heartbeat,
    Keepalive,
    ProtocolError,
    ServiceName,
    Snapshot,
)
from meshpeer.streaming.subscriber import (
    MAX_ERROR_BODY,
    SLOW_STATUSES,
    Clock,
    Follower,
    Gate,
    Gated,
    Publisher,
    TransportError,
    body_for,
    check_ndjson,
    delay,
    error_detail,
    read_body,
    read_head,
    receive,
)

log = logging.getLogger(__name__)

MAX_CONTROL_REPLY = 4 * 1024 * 1024
# A TCP connect (and TLS handshake) that takes longer: the replica's machine is taken for gone
# and the next replica is tried (docs/decisions.md). Linux sends a SYN again after 1 s, so two
# SYNs fit in; a shard of one process is asked again after the backoff.
CONNECT_TIMEOUT = 3.0

Batch = tuple[list[tuple["Subscription", dict[str, Any]]], list[int]]
"""A control request's subscribes (each subscription with its entry) and unsubscribes."""


class Subscription(Follower):
    """One stream on a :class:`Channel`; made by :meth:`Channel.subscription`."""

    def __init__(
        self,
        channel: Channel,
        service: ServiceName,
        key: str,
        *,
        auth: str | None = None,
        **options: Any,
    ) -> None:
        """``options``: :class:`Follower`'s (policy, host, callbacks, retry_close_reasons,
        replica); ``auth`` a peer stream's grant."""
        super().__init__(service, key, **options)
        self.channel = channel
        self.timer: Any = None  # a pending retry
        self.set_auth(auth)
        self.sub_id: int | None = None  # its id on the channel's current connection
        self.active = False  # started, not stopped or ended
        self.failures = 0

    # --- the StreamClient interface --------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.active

    @property
    def connected(self) -> bool:
        return self.active and self.sub_id is not None and self.channel.connected

    def start(self) -> None:
        """Subscribe (again, after :meth:`stop`); resumes with ``since``."""
        if self.active:
            return
        self.active = True
        self._finished = eventlet.event.Event()
        self.channel._start(self)

    def stop(self) -> None:
        """Unsubscribe (keeps the replica). Safe to call from a callback."""
        if self.active:
            self.channel._stop(self)
            self._end()

    def set_auth(self, auth: str | None) -> None:
        """Use ``auth`` (a peer stream's grant) from the next subscribe on; cuts a pending
        retry short."""
        self.check_auth(auth)
        self.auth = auth
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            self.channel._want(self)

    def set_only(self, only: frozenset[str] | None) -> None:
        """Narrow the stream to these addresses (``Follower.narrow``); subscribes again at
        once (a new id: the old one's late frames are dropped) when the filter changed."""
        if self.narrow(only) and self.active and self.timer is None:
            self.channel._forget_id(self)
            self.channel._want(self)

    # --- for the channel -------------------------------------------------------------------

    def entry(self, sub_id: int) -> dict[str, Any]:
        """Its entry in a subscribe request, with ``sub_id``."""
        doc: dict[str, Any] = {"sub": sub_id, **self.wanted()}
        if self.policy is not None and self.auth is not None:
            doc["grant"] = self.auth
        self.used_auth = self.auth
        return doc

    def handle(self, msg: Any, size: int) -> str | None:
        """Apply one frame's message. Returns what the channel must do next: None (go on),
        ``resubscribe`` (now), ``retry`` (after a backoff), ``restart`` (unsubscribe, then
        subscribe after a backoff) or ``end``."""
        self.bytes_received += size
        self.messages_received += 1
        if isinstance(msg, Snapshot | Delta | Heartbeat):
            try:
                self.last_error = self.apply(msg)
            except ProtocolError as exc:  # another service or key: this subscription's alone
                self.last_error = f"protocol error: {exc}"
                return "restart"  # its backoff grows while the shard keeps sending wrong frames
            self.failures = 0
            return None if self.last_error is None else "resubscribe"
        if isinstance(msg, Close):
            return "retry" if self.closed(msg.reason) else "end"
        assert isinstance(msg, ErrorMsg)
        self.last_error = f"server error {msg.code}: {msg.detail}"
        return "retry"

    def refused(self, status: int, detail: str) -> None:
        self.last_status = status
        self.last_error = f"HTTP {status}: {detail}"
        self.callback(self.on_http_error, status)

    def _end(self) -> None:
        self.active = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self._finished is not None and not self._finished.ready():
            self._finished.send(None)


class Channel(Gated):
    """One shard's connection for many subscriptions, presenting ``credential`` (the host's
    own, or a shard's for federation); a peer subscription's grant rides in its entry.

    ``heartbeat_timeout``: silence (no frame, not even a keepalive) after which the connection
    is taken for dead and opened again; every subscription then resumes with its ``since``.
    ``connect_timeout`` bounds a connect and its TLS handshake (at most ``heartbeat_timeout``):
    a replica whose machine is gone answers nothing, not even a reset.
    ``backoff`` (min, max) spaces reconnects and the retries of a refused subscription,
    doubling per failure, jittered; ``gate`` bounds connection attempts in flight across
    channels (held from connect until the first frame). When its last subscription ends, the
    channel hangs up, closes its control connection and calls ``on_empty(self)`` (its owner
    forgets it: a later subscription to that URL opens a new channel). ``replicas``: the URLs
    of every replica of the shard (docs/store.md, "Replicas"); a connection that fails, or
    that a standby answers 503, is tried again at the next one, so the channel finds the
    leader after a failover and every subscription resumes there with its ``since``.
    """

    def __init__(
        self,
        url_base: str,
        credential: str | None,
        *,
        heartbeat_timeout: float = 15.0,
        connect_timeout: float = CONNECT_TIMEOUT,
        backoff: tuple[float, float] = (0.1, 2.0),
        max_line: int = DEFAULT_MAX_LINE,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
        gate: Gate | None = None,
        ca_file: str | None = None,
        on_empty: Callable[[Channel], None] | None = None,
        replicas: Sequence[str] = (),
    ) -> None:
        self.publisher = Publisher.of(url_base, ca_file, heartbeat_timeout, backoff)
        # The shard's replicas (``url_base`` among them): a connection that fails or that a
        # standby refuses (503) moves to the next one; ``url`` stays the channel's name.
        # Each once (a URL listed twice made the rotation stick to it: review s6, E1).
        self.replicas = tuple(dict.fromkeys((url_base, *replicas)))
        self.at = url_base
        self._turn = 0  # self.at's place in self.replicas
        self.on_empty = on_empty
        self.url = url_base
        self.credential = credential
        self.heartbeat_timeout = heartbeat_timeout
        if connect_timeout <= 0:
            raise ValueError("connect_timeout must be > 0")
        self.connect_timeout = min(connect_timeout, heartbeat_timeout)
        self.backoff = backoff
        self.max_line = max_line
        self._clock = clock
        self._rng = rng or random.Random()
        Gated.__init__(self, gate)
        self._subs: dict[Subscription, None] = {}  # started, in order
        self._by_id: dict[int, Subscription] = {}
        self._pending: dict[Subscription, None] = {}  # to subscribe on the current connection
        self._unsub: list[int] = []
        self._ids = itertools.count(1)
        self.channel_id: str | None = None
        self.connected = False
        self._sock: Any = None  # the stream's
        self._ctl_sock: Any = None  # the control requests', kept alive
        self._reader: Any = None
        self._control: Any = None
        self._work: Any = eventlet.event.Event()
        # Counters.
        self.connects = 0
        self.keepalives_received = 0
        self.bytes_received = 0  # every frame's bytes, keepalives too
        self.control_requests = 0
        self.last_error: str | None = None

    def subscription(self, service: ServiceName, key: str, **options: Any) -> Subscription:
        """A subscription on this channel, not started (``options``: :class:`Subscription`'s)."""
        return Subscription(self, service, key, **options)

    @property
    def subscriptions(self) -> list[Subscription]:
        return list(self._subs)

    def sockets(self) -> int:
        """Connections open now (the stream's and the control requests')."""
        return (self._sock is not None) + (self._ctl_sock is not None)

    def stop(self) -> None:
        """Stop every subscription and close the connections."""
        for sub in list(self._subs):
            sub.stop()
        for thread in (self._reader, self._control):
            if thread is not None and thread is not eventlet.getcurrent():
                thread.kill()
        self._reader = self._control = None
        self._close_ctl()

    # --- subscriptions come and go ---------------------------------------------------------

    def _start(self, sub: Subscription) -> None:
        self._subs[sub] = None
        self._want(sub)
        if self._reader is None or self._reader.dead:
            self._reader = eventlet.spawn(self._run)
        if self._control is None or self._control.dead:
            self._control = eventlet.spawn(self._control_loop)

    def _stop(self, sub: Subscription) -> None:
        self._subs.pop(sub, None)
        self._pending.pop(sub, None)
        self._forget_id(sub)
        self._kick()
        self._if_empty()

    def _if_empty(self) -> None:
        """Nothing left to carry: hang up (the reader ends), the control thread ends (kicked:
        it sees no subscription) and the owner forgets the channel."""
        if self._subs:
            return
        self._hang_up()
        self._kick()
        if self.on_empty is not None:
            self.on_empty(self)

    def _want(self, sub: Subscription) -> None:
        """Subscribe ``sub`` on the current connection (or the next one)."""
        sub.timer = None
        if sub.active and self.channel_id is not None:
            self._pending[sub] = None
            self._kick()

    def _retry(self, sub: Subscription, slow: bool = False) -> None:
        """Subscribe ``sub`` again after a backoff."""
        self._forget_id(sub)
        self._pending.pop(sub, None)
        sub.failures += 1
        wait = delay(self.backoff, sub.failures, slow, self._rng)
        if sub.timer is not None:
            sub.timer.cancel()
        sub.timer = eventlet.spawn_after(wait, self._want, sub)

    def _forget_id(self, sub: Subscription) -> None:
        if sub.sub_id is not None:
            if self._by_id.pop(sub.sub_id, None) is not None and self.channel_id is not None:
                self._unsub.append(sub.sub_id)
            sub.sub_id = None

    def _kick(self) -> None:
        if not self._work.ready():
            self._work.send(None)

    def _hang_up(self) -> None:
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(green_socket.SHUT_RDWR)  # the reader sees EOF at once
        self._wake()  # a reader waiting to reconnect ends now

    # --- the stream ------------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while self._subs:
            healthy = False
            try:
                healthy = self._session()
                self.last_error = None
            except ProtocolError as exc:
                self.last_error = f"protocol error: {exc}"
            except TransportError as exc:
                self.last_error = f"http: {exc}"
            except OSError as exc:  # refused, reset, connect timeout, DNS
                self.last_error = f"{type(exc).__name__}: {exc}"
            finally:
                self._down()
            if self.last_error is not None and self._subs:
                log.info("channel to %s ended: %s", self.at, self.last_error)
            if not self._subs:
                break
            if not healthy:
                self._next_replica()
            failures = 0 if healthy else failures + 1
            self._pause(delay(self.backoff, failures, False, self._rng))

    def take_replicas(self, replicas: Sequence[str]) -> None:
        """The shard's replicas as its directory lists them now: a connection that fails or is
        refused from now on moves among these (the one open stays; from a replica no longer
        listed, the next is the channel's ``url``)."""
        self.replicas = tuple(dict.fromkeys((self.url, *replicas)))
        self._turn = self.replicas.index(self.at) if self.at in self.replicas else -1

    def _next_replica(self) -> None:
        """Connect to the shard's next replica from now on (none: the same URL again)."""
        if self.replicas == (self.at,):
            return
        self._turn = (self._turn + 1) % len(self.replicas)
        self.at = self.replicas[self._turn]
        p = self.publisher
        self.publisher = Publisher.of(self.at, p.ca_file, self.heartbeat_timeout, self.backoff)
        self._close_ctl()

    def _request(self, method: str, path: str, body: bytes = b"", close: bool = False) -> bytes:
        lines = [
            f"{method} {self.publisher.base}{path} HTTP/1.1",
            f"Host: {self.publisher.netloc}",
            "User-Agent: meshpeer-streaming/1",
        ]
        if close:
            lines.append("Connection: close")
        if self.credential is not None:
            lines.append(f"Authorization: Bearer {self.credential}")
        if body:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body

    def _connect(self) -> Any:
        """A connection to the current replica, within ``connect_timeout``; what is sent on
        it then has the heartbeat timeout (a large control request on a slow link)."""
        sock = self.publisher.connect(self.connect_timeout)
        sock.settimeout(self.heartbeat_timeout)
        return sock

    def _session(self) -> bool:
        """One connection of the channel; True if any frame came (a healthy session)."""
        return self._through_gate(self._connected_session)

    def _connected_session(self) -> bool:
        sock = self._connect()
        self._sock = sock
        self.connects += 1
        sock.sendall(self._request("GET", "/v1/channel", close=True))
        deadline = self._clock() + self.heartbeat_timeout
        head, rest = read_head(sock, deadline, self._clock)
        body = body_for(head)
        if head.status != 200:
            detail = error_detail(sock, head, body, rest, deadline, self._clock)
            self._refuse_all(head.status, detail)
            raise TransportError(f"HTTP {head.status}: {detail}")
        check_ndjson(head)
        cid = head.headers.get(CHANNEL_HEADER.lower(), "")
        if not CHANNEL_ID_RE.fullmatch(cid):
            raise TransportError(f"bad or missing {CHANNEL_HEADER} header")
        self.channel_id = cid
        self.connected = True
        for sub in self._subs:  # every subscription resumes with its own since
            if sub.timer is None:
                self._pending[sub] = None
        self._kick()
        return self._read(sock, body, rest)

    def _read(self, sock: Any, body: Any, data: bytes) -> bool:
        decoder = FrameDecoder(self.max_line)
        last_heard = self._clock()
        healthy = False
        while self._subs:
            if data:
                last_heard = self._clock()  # any bytes are life (a large snapshot on a slow link)
                for f in decoder.feed(body.feed(data)):
                    self._release_gate()
                    healthy = True
                    self._dispatch(f)
                decoder.feed(b"")  # raises now if a bad line followed the good ones
                # The time our callbacks took (a big snapshot applied) is not the shard's
                # silence: what it sent meanwhile waits in the socket.
                last_heard = self._clock()
            if body.done:
                raise TransportError("server ended the response")
            received = receive(sock, last_heard, self.heartbeat_timeout, self._clock)
            if received is None:
                data = b""
                continue
            if not received:
                if self._subs:
                    raise TransportError("connection closed")
                break
            data = received
        return healthy

    def _dispatch(self, f: Frame) -> None:
        self.bytes_received += f.size
        if f.sub is None:
            if isinstance(f.msg, Keepalive):
                self.keepalives_received += 1
                return
            assert isinstance(f.msg, ErrorMsg)
            raise TransportError(f"channel error {f.msg.code}: {f.msg.detail}")
        sub = self._by_id.get(f.sub)
        if sub is None:
            return  # a late frame of a subscription just ended
        action = sub.handle(f.msg, f.size)
        if action is None or not sub.active or sub.sub_id != f.sub:
            return
        if action == "resubscribe":
            self._forget_id(sub)
            self._want(sub)
        elif action == "restart":
            self._retry(sub)  # its id is unsubscribed
        elif action == "retry":
            self._by_id.pop(f.sub, None)  # the shard ended it: no unsubscribe
            sub.sub_id = None
            sub.reconnects += 1
            self._retry(sub)
        else:
            self._by_id.pop(f.sub, None)
            sub.sub_id = None
            self._subs.pop(sub, None)
            self._pending.pop(sub, None)
            sub._end()
            self._if_empty()

    def _down(self) -> None:
        """The connection ended: its subscriptions are gone on the shard's side."""
        self._release_gate()
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        self.channel_id = None
        self.connected = False
        self._by_id.clear()
        self._pending.clear()
        self._unsub.clear()
        for sub in self._subs:
            if sub.sub_id is not None:
                sub.reconnects += 1
            sub.sub_id = None

    def _refuse_all(self, status: int, detail: str) -> None:
        """The shard refused the channel itself (e.g. 401): each subscription hears it."""
        for sub in list(self._subs):
            sub.refused(status, detail)

    # --- the control requests --------------------------------------------------------------

    def _control_loop(self) -> None:
        try:
            self._control_requests()
        finally:
            self._close_ctl()

    def _control_requests(self) -> None:
        failures = 0
        while True:
            self._work.wait()
            self._work = eventlet.event.Event()
            if not self._subs:
                return  # the channel is empty: a new subscription starts a new thread
            cid = self.channel_id
            if cid is None or not (self._pending or self._unsub):
                continue
            batch = self._batch()
            try:
                refused_drops = self._send(cid, batch)
                failures = failures + 1 if refused_drops else 0
                if refused_drops:  # asked again after a backoff, with whatever else is due
                    eventlet.sleep(delay(self.backoff, failures, False, self._rng))
                    self._kick()
            except (OSError, TransportError, ValueError) as exc:
                self._close_ctl()
                log.info("channel to %s: control request failed: %s", self.url, exc)
                if self.channel_id == cid:  # try the batch again on this connection
                    self._unsub += batch[1]
                    for sub, entry in batch[0]:
                        if sub.active and sub.sub_id == entry["sub"]:
                            self._forget_id(sub)  # in case the shard took it
                            self._pending[sub] = None
                    failures += 1
                    eventlet.sleep(delay(self.backoff, failures, False, self._rng))
                    self._kick()

    def _batch(self) -> Batch:
        adds: list[tuple[Subscription, dict[str, Any]]] = []
        for sub in list(self._pending)[: MAX_CHANNEL_ENTRIES // 2]:
            del self._pending[sub]
            self._forget_id(sub)  # a resubscription ends its old id in the same request
            sub.sub_id = sid = next(self._ids)
            self._by_id[sid] = sub
            adds.append((sub, sub.entry(sid)))
        drops = self._unsub[: MAX_CHANNEL_ENTRIES - len(adds)]
        del self._unsub[: len(drops)]
        if self._pending or self._unsub:
            self._kick()  # more than one request's worth
        return adds, drops

    def _send(self, cid: str, batch: Batch) -> bool:
        """Send one control request; True if the shard refused it with unsubscribes in it
        (they are queued again: the shard may still hold them)."""
        adds, drops = batch
        doc: dict[str, Any] = {}
        if adds:
            doc["subscribe"] = [entry for _sub, entry in adds]
        if drops:
            doc["unsubscribe"] = drops
        status, reply = self._post(f"/v1/channels/{cid}", json.dumps(doc).encode())
        self.control_requests += 1
        if status == 404:
            if self.channel_id == cid:  # the channel is gone: open a new one
                self._hang_up()
            return False
        if status != 200:
            restored = bool(drops) and self.channel_id == cid
            if restored:
                self._unsub[:0] = drops
            detail = str(reply.get("detail", ""))[:256] if isinstance(reply, dict) else ""
            for sub, entry in adds:
                if sub.sub_id == entry["sub"]:
                    self._by_id.pop(entry["sub"], None)
                    sub.sub_id = None
                    sub.refused(status, detail)
                    if sub.active:
                        self._retry(sub, slow=status in SLOW_STATUSES)
            return restored
        results = reply.get("results") if isinstance(reply, dict) else None
        if not isinstance(results, list):
            raise TransportError("control reply without results")
        for r in results:
            sid, code = (r.get("sub"), r.get("status")) if isinstance(r, dict) else (None, None)
            if not isinstance(sid, int) or not isinstance(code, int) or code == 200:
                continue
            refused = self._by_id.pop(sid, None)  # refused: the shard holds nothing for it
            if refused is None:
                continue
            refused.sub_id = None
            refused.refused(
                code, " ".join(str(r[f])[:256] for f in ("error", "field", "detail") if r.get(f))
            )
            if refused.active:
                self._retry(refused, slow=code in SLOW_STATUSES)
        return False

    def _post(self, path: str, body: bytes) -> tuple[int, Any]:
        """One request on the kept-alive control connection (a fresh one if the kept one was
        closed by the shard meanwhile)."""
        for attempt in (0, 1):
            fresh = self._ctl_sock is None
            if fresh:
                self._ctl_sock = self._connect()
            sock = self._ctl_sock
            try:
                sock.sendall(self._request("POST", path, body))
                deadline = self._clock() + self.heartbeat_timeout
                head, rest = read_head(sock, deadline, self._clock)
            except (OSError, TransportError):
                self._close_ctl()
                if fresh or attempt:
                    raise
                continue  # the shard closed the idle connection: once more on a new one
            text = read_body(sock, body_for(head), rest, deadline, self._clock, MAX_CONTROL_REPLY)
            if head.headers.get("connection", "").lower() == "close":
                self._close_ctl()
            try:
                return head.status, json.loads(text)
            except ValueError:
                return head.status, {"detail": text[:MAX_ERROR_BODY].decode("latin-1")}
        raise TransportError("unreachable")  # pragma: no cover

    def _close_ctl(self) -> None:
        sock, self._ctl_sock = self._ctl_sock, None
        if sock is not None:
            sock.close()
