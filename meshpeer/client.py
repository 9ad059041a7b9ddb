"""A small synchronous JSON client for the controller's REST API (lab, demo, tests).

``https://`` URLs verify the shard's certificate against ``ca_file`` (None: the system's trust
store) and its name or IP (:func:`meshpeer.tls.client_context`).

Each thread keeps one HTTP/1.1 connection to the shard and reuses it: a TLS handshake per
request cost more than the request (bulk creates through REST, measured in docs/decisions.md).
A kept connection the shard has closed meanwhile (idle timeout, eviction, restart) is seen
before it is used (readable while idle: its end) and replaced; if it fails anyway, only an
idempotent request is sent again, on a new connection."""

from __future__ import annotations

import http.client
import json
import select
import ssl
import threading
import time
from typing import Any

from meshpeer import tls


class ApiFailure(Exception):
    """A non-2xx answer: keeps the status and the JSON error body."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        super().__init__(f"{method} {path} -> {status}: {body}")
        self.method = method
        self.path = path
        self.status = status
        self.body = body


IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})
REUSE_FOR = 20.0  # seconds a kept connection may sit idle: well inside the shard's idle timeout
# what a kept connection the shard closed raises when used (TLS: an EOF without close_notify)
_STALE = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
    ssl.SSLEOFError,
)


class Client:
    def __init__(
        self,
        base_url: str,
        token: str | None,
        timeout: float = 10.0,
        ca_file: str | None = None,
    ) -> None:
        url = tls.split_url(base_url)
        self.host = url.hostname or "127.0.0.1"
        self.port = tls.default_port(url)
        self.token = token
        self.timeout = timeout
        self.secure = url.scheme == "https"
        self.ca_file = ca_file
        self._kept = threading.local()  # this thread's connection and when it was last used

    def _new_connection(self) -> http.client.HTTPConnection:
        if self.secure:
            context = tls.client_context(self.ca_file)
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=self.timeout, context=context
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's kept connection if it is still good (and True), else a new one."""
        conn: http.client.HTTPConnection | None = getattr(self._kept, "conn", None)
        if conn is not None:
            if time.monotonic() - self._kept.used < REUSE_FOR and _open(conn):
                return conn, True
            conn.close()
        conn = self._kept.conn = self._new_connection()
        return conn, False

    def close(self) -> None:
        """Close this thread's kept connection (others close when their threads' go)."""
        conn = getattr(self._kept, "conn", None)
        if conn is not None:
            conn.close()
            self._kept.conn = None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn, reused = self._connection()
        try:
            status, raw = self._exchange(conn, method, path, data, headers)
        except _STALE:
            self.close()
            if not reused or method not in IDEMPOTENT:
                raise
            conn, _ = self._connection()
            status, raw = self._exchange(conn, method, path, data, headers)
        parsed = json.loads(raw) if raw else None
        return status, parsed

    def _exchange(
        self,
        conn: http.client.HTTPConnection,
        method: str,
        path: str,
        data: bytes | None,
        headers: dict[str, str],
    ) -> tuple[int, bytes]:
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except BaseException:
            self.close()
            raise
        if resp.will_close:
            self.close()
        else:
            self._kept.used = time.monotonic()
        return resp.status, raw

    def call(self, method: str, path: str, body: Any = None) -> Any:
        status, parsed = self.request(method, path, body)
        if not 200 <= status < 300:
            raise ApiFailure(method, path, status, parsed)
        return parsed

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self.call("POST", path, body)

    def put(self, path: str, body: Any) -> Any:
        return self.call("PUT", path, body)

    def delete(self, path: str) -> Any:
        return self.call("DELETE", path)


def _open(conn: http.client.HTTPConnection) -> bool:
    """An idle kept connection is still usable: connected, and nothing to read (a shard that
    closed it, or sent anything unasked, makes it readable)."""
    sock = conn.sock
    if sock is None:
        return False
    poller = select.poll()  # not select(): descriptors above 1024 are fine (found by a review)
    try:
        poller.register(sock, select.POLLIN)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False
