"""Subscriber side of the subscription stream: one green thread per (service, key) stream.

:class:`StreamClient` opens ``GET {url_base}/v1/subscribe?...`` over an eventlet green socket,
decodes the chunked NDJSON body with :class:`~meshpeer.protocol.codec.Decoder`, applies every
message to a :class:`~meshpeer.protocol.stream.ReplicaState` and calls ``on_change`` after each
applied snapshot or delta. It reconnects with ``since`` after errors, EOF or a silent peer, and
keeps the last state meanwhile (fail static).

Why a raw green socket and not ``eventlet.green.http.client``: a read timeout on the file
object behind ``http.client`` poisons it (``SocketIO`` refuses every later read), so liveness
could only be "one blocking read of ``heartbeat_timeout`` seconds" rather than the protocol's
``peer_dead(last_heard, now, timeout)`` on an injected clock; eventlet's green ``http.client``
is also a frozen vendored copy. The response we accept is narrow (one GET, ``Connection:
close``, status line, headers, then a chunked, length-delimited or close-delimited body), so
the HTTP part is a small sans-I/O head parser and :class:`ChunkedDecoder`. ``https://``
wraps the socket with a green TLS context that verifies the publisher's certificate against
``ca_file`` and its name or IP (:func:`meshpeer.tls.client_context`); the handshake is bounded
by ``heartbeat_timeout`` like the connect.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import urlencode

import eventlet
import eventlet.event
from eventlet.green import socket as green_socket

from meshpeer import tls
from meshpeer.protocol.codec import DEFAULT_MAX_LINE, Decoder
from meshpeer.protocol.messages import (
    GRANT_HEADER,
    GRANT_RE,
    Close,
    CloseReason,
    Delta,
    ErrorMsg,
    Heartbeat,
    Message,
    ProtocolError,
    ServiceName,
    Snapshot,
    check_name,
)
from meshpeer.protocol.stream import Outcome, ReplicaState, peer_dead

log = logging.getLogger(__name__)

Clock = Callable[[], float]
OnChange = Callable[[ReplicaState, Message], None]

MAX_HEAD = 64 * 1024
MAX_ERROR_BODY = 64 * 1024
RECV_SIZE = 256 * 1024
SLOW_STATUSES = frozenset({400})
"""Statuses no retry of the same request can change (a malformed request): retried at the
slowest backoff. 401/403/404 follow the normal backoff: a peering that has just become ACTIVE
on the subscriber's shard may not be ACTIVE on the peer's shard for a few milliseconds more,
and :meth:`StreamClient.set_auth` cuts a wait short when a new grant arrives."""
DEFAULT_RETRY_CLOSE = frozenset({CloseReason.SHUTDOWN.value, CloseReason.GRANT_EXPIRED.value})


class Gate(Protocol):
    """Admission for connection attempts (e.g. ``eventlet.semaphore.Semaphore``)."""

    def acquire(self, blocking: bool = True) -> bool: ...

    def release(self) -> None: ...


class TransportError(Exception):
    """The HTTP exchange failed (malformed response, timeout before the stream started)."""


# --- sans-I/O HTTP response parsing ---------------------------------------------------------


@dataclass(frozen=True)
class ResponseHead:
    status: int
    reason: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "


def parse_head(raw: bytes) -> ResponseHead:
    """Parse a response status line and headers (``raw`` without the blank line)."""
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise TransportError("undecodable response head") from None
    lines = text.split("\r\n")
    match = re.fullmatch(r"HTTP/1\.[01] ([0-9]{3})(?: (.*))?", lines[0])
    if match is None:
        raise TransportError(f"bad status line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise TransportError(f"bad header line {line[:80]!r}")
        name, value = name.lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return ResponseHead(int(match.group(1)), match.group(2) or "", headers)


class Body(Protocol):
    """Turns the bytes after the response head into body bytes."""

    @property
    def done(self) -> bool: ...

    def feed(self, data: bytes) -> bytes: ...


class ChunkedDecoder:
    """Sans-I/O decoder of an HTTP/1.1 chunked body (extensions and trailers are ignored)."""

    MAX_LINE = 4096

    def __init__(self) -> None:
        self._buf = bytearray()
        self._state = "size"  # size -> data -> data-end -> size ... -> trailer -> done
        self._left = 0

    @property
    def done(self) -> bool:
        return self._state == "done"

    def _line(self) -> bytes | None:
        end = self._buf.find(b"\r\n")
        if end < 0:
            if len(self._buf) > self.MAX_LINE:
                raise TransportError("chunk size or trailer line too long")
            return None
        line = bytes(self._buf[:end])
        del self._buf[: end + 2]
        return line

    def feed(self, data: bytes) -> bytes:
        """Buffer ``data``; return the body bytes it completes (possibly empty)."""
        self._buf += data
        out = bytearray()
        while self._buf and self._state != "done":
            if self._state == "size":
                line = self._line()
                if line is None:
                    break
                size = line.split(b";", 1)[0].strip()
                if not re.fullmatch(rb"[0-9A-Fa-f]{1,15}", size):
                    raise TransportError(f"bad chunk size {line[:32]!r}")
                self._left = int(size, 16)
                self._state = "data" if self._left else "trailer"
            elif self._state == "data":
                take = min(self._left, len(self._buf))
                out += self._buf[:take]
                del self._buf[:take]
                self._left -= take
                if not self._left:
                    self._state = "data-end"
            elif self._state == "data-end":
                if len(self._buf) < 2:
                    break
                if self._buf[:2] != b"\r\n":
                    raise TransportError("chunk not followed by CRLF")
                del self._buf[:2]
                self._state = "size"
            else:  # trailer: header lines until an empty one
                line = self._line()
                if line is None:
                    break
                if not line:
                    self._state = "done"
        return bytes(out)


class LengthBody:
    """A body of ``Content-Length`` bytes."""

    def __init__(self, length: int) -> None:
        self._left = length

    @property
    def done(self) -> bool:
        return self._left == 0

    def feed(self, data: bytes) -> bytes:
        out = data[: self._left]
        self._left -= len(out)
        return out


class UntilCloseBody:
    """A body delimited by the server closing the connection."""

    done = False

    def feed(self, data: bytes) -> bytes:
        return data


def body_for(head: ResponseHead) -> Body:
    """The body framing the response head announces."""
    codings = head.headers.get("transfer-encoding")
    if codings is not None:
        if codings.rsplit(",", 1)[-1].strip().lower() != "chunked":
            raise TransportError(f"unsupported transfer-encoding {codings!r}")
        return ChunkedDecoder()
    length = head.headers.get("content-length")
    if length is not None:
        if not re.fullmatch(r"[0-9]{1,18}", length):
            raise TransportError(f"bad content-length {length[:32]!r}")
        return LengthBody(int(length))
    return UntilCloseBody()


def recv_within(sock: Any, timeout: float) -> bytes | None:
    """Up to RECV_SIZE bytes, b"" at EOF, None if ``timeout`` passed first."""
    sock.settimeout(max(timeout, 0.001))
    try:
        data: bytes = sock.recv(RECV_SIZE)
    except TimeoutError:
        return None
    return data


def receive(sock: Any, last_heard: float, timeout: float, clock: Clock) -> bytes | None:
    """The next bytes of a stream heard from at ``last_heard``: b"" at EOF, None if nothing
    came yet (ask again); TransportError once nothing was heard for ``timeout`` seconds."""
    now = clock()
    if peer_dead(last_heard, now, timeout):
        raise TransportError(f"nothing heard for {timeout}s")
    return recv_within(sock, last_heard + timeout - now + 0.001)


@dataclass(frozen=True)
class Publisher:
    """Where a subscriber connects: the publisher's ``url_base`` and the CA file that
    verifies it (``https://``), read again at each connection."""

    address: tuple[str | None, int]
    secure: bool
    netloc: str
    base: str  # the URL's path, without a trailing /
    ca_file: str | None

    @classmethod
    def of(
        cls,
        url_base: str,
        ca_file: str | None,
        heartbeat_timeout: float,
        backoff: tuple[float, float],
    ) -> Publisher:
        """Also checks a subscriber's timing: ``heartbeat_timeout`` > 0 and ``backoff``
        (min, max) with 0 < min <= max."""
        url = tls.split_url(url_base)
        if not 0 < backoff[0] <= backoff[1]:
            raise ValueError("backoff must be (min, max) with 0 < min <= max")
        if heartbeat_timeout <= 0:
            raise ValueError("heartbeat_timeout must be > 0")
        address = (url.hostname, tls.default_port(url))
        return cls(address, url.scheme == "https", url.netloc, url.path.rstrip("/"), ca_file)

    def connect(self, timeout: float) -> Any:
        """A green socket to the publisher, in TLS for https (its certificate checked against
        ``ca_file``, its name or IP too); connect and handshake bounded by ``timeout``."""
        sock = green_socket.create_connection(self.address, timeout=timeout)
        if self.secure:
            try:
                context = tls.client_context(self.ca_file, green=True)
                sock = context.wrap_socket(sock, server_hostname=self.address[0])
            except BaseException:
                sock.close()
                raise
        return sock


def read_head(sock: Any, deadline: float, clock: Clock) -> tuple[ResponseHead, bytes]:
    """Read a response head by ``deadline``; return it and the bytes after it."""
    buf = bytearray()
    while (end := buf.find(b"\r\n\r\n")) < 0:
        if len(buf) > MAX_HEAD:
            raise TransportError("response head too large")
        data = recv_within(sock, deadline - clock())
        if data is None:
            raise TransportError("timed out waiting for the response")
        if not data:
            raise TransportError("connection closed before the response")
        buf += data
    return parse_head(bytes(buf[:end])), bytes(buf[end + 4 :])


def check_ndjson(head: ResponseHead) -> None:
    ctype = head.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/x-ndjson":
        raise TransportError(f"unexpected content-type {ctype[:64]!r}")


def read_body(
    sock: Any, body: Body, data: bytes, deadline: float, clock: Clock, limit: int
) -> bytes:
    """A whole (error or JSON) body, at most ``limit`` bytes: what came by ``deadline``."""
    text = bytearray()
    while True:
        text += body.feed(data)
        if body.done or len(text) >= limit:
            return bytes(text[:limit])
        received = recv_within(sock, deadline - clock())
        if not received:  # timeout or EOF: what we have
            return bytes(text)
        data = received


def error_detail(
    sock: Any, head: ResponseHead, body: Body, data: bytes, deadline: float, clock: Clock
) -> str:
    """The JSON error body's ``error field detail`` (else the reason phrase)."""
    text = read_body(sock, body, data, deadline, clock, MAX_ERROR_BODY)
    detail = head.reason
    try:
        doc = json.loads(text)
        if isinstance(doc, dict):
            detail = " ".join(str(doc[f])[:256] for f in ("error", "field", "detail") if doc.get(f))
    except ValueError:
        pass
    return detail


def delay(backoff: tuple[float, float], failures: int, slow: bool, rng: random.Random) -> float:
    """Seconds before the next attempt: ``backoff`` (min, max) doubling per failure,
    jittered to 50-100 %; ``slow``: the max."""
    low, high = backoff
    base = high if slow else min(high, low * 2 ** min(failures, 30))
    return rng.uniform(base / 2, base)


# --- the client -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _End:
    """How a session ended: the error to record (None: clean), and what to do next."""

    error: str | None = None
    stop: bool = False
    slow: bool = False


T = TypeVar("T")


class Gated:
    """Connection attempts through an optional shared ``gate``, held from the connect until
    ``_release_gate`` (the first message), and a backoff pause that ``_wake`` cuts short."""

    def __init__(self, gate: Gate | None) -> None:
        self._gate = gate
        self._gated = False  # holding the gate
        self._pause_event: Any = None

    def _through_gate(self, session: Callable[[], T]) -> T:
        if self._gate is not None:
            self._gate.acquire()
            self._gated = True
        try:
            return session()
        finally:
            self._release_gate()

    def _release_gate(self) -> None:
        if self._gated:
            self._gated = False
            assert self._gate is not None
            self._gate.release()

    def _wake(self) -> None:
        event = self._pause_event
        if event is not None and not event.ready():
            event.send(None)

    def _pause(self, seconds: float) -> None:
        self._pause_event = eventlet.event.Event()
        try:
            self._pause_event.wait(seconds)
        finally:
            self._pause_event = None


class Follower:
    """One stream's replica, counters and callbacks: what a :class:`StreamClient` (a stream on
    its own connection) and a channel's ``Subscription`` share.

    ``on_change(replica, msg)`` runs after each applied snapshot or delta; ``on_close(reason)``
    when the publisher sends Close; ``on_http_error(status)`` after each refusal (the follower
    retries it; the consumer decides what the status means). A Close whose reason is in
    ``retry_close_reasons`` (default: ``shutdown``, ``grant-expired``) is followed by a
    resubscription with ``since``; any other (``peering-gone``) ends it, ``closed_reason`` set.
    On RESYNC the next request asks for a snapshot (no ``since``): a gap on an in-order TCP
    stream means the publisher or its incarnation is not what we think.
    """

    def __init__(
        self,
        service: ServiceName,
        key: str,
        *,
        policy: str | None = None,
        host: str | None = None,
        on_change: OnChange | None = None,
        on_close: Callable[[str], None] | None = None,
        on_http_error: Callable[[int], None] | None = None,
        retry_close_reasons: Collection[str] = DEFAULT_RETRY_CLOSE,
        replica: ReplicaState | None = None,
    ) -> None:
        self.service = ServiceName(service)
        self.key = check_name("key", key)
        self.policy = None if policy is None else check_name("policy", policy)
        self.host = None if host is None else check_name("host", host)
        self.on_change = on_change
        self.on_close = on_close
        self.on_http_error = on_http_error
        self.retry_close_reasons = frozenset(retry_close_reasons)
        self.replica = replica if replica is not None else ReplicaState(self.service, self.key)
        self.auth: str | None = None
        self.used_auth: str | None = None  # the credential (or grant) of the latest request
        self.only: frozenset[str] | None = None  # a destination filter (docs/protocol.md)
        self.want_snapshot = False  # ask without since (after a RESYNC)
        # Counters and status (read them any time).
        self.reconnects = 0
        self.bytes_received = 0  # NDJSON bytes (after de-chunking), like the hub's bytes_sent
        self.messages_received = 0
        self.objects_received = 0  # snapshot objects + delta upserts + delta deletes
        self.snapshots_received = 0
        self.deltas_received = 0
        self.heartbeats_received = 0
        self.resyncs = 0
        self.last_error: str | None = None
        self.last_status: int | None = None
        self.closed_reason: str | None = None

        self._finished: Any = None  # an Event, sent when it ends (stopped, closed for good)

    @property
    def version(self) -> int | None:
        """The last version fully applied (None before the first snapshot)."""
        return self.replica.version

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until it ends (stopped, or closed for good); True if it has."""
        if self._finished is None:
            return True
        self._finished.wait(timeout)
        return bool(self._finished.ready())

    def check_auth(self, auth: str | None) -> None:
        if auth is not None and not GRANT_RE.fullmatch(auth):
            raise ValueError("auth must be a grant token ([A-Za-z0-9._-], at most 2048 chars)")
        if self.policy is not None and self.host is None:
            raise ValueError("a peer stream (policy) needs a host: the grant's scope names it")

    def apply(self, msg: Snapshot | Delta | Heartbeat) -> str | None:
        """Apply a message to the replica (ProtocolError for another service or key), count
        it and call ``on_change`` if it changed the replica. A RESYNC returns why, and the
        next request asks for a snapshot."""
        outcome = self.replica.apply(msg)
        if isinstance(msg, Snapshot):
            self.snapshots_received += 1
            self.objects_received += len(msg.objects)
        elif isinstance(msg, Delta):
            self.deltas_received += 1
            self.objects_received += len(msg.upserts) + len(msg.deletes)
        else:
            self.heartbeats_received += 1
        if outcome is Outcome.RESYNC:
            self.resyncs += 1
            self.want_snapshot = True
            return f"resync: got version {msg.version} at {self.replica.version}"
        if outcome is Outcome.APPLIED:
            self.want_snapshot = False
            assert not isinstance(msg, Heartbeat)
            self.callback(self.on_change, self.replica, msg)
        return None

    def closed(self, reason: str) -> bool:
        """The publisher closed the stream; True if it is to be followed again."""
        self.closed_reason = reason
        self.callback(self.on_close, reason)
        return reason in self.retry_close_reasons

    def callback(self, fn: Callable[..., None] | None, *args: Any) -> None:
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:  # the consumer's bug must not kill the stream
            log.exception("%s/%s: callback %r failed", self.service, self.key, fn)

    def wanted(self) -> dict[str, Any]:
        """What a subscription asks for: service, key, policy and host if any, and ``since``
        unless a snapshot is wanted (a request's parameters, a channel entry's fields)."""
        doc: dict[str, Any] = {"service": self.service.value, "key": self.key}
        if self.policy is not None:
            doc["policy"] = self.policy
        if self.host is not None:
            doc["host"] = self.host
        if self.only is not None:
            doc["dst"] = sorted(self.only)
        since = None if self.want_snapshot else self.replica.since
        if since is not None:
            doc["since"] = since
        return doc

    def narrow(self, only: frozenset[str] | None) -> bool:
        """Follow only the objects of these addresses from the next subscribe on (None: the
        whole stream); True if that changed the filter. The next subscribe asks for a
        snapshot: deltas since our version would miss what the old filter left out."""
        if only == self.only:
            return False
        self.only = only
        self.want_snapshot = True
        return True


class StreamClient(Follower, Gated):
    """Keeps a :class:`ReplicaState` of one stream up to date, in its own green thread.

    ``on_change(replica, msg)`` runs after each applied snapshot or delta; ``on_close(reason)``
    when the publisher sends Close; ``on_http_error(status)`` after each answer other than 200
    (the client retries it; the consumer decides what the status means). A Close whose reason is in ``retry_close_reasons``
    (default: ``shutdown``, ``grant-expired``) is followed by a reconnect with ``since``; any
    other reason (``peering-gone``) ends the thread with ``closed_reason`` set. On RESYNC the
    next request asks for a snapshot (no ``since``): a gap on an in-order TCP stream means the
    publisher or its incarnation is not what we think, so ``since`` is not trusted.
    Reconnects wait ``backoff`` (min, max) seconds, doubling per failed attempt, jittered to
    50-100%; HTTP 400 waits the max. An optional ``gate`` (a semaphore shared by many
    clients) bounds how many of them are connecting at once: a client holds it from
    ``connect`` until its first message (or the end of that attempt), so a process that
    starts or reconnects thousands of streams does not flood the publisher's listen queue.
    """

    def __init__(
        self,
        url_base: str,
        service: ServiceName,
        key: str,
        *,
        policy: str | None = None,
        host: str | None = None,
        auth: str | None = None,
        credential: str | None = None,
        on_change: OnChange | None = None,
        on_close: Callable[[str], None] | None = None,
        on_http_error: Callable[[int], None] | None = None,
        heartbeat_timeout: float = 15.0,
        backoff: tuple[float, float] = (0.1, 2.0),
        retry_close_reasons: Collection[str] = DEFAULT_RETRY_CLOSE,
        replica: ReplicaState | None = None,
        max_line: int = DEFAULT_MAX_LINE,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
        gate: Gate | None = None,
        ca_file: str | None = None,
    ) -> None:
        self.publisher = Publisher.of(url_base, ca_file, heartbeat_timeout, backoff)
        super().__init__(
            service,
            key,
            policy=policy,
            host=host,
            on_change=on_change,
            on_close=on_close,
            on_http_error=on_http_error,
            retry_close_reasons=retry_close_reasons,
            replica=replica,
        )
        self._path = self.publisher.base + "/v1/subscribe"
        Gated.__init__(self, gate)
        self.set_auth(auth)
        # Who is asking (a host's credential): sent as the bearer token, and then a peer
        # stream's grant goes in the Meshpeer-Grant header (docs/protocol.md).
        self.credential = credential
        self.heartbeat_timeout = heartbeat_timeout
        self.backoff = backoff
        self.max_line = max_line
        self._clock = clock
        self._rng = rng or random.Random()
        self.connected = False
        # Green thread state.
        self._healthy = False
        self._stopping = False
        self._thread: Any = None

    # --- control ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._thread.dead

    def start(self) -> None:
        """Start (or restart after :meth:`stop`) the green thread; resumes with ``since``."""
        if self.running:
            return
        self._stopping = False
        self._finished = eventlet.event.Event()
        self._thread = eventlet.spawn(self._run, self._finished)

    def stop(self) -> None:
        """Stop the green thread (keeps the replica). Safe to call from ``on_change``."""
        self._stopping = True
        self._wake()
        thread = self._thread
        if thread is not None and thread is not eventlet.getcurrent() and not thread.dead:
            thread.kill()
            if not self._finished.ready():  # killed before it ever ran
                self._finished.send(None)

    def set_auth(self, auth: str | None) -> None:
        """Use ``auth`` (a peer stream's grant, else the bearer credential) from the
        next request on; cuts a pending backoff short."""
        self.check_auth(auth)
        self.auth = auth
        self._wake()

    # --- the loop --------------------------------------------------------------------------

    def _delay(self, failures: int, slow: bool) -> float:
        return delay(self.backoff, failures, slow, self._rng)

    def _run(self, finished: Any) -> None:
        failures = 0
        first = True
        try:
            while not self._stopping:
                if not first:
                    self.reconnects += 1
                first = False
                self._healthy = False
                try:
                    end = self._session()
                except ProtocolError as exc:
                    end = _End(f"protocol error: {exc}")
                except TransportError as exc:
                    end = _End(f"http: {exc}")
                except OSError as exc:  # refused, reset, connect timeout, DNS
                    end = _End(f"{type(exc).__name__}: {exc}")
                finally:
                    self.connected = False
                if end.error is not None:
                    self.last_error = end.error
                    log.info("%s/%s: stream ended: %s", self.service, self.key, end.error)
                if end.stop or self._stopping:
                    break
                failures = 0 if self._healthy else failures + 1
                self._pause(self._delay(failures, end.slow))
        finally:
            self.connected = False
            finished.send(None)

    def _request(self) -> bytes:
        params = {
            k: ",".join(v) if isinstance(v, list) else str(v) for k, v in self.wanted().items()
        }  # a destination filter's list: comma-separated in a query
        lines = [
            f"GET {self._path}?{urlencode(params)} HTTP/1.1",
            f"Host: {self.publisher.netloc}",
            "Accept: application/x-ndjson",
            "Connection: close",
            "User-Agent: meshpeer-streaming/1",
        ]
        self.used_auth = self.auth
        if self.credential is not None and self.policy is not None and self.auth is not None:
            lines.append(f"{GRANT_HEADER}: {self.auth}")
            lines.append(f"Authorization: Bearer {self.credential}")
        elif self.auth is not None:
            lines.append(f"Authorization: Bearer {self.auth}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")

    def _session(self) -> _End:
        return self._through_gate(self._connected_session)

    def _connected_session(self) -> _End:
        sock = self.publisher.connect(self.heartbeat_timeout)
        try:
            sock.sendall(self._request())
            deadline = self._clock() + self.heartbeat_timeout
            head, rest = read_head(sock, deadline, self._clock)
            body = body_for(head)
            self.last_status = head.status
            if head.status != 200:
                failed = self._http_error(sock, head, body, rest, deadline)
                self.callback(self.on_http_error, head.status)
                return failed
            check_ndjson(head)
            self.connected = True
            return self._read_stream(sock, body, rest)
        finally:
            sock.close()

    def _http_error(
        self, sock: Any, head: ResponseHead, body: Body, data: bytes, deadline: float
    ) -> _End:
        detail = error_detail(sock, head, body, data, deadline, self._clock)
        return _End(f"HTTP {head.status}: {detail}", slow=head.status in SLOW_STATUSES)

    def _read_stream(self, sock: Any, body: Body, data: bytes) -> _End:
        decoder = Decoder(self.max_line)
        last_heard = self._clock()
        while True:
            if data:
                # Any bytes count as life, not only whole lines: a large snapshot on a slow link
                # must not look like a dead peer.
                last_heard = self._clock()
                payload = body.feed(data)
                self.bytes_received += len(payload)
                for msg in decoder.feed(payload):
                    end = self._handle(msg)
                    if end is not None:
                        return end
                    if self._stopping:
                        return _End(stop=True)
                decoder.feed(b"")  # raises now if a bad line followed the good ones
            if body.done:
                decoder.eof()
                return _End("server ended the response")
            try:
                received = receive(sock, last_heard, self.heartbeat_timeout, self._clock)
            except TransportError as exc:  # silence
                return _End(str(exc))
            if received is None:
                data = b""
                continue
            if not received:
                decoder.eof()  # raises on a partial line
                if isinstance(body, ChunkedDecoder):
                    return _End("connection closed inside the response")
                return _End("server closed the connection")
            data = received

    def _handle(self, msg: Message) -> _End | None:
        self.messages_received += 1
        self._release_gate()  # the stream has started: let the next connection in
        if isinstance(msg, Snapshot | Delta | Heartbeat):
            self._healthy = True
            resync = self.apply(msg)
            return None if resync is None else _End(resync)
        if isinstance(msg, Close):
            return _End(stop=not self.closed(msg.reason))
        assert isinstance(msg, ErrorMsg)
        return _End(f"server error {msg.code}: {msg.detail}")
