"""The intent store in etcd (v3, over its JSON gateway ``/v3/``, with the ``etcd3gw`` client):
the SQLite store's contract for shards on several machines. Keys and transactions are decided
in :mod:`meshpeer.store.etcdplan`; this module only sends them (docs/store.md, "etcd store").

An acknowledged commit is one etcd transaction that compared the ``head`` key's revision with
the one it read, so it is in the cluster's log (a majority's disks) and no other writer can have
committed the same version. A transaction whose answer is lost (member gone mid-request) is
resolved by reading the log entry of the version it tried: it carries the attempt's id.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import ssl
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import etcd3gw
import etcd3gw.exceptions
import requests
import urllib3.exceptions

from meshpeer import tls
from meshpeer.store import election
from meshpeer.store import etcdplan as plan
from meshpeer.store.settings import StoreSettings
from meshpeer.store.sqlite import (
    DEFAULT_LOG_RETENTION,
    Change,
    Conflict,
    LogEntry,
    NotFound,
    Record,
    Snapshot,
    StoreError,
    encode_changes,
)

Json = dict[str, Any]
T = TypeVar("T")
log = logging.getLogger(__name__)
# seconds a watch may be silent: etcd notifies progress only every 10 minutes, so a quiet
# stream is re-opened (after a fresh snapshot) this often, and a vanished member costs no more
WATCH_READ_TIMEOUT = 30.0
READ_CHUNK = 100  # ranges per read transaction: below etcd's default --max-txn-ops (128)
API_PATH = "/v3/"


class Unavailable(StoreError):
    """No etcd member answered, or the cluster has no quorum: nothing can be written now.

    ``lost``: a write was sent and its answer lost, so it may have applied."""

    def __init__(self, message: str, *, lost: bool = False) -> None:
        super().__init__(message)
        self.lost = lost


class Diverged(Unavailable):
    """A write reported as failed turns out to have applied: whoever holds this store in
    memory is behind it and must load it again (restart); every later commit refuses."""


class LostLead(Unavailable):
    """The leader key is no longer on this replica's lease: another replica may lead; this one
    must not write again (every later commit refuses too) and stops (docs/store.md)."""


class Rejected(StoreError):
    """etcd refused the request itself (e.g. more operations than its ``--max-txn-ops``).

    ``too_large``: for its size (operations or bytes): smaller change sets would pass."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


