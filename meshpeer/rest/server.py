"""Serve a WSGI app on the eventlet hub (the hub os-ken runs on in the controller).

Streaming: ``minimum_chunk_size=0`` makes eventlet write and flush each ``app_iter`` item as its
own HTTP/1.1 chunk as soon as it is yielded (its default buffers 4 KiB first, which would hold
back subscription deltas). ``debug=False``: eventlet never sends a traceback to a client.
eventlet's own access and error lines go to the ``meshpeer.rest.wsgi`` logger at DEBUG.
"""

from __future__ import annotations

import logging
from typing import Any

import eventlet
import eventlet.wsgi

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


def serve(
    app: Any, host: str, port: int, *, backlog: int = 1024, max_size: int = 65536
) -> tuple[Any, int]:
    """Listen on ``host:port`` (0 = ephemeral) and serve ``app`` in a green thread.

    ``max_size`` bounds concurrent connections (green threads). Every subscription holds
    one for good, so eventlet's default of 1024 would cap a shard at 1024 subscribers.

    Returns ``(green thread, bound port)``. ``thread.kill()`` stops accepting, closes idle
    connections, waits for in-flight requests and closes the socket.
    """
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
    )
    return thread, bound
