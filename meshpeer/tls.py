"""TLS for the REST API, the subscription streams and the federation (docs/security.md,
"Transport").

A shard serves HTTPS with its own certificate (:func:`server_context`); every client of a
shard (the REST :class:`~meshpeer.client.Client`, the stream clients of OHCs and of the
federation) verifies that certificate against a CA file and checks the shard's name or IP
against it (:func:`client_context`). ``http://`` URLs stay plain: the lab's ``--plain-http``.

Both sides take changed files without a restart (docs/security.md, "Rotating certificates"):
a shard's :class:`ServerCertificate` loads its certificate and key again when they change,
for the connections that start after; a client re-reads its CA file (which may hold the old
and the new CA at once) on its next connection after the file changed.
"""

from __future__ import annotations

import functools
import os
import ssl
from typing import Any
from urllib.parse import SplitResult, urlsplit

SCHEMES = {"http": 80, "https": 443}
MIN_VERSION = ssl.TLSVersion.TLSv1_2


def split_url(url: str) -> SplitResult:
    """``url`` as a shard base URL (``http[s]://host[:port][/prefix]``), or ValueError."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"expected http[s]://host[:port][/prefix], not {url!r}")
    return parts


def default_port(parts: SplitResult) -> int:
    return parts.port or SCHEMES[parts.scheme]


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A shard's server side: its certificate chain and key, TLS 1.2 at least, green (the
    REST server runs on the eventlet hub)."""
    ctx: ssl.SSLContext = _green_context_class()(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_VERSION
    ctx.load_cert_chain(cert_file, key_file)
    ctx.num_tickets = 0
    return ctx


Stamp = tuple[int, int, int] | None


def file_stamp(path: str) -> Stamp:
    """What says a file changed: its inode, size and modification time (None: not there)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class ServerCertificate:
    """A shard's server side whose certificate and key can be replaced while it serves.

    The server wraps every connection with :attr:`context`; its SNI callback (run for every
    ClientHello, with or without a server name) hands the handshake the context made from
    the files last loaded. So a new connection gets the new certificate, and a connection
    already up (a subscription stream) keeps the session it has."""

    def __init__(self, cert_file: str, key_file: str) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.stamp = self._stamp()
        self.current = server_context(cert_file, key_file)
        self.context = server_context(cert_file, key_file)
        self.context.sni_callback = self._select

    def _stamp(self) -> tuple[Stamp, Stamp]:
        return file_stamp(self.cert_file), file_stamp(self.key_file)

    def _select(self, sock: Any, _server_name: str | None, _context: Any) -> None:
        sock.context = self.current

    def reload(self) -> bool:
        """Load the files again if either changed since they were last looked at: True when
        a new certificate was taken. A pair that does not load (a key that does not match its
        certificate, say, while the two are being replaced) raises ``OSError`` (``ssl.SSLError``
        is one) and the certificate in use stays; it is tried again when a file changes."""
        stamp = self._stamp()
        if stamp == self.stamp:
            return False
        self.stamp = stamp
        self.current = server_context(self.cert_file, self.key_file)
        return True


def client_context(
    ca_file: str | None, green: bool = False, client_cert: tuple[str, str] | None = None
) -> ssl.SSLContext:
    """A client side that verifies the server's certificate against ``ca_file`` (None: the
    system's trust store) and checks its name or IP, presenting ``client_cert`` (certificate,
    key) if given (etcd with client-cert-auth). ``green``: for raw eventlet sockets (the
    stream client); a monkey-patched process's ``ssl`` is already green. Cached: the files
    are loaded once per process, and again once one changed (a rotation)."""
    files = (ca_file, *(client_cert or ()))
    stamps = tuple(file_stamp(f) if f else None for f in files)
    return _client_context(ca_file, green, client_cert, stamps)


@functools.lru_cache(maxsize=16)
def _client_context(
    ca_file: str | None,
    green: bool,
    client_cert: tuple[str, str] | None,
    _stamps: tuple[Stamp, ...],
) -> ssl.SSLContext:
    kind = _green_context_class() if green else ssl.SSLContext
    ctx = kind(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    ctx.minimum_version = MIN_VERSION
    if ca_file:
        ctx.load_verify_locations(ca_file)
    else:
        ctx.load_default_certs()
    if client_cert is not None:
        ctx.load_cert_chain(*client_cert)
    return ctx


def _green_context_class() -> Any:
    """eventlet's SSLContext, imported only by the processes that run on its hub (the lab's
    and the demo's command lines, plain stdlib clients, do not load eventlet)."""
    from eventlet.green import ssl as green_ssl

    return green_ssl.SSLContext
