"""Serve a WSGI app on the eventlet hub (the hub os-ken runs on in the controller).

Streaming: ``minimum_chunk_size=0`` makes eventlet write and flush each ``app_iter`` item as its
own HTTP/1.1 chunk as soon as it is yielded (its default buffers 4 KiB first, which would hold
back subscription deltas). ``debug=False``: eventlet never sends a traceback to a client.
eventlet's own access and error lines go to the ``meshpeer.rest.wsgi`` logger at DEBUG.

A request line (method, URL, version) longer than ``MAX_REQUEST_LINE`` never reaches the app:
eventlet answers 414 itself, with the JSON ``{error, field, detail}`` body every other refusal has
(its own is empty).
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from typing import Any

import eventlet
import eventlet.wsgi

from meshpeer.rest.errors import uri_too_long

MAX_REQUEST_LINE = 8192

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


def _json_414() -> bytes:
    body = json.dumps(uri_too_long(MAX_REQUEST_LINE).body(), separators=(",", ":")).encode()
    head = (
        "HTTP/1.0 414 Request URI Too Long\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def serve(
    app: Any, host: str, port: int, *, backlog: int = 1024, max_size: int = 65536
) -> tuple[Any, int]:
    """Listen on ``host:port`` (0 = ephemeral) and serve ``app`` in a green thread.

    ``max_size`` bounds concurrent connections (green threads). Every subscription holds
    one for good, so eventlet's default of 1024 would cap a shard at 1024 subscribers.

    Returns ``(green thread, bound port)``. ``thread.kill()`` stops accepting, closes idle
    connections, waits for in-flight requests and closes the socket.
    """
    _quiet_tracebacks()
    eventlet.wsgi.RESPONSE_414 = _json_414()  # read by eventlet at each refusal
    sock = eventlet.listen((host, port), backlog=backlog)
    bound: int = sock.getsockname()[1]
    thread = eventlet.spawn(
        eventlet.wsgi.server,
        sock,
        app,
        log=_QuietLog(),
        log_output=True,
        debug=False,
        minimum_chunk_size=0,
        max_size=max_size,
        url_length_limit=MAX_REQUEST_LINE,
    )
    return thread, bound
