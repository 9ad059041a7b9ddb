"""Publisher side of the subscription stream: one hub of service logs, one writer per subscriber.

The controller core calls :meth:`StreamHub.publish` with the full desired object set of a stream;
the hub diffs it against the stream's :class:`~meshpeer.protocol.stream.ServiceLog`, applies the
change as the next contiguous version and pushes the delta to every attached subscriber's
bounded :class:`~meshpeer.protocol.stream.SubscriberQueue`, waking its writer. A writer is the
WSGI ``app_iter`` returned by :meth:`StreamHub.wsgi_stream`: it runs in the eventlet WSGI
server's green thread of that connection, drains the queue, yields NDJSON bytes and sends
heartbeats when idle. A slow socket blocks only its own writer; its queue overflows into one
fresh snapshot (see ``docs/protocol.md``, "Slow subscribers").

Everything here runs on one eventlet hub (green threads of one OS thread); the hub is not
thread-safe. Time comes from the injected ``clock`` (monotonic seconds).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import eventlet.event

from meshpeer.protocol.codec import encode, encode_keepalive, frame, sub_prefix
from meshpeer.protocol.messages import (
    OBJECT_ID_RE,
    Close,
    CloseReason,
    Delta,
    ErrorMsg,
    Heartbeat,
    JsonObject,
    Message,
    Snapshot,
    StreamId,
)
from meshpeer.protocol.stream import (
    DEFAULT_HISTORY,
    ServiceLog,
    SubscriberQueue,
    heartbeat_due,
    narrow,
)

log = logging.getLogger(__name__)

Clock = Callable[[], float]

NDJSON = "application/x-ndjson"
DEFAULT_HEARTBEAT_INTERVAL = 5.0
DEFAULT_QUEUE_MAXLEN = 256
"""Messages a subscriber may lag behind before its backlog is replaced by one snapshot."""
DEFAULT_MAX_CHANNEL_SUBSCRIPTIONS = 1024
"""Subscriptions one channel may carry (a host follows tens; the shard's memory per connection
stays bounded, as ``max_connections_per_client`` bounds it for one stream per connection)."""
DELTA_CACHE = 8
"""Encoded deltas kept per stream: every subscriber of a stream shares the bytes of each."""


@dataclass(frozen=True)
class StreamStats:
    """Counters of one stream (what the controller exposes)."""

    version: int
    objects: int
    subscribers: int
    messages_sent: int
    bytes_sent: int
    snapshots_sent: int
    overflows: int
    """Times a subscriber queue of this stream overflowed into a snapshot."""


class _Sleeper:
    """A writer's green thread that sleeps until woken or a timeout."""

    _waiter: Any = None  # eventlet.event.Event while the writer sleeps

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.ready():
            waiter.send(None)

    def sleep(self, timeout: float) -> None:
        """Block this green thread until :meth:`wake` or ``timeout`` seconds pass."""
        self._waiter = eventlet.event.Event()
        try:
            self._waiter.wait(max(timeout, 0.0))
        finally:
            self._waiter = None


class _Outbox(_Sleeper):
    """One attached subscriber: its bounded queue and the wake-up of its writer (its own, or
    its channel's)."""

    def __init__(
        self,
        maxlen: int,
        tag: str | None = None,
        host: str | None = None,
        holder: str | None = None,
        holder_key: str | None = None,
        expires_at: float | None = None,
        expiry_reason: str = CloseReason.GRANT_EXPIRED.value,
        only: frozenset[str] | None = None,
    ) -> None:
        self.queue = SubscriberQueue(maxlen)
        self.only = only  # a destination filter: the addresses it sees (None: the stream)
        self.tag = tag  # who subscribed (e.g. the grant's VPC), for closing some subscribers
        self.host = host  # the subscribing host, whose applied versions say "programmed"
        self.holder = holder  # the host whose own credential opened it (None: an operator)
        self.holder_key = holder_key  # the directory key that credential is made with
        self.expires_at = expires_at  # its grant's expiry (hub clock), pushed back by renewals
        self.expiry_reason = expiry_reason
        # On a channel: the channel, the subscription's id there and its frames' prefix.
        self.channel: _Channel | None = None
        self.sub = 0
        self.prefix = b""
        self.stream: _Stream | None = None

    def wake(self) -> None:
        if self.channel is not None:
            self.channel.ready[self.sub] = None
            self.channel.wake()
        else:
            super().wake()


