"""TLS for the REST API, the subscription streams and the federation (docs/security.md,
"Transport").

A shard serves HTTPS with its own certificate (:func:`server_context`); every client of a
shard (the REST :class:`~meshpeer.client.Client`, the stream clients of OHCs and of the
federation) verifies that certificate against a CA file and checks the shard's name or IP
against it (:func:`client_context`). ``http://`` URLs stay plain: the lab's ``--plain-http``.
"""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=16)
def client_context(ca_file: str | None, green: bool = False) -> ssl.SSLContext:
    """A client side that verifies the server's certificate against ``ca_file`` (None: the
    system's trust store) and checks its name or IP. ``green``: for raw eventlet sockets
    (the stream client); a monkey-patched process's ``ssl`` is already green. Cached: a CA
    file is loaded once per process."""
    kind = _green_context_class() if green else ssl.SSLContext
    ctx = kind(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    ctx.minimum_version = MIN_VERSION
    if ca_file:
        ctx.load_verify_locations(ca_file)
    else:
        ctx.load_default_certs()
    return ctx


def _green_context_class() -> Any:
    """eventlet's SSLContext, imported only by the processes that run on its hub (the lab's
    and the demo's command lines, plain stdlib clients, do not load eventlet)."""
    from eventlet.green import ssl as green_ssl

    return green_ssl.SSLContext
