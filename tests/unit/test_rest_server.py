"""meshpeer.rest.server: cheap tracebacks unless DEBUG is on; an accept loop that survives errors."""

from __future__ import annotations

import errno
import logging
from typing import Any

import eventlet
import eventlet.wsgi
import pytest
from eventlet.green import socket as green_socket

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


class _FlakyListener:
    """A listening socket whose first ``failures`` accepts fail with EMFILE."""

    def __init__(self, inner: Any, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    def accept(self) -> Any:
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return self.inner.accept()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _hello(env: Any, start: Any) -> list[bytes]:
    start("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def test_accept_errors_are_logged_and_the_server_keeps_accepting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 17: eventlet's own accept loop ended for good, silently, on EMFILE."""
    listener = _FlakyListener(eventlet.listen(("127.0.0.1", 0)), failures=3)
    thread = server.serve_on(listener, _hello)
    try:
        with eventlet.Timeout(30):
            client = green_socket.create_connection(listener.getsockname())
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            while data := client.recv(4096):
                answer += data
            client.close()
    finally:
        thread.kill()
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"hello")
    failed = [r for r in caplog.records if "accept failed" in r.getMessage()]
    assert len(failed) == 3 and all("Too many open files" in r.getMessage() for r in failed)


def _get_once(address: Any) -> bytes:
    with eventlet.Timeout(30):
        client = green_socket.create_connection(address)
        client.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while data := client.recv(4096):
            answer += data
        client.close()
    return answer


def test_the_access_line_is_logged_at_debug_and_not_formatted_below(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """eventlet's access line reaches ``meshpeer.rest.wsgi`` at DEBUG, as before; at INFO
    the server does not build it (it was formatted per request, then dropped)."""
    listener = eventlet.listen(("127.0.0.1", 0))
    thread = server.serve_on(listener, _hello)
    try:
        caplog.set_level(logging.INFO, logger="meshpeer.rest.wsgi")
        formatted: list[str] = []
        real = eventlet.wsgi.HttpProtocol.log_date_time_string

        def spy(self: Any) -> str:
            formatted.append("x")
            return str(real(self))

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(eventlet.wsgi.HttpProtocol, "log_date_time_string", spy)
            assert _get_once(listener.getsockname()).endswith(b"hello")
            assert formatted == []
            assert not [r for r in caplog.records if "GET /x" in r.getMessage()]
            caplog.set_level(logging.DEBUG, logger="meshpeer.rest.wsgi")
            assert _get_once(listener.getsockname()).endswith(b"hello")
        lines = [r for r in caplog.records if "GET /x HTTP/1.1" in r.getMessage()]
        assert len(lines) == 1 and lines[0].levelno == logging.DEBUG
        assert lines[0].name == "meshpeer.rest.wsgi" and " 200 " in lines[0].getMessage()
    finally:
        thread.kill()