class _Stream:
    def __init__(self, sid: StreamId, service_log: ServiceLog) -> None:
        self.id = sid
        self.log = service_log
        self.outboxes: set[_Outbox] = set()
        self.messages_sent = 0
        self.bytes_sent = 0
        self.snapshots_sent = 0
        self.retired_overflows = 0  # overflows of detached subscribers
        self._snapshot_cache: tuple[int, bytes] | None = None
        self._heartbeat_cache: tuple[int, int, bytes] | None = None  # (version, second, bytes)
        self._delta_cache: dict[int, bytes] = {}  # version -> encoded delta (the latest few)

    def encode(self, msg: Message) -> bytes:
        """Encode ``msg``; a snapshot or a delta is encoded once per version and shared by
        every subscriber (fan-out writes the same bytes to each).

        A heartbeat is shared too, per version and whole second of its (informational) ``now``:
        with thousands of idle subscribers on a stream, most heartbeats are identical.
        """
        if isinstance(msg, Delta):
            data = self._delta_cache.get(msg.version)
            if data is None:
                data = self._delta_cache[msg.version] = encode(msg)
                if len(self._delta_cache) > DELTA_CACHE:
                    del self._delta_cache[next(iter(self._delta_cache))]
            return data
        if isinstance(msg, Heartbeat):
            second = int(msg.now)
            hb = self._heartbeat_cache
            if hb is not None and hb[0] == msg.version and hb[1] == second:
                return hb[2]
            data = encode(msg)
            self._heartbeat_cache = (msg.version, second, data)
            return data
        if not isinstance(msg, Snapshot):
            return encode(msg)
        cached = self._snapshot_cache
        if cached is not None and cached[0] == msg.version:
            return cached[1]
        data = encode(msg)
        self._snapshot_cache = (msg.version, data)
        return data

    def drop_cache(self) -> None:
        self._snapshot_cache = None

    def stats(self) -> StreamStats:
        return StreamStats(
            version=self.log.version,
            objects=len(self.log.objects),
            subscribers=len(self.outboxes),
            messages_sent=self.messages_sent,
            bytes_sent=self.bytes_sent,
            snapshots_sent=self.snapshots_sent,
            overflows=self.retired_overflows + sum(o.queue.overflows for o in self.outboxes),
        )


class StreamWriter(Iterator[bytes]):
    """The WSGI ``app_iter`` of one subscription; :meth:`close` detaches it.

    It is attached from construction, not from first iteration, so that publishes between the
    subscribe request and the first write are queued; ``close()`` (which every WSGI server
    calls, iterated or not) or the end of iteration detaches it.
    """

    def __init__(
        self,
        hub: StreamHub,
        stream: _Stream,
        outbox: _Outbox,
        heartbeat_interval: float,
        clock: Clock,
        expiry_reason: str,
    ) -> None:
        self._hub = hub
        self._stream = stream
        self._outbox = outbox
        self._interval = heartbeat_interval
        self._clock = clock
        self._expiry_reason = expiry_reason
        self._gen = self._run()

    def __iter__(self) -> StreamWriter:
        return self

    def __next__(self) -> bytes:
        return next(self._gen)

    def close(self) -> None:
        self._gen.close()  # raises GeneratorExit at the pending yield, if started
        self._hub._detach(self._stream, self._outbox)

    def _run(self) -> Generator[bytes, None, None]:
        stream, queue, clock = self._stream, self._outbox.queue, self._clock
        last_sent = clock()
        try:
            while True:
                msgs = queue.drain(stream.log)
                if msgs:
                    data, final = self._encode(msgs)
                    yield data  # the server writes it; a slow socket blocks only us
                    last_sent = clock()
                    if final:
                        return
                    continue
                now = clock()
                expires_at = self._outbox.expires_at
                if expires_at is not None and now >= expires_at:
                    queue.push(Close(self._expiry_reason))
                elif heartbeat_due(last_sent, now, self._interval):
                    queue.push(Heartbeat(stream.log.version, now))
                else:
                    deadline = last_sent + self._interval
                    if expires_at is not None:
                        deadline = min(deadline, expires_at)
                    self._outbox.sleep(deadline - now)
        finally:
            self._hub._detach(stream, self._outbox)

    def _encode(self, msgs: list[Message]) -> tuple[bytes, bool]:
        parts, final = _encode(self._stream, msgs, only=self._outbox.only)
        return b"".join(parts), final


