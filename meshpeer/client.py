"""A small synchronous JSON client for the controller's REST API (lab, demo, tests).

``https://`` URLs verify the shard's certificate against ``ca_file`` (None: the system's trust
store) and its name or IP (:func:`meshpeer.tls.client_context`).

Each thread keeps one HTTP/1.1 connection to the shard and reuses it: a TLS handshake per
request cost more than the request (bulk creates through REST, measured in docs/decisions.md).
A kept connection the shard has closed meanwhile (idle timeout, eviction, restart) is seen
before it is used (readable while idle: its end) and replaced; if it fails anyway, only an
idempotent request is sent again, on a new connection.

:class:`Replicas` is a client of one shard that runs several replicas (docs/store.md,
"Replicas"): it sends each request to the replica that leads, following a standby's 503 that
names the leader and moving on from a replica that does not answer, until a deadline."""

from __future__ import annotations

import http.client
import json
import select
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

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


@dataclass(frozen=True)
class Answer:
    """What :meth:`Replicas.request` got: the status and body of the last answer, and how
    many times the request was sent (``sends > 1``: an earlier send may have applied, so a
    409 to a create can be that earlier send's)."""

    status: int
    body: Any
    sends: int
    url: str


# what a request that got no usable answer raises (refused, reset, timed out, cut short,
# not JSON): Replicas.request raises the last of them after retry_for
UNANSWERED = (OSError, http.client.HTTPException, ValueError)


class Requester(Protocol):
    """What :func:`create` needs of a client: :meth:`Replicas.request`."""

    def request(self, method: str, path: str, body: Any = None) -> Answer: ...


def create(
    client: Requester, path: str, body: dict[str, Any], same: Sequence[str]
) -> tuple[Answer, bool]:
    """POST ``body``, a named resource, to the collection ``path``; and whether a 409 is the
    create's own first send that applied (its answer lost, then sent again): the resource at
    ``path/<name>`` has the ``same`` fields as sent. The 409 to a first send is a real
    conflict (False)."""
    got = client.request("POST", path, body)
    if got.status != 409 or got.sends < 2:
        return got, False
    there = client.request("GET", f"{path}/{body['name']}")
    ok = there.status == 200 and isinstance(there.body, dict)
    return got, ok and all(there.body.get(k) == body[k] for k in same)


def next_replica(urls: Sequence[str], current: str, status: int | None, body: Any) -> str:
    """Where to send a request again after ``current`` answered ``status`` (None: no answer):
    the leader a standby's 503 names if it is one of ``urls``, else the next replica after a
    replica that did not answer, else ``current`` again (a leader's 503: etcd unavailable)."""
    standby = status == 503 and isinstance(body, dict) and "leader" in body
    if standby and isinstance(body["leader"], dict) and body["leader"].get("url") in urls:
        return str(body["leader"]["url"])
    if standby or status is None:  # a standby that knows no leader yet, or no answer
        return urls[(list(urls).index(current) + 1) % len(urls)] if current in urls else urls[0]
    return current


class Replicas:
    """A client of one shard's replicas (``urls``; one URL: a shard of one process) that
    follows the leader. ``request`` sends again, after ``pause`` seconds, while the answer is a
    503 or none came (refused, reset, timed out), for at most ``retry_for`` seconds; then the
    last 503 is returned or the last error raised. Only requests whose repetition is harmless
    or recognisable should be given to it: GET, PUT, DELETE, and creates of named resources
    (a repeated create whose first send applied gets 409, and ``Answer.sends`` says so)."""

    def __init__(
        self,
        urls: Sequence[str],
        token: str | None,
        timeout: float = 10.0,
        ca_file: str | None = None,
        retry_for: float = 30.0,
        pause: float = 0.05,
        sleep: Callable[[float], object] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError("Replicas: at least one URL")
        self.urls = [u.rstrip("/") for u in urls]
        self.clients = {u: Client(u, token, timeout, ca_file) for u in self.urls}
        self.current = self.urls[0]
        self.retry_for = retry_for
        self.pause = pause
        self.sleep = sleep
        self.clock = clock

    def request(self, method: str, path: str, body: Any = None) -> Answer:
        deadline = self.clock() + self.retry_for
        sends = 0
        while True:
            url = self.current
            sends += 1
            status: int | None = None
            answer: Any = None
            try:
                status, answer = self.clients[url].request(method, path, body)
            except UNANSWERED:
                if self.clock() >= deadline:
                    raise
            if status is not None and (status != 503 or self.clock() >= deadline):
                return Answer(status, answer, sends, url)
            self.current = next_replica(self.urls, url, status, answer)
            self.sleep(self.pause)

    def get(self, path: str) -> Any:
        got = self.request("GET", path)
        if not 200 <= got.status < 300:
            raise ApiFailure("GET", path, got.status, got.body)
        return got.body

    def post(self, path: str, body: dict[str, Any], same: Sequence[str] = ("name",)) -> Any:
        """Create the named resource ``body``: its answer's body, or the resource there when
        a resend got 409 because the first send applied (:func:`create`); else ApiFailure."""
        got, recognised = create(self, path, body, same)
        if recognised:
            return self.get(f"{path}/{body['name']}")
        if not 200 <= got.status < 300:
            raise ApiFailure("POST", path, got.status, got.body)
        return got.body

    def close(self) -> None:
        """Close this thread's connections to every replica."""
        for c in self.clients.values():
            c.close()


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
