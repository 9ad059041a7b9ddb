"""Serve a WSGI app on the eventlet hub (the hub os-ken runs on in the controller).

Streaming: ``minimum_chunk_size=0`` makes eventlet write and flush each ``app_iter`` item as its
own HTTP/1.1 chunk as soon as it is yielded (its default buffers 4 KiB first, which would hold
back subscription deltas). ``debug=False``: eventlet never sends a traceback to a client.
eventlet's own access and error lines go to the ``meshpeer.rest.wsgi`` logger at DEBUG.

Connections (docs/reliability.md, "Connections"): the accept loop is ours, not
``eventlet.wsgi.server``'s, which ends for good on the first accept error it does not expect
(EMFILE when the fd table is full) and then waits forever for its open connections. Here:

- every accept error is logged and retried after a short backoff;
- each new connection is admitted, admitted after closing an idle one, or shed with a JSON 503
  (:mod:`meshpeer.rest.admission`: limits in total and per client address);
- a connection waiting for a request is closed after ``idle_timeout``; once its first byte has
  come, the request line and headers must arrive within ``header_timeout`` (a total deadline,
  so a slowloris client dripping a byte at a time gains nothing), and the body, once the
  handler reads it, within ``body_timeout`` (a JSON 408). A response being written, e.g. a
  streaming subscription, has no deadline: it is active, not idle;
- what the HTTP layer refuses before any route sees the request (a request line longer than
  ``MAX_REQUEST_LINE``, a header line or header block too large, a malformed request line,
  bad framing headers) is answered with the same JSON ``{error, field, detail}`` body as every
  other refusal (eventlet's and the stdlib's are empty, plain text or HTML).

TLS (docs/security.md, "Transport"): with an ``ssl`` context, each admitted connection does
its handshake in its own green thread, within ``header_timeout`` like a request's headers (a
client that stalls the handshake holds its connection no longer than one that stalls its
headers), before eventlet's HTTP handler sees it. A shed connection gets its 503 after a
handshake bounded like its linger; past ``SHED_LINGER_MAX`` lingering ones it is just closed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import resource
import socket
import ssl
import sys
import time
import traceback
from http import HTTPStatus
from typing import Any

import eventlet
import eventlet.wsgi
from eventlet import greenio

from meshpeer.rest import errors
from meshpeer.rest.admission import (
    Limits,
    Load,
    Verdict,
    accept_backoff,
    admit,
    connection_cap,
)
from meshpeer.rest.errors import ApiError

MAX_REQUEST_LINE = 8192
SHED_LINGER_MAX = 256  # shed connections waiting for their client to read the 503, at most
SHED_LOG_INTERVAL = 5.0  # seconds between "shedding" warnings
REFUSE_LINGER = 1.0  # seconds a refused request's connection reads what is still coming

log = logging.getLogger(__name__)
_wsgi_log = logging.getLogger("meshpeer.rest.wsgi")


class _QuietLog:
    """The logger-like object eventlet.wsgi writes to, demoted to DEBUG."""

    def info(self, msg: str, *args: object, **kwargs: object) -> None:
        _wsgi_log.debug(msg, *args)

    def debug(self, msg: str, *args: object, **kwargs: object) -> None:
        _wsgi_log.debug(msg, *args)

    def error(self, msg: str, *args: object, **kwargs: object) -> None:
        _wsgi_log.warning(msg, *args)

    def write(self, msg: str, *args: object) -> None:
        _wsgi_log.debug(msg.rstrip(), *args)


class _CheapTraceback:
    """Stands in for the ``traceback`` module inside ``eventlet.wsgi``.

    eventlet formats a full traceback (``traceback.format_exc``) for every exception while
    writing a response, e.g. each subscriber that disconnected before its next heartbeat, and
    hands it to its log, which we demote to DEBUG. On Python 3.11+ that formatting parses the
    source of every frame for the error carets: it took about a quarter of a shard's CPU in the
    1,000-host simulation while subscribers reconnected. Unless DEBUG is on, a one-line
    summary is enough.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(traceback, name)

    def format_exc(self, limit: int | None = None, chain: bool = True) -> str:
        if _wsgi_log.isEnabledFor(logging.DEBUG):
            return traceback.format_exc(limit, chain)
        exc = sys.exc_info()[1]
        return f"{type(exc).__name__}: {exc}"