def _encode(
    stream: _Stream, msgs: list[Message], prefix: bytes = b"", only: frozenset[str] | None = None
) -> tuple[list[bytes], bool]:
    """The lines of ``msgs`` (each a frame of the subscription with ``prefix`` if one is
    given), counted in the stream's stats; and whether they end the subscription. ``only``:
    the subscriber's destination filter (its messages narrowed, not the shared encodings)."""
    try:
        if only is None:
            parts = [stream.encode(m) for m in msgs]
        else:
            parts = [encode(narrow(m, only)) for m in msgs]
    except (TypeError, ValueError):  # a published body that is not JSON: a caller bug
        log.exception("stream %s: cannot encode a message", stream.id)
        msgs = [ErrorMsg("internal", "publisher failed to encode a message")]
        parts = [encode(msgs[0])]
    if prefix:
        parts = [frame(prefix, p) for p in parts]
    stream.messages_sent += len(msgs)
    stream.bytes_sent += sum(map(len, parts))
    stream.snapshots_sent += sum(isinstance(m, Snapshot) for m in msgs)
    return parts, isinstance(msgs[-1], Close | ErrorMsg)


class ChannelFull(Exception):
    """A channel already carries as many subscriptions as the hub allows."""


class _Channel(_Sleeper):
    """One multiplexed connection: its subscriptions by id and those with something queued."""

    def __init__(self, cid: str, owner: object, holder: str | None, holder_key: str | None) -> None:
        self.id = cid
        self.owner = owner  # who may add and remove its subscriptions (the identity that opened it)
        self.holder = holder
        self.holder_key = holder_key
        self.subs: dict[int, _Outbox] = {}
        # ids with something queued, in order (a dict: a set that keeps the order)
        self.ready: dict[int, None] = {}
        # no later than the earliest grant expiry of its subscriptions (renewals only push
        # expiries back, so it may be early: the sweep then just finds nothing due)
        self.next_expiry: float | None = None

    def expire(self, now: float) -> None:
        """Close every subscription whose grant has expired by ``now``; note the next expiry."""
        pending: list[float] = []
        for o in list(self.subs.values()):
            if o.expires_at is None:
                continue
            if now >= o.expires_at:
                o.expires_at = None  # its Close is on the way
                o.queue.push(Close(o.expiry_reason))
                o.wake()
            else:
                pending.append(o.expires_at)
        self.next_expiry = min(pending, default=None)


class ChannelWriter(Iterator[bytes]):
    """The WSGI ``app_iter`` of a channel: every subscription's frames on one connection and
    one keepalive per ``heartbeat_interval`` idle seconds for all of them. ``close()`` (or the
    end of iteration) detaches every subscription and forgets the channel."""

    def __init__(
        self, hub: StreamHub, channel: _Channel, heartbeat_interval: float, clock: Clock
    ) -> None:
        self._hub = hub
        self._channel = channel
        self._interval = heartbeat_interval
        self._clock = clock
        self._gen = self._run()

    @property
    def channel_id(self) -> str:
        return self._channel.id

    def __iter__(self) -> ChannelWriter:
        return self

    def __next__(self) -> bytes:
        return next(self._gen)

    def close(self) -> None:
        self._gen.close()
        self._hub._close_channel(self._channel)

    def _run(self) -> Generator[bytes, None, None]:
        channel, clock = self._channel, self._clock
        try:
            # The first write is immediate: eventlet sends the response head with it.
            yield encode_keepalive(clock())
            self._hub.keepalives_sent += 1
            last_sent = clock()
            while True:
                # Expiry first, on every turn: a busy channel never finds its ready queue empty.
                now = clock()
                expiry = channel.next_expiry
                if expiry is not None and now >= expiry:
                    channel.expire(now)
                if channel.ready:
                    parts = self._drain()
                    if parts:
                        yield b"".join(parts)
                        last_sent = clock()
                    continue
                if heartbeat_due(last_sent, now, self._interval):
                    yield encode_keepalive(now)
                    self._hub.keepalives_sent += 1
                    last_sent = clock()
                else:
                    deadline = last_sent + self._interval
                    expiry = channel.next_expiry
                    channel.sleep(min(deadline, expiry or deadline) - now)
        finally:
            self._hub._close_channel(channel)

    def _drain(self) -> list[bytes]:
        channel = self._channel
        parts: list[bytes] = []
        ready, channel.ready = channel.ready, {}
        for sub in ready:
            outbox = channel.subs.get(sub)
            if outbox is None or outbox.stream is None:
                continue
            msgs = outbox.queue.drain(outbox.stream.log)
            if not msgs:
                if outbox.queue.closed:  # its end was sent already
                    self._hub._detach(outbox.stream, outbox)
                continue
            lines, final = _encode(outbox.stream, msgs, outbox.prefix, outbox.only)
            parts += lines
            if final:  # this subscription ends alone; the channel goes on
                self._hub._detach(outbox.stream, outbox)
        return parts


