"""meshpeer.rest.server: eventlet's per-exception traceback is cheap unless DEBUG is on."""

from __future__ import annotations

import logging

import eventlet.wsgi
import pytest

from meshpeer.rest import server


def _format_in_except() -> str:
    try:
        raise BrokenPipeError(32, "Broken pipe")
    except BrokenPipeError:
        return str(eventlet.wsgi.traceback.format_exc())


def test_serve_installs_one_line_tracebacks_unless_debug(caplog: pytest.LogCaptureFixture) -> None:
    thread, port = server.serve(lambda env, start: [], "127.0.0.1", 0)
    try:
        assert port > 0
        assert isinstance(eventlet.wsgi.traceback, server._CheapTraceback)
        caplog.set_level(logging.INFO, logger="meshpeer.rest.wsgi")
        assert _format_in_except() == "BrokenPipeError: [Errno 32] Broken pipe"
        caplog.set_level(logging.DEBUG, logger="meshpeer.rest.wsgi")
        full = _format_in_except()
        assert full.startswith("Traceback (most recent call last):")
        assert "_format_in_except" in full and full.rstrip().endswith("Broken pipe")
        # Everything else of the traceback module is still there.
        assert eventlet.wsgi.traceback.print_exc is not None
    finally:
        thread.kill()