def _quiet_tracebacks() -> None:
    if not isinstance(eventlet.wsgi.traceback, _CheapTraceback):
        eventlet.wsgi.traceback = _CheapTraceback()


def error_bytes(exc: ApiError) -> bytes:
    """A whole HTTP/1.1 answer carrying ``exc`` as the standard JSON error body; it closes the
    connection (written by the HTTP layer, outside any route)."""
    body = json.dumps(exc.body(), separators=(",", ":")).encode()
    lines = [
        f"HTTP/1.1 {exc.status} {HTTPStatus(exc.status).phrase}",
        "Connection: close",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        *(f"{name}: {value}" for name, value in exc.headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def framing_problem(content_length: str | None, transfer_encoding: str | None) -> str | None:
    """Why a request's body framing headers are refused (None: they are fine). eventlet checks
    the same and answers with empty or plain-text 400s; we check first and answer JSON."""
    if content_length is not None:
        text = content_length.strip()
        if not text.isascii() or not text.isdigit():
            return f"Content-Length must be a non-negative integer, got {content_length!r}"
        if transfer_encoding is not None:
            return "Content-Length and Transfer-Encoding are not allowed together"
    return None


class _Late(Exception):
    """Raised into a connection's green thread when its headers or body miss their deadline."""


class _Conn:
    """One open connection, as the admission bookkeeping sees it."""

    __slots__ = ("client", "gone", "sock")

    def __init__(self, client: str, sock: Any) -> None:
        self.client = client
        self.sock = sock
        self.gone = False


class ConnectionTable:
    """Open connections: counts in total and per client, and the idle ones, oldest first."""

    def __init__(self) -> None:
        self.total = 0
        self._by_client: dict[str, int] = {}
        self._idle: dict[_Conn, None] = {}  # insertion order: oldest idle first
        self._idle_by_client: dict[str, dict[_Conn, None]] = {}

    def load(self, client: str) -> Load:
        idle = self._idle_by_client.get(client, {})
        return Load(self.total, len(self._idle), self._by_client.get(client, 0), len(idle))

    def add(self, conn: _Conn) -> None:
        self.total += 1
        self._by_client[conn.client] = self._by_client.get(conn.client, 0) + 1
        self.set_idle(conn)

    def set_idle(self, conn: _Conn) -> None:
        if not conn.gone:
            self.set_busy(conn)  # back to the end: idle since now
            self._idle[conn] = None
            self._idle_by_client.setdefault(conn.client, {})[conn] = None

    def set_busy(self, conn: _Conn) -> None:
        self._idle.pop(conn, None)
        mine = self._idle_by_client.get(conn.client)
        if mine is not None:
            mine.pop(conn, None)
            if not mine:
                del self._idle_by_client[conn.client]

    def remove(self, conn: _Conn) -> None:
        if conn.gone:
            return
        self.set_busy(conn)
        conn.gone = True
        self.total -= 1
        left = self._by_client[conn.client] - 1
        if left:
            self._by_client[conn.client] = left
        else:
            del self._by_client[conn.client]

    def oldest_idle(self, client: str | None = None) -> _Conn | None:
        idle = self._idle if client is None else self._idle_by_client.get(client, {})
        return next(iter(idle), None)

    def idle(self) -> list[_Conn]:
        return list(self._idle)


class _BodyDeadline:
    """``wsgi.input`` with a total deadline: the body must arrive within ``limit`` seconds of
    the headers. Late, the read raises a 408 ApiError (the router answers it) and the
    connection is closed after the answer."""

    def __init__(self, inner: Any, protocol: _Protocol, limit: float) -> None:
        self._inner = inner
        self._protocol = protocol
        self._limit = limit
        self._deadline = time.monotonic() + limit

    def _within(self, read: Any, *args: Any) -> Any:
        left = max(self._deadline - time.monotonic(), 0.001)
        try:
            with eventlet.Timeout(left, _Late()):
                return read(*args)
        except _Late:
            self._protocol.close_connection = 1
            raise errors.request_timeout("request body", self._limit) from None

    def read(self, *args: Any) -> Any:
        return self._within(self._inner.read, *args)

    def readline(self, *args: Any) -> Any:
        return self._within(self._inner.readline, *args)

    def readlines(self, *args: Any) -> Any:
        return self._within(self._inner.readlines, *args)

    def __iter__(self) -> Any:
        return iter(self.readline, b"")


class _Protocol(eventlet.wsgi.HttpProtocol):  # type: ignore[misc]
    """eventlet's HTTP/1.1 handler with the idle and header deadlines and JSON refusals."""

    server: _Server
    _header_timer: Any = None
    _refused = False  # answered by the HTTP layer, closing with the request maybe unread

    def _read_request_line(self) -> bytes:
        conn: _Conn = self.conn_state[3]
        if self.rfile.closed:
            self.close_connection = 1
            return b""
        self.server.table.set_idle(conn)
        sock = self.connection
        try:
            sock.settimeout(self.server.limits.idle_timeout)
            first = self.rfile.peek(1)
        except TimeoutError:
            _wsgi_log.debug("closing a connection from %s: idle", conn.client)
            return b""
        except OSError:  # reset, or shut down to make room for another connection
            return b""
        finally:
            self.server.table.set_busy(conn)
            if not conn.gone:
                sock.settimeout(None)
        if not first:
            return b""
        self._header_timer = eventlet.Timeout(self.server.limits.header_timeout, _Late())
        line: bytes = self.rfile.readline(self.server.url_length_limit)
        return line

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except _Late:
            limit = self.server.limits.header_timeout
            _wsgi_log.debug("closing a connection from %s: headers too slow", self.client_address)
            self.refuse(errors.request_timeout("request line and headers", limit))
        finally:
            self._stop_header_timer()
        too_long = len(getattr(self, "raw_requestline", b"")) >= self.server.url_length_limit
        if self.close_connection and (self._refused or too_long):
            self._linger()

    def _linger(self) -> None:
        """Close gently after a refusal: shut our side, then read and drop what the client
        still sends, for at most REFUSE_LINGER seconds. Closed at once with unread input, the
        connection is reset, and a client still sending the rest of its request (over TLS, a
        100 KB URL does not fit the socket buffers) fails before it reads the answer. Over TLS
        our side stays open (shutting it would end the TLS layer under the reads): the client
        closes once it has the answer."""
        sock = self.connection
        try:
            self.wfile.flush()
            if not isinstance(sock, ssl.SSLSocket):
                sock.shutdown(socket.SHUT_WR)
            sock.settimeout(REFUSE_LINGER)
            with eventlet.Timeout(REFUSE_LINGER, False):
                while sock.recv(65536):
                    pass
        except OSError:
            pass

    def parse_request(self) -> bool:
        try:
            ok = bool(super().parse_request())
        except (eventlet.wsgi.HeaderLineTooLong, eventlet.wsgi.HeadersTooLarge) as exc:
            self._stop_header_timer()  # before writing the refusal
            what = (
                f"a header line reaches {eventlet.wsgi.MAX_HEADER_LINE} bytes"
                if isinstance(exc, eventlet.wsgi.HeaderLineTooLong)
                else f"the headers exceed {eventlet.wsgi.MAX_TOTAL_HEADER_SIZE} bytes"
            )
            self.refuse(errors.error_for(431, what))
            return False
        finally:
            self._stop_header_timer()
        if not ok:
            return False
        problem = framing_problem(
            self.headers.get("content-length"), self.headers.get("transfer-encoding")
        )
        if problem is not None:
            self.refuse(errors.bad_request("Content-Length", problem))
            return False
        return True

    def get_environ(self) -> dict[str, Any]:
        env: dict[str, Any] = super().get_environ()
        env["wsgi.input"] = _BodyDeadline(env["wsgi.input"], self, self.server.limits.body_timeout)
        return env

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's refusals (malformed request line, HTTP version, too many headers)."""
        detail = message or HTTPStatus(code).phrase
        if explain and explain != detail:
            detail = f"{detail}: {explain}"
        self.refuse(errors.error_for(code, detail))

    def log_message(self, format: str, *args: Any) -> None:
        _wsgi_log.debug(format, *args)

    def refuse(self, exc: ApiError) -> None:
        """Answer ``exc`` as JSON and close the connection."""
        self.close_connection = 1
        self._refused = True
        try:
            self.connection.settimeout(self.server.limits.header_timeout)
            self.wfile.write(error_bytes(exc))
            self.wfile.flush()
        except OSError:
            pass


class _Server(eventlet.wsgi.Server):  # type: ignore[misc]
    """eventlet's server state plus our limits, connection table and accept loop."""

    def __init__(
        self, listener: Any, app: Any, limits: Limits, cap: int, tls: ssl.SSLContext | None
    ) -> None:
        super().__init__(
            listener,
            listener.getsockname(),
            app,
            log=_QuietLog(),
            max_http_version="HTTP/1.1",
            protocol=_Protocol,
            minimum_chunk_size=0,
            keepalive=limits.idle_timeout,  # only for the Keep-Alive: timeout= header
            url_length_limit=MAX_REQUEST_LINE,
            debug=False,
        )
        self.limits = limits
        self.cap = cap
        self.tls = tls
        self.table = ConnectionTable()
        self.pool = eventlet.GreenPool(cap + 64)  # + room for evicted ones still closing
        self.shedding = 0
        self.shed_total = 0
        self.evicted_total = 0
        self._shed_logged = 0
        self._shed_log_at = 0.0

    @property
    def log_output(self) -> bool:
        """Whether eventlet formats an access line after each request: only when the
        ``meshpeer.rest.wsgi`` logger would show it (DEBUG). Formatting it (a timestamp, the
        client address, a ``%`` format) for a logger that drops it took ~2 % of a shard's CPU
        per endpoint create. Its error lines go to ``log`` whatever this says."""
        return _wsgi_log.isEnabledFor(logging.DEBUG)

    @log_output.setter
    def log_output(self, _value: bool) -> None:
        pass  # eventlet's __init__ sets it; the logger's level decides

    def get_environ(self) -> dict[str, Any]:
        env: dict[str, Any] = super().get_environ()
        if self.tls is not None:
            env["wsgi.url_scheme"], env["HTTPS"] = "https", "on"
        return env

    def process_request(self, conn_state: list[Any]) -> None:
        try:
            if self.tls is not None:
                # The TLS socket takes over the file descriptor: _closed closes it, eviction
                # shuts it down.
                conn_state[1] = conn_state[3].sock = self.secure(conn_state[1])
                if not self.handshake(conn_state[1], conn_state[3].client):
                    return
            super().process_request(conn_state)
        except (ssl.SSLEOFError, ConnectionError) as exc:
            # The client went away without a TLS close (a host restarting): not a failure.
            log.debug(
                "REST API: the client of a connection from %s went away: %s", conn_state[0], exc
            )
        except Exception:
            log.warning("REST API: a connection from %s failed", conn_state[0], exc_info=True)

    def run(self) -> None:
        """Accept until killed (or the listening socket is closed); never stop on an error."""
        failures = 0
        try:
            while True:
                try:
                    sock, addr = self.socket.accept()
                except Exception as exc:
                    if _closed(self.socket):
                        return
                    failures += 1
                    delay = accept_backoff(failures)
                    log.warning(
                        "REST API: accept failed (%d in a row): %s; retrying in %.2f s",
                        failures,
                        exc,
                        delay,
                        exc_info=not isinstance(exc, OSError),
                    )
                    eventlet.sleep(delay)
                    continue
                failures = 0
                self.take(sock, addr)
        finally:
            self.stop()

    def take(self, sock: Any, addr: Any) -> None:
        client = str(addr[0]) if isinstance(addr, tuple) else str(addr)
        limit = self.limits.max_connections_per_client
        verdict = admit(self.table.load(client), self.cap, limit)
        if verdict in (Verdict.SHED_CLIENT, Verdict.SHED_TOTAL):
            detail = (
                f"too many connections from {client} (limit {limit}); retry later"
                if verdict is Verdict.SHED_CLIENT
                else f"the server is at its connection limit ({self.cap}); retry later"
            )
            self.shed(sock, client, errors.unavailable(detail))
            return
        if verdict is not Verdict.ADMIT:
            scope = client if verdict is Verdict.EVICT_CLIENT_IDLE else None
            victim = self.table.oldest_idle(scope)
            assert victim is not None, verdict  # admit() evicts only when there is one
            self.table.remove(victim)
            greenio.shutdown_safe(victim.sock)  # its reader wakes up with EOF and ends
            self.evicted_total += 1
        conn = _Conn(client, sock)
        self.table.add(conn)
        state = [addr, sock, eventlet.wsgi.STATE_IDLE, conn]
        self.pool.spawn(self.process_request, state).link(self._closed, state)

    def secure(self, sock: Any) -> Any:
        """``sock`` wrapped in TLS, handshake not yet done."""
        assert self.tls is not None
        return self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)

    def handshake(self, secure: Any, client: str, limit: float | None = None) -> bool:
        """Whether the TLS handshake on ``secure`` was done within ``limit`` seconds (default:
        the header timeout); if not (late, plain HTTP, unknown CA, reset) the caller closes."""
        limit = self.limits.header_timeout if limit is None else limit
        try:
            with eventlet.Timeout(limit, _Late()):
                secure.do_handshake()
        except _Late:
            _wsgi_log.debug("closing a connection from %s: TLS handshake too slow", client)
            return False
        except OSError as exc:  # ssl.SSLError is one
            _wsgi_log.debug("TLS handshake with %s failed: %s", client, exc)
            return False
        return True

    def _closed(self, _thread: Any, state: list[Any]) -> None:
        self.table.remove(state[3])
        state[2] = eventlet.wsgi.STATE_CLOSE
        greenio.shutdown_safe(state[1])
        state[1].close()

    def shed(self, sock: Any, client: str, exc: ApiError) -> None:
        """Answer 503 and close. The close waits (briefly, boundedly) for the client to have
        sent its request, so the 503 is not lost to a reset on unread data."""
        self.shed_total += 1
        now = time.monotonic()
        if now - self._shed_log_at >= SHED_LOG_INTERVAL:
            log.warning(
                "REST API: shedding connections (%d since the last report, %d open): %s",
                self.shed_total - self._shed_logged,
                self.table.total,
                exc.detail,
            )
            self._shed_log_at, self._shed_logged = now, self.shed_total
        data = error_bytes(exc)
        if self.shedding >= SHED_LINGER_MAX:
            if self.tls is None:  # over TLS there is no room for a handshake: just close
                try:
                    sock.settimeout(0)
                    sock.send(data)
                except OSError:
                    pass
            sock.close()
            return
        self.shedding += 1
        eventlet.spawn_n(self._linger, sock, data)

    def _linger(self, sock: Any, data: bytes) -> None:
        try:
            if self.tls is not None:
                sock = self.secure(sock)
                if not self.handshake(sock, "a shed client", limit=1.0):
                    return
            sock.settimeout(1.0)
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            with eventlet.Timeout(1.0, False):
                while sock.recv(4096):
                    pass
        except OSError:
            pass
        finally:
            sock.close()
            self.shedding -= 1

    def stop(self) -> None:
        """Stop accepting, close idle connections, wait for in-flight requests."""
        with contextlib.suppress(OSError):
            self.socket.close()
        for conn in self.table.idle():
            greenio.shutdown_safe(conn.sock)
        self.pool.waitall()


def _closed(sock: Any) -> bool:
    try:
        return bool(sock.fileno() < 0)
    except OSError as exc:
        return exc.errno == errno.EBADF


eventlet.wsgi.RESPONSE_414 = error_bytes(errors.uri_too_long(MAX_REQUEST_LINE))


def serve(
    app: Any,
    host: str,
    port: int,
    *,
    limits: Limits | None = None,
    backlog: int = 1024,
    fd_limit: int | None = None,
    tls: ssl.SSLContext | None = None,
) -> tuple[Any, int]:
    """Listen on ``host:port`` (0 = ephemeral) and serve ``app`` in a green thread.

    Returns ``(green thread, bound port)``; see :func:`serve_on`.
    """
    sock = eventlet.listen((host, port), backlog=backlog)
    bound: int = sock.getsockname()[1]
    return serve_on(sock, app, limits=limits, fd_limit=fd_limit, tls=tls), bound


def serve_on(
    listener: Any,
    app: Any,
    *,
    limits: Limits | None = None,
    fd_limit: int | None = None,
    tls: ssl.SSLContext | None = None,
) -> Any:
    """Serve ``app`` on a listening socket in a green thread; return the thread.

    ``limits``: connection limits and timeouts (default: :class:`Limits`' defaults). The total
    limit is capped below ``fd_limit`` (default: this process's soft RLIMIT_NOFILE).
    ``tls``: serve HTTPS with this (green) server context (:func:`meshpeer.tls.server_context`).
    ``thread.kill()`` stops accepting, closes idle connections, waits for in-flight requests
    and closes the socket.
    """
    _quiet_tracebacks()
    limits = limits or Limits()
    if fd_limit is None:
        fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    cap = connection_cap(limits.max_connections, fd_limit)
    return eventlet.spawn(_Server(listener, app, limits, cap, tls).run)