class Member:
    """One etcd member, through etcd3gw's client (docs/decisions.md): its ``requests`` session
    keeps the connections, and urllib3's pool hands each to one caller at a time (green
    threads share the process; ``meshpeer.client.Client`` keeps one per OS thread)."""

    def __init__(
        self,
        url: str,
        timeout: float,
        ca_file: str | None,
        client_cert: tuple[str, str] | None = None,
    ) -> None:
        parts = tls.split_url(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = tls.default_port(parts)
        self.secure = parts.scheme == "https"
        session = requests.Session()
        # not the environment's proxies or CA bundle (REQUESTS_CA_BUNDLE would win over
        # ``verify``): etcd is reached directly, trusting the configured CA only
        session.trust_env = False
        if self.secure:
            session.verify = ca_file or system_trust()
        session.cert = client_cert
        self.client = etcd3gw.Etcd3Client(
            host=self.host,
            port=self.port,
            protocol=parts.scheme,
            timeout=timeout,
            api_path=API_PATH,  # no discovery round trip: Debian's 3.4 serves /v3/
            session=session,
        )

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    def post(self, path: str, body: Json) -> Json:
        """``body`` to ``/v3/<path>``; etcd3gw's and requests' errors as they come."""
        answer = self.client.post(self.client.get_url(path), json=body)
        return answer if isinstance(answer, dict) else {"message": str(answer)}

    def close(self) -> None:
        self.client.session.close()


def system_trust() -> str:
    """The system's trust store for requests' ``verify`` (which takes one file or one
    directory): the CA file ``ssl`` finds (Debian: ca-certificates' bundle), else its hashed
    directory. Never certifi's bundle, requests' own default: ValueError if there is none."""
    paths = ssl.get_default_verify_paths()
    found = paths.cafile or paths.capath
    if not found:
        raise ValueError("controller.etcd_ca_file: required: no system trust store found")
    return found


class Gateway:
    """etcd's JSON gateway at each member's URL, tried in turn."""

    def __init__(
        self,
        endpoints: Sequence[str],
        timeout: float = 5.0,
        ca_file: str | None = None,
        client_cert: tuple[str, str] | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("etcd: at least one endpoint URL")
        self.members = [Member(url, timeout, ca_file, client_cert) for url in endpoints]
        self._first = 0  # the member that answered last: asked first next time

    @classmethod
    def of(cls, settings: StoreSettings, timeout: float = 5.0) -> Gateway:
        """The gateway a shard's store settings name (endpoints, CA, client certificate).
        With https the CA, certificate and key files are loaded now: one that is missing,
        unreadable or not a matching pair is a ValueError naming the options (a shard must
        not stand by for ever on a typo, retrying every connection)."""
        if any(url.startswith("https://") for url in settings.endpoints):
            try:
                tls.client_context(settings.ca_file, client_cert=settings.client_cert)
            except OSError as exc:  # ssl.SSLError is one
                names = "etcd_cert_file/etcd_key_file/" if settings.client_cert else ""
                raise ValueError(f"controller.{names}etcd_ca_file: not loaded: {exc}") from None
        return cls(settings.endpoints, timeout, settings.ca_file, settings.client_cert)

    def call(self, path: str, body: Json, *, idempotent: bool) -> Json:
        """POST ``body`` to ``/v3/<path>``. Reads move on to the next member after any failure;
        writes only when the request was surely not sent (else :class:`Unavailable` with
        ``lost=True``: it may have applied)."""
        errors: list[str] = []
        n = len(self.members)
        for i in range(n):
            index = (self._first + i) % n
            member = self.members[index]
            try:
                answer = member.post(path, body)
            except (etcd3gw.exceptions.Etcd3Exception, OSError) as exc:  # requests': OSError
                outcome, message = fault(exc)
                errors.append(f"{member}: {message}{_closed_hint(member, exc)}")
                if outcome == REFUSED:
                    too_large = any(m in message for m in TOO_LARGE)
                    raise Rejected(
                        f"etcd refused /v3/{path}: {message}", too_large=too_large
                    ) from exc
                if outcome == NOT_APPLIED or idempotent:
                    continue
                raise _unavailable(errors, lost=True) from exc
            self._first = index
            return answer
        raise _unavailable(errors, lost=False)

    def current(self) -> Member:
        """The member that answered last."""
        return self.members[self._first]

    def close(self) -> None:
        for m in self.members:
            m.close()


NOT_APPLIED = "not applied"
MAYBE_APPLIED = "maybe applied"
REFUSED = "refused"
RESOURCE_EXHAUSTED = 8  # gRPC code of etcd's "too many requests" and "database space exceeded"
# etcd's words for a request over --max-txn-ops or --max-request-bytes (rpctypes, etcd 3.4)
TOO_LARGE = ("too many operations in txn request", "request is too large")


def fault(exc: BaseException) -> tuple[str, str]:
    """What a failed request to one member means, and etcd's (or the socket's) words for it.

    - ``not applied``: no connection was made (refused, connect timeout, name not resolved),
      the member's certificate did not check out, requests could not load the CA,
      certificate or key file (before connecting), or etcd turned it away before proposing
      it (too many requests, no space): another member may be tried, a write too.
    - ``maybe applied``: sent, then reset, closed, timed out or answered with garbage, or etcd
      without a leader or quorum: a write must not go to another member.
    - ``refused``: etcd answered no (e.g. more operations than its ``--max-txn-ops``).

    etcd3gw raises its own error inside its ``except`` for a failed connection, with
    requests' error as the context and that error's text as ``detail_text``: only then is
    the context looked through. An HTTP error's context is whatever the caller was handling,
    not this request, and its ``detail_text`` is etcd's answer."""
    transport = _transport(exc)
    if transport is not None:
        before = (urllib3.exceptions.NewConnectionError, ssl.SSLCertVerificationError)
        if isinstance(transport, requests.ConnectTimeout) or any(
            isinstance(c, before) for c in _causes(transport)
        ):
            return NOT_APPLIED, str(transport)
        return MAYBE_APPLIED, str(transport)
    if not isinstance(exc, etcd3gw.exceptions.Etcd3Exception):
        return NOT_APPLIED, str(exc)  # requests' own OSError: a CA/cert/key file not there
    detail = exc.detail_text or ""
    try:
        body = json.loads(detail)
    except ValueError:
        body = None
    body = body if isinstance(body, dict) else {}
    message = str(body.get("message") or body.get("error") or detail[:200] or exc)
    if body.get("code") == RESOURCE_EXHAUSTED:
        return NOT_APPLIED, message
    busy = (etcd3gw.exceptions.ConnectionFailedError, etcd3gw.exceptions.ConnectionTimeoutError)
    if isinstance(exc, busy) or "leader" in message:  # 503, 504, 408; "no leader" (500)
        return MAYBE_APPLIED, message
    return REFUSED, message


def _transport(exc: BaseException) -> requests.RequestException | None:
    """requests' error behind ``exc``, if it is one or etcd3gw's wrapping of one."""
    if isinstance(exc, requests.RequestException):
        return exc
    context = exc.__context__
    if (
        isinstance(exc, etcd3gw.exceptions.Etcd3Exception)
        and isinstance(context, requests.RequestException)
        and exc.detail_text == str(context)
    ):
        return context
    return None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: causes, urllib3's ``reason`` and exceptions given as
    arguments (requests wraps urllib3's errors, which wrap the socket's). Not contexts: the
    context is what was being handled when it was raised, maybe not this request at all."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo.extend([e.__cause__, getattr(e, "reason", None), *e.args])


def _closed_hint(member: Member, exc: BaseException) -> str:
    """What an https member that closes the connection at or just after the handshake most
    likely means: with TLS 1.3 a refused client certificate is often seen only as the close
    (``SSLEOFError``), not as etcd's alert."""
    closed = (ssl.SSLEOFError, ConnectionResetError, http.client.RemoteDisconnected)
    transport = _transport(exc)
    if member.secure and transport and any(isinstance(c, closed) for c in _causes(transport)):
        return " (closed by etcd over TLS: client certificate refused?)"
    return ""


def _unavailable(errors: list[str], *, lost: bool) -> Unavailable:
    return Unavailable("etcd unavailable: " + "; ".join(errors), lost=lost)


class EtcdStore:
    """The :class:`meshpeer.store.Store` surface on etcd; open with :meth:`open`."""

    def __init__(self, gateway: Gateway, prefix: str, log_retention: int) -> None:
        self._gw = gateway
        self._prefix = prefix
        self._retention = log_retention
        self._lock = threading.Lock()
        self._pending: tuple[int, str] | None = None  # (version, attempt) of a lost answer
        self._fence: Json | None = None  # a compare every commit carries (leadership)
        self._on_lost: Callable[[], None] = lambda: None
        self._lost = False

    @classmethod
    def open(
        cls,
        endpoints: Sequence[str],
        prefix: str,
        *,
        log_retention: int = DEFAULT_LOG_RETENTION,
        timeout: float = 5.0,
        ca_file: str | None = None,
        client_cert: tuple[str, str] | None = None,
    ) -> EtcdStore:
        """The store under ``prefix`` (``/meshpeer/shards/<shard>/``) of the cluster at
        ``endpoints``; checks that the cluster answers."""
        if log_retention < 1:
            raise ValueError("log_retention must be at least 1")
        if not prefix.endswith("/"):
            raise ValueError(f"etcd prefix must end with '/': {prefix!r}")
        store = cls(Gateway(endpoints, timeout, ca_file, client_cert), prefix, log_retention)
        store._head()
        return store

    def close(self) -> None:
        self._gw.close()

    def __enter__(self) -> EtcdStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reads ---------------------------------------------------------------------------

    def _txn(self, ops: list[Json], *, compare: list[Json] | None = None) -> Json:
        body: Json = {"success": ops}
        if compare:
            body["compare"] = compare
        return self._gw.call("kv/txn", body, idempotent=compare is None)

    def _read(self, ops: list[Json]) -> list[Json]:
        return list(self._txn(ops).get("responses", []))

    def _head(self) -> plan.Head:
        (found,) = self._read([plan.range_op(self._prefix + plan.HEAD)])
        kvs = plan.kvs(found)
        return plan.Head.parse(kvs[0] if kvs else None)

    @property
    def version(self) -> int:
        return self._head().version

    @property
    def incarnation(self) -> int:
        (found,) = self._read([plan.range_op(self._prefix + plan.INCARNATION)])
        kvs = plan.kvs(found)
        return int(plan.unb64(kvs[0]["value"])) if kvs else 0

    def load(self) -> Snapshot:
        """Every resource, the version and meta, as of one etcd revision."""
        p = self._prefix
        head, res, meta = self._read(
            [
                plan.range_op(p + plan.HEAD),
                plan.range_op(p + plan.RES, prefix=True),
                plan.range_op(p + plan.META, prefix=True),
            ]
        )
        kvs = plan.kvs(head)
        version = plan.Head.parse(kvs[0] if kvs else None).version
        records: dict[tuple[str, str], Record] = {}
        for kv in plan.kvs(res):
            kind, key = plan.split_res_key(p, plan.unb64(kv["key"]))
            body, v, created = plan.parse_record(plan.unb64(kv.get("value", "")))
            records[(kind, key)] = Record(kind, key, body, v, created)
        metas = {
            plan.unb64(kv["key"])[len(p + plan.META) :]: plan.unb64(kv.get("value", ""))
            for kv in plan.kvs(meta)
        }
        return Snapshot(records, version, metas)

    def _head_and_stored(
        self, ids: list[tuple[str, str]]
    ) -> tuple[plan.Head, dict[tuple[str, str], plan.Stored]]:
        """``head`` and the resources ``ids`` that exist, read at ``head``'s revision or later
        (the commit's compare on ``head`` refuses the transaction if anything was committed
        since). The first read carries ``head`` too: one round trip for a small change set."""
        head_op = plan.range_op(self._prefix + plan.HEAD)
        head: plan.Head | None = None
        out: dict[tuple[str, str], plan.Stored] = {}
        start = 0
        while head is None or start < len(ids):
            chunk = ids[start : start + READ_CHUNK - (head is None)]
            ops = [plan.range_op(plan.res_key(self._prefix, *rid)) for rid in chunk]
            found = self._read(ops if head is not None else [head_op, *ops])
            if head is None:
                kvs = plan.kvs(found.pop(0))
                head = plan.Head.parse(kvs[0] if kvs else None)
            for rid, one in zip(chunk, found, strict=True):
                kvs = plan.kvs(one)
                if kvs:
                    _, _, created = plan.parse_record(plan.unb64(kvs[0]["value"]))
                    out[rid] = plan.Stored(created)
            start += len(chunk)
        return head, out

    # --- writes --------------------------------------------------------------------------

    def fence(self, compare: Json, on_lost: Callable[[], None]) -> None:
        """Every later commit also compares ``compare`` (the leader key on this replica's
        lease: :func:`meshpeer.store.election.fence`); once it fails, commits raise
        :class:`LostLead` and ``on_lost`` is called (the replica stops)."""
        self._fence = compare
        self._on_lost = on_lost

    def _check_fence(self) -> None:
        """Raise :class:`LostLead` if the fence no longer holds (or did not before)."""
        if self._fence is not None and not self._lost:
            held = self._gw.call(
                "kv/txn", {"compare": [self._fence], "success": []}, idempotent=True
            )
            self._lost = not held.get("succeeded")
        if self._lost:
            self._on_lost()
            raise LostLead("this replica no longer leads its shard: nothing written")

    def commit(self, changes: Sequence[Change], *, expect_version: int | None = None) -> int:
        """One etcd transaction at version + 1, conditional on ``head`` being as read."""
        rows = encode_changes(changes)
        ids = [(kind, key) for kind, key, _ in rows]
        with self._lock:
            if self._lost:
                self._check_fence()
            while True:
                head, stored = self._head_and_stored(ids)
                self._resolve_pending(head)
                if expect_version is not None and expect_version != head.version:
                    raise Conflict(expect_version, head.version)
                attempt = uuid.uuid4().hex
                try:
                    p = plan.plan_commit(self._prefix, head, rows, stored, self._retention, attempt)
                except KeyError as exc:
                    kind, key = exc.args[0]
                    raise NotFound(kind, key) from None
                txn = p.txn
                if self._fence is not None:
                    txn = {**txn, "compare": [*txn["compare"], self._fence]}
                try:
                    answer = self._gw.call("kv/txn", txn, idempotent=False)
                except Unavailable as exc:
                    if not exc.lost:
                        raise
                    with contextlib.suppress(Unavailable):
                        if self._applied(p.version, attempt):
                            return p.version
                    # not seen (yet): it may still apply; the next commit finds out
                    self._pending = (p.version, attempt)
                    raise
                if answer.get("succeeded"):
                    self._pending = None  # it won this version: the pending one never will
                    return p.version
                self._check_fence()  # lost the lead: never re-plan on top of the new leader
                # someone committed since we read head: read again (or Conflict above)

    def _resolve_pending(self, head: plan.Head) -> None:
        """A write whose answer was lost and not seen applied: once the store has reached its
        version, it either holds it (:class:`Diverged`: the caller never learnt it was
        acknowledged) or never will (the compare on head saw to that)."""
        if self._pending is None or head.version < self._pending[0]:
            return
        version, attempt = self._pending
        if self._applied(version, attempt):
            raise Diverged(
                f"a write whose answer was lost did apply at version {version}: this process's "
                "view of the store is behind; restart it (a standby takes over meanwhile)"
            )
        self._pending = None

    def _applied(self, version: int, attempt: str) -> bool:
        """Whether the attempt ``attempt`` at ``version``, whose answer was lost, applied."""
        (found,) = self._read([plan.range_op(plan.log_key(self._prefix, version))])
        kvs = plan.kvs(found)
        entries = plan.parse_log(self._prefix, kvs)
        if entries:
            return entries[0][4] == attempt
        head = self._head()  # an empty log entry cannot be; gone: trimmed, look at head
        return head.version >= version and head.commit == attempt

    def changes_since(self, version: int) -> list[LogEntry] | None:
        """As :meth:`meshpeer.store.Store.changes_since`: None when the log cannot answer."""
        p = self._prefix
        head_r, log_r = self._read(
            [
                plan.range_op(p + plan.HEAD),
                plan.range_op(
                    p + plan.LOG, prefix=True, start=plan.log_key(p, max(version + 1, 0))
                ),
            ]
        )
        kvs = plan.kvs(head_r)
        head = plan.Head.parse(kvs[0] if kvs else None)
        if not head.floor <= version <= head.version:
            return None
        entries = plan.parse_log(p, plan.kvs(log_r))
        return [LogEntry(v, kind, key, op) for v, kind, key, op, _ in entries]

    def get_meta(self, name: str) -> str | None:
        (found,) = self._read([plan.range_op(self._prefix + plan.META + name)])
        kvs = plan.kvs(found)
        return plan.unb64(kvs[0].get("value", "")) if kvs else None

    def set_meta(self, name: str, value: str | None) -> None:
        """Set (or, with None, delete) a meta entry. Not intent: no version bump."""
        if value is not None and not isinstance(value, str):
            raise TypeError("meta values are strings; encode anything else")
        key = self._prefix + plan.META + name
        op = plan.delete_op(key) if value is None else plan.put_op(key, value)
        self._gw.call("kv/txn", {"success": [op]}, idempotent=True)  # same outcome twice

    def next_incarnation(self) -> int:
        """Bump and return the incarnation: compare-and-swap on its revision."""
        key = self._prefix + plan.INCARNATION
        with self._lock:
            while True:
                (found,) = self._read([plan.range_op(key)])
                kvs = plan.kvs(found)
                current = int(plan.unb64(kvs[0]["value"])) if kvs else 0
                revision = plan.mod_revision(kvs[0]) if kvs else 0
                answer = self._txn(
                    [plan.put_op(key, str(current + 1))],
                    compare=[plan.unchanged(key, revision)],
                )
                if answer.get("succeeded"):
                    return current + 1


class Ownership:
    """Which shard owns which VPC, in etcd (``<prefix>vpcs/<vpc>``): claimed by one
    transaction each, learned by a watch (docs/store.md, "VPC ownership")."""

    def __init__(self, gateway: Gateway, deployment_prefix: str) -> None:
        self._gw = gateway
        self.prefix = deployment_prefix

    def claim(self, vpc: str, shard: str) -> str:
        """Claim ``vpc`` for ``shard``; returns its owner (``shard`` if the claim won, or it
        already held it). A lost answer is safe to ask again: a claim is idempotent."""
        while True:
            txn = plan.claim_txn(self.prefix, vpc, shard)
            owner = plan.claim_owner(self._gw.call("kv/txn", txn, idempotent=True), shard)
            if owner is not None:
                return owner

    def release(self, vpc: str, shard: str) -> None:
        self._gw.call("kv/txn", plan.release_txn(self.prefix, vpc, shard), idempotent=True)

    def snapshot(self) -> tuple[dict[str, str], int]:
        """Every claim, and the etcd revision they are as of (watch from the next one)."""
        kvs, revision = range_prefix(self._gw, self.prefix + plan.CLAIMS)
        return plan.claims(self.prefix, kvs), revision

    def watch(self, start_revision: int) -> Iterator[list[plan.WatchEvent]]:
        """Changes to the claims from ``start_revision`` on, one list per etcd message, until
        the stream breaks (OSError / Unavailable: take a new snapshot and watch again)."""
        return watch_prefix(self._gw, self.prefix + plan.CLAIMS, start_revision)

    def apply(self, current: dict[str, str], events: list[plan.WatchEvent]) -> dict[str, str]:
        return plan.apply_claims(self.prefix, current, events)


class SharedDirectory:
    """The shard directory's ``shards`` in etcd (``<prefix>directory/shards/<shard>``): seeded
    once from a file, read at start and followed by a watch (docs/store.md, "The directory in
    etcd"). Texts as stored; ``meshpeer.directory.shared_shards`` checks them."""

    def __init__(self, gateway: Gateway, deployment_prefix: str) -> None:
        self._gw = gateway
        self.prefix = deployment_prefix

    def seed(self, entries: dict[str, Json]) -> list[str]:
        """Put ``entries`` (a directory file's) only if etcd's directory was never seeded: one
        transaction puts them all and the ``directory/seeded`` marker, if neither the marker
        nor any entry is there. Returns the names put (none: seeded before, and what etcd has
        wins, an operator's removal included). A directory with entries but no marker (put by
        hand) gets the marker."""
        if self._gw.call("kv/txn", plan.seed_txn(self.prefix, entries), idempotent=True).get(
            "succeeded"
        ):
            return sorted(entries)
        marker = plan.create_txn(self.prefix + plan.SEEDED, "1")
        self._gw.call("kv/txn", marker, idempotent=True)
        return []

    def close(self) -> None:
        self._gw.close()

    def snapshot(self) -> tuple[dict[str, str], int]:
        kvs, revision = range_prefix(self._gw, self.prefix + plan.DIRECTORY)
        return plan.directory_texts(self.prefix, kvs), revision

    def watch(self, start_revision: int) -> Iterator[list[plan.WatchEvent]]:
        return watch_prefix(self._gw, self.prefix + plan.DIRECTORY, start_revision)

    def apply(self, current: dict[str, str], events: list[plan.WatchEvent]) -> dict[str, str]:
        return plan.apply_directory(self.prefix, current, events)


def shared_directory(settings: StoreSettings) -> SharedDirectory | None:
    """Where a shard on etcd keeps the directory's shards (None with SQLite: the file)."""
    if settings.backend != "etcd":
        return None
    return SharedDirectory(Gateway.of(settings), settings.deployment_prefix)


def range_prefix(gateway: Gateway, prefix: str) -> tuple[list[Json], int]:
    """Every key-value under ``prefix``, and the etcd revision they are as of."""
    answer = gateway.call(
        "kv/range",
        {"key": plan.b64(prefix), "range_end": plan.prefix_end(prefix)},
        idempotent=True,
    )
    return list(answer.get("kvs", [])), int(answer.get("header", {}).get("revision", 0))


def watch_prefix(
    gateway: Gateway, prefix: str, start_revision: int
) -> Iterator[list[plan.WatchEvent]]:
    """etcd's watch over the gateway: one streaming POST to ``/v3/watch`` on the member's
    session, with progress notifications (so a silent member is noticed by the read timeout).
    Not etcd3gw's ``watch_prefix``: its worker thread drops a broken stream's error, and a
    watch that ended unseen would leave this process on a stale directory for good."""
    client = gateway.current().client
    request: Json = {
        "create_request": {
            "key": plan.b64(prefix),
            "range_end": plan.prefix_end(prefix),
            "start_revision": str(start_revision),
            "progress_notify": True,
        }
    }
    resp = client.session.post(
        client.get_url("watch"),
        json=request,
        stream=True,
        timeout=(client.timeout, WATCH_READ_TIMEOUT),
    )
    try:
        if resp.status_code != 200:
            raise Unavailable(f"watch: {resp.status_code} {resp.text[:200]!r}")
        for line in resp.iter_lines(chunk_size=None):  # type: ignore[call-overload]
            if not line:
                continue
            message = json.loads(line)
            if "error" in message:
                raise Unavailable(f"watch: {message['error']}")
            result = message.get("result", {})
            if result.get("canceled") or result.get("compact_revision"):
                raise Unavailable(f"watch: canceled ({result})")
            events = plan.watch_events(message)
            if events:
                yield events
        raise Unavailable("watch: the stream ended")
    finally:
        resp.close()


class Followed(Protocol[T]):
    """Keys followed by :func:`follow`: a snapshot with its revision, then a watch."""

    def snapshot(self) -> tuple[T, int]: ...

    def watch(self, start_revision: int) -> Iterator[list[plan.WatchEvent]]: ...

    def apply(self, current: T, events: list[plan.WatchEvent]) -> T: ...


def follow(
    source: Followed[T],
    take: Callable[[T], None],
    sleep: Callable[[float], object],
    retry_s: float = 1.0,
) -> None:
    """Hand ``take`` the state now and after each change, for ever: a snapshot, then the watch
    from the next revision; a broken watch (member gone, quiet too long, etcd without quorum)
    starts over with a new snapshot after ``retry_s``."""
    while True:
        try:
            state, revision = source.snapshot()
            take(state)
            for events in source.watch(revision + 1):
                state = source.apply(state, events)
                take(state)
        except (OSError, StoreError, ValueError, KeyError) as exc:  # requests': OSError
            log.info("etcd watch: %r; again in %.0f s", exc, retry_s)
        sleep(retry_s)


def follow_claims(
    ownership: Ownership, take: Callable[[dict[str, str]], None], sleep: Callable[[float], object]
) -> None:
    follow(ownership, take, sleep)


class Leadership:
    """One replica's side of its shard's election (decisions: :mod:`meshpeer.store.election`)."""

    def __init__(
        self,
        gateway: Gateway,
        deployment_prefix: str,
        shard: str,
        me: election.Leader,
        ttl: float,
        clock: Callable[[], float],
    ) -> None:
        self._gw = gateway
        self.prefix = deployment_prefix
        self.shard = shard
        self.me = me
        self.ttl = election.lease_ttl(ttl)  # whole seconds: what etcd grants is what Term assumes
        self._clock = clock
        self.leader: election.Leader | None = None  # as last seen

    def _current(self) -> election.Leader | None:
        key = election.leader_key(self.prefix, self.shard)
        answer = self._gw.call("kv/range", {"key": plan.b64(key)}, idempotent=True)
        kvs = list(answer.get("kvs", []))
        return election.Leader.parse(plan.unb64(kvs[0]["value"])) if kvs else None

    def campaign(
        self, sleep: Callable[[float], object], poll_s: float = 0.1, defer_s: float = 0.5
    ) -> election.Term:
        """Wait (as a standby) until this replica leads; returns its term. Sees the leader
        every ``poll_s`` and campaigns as soon as there is none. A replica whose first look
        finds itself named (its process before a crash: restarted by its supervisor) lets
        ``defer_s`` pass once the key is gone before it campaigns, so a standby that was
        already waiting takes over (a leader that just crashed may crash again); it still
        leads if none does. Once it has seen another replica lead it is such a waiting
        standby itself: no deferring."""
        restarted: bool | None = None  # unknown until the first answer
        while True:
            try:
                self.leader = self._current()
                if restarted is None:
                    restarted = self.leader is not None and self.leader.replica == self.me.replica
                elif self.leader is not None and self.leader.replica != self.me.replica:
                    restarted = False  # another leads now: a waiting standby like any other
                if self.leader is None and restarted:
                    restarted = False
                    sleep(defer_s)
                    continue
                if self.leader is None:  # ours on a stale lease too: wait for it to expire
                    term = self._try()
                    if term is not None:
                        return term
            except (StoreError, OSError) as exc:
                log.info("shard %s: campaign: %s", self.shard, exc)
            sleep(poll_s)

    def _try(self) -> election.Term | None:
        sent = self._clock()
        grant = self._gw.call("lease/grant", {"TTL": str(self.ttl)}, idempotent=False)
        lease = int(grant["ID"])
        txn = election.campaign_txn(self.prefix, self.shard, self.me, lease)
        won, self.leader = election.campaign_result(
            self._gw.call("kv/txn", txn, idempotent=True), self.me
        )
        if won:
            return election.Term(lease, self.ttl, sent)
        self._revoke(lease)
        return None

    def fence(self, term: election.Term) -> Json:
        """The compare that holds while ``term`` leads (for :meth:`EtcdStore.fence`)."""
        return election.fence(self.prefix, self.shard, term.lease_id)

    def keep(self, term: election.Term, sleep: Callable[[float], object]) -> None:
        """Renew ``term``'s lease until etcd says it is gone (returns then: stop at once).

        While etcd cannot be reached (no quorum, or this replica cut off) the lease cannot be
        renewed, and it goes on: no replica can be elected without a quorum, and the replica
        keeps serving reads from memory (writes fail: they need etcd). Once etcd answers
        again, a lease that ran out meanwhile ends the term."""
        while True:
            sleep(term.renewal_due(self._clock()))
            sent = self._clock()
            try:
                answer = self._gw.call(
                    "lease/keepalive", {"ID": str(term.lease_id)}, idempotent=True
                )
            except (StoreError, OSError) as exc:
                if not term.holds(self._clock()):
                    log.warning("shard %s: lease not renewed: %s", self.shard, exc)
                sleep(min(0.2, term.ttl / 10))
                continue
            renewed = term.renewed(sent, answer)
            if renewed is None:
                log.error("shard %s: lease %x is gone", self.shard, term.lease_id)
                return
            term = renewed

    def resign(self, term: election.Term) -> None:
        """Give the lead up now (a clean stop): the key if still ours, then the lease."""
        txn = election.resign_txn(self.prefix, self.shard, self.me)
        self._gw.call("kv/txn", txn, idempotent=True)
        self._revoke(term.lease_id)

    def _revoke(self, lease: int) -> None:
        self._gw.call("lease/revoke", {"ID": str(lease)}, idempotent=True)

    def snapshot(self) -> tuple[dict[str, election.Leader], int]:
        """Every shard's leader, and the revision they are as of."""
        kvs, revision = range_prefix(self._gw, self.prefix + election.LEADERS)
        return election.leaders(self.prefix, kvs), revision

    def watch(self, start_revision: int) -> Iterator[list[plan.WatchEvent]]:
        return watch_prefix(self._gw, self.prefix + election.LEADERS, start_revision)

    def apply(
        self, current: dict[str, election.Leader], events: list[plan.WatchEvent]
    ) -> dict[str, election.Leader]:
        return election.apply_leaders(self.prefix, current, events)
