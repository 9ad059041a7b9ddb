"""meshpeer.rest.server over TLS: HTTPS only, verified by CA and name, handshakes bounded by
the header timeout, idle TLS connections still evicted (docs/security.md, "Transport")."""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import eventlet
import pytest
from eventlet.green import socket as green_socket

from meshpeer import pki, tls
from meshpeer.rest import server
from meshpeer.rest.admission import Limits
from tests.support.wait import wait_for

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def _hello(env: Any, start: Any) -> list[bytes]:
    start("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pki.KeyPair]:
    d = tmp_path_factory.mktemp("pki")
    ca = pki.make_ca(str(d / "ca"), "test CA")
    return {
        "ca": ca,
        "server": pki.issue_server(ca, str(d / "s1"), "s1", ["127.0.0.1", "s1.example"]),
        "other": pki.make_ca(str(d / "other"), "another CA"),
    }


@pytest.fixture
def https(certs: dict[str, pki.KeyPair]) -> Iterator[int]:
    """An HTTPS server: header timeout 0.5 s, idle timeout 600 s, 2 connections a client."""
    pair = certs["server"]
    listener = eventlet.listen(("127.0.0.1", 0))
    context = tls.server_context(pair.cert_file, pair.key_file)
    thread = server.serve_on(
        listener,
        _hello,
        limits=Limits(header_timeout=0.5, idle_timeout=600.0, max_connections_per_client=2),
        tls=context,
    )
    try:
        yield listener.getsockname()[1]
    finally:
        thread.kill()


def _secure(port: int, ca_file: str, name: str = "127.0.0.1") -> Any:
    sock = green_socket.create_connection(("127.0.0.1", port), timeout=30)
    return tls.client_context(ca_file, green=True).wrap_socket(sock, server_hostname=name)


def _answer(sock: Any) -> bytes:
    sock.sendall(REQUEST)
    data = b""
    while not data.endswith(b"hello"):
        got = sock.recv(4096)
        assert got, data
        data += got
    return data


def _closed_by_server(sock: Any) -> bool:
    """Whether the server closes ``sock`` (within a generous 30 s)."""
    with eventlet.Timeout(30, False):
        try:
            while sock.recv(4096):
                pass
        except OSError:
            pass  # reset: closed too
        return True
    return False


def test_https_answers_and_plain_http_is_refused(https: int, certs: dict[str, pki.KeyPair]) -> None:
    port = https
    secure = _secure(port, certs["ca"].cert_file)
    assert _answer(secure).startswith(b"HTTP/1.1 200 OK")
    secure.close()
    plain = green_socket.create_connection(("127.0.0.1", port), timeout=30)
    plain.sendall(REQUEST)
    data = b""
    with eventlet.Timeout(30):
        try:
            while got := plain.recv(4096):
                data += got
        except OSError:
            pass
    assert b"HTTP/1.1" not in data  # no answer in clear: closed (TLS alert bytes at most)


def test_a_client_refuses_another_ca_and_another_name(
    https: int, certs: dict[str, pki.KeyPair]
) -> None:
    port = https
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        _secure(port, certs["other"].cert_file)
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _secure(port, certs["ca"].cert_file, name="s2.example")
    assert _answer(_secure(port, certs["ca"].cert_file, name="s1.example")).endswith(b"hello")


@pytest.mark.parametrize("sent", [b"", b"\x16\x03\x01\x02\x00\x01"], ids=["nothing", "a byte"])
def test_a_stalled_handshake_is_closed_by_the_header_timeout(https: int, sent: bytes) -> None:
    """idle_timeout is 600 s: only the header timeout (0.5 s) can close this connection."""
    port = https
    sock = green_socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(sent)  # nothing, or the start of a ClientHello, then silence
    assert _closed_by_server(sock)


def test_an_idle_tls_connection_is_evicted_for_a_new_one(
    https: int, certs: dict[str, pki.KeyPair]
) -> None:
    """Two connections per client: a third closes the oldest idle one (also over TLS)."""
    port = https
    first, second = (_secure(port, certs["ca"].cert_file) for _ in range(2))
    for sock in (first, second):
        _answer(sock)  # both handshaken, answered, now idle (kept alive)
    third = _secure(port, certs["ca"].cert_file)
    assert _answer(third).startswith(b"HTTP/1.1 200 OK")
    assert _closed_by_server(first)


def _issuer(sock: Any) -> str:
    cert = sock.getpeercert()
    return str(dict(item[0] for item in cert["issuer"])["commonName"])


def test_a_changed_certificate_serves_new_connections_and_open_ones_go_on(
    tmp_path: Path,
) -> None:
    """Rotation without a restart: the server's certificate and key are replaced (a new CA's);
    the next handshakes get the new certificate, a connection made before keeps being
    answered, a client's CA file that now holds both CAs is re-read by its next connection,
    and a key that does not match its certificate is refused and the certificate in use
    stays."""
    old_ca = pki.make_ca(str(tmp_path / "old"), "old CA")
    new_ca = pki.make_ca(str(tmp_path / "new"), "new CA")
    live = pki.issue_server(old_ca, str(tmp_path / "live"), "s1", ["127.0.0.1"])
    trust = tmp_path / "trust.pem"  # what a host holds: the old CA, then old and new
    trust.write_bytes(Path(old_ca.cert_file).read_bytes())
    cert = tls.ServerCertificate(live.cert_file, live.key_file)
    listener = eventlet.listen(("127.0.0.1", 0))
    thread = server.serve_on(listener, _hello, limits=Limits(idle_timeout=600.0), tls=cert.context)
    port = listener.getsockname()[1]
    try:
        before = _secure(port, str(trust))
        assert _answer(before).endswith(b"hello") and _issuer(before) == "old CA"
        assert cert.reload() is False  # nothing changed

        def replace_with(ca: pki.KeyPair, name: str) -> None:
            pair = pki.issue_server(ca, str(tmp_path / name), "s1", ["127.0.0.1"])
            os.replace(pair.key_file, live.key_file)
            os.replace(pair.cert_file, live.cert_file)

        replace_with(new_ca, "next")
        assert cert.reload() is True
        with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
            _secure(port, str(trust))  # the host does not trust the new CA yet
        trust.write_bytes(Path(old_ca.cert_file).read_bytes() + Path(new_ca.cert_file).read_bytes())
        after = _secure(port, str(trust))  # the same path, re-read
        assert _answer(after).endswith(b"hello") and _issuer(after) == "new CA"
        assert _answer(before).endswith(b"hello")  # the open connection went on
        assert _issuer(before) == "old CA"
        with pytest.raises(ssl.SSLCertVerificationError):
            _secure(port, old_ca.cert_file)  # the old CA alone no longer opens it

        stray = pki.issue_server(new_ca, str(tmp_path / "stray"), "s1", ["127.0.0.1"])
        os.replace(stray.key_file, live.key_file)  # a key without its certificate (yet)
        with pytest.raises(ssl.SSLError):
            cert.reload()
        kept = _secure(port, new_ca.cert_file)  # still served: the pair last taken
        assert _answer(kept).endswith(b"hello")
        assert cert.reload() is False  # tried again only when a file changes again
        os.replace(stray.cert_file, live.cert_file)
        assert cert.reload() is True
        assert _answer(_secure(port, new_ca.cert_file)).endswith(b"hello")
    finally:
        thread.kill()


def test_a_client_gone_from_a_tls_stream_is_no_failure(
    https_stream: int, certs: dict[str, pki.KeyPair], caplog: pytest.LogCaptureFixture
) -> None:
    """A host that goes away from its stream without a TLS close (a restart, a crash) used
    to be logged as a failed connection with a traceback (``SSLEOFError`` in the server's
    last flush), once per stream: it is an ordinary end of a connection."""
    caplog.set_level(logging.DEBUG, logger=server.__name__)
    sock = _secure(https_stream, certs["ca"].cert_file)
    me = str(sock.getsockname())  # the server logs the client's address

    def said(what: str) -> bool:
        return any(me in r.getMessage() and what in r.getMessage() for r in caplog.records)

    sock.sendall(REQUEST)
    assert sock.recv(4096)  # the stream's headers or first chunk
    sock.close()  # no close_notify
    wait_for(lambda: said("went away"), 30.0, sleep=eventlet.sleep, what="the end")
    assert not said("failed"), caplog.text


@pytest.fixture
def https_stream(certs: dict[str, pki.KeyPair]) -> Iterator[int]:
    """An HTTPS server whose one answer is an endless stream of chunks."""

    def endless(env: Any, start: Any) -> Iterator[bytes]:
        start("200 OK", [("Content-Type", "application/x-ndjson")])
        while True:
            yield b"{}\n"
            eventlet.sleep(0.01)

    pair = certs["server"]
    listener = eventlet.listen(("127.0.0.1", 0))
    context = tls.server_context(pair.cert_file, pair.key_file)
    thread = server.serve_on(listener, endless, tls=context)
    try:
        yield listener.getsockname()[1]
    finally:
        thread.kill()