class StreamHub:
    """Service logs by :class:`StreamId` and the subscribers attached to each.

    ``base_version`` is where a new log starts; the controller passes ``incarnation << 32`` so
    every version after a restart exceeds every version sent before it. A stream that is
    forgotten and published again in the same incarnation starts above the highest version
    this hub has used, for the same reason.
    """

    def __init__(
        self,
        *,
        base_version: int = 0,
        history: int = DEFAULT_HISTORY,
        queue_maxlen: int = DEFAULT_QUEUE_MAXLEN,
        clock: Clock = time.monotonic,
        max_channel_subscriptions: int = DEFAULT_MAX_CHANNEL_SUBSCRIPTIONS,
    ) -> None:
        if base_version < 0 or queue_maxlen < 1 or max_channel_subscriptions < 1:
            raise ValueError(
                "base_version must be >= 0, queue_maxlen and max_channel_subscriptions >= 1"
            )
        self.history = history
        self.queue_maxlen = queue_maxlen
        self.max_channel_subscriptions = max_channel_subscriptions
        self.clock = clock
        self._floor = base_version
        self._streams: dict[StreamId, _Stream] = {}
        self._channels: dict[str, _Channel] = {}
        self.deltas_published = 0  # for the shard's metrics
        self.keepalives_sent = 0

    # --- publishing ------------------------------------------------------------------------

    def publish(
        self, stream_id: tuple[Any, ...], objects: Mapping[str, JsonObject]
    ) -> Delta | None:
        """Make ``objects`` the stream's state; return the delta pushed to subscribers.

        Creates the stream on first publish, at the base version with ``objects`` as its state
        (nobody can be attached yet, so ``None`` is returned). Afterwards returns ``None`` when
        nothing changed. Object bodies are shared with the log, not copied: do not mutate them
        after publishing. Raises ValueError on an invalid object id or a non-dict body.
        """
        sid = StreamId(*stream_id)
        stream = self._streams.get(sid)
        current: Mapping[str, JsonObject] = {} if stream is None else stream.log.objects
        upserts = {oid: obj for oid, obj in objects.items() if current.get(oid) != obj}
        for oid, obj in upserts.items():
            if not isinstance(oid, str) or not OBJECT_ID_RE.fullmatch(oid):
                raise ValueError(f"{sid}: bad object id {str(oid)[:64]!r}")
            if not isinstance(obj, dict):
                raise ValueError(f"{sid}: object {oid!r} is not a dict")
        if stream is None:
            service_log = ServiceLog(
                sid.service, sid.key, version=self._floor, objects=objects, history=self.history
            )
            self._streams[sid] = _Stream(sid, service_log)
            return None
        deletes = [oid for oid in current if oid not in objects]
        return self._push(stream, upserts, deletes)

    def patch(
        self,
        stream_id: tuple[Any, ...],
        upserts: Mapping[str, JsonObject],
        deletes: Iterable[str] = (),
    ) -> Delta | None:
        """Change only the named objects of an existing stream (KeyError if unknown).

        The cost is proportional to the change, not to the stream: the controller uses it
        when a write can only touch a few objects of a large stream (one endpoint of a VPC).
        """
        stream = self._streams[StreamId(*stream_id)]
        current = stream.log.objects
        ups = {oid: obj for oid, obj in upserts.items() if current.get(oid) != obj}
        for oid, obj in ups.items():
            if not isinstance(oid, str) or not OBJECT_ID_RE.fullmatch(oid):
                raise ValueError(f"{stream.id}: bad object id {str(oid)[:64]!r}")
            if not isinstance(obj, dict):
                raise ValueError(f"{stream.id}: object {oid!r} is not a dict")
        return self._push(stream, ups, [oid for oid in deletes if oid in current])

    def _push(
        self, stream: _Stream, upserts: dict[str, JsonObject], deletes: list[str]
    ) -> Delta | None:
        if not upserts and not deletes:
            return None
        delta = stream.log.apply(stream.log.version + 1, upserts, deletes)
        self.deltas_published += 1
        stream.drop_cache()
        for outbox in stream.outboxes:
            outbox.queue.push(delta)
            outbox.wake()
        return delta

    def close_stream(self, stream_id: tuple[Any, ...], reason: str, *, forget: bool = True) -> bool:
        """Push ``Close(reason)`` to the stream's subscribers; return False if it is unknown.

        With ``forget`` (default) the log is dropped too (e.g. peering deleted); without it the
        log stays and subscribers may come back with ``since`` (e.g. ``shutdown``).
        """
        sid = StreamId(*stream_id)
        stream = self._streams.get(sid)
        if stream is None:
            return False
        _close(stream.outboxes, reason)
        if forget:
            del self._streams[sid]
            self._floor = max(self._floor, stream.log.version + 1)
        return True

    def close_where(
        self, predicate: Callable[[StreamId], bool], reason: str, *, forget: bool = True
    ) -> int:
        """:meth:`close_stream` every stream whose id satisfies ``predicate``; return how many."""
        chosen = [sid for sid in self._streams if predicate(sid)]
        for sid in chosen:
            self.close_stream(sid, reason, forget=forget)
        return len(chosen)

    def close_subscribers(self, stream_id: tuple[Any, ...], tag: str, reason: str) -> int:
        """Close only the subscribers attached with ``tag``; the stream stays for the others.

        A peer stream is shared by every peer whose peering uses the same export policy; when
        one of those peerings ends, only that peer's subscribers must go.
        """
        stream = self._streams.get(StreamId(*stream_id))
        if stream is None:
            return 0
        return _close([o for o in stream.outboxes if o.tag == tag], reason)

    def close_held(
        self,
        holder: str,
        reason: str,
        stream_ids: Iterable[tuple[Any, ...]] | None = None,
        tag: str | None = None,
    ) -> int:
        """Close the subscribers that host ``holder``'s credential opened, on ``stream_ids``
        (None: every stream), with ``tag`` only if one is given; the streams stay for the
        others. Returns how many were closed.

        A host leaving a VPC loses the VPC's streams it follows; a revoked host loses all.
        """
        if stream_ids is None:
            streams = list(self._streams.values())
        else:
            found = (self._streams.get(StreamId(*sid)) for sid in stream_ids)
            streams = [s for s in found if s is not None]
        held = (o for s in streams for o in s.outboxes if o.holder == holder)
        return _close([o for o in held if tag is None or o.tag == tag], reason)

    def renew(
        self, stream_id: tuple[Any, ...], holder: str, tag: str | None, expires_at: float
    ) -> int:
        """Host ``holder`` holds a fresher grant for a stream it follows (``tag``: the grant's
        VPC): its subscribers there now expire at ``expires_at`` (hub clock), if later. No
        reconnect: a grant rotated before it expires drops no stream. Returns how many."""
        stream = self._streams.get(StreamId(*stream_id))
        renewed = 0
        for o in stream.outboxes if stream else ():
            held = o.holder == holder and o.tag == tag
            if held and o.expires_at is not None and expires_at > o.expires_at:
                o.expires_at = expires_at
                renewed += 1
        return renewed

    def close_keys(self, key_ids: Iterable[str], reason: str) -> int:
        """Close every subscriber opened with a host credential made with one of ``key_ids``
        (keys taken out of the directory). Returns how many were closed."""
        gone = set(key_ids)
        held = (o for s in self._streams.values() for o in s.outboxes if o.holder_key in gone)
        return _close(list(held), reason)

    # --- subscribing -----------------------------------------------------------------------

    def wsgi_stream(
        self,
        stream_id: tuple[Any, ...],
        since: int | None,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        clock: Clock | None = None,
        *,
        expires_at: float | None = None,
        expiry_reason: str = CloseReason.GRANT_EXPIRED.value,
        tag: str | None = None,
        host: str | None = None,
        holder: str | None = None,
        holder_key: str | None = None,
        only: frozenset[str] | None = None,
    ) -> StreamWriter:
        """Attach a subscriber; return its ``app_iter`` (raises KeyError for an unknown stream).

        The first write is immediate: the resume result for ``since`` (the missing deltas or a
        snapshot), or a heartbeat when the subscriber is already current, so the response
        starts at once. Then queued messages as they come, a heartbeat after
        ``heartbeat_interval`` idle seconds, and the end after a Close or error. At
        ``expires_at`` (on ``clock``, e.g. the grant's expiry converted to it) the writer sends
        ``Close(expiry_reason)``. ``holder``: the host whose own credential subscribes
        (:meth:`close_held`), ``holder_key`` the directory key it is made with
        (:meth:`close_keys`). ``only``: a destination filter (``meshpeer.protocol.stream.
        narrow``). Serve it with :func:`ndjson_response` (eventlet would otherwise buffer
        small writes).
        """
        if heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be > 0")
        clock = clock or self.clock
        stream = self._streams[StreamId(*stream_id)]
        outbox = _Outbox(
            self.queue_maxlen, tag, host, holder, holder_key, expires_at, expiry_reason, only
        )
        self._attach(stream, outbox, since, clock())
        return StreamWriter(self, stream, outbox, heartbeat_interval, clock, expiry_reason)

    def _attach(self, stream: _Stream, outbox: _Outbox, since: int | None, now: float) -> None:
        """Queue the resume result for ``since`` (a heartbeat when already current: the
        subscriber checks its version) and attach the subscriber."""
        resume = stream.log.resume(since)
        for msg in resume:  # more than maxlen deltas turn into one snapshot
            outbox.queue.push(msg)
        if not resume:
            outbox.queue.push(Heartbeat(stream.log.version, now))
        outbox.stream = stream
        stream.outboxes.add(outbox)

    def _detach(self, stream: _Stream, outbox: _Outbox) -> None:
        if outbox in stream.outboxes:
            stream.outboxes.discard(outbox)
            stream.retired_overflows += outbox.queue.overflows
        channel = outbox.channel
        if channel is not None and channel.subs.get(outbox.sub) is outbox:
            del channel.subs[outbox.sub]

    # --- channels: many subscriptions on one connection ----------------------------------------

    def open_channel(
        self,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        clock: Clock | None = None,
        *,
        owner: object = None,
        holder: str | None = None,
        holder_key: str | None = None,
    ) -> ChannelWriter:
        """A new channel with no subscription yet; return its ``app_iter`` (its id is
        ``channel_id``, unguessable). ``owner``: who may change its subscriptions
        (:meth:`channel_owner`); ``holder``, ``holder_key``: as in :meth:`wsgi_stream`, for
        every subscription it will carry. Serve it with :func:`ndjson_response`."""
        if heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be > 0")
        channel = _Channel(secrets.token_urlsafe(18), owner, holder, holder_key)
        self._channels[channel.id] = channel
        return ChannelWriter(self, channel, heartbeat_interval, clock or self.clock)

    def channel_owner(self, channel_id: str) -> object:
        """Who opened channel ``channel_id`` (KeyError if it is not open)."""
        return self._channels[channel_id].owner

    def channel_subscribe(
        self,
        channel_id: str,
        sub: int,
        stream_id: tuple[Any, ...],
        since: int | None,
        *,
        expires_at: float | None = None,
        expiry_reason: str = CloseReason.GRANT_EXPIRED.value,
        tag: str | None = None,
        host: str | None = None,
        only: frozenset[str] | None = None,
    ) -> None:
        """Attach subscription ``sub`` of a channel to a stream, as :meth:`wsgi_stream` does
        (KeyError for an unknown channel or stream; :class:`ChannelFull` for a new id on a
        channel that carries ``max_channel_subscriptions`` already). An id in use is
        replaced: its old subscription ends without a message."""
        channel = self._channels[channel_id]
        stream = self._streams[StreamId(*stream_id)]
        if sub not in channel.subs and len(channel.subs) >= self.max_channel_subscriptions:
            raise ChannelFull(f"a channel carries at most {self.max_channel_subscriptions}")
        self.channel_unsubscribe(channel_id, sub)
        outbox = _Outbox(
            self.queue_maxlen, tag, host, channel.holder, channel.holder_key, expires_at,
            expiry_reason, only,
        )  # fmt: skip
        outbox.channel, outbox.sub, outbox.prefix = channel, sub, sub_prefix(sub)
        channel.subs[sub] = outbox
        if expires_at is not None and (
            channel.next_expiry is None or expires_at < channel.next_expiry
        ):
            channel.next_expiry = expires_at
        self._attach(stream, outbox, since, self.clock())
        outbox.wake()

    def channel_unsubscribe(self, channel_id: str, sub: int) -> bool:
        """End subscription ``sub`` of a channel, without a message; False if there is none."""
        channel = self._channels.get(channel_id)
        outbox = None if channel is None else channel.subs.get(sub)
        if outbox is None or outbox.stream is None:
            return False
        self._detach(outbox.stream, outbox)
        return True

    def _close_channel(self, channel: _Channel) -> None:
        for outbox in list(channel.subs.values()):
            if outbox.stream is not None:
                self._detach(outbox.stream, outbox)
        channel.subs.clear()
        self._channels.pop(channel.id, None)

    def channels(self) -> int:
        """Channels open now."""
        return len(self._channels)

    # --- introspection ---------------------------------------------------------------------

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self._streams

    def __len__(self) -> int:
        return len(self._streams)

    def subscriber_hosts(self, stream_id: tuple[Any, ...]) -> set[str]:
        """Hosts attached to a stream right now (subscribers that named their host)."""
        stream = self._streams.get(StreamId(*stream_id))
        return {o.host for o in stream.outboxes if o.host} if stream else set()

    def stream_ids(self) -> list[StreamId]:
        return list(self._streams)

    def objects(self, stream_id: tuple[Any, ...]) -> Mapping[str, JsonObject]:
        """Read-only view of a stream's current objects (KeyError if unknown)."""
        return self._streams[StreamId(*stream_id)].log.objects

    def version(self, stream_id: tuple[Any, ...]) -> int:
        """A stream's current version (KeyError if unknown)."""
        return self._streams[StreamId(*stream_id)].log.version

    def stats(self) -> dict[StreamId, StreamStats]:
        """Counters of every stream."""
        return {sid: stream.stats() for sid, stream in self._streams.items()}


def _close(outboxes: Iterable[_Outbox], reason: str) -> int:
    """Queue ``Close(reason)`` for each subscriber and wake its writer; return how many."""
    closed = 0
    for outbox in outboxes:
        outbox.queue.push(Close(reason))
        outbox.wake()
        closed += 1
    return closed


def ndjson_response(app_iter: StreamWriter | ChannelWriter, environ: dict[str, Any]) -> Any:
    """A webob Response streaming ``app_iter`` (chunked NDJSON, not cached).

    Sets ``eventlet.minimum_write_chunk_size`` to 0 in ``environ``: eventlet's WSGI server
    otherwise holds back writes until 4 KiB accumulate, which would delay deltas and
    heartbeats.
    """
    import webob  # the controller's REST layer; imported here so the hub itself needs no webob

    environ["eventlet.minimum_write_chunk_size"] = 0
    response = webob.Response(app_iter=app_iter, content_type=NDJSON, charset=None)
    response.headers["Cache-Control"] = "no-store"
    return response
