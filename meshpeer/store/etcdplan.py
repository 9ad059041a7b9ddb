"""The etcd store's keys and transactions, decided without I/O (``meshpeer.store.etcd`` sends them).

One shard's store lives under a prefix (``/meshpeer/shards/<shard>/``)::

    head                {"commit": id, "floor": f, "version": v}   the store version, one key
    incarnation         "7"
    meta/<name>         the meta value as is
    res/<kind>/<key>    {"body": {...}, "created_version": c, "version": v}   (kind %-quoted)
    log/<v, 20 digits>  {"commit": id, "changes": [[kind, key, op], ...]}

Every commit writes ``head``, so one compare on its ``mod_revision`` makes the whole change set
conditional on nothing having been committed since it was read: two writers never both win.
``commit`` is a fresh id per attempt, written to ``head`` and the log entry, so a writer whose
answer was lost (connection cut after sending) can tell whether its transaction applied. Values
are canonical JSON, so equal bodies are equal bytes (as in SQLite). The gateway speaks base64
for keys and values and strings for 64-bit integers; this module does the encoding.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import quote, unquote

Op = Literal["put", "delete"]
Json = dict[str, Any]
V = TypeVar("V")

HEAD = "head"
INCARNATION = "incarnation"
META = "meta/"
RES = "res/"
LOG = "log/"
LOG_DIGITS = 20


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(text: str, errors: str = "strict") -> str:
    """``errors="replace"``: for values checked after (the directory's entries, claims,
    leaders), so a value that is not UTF-8 is refused naming its key, not as a broken read."""
    return base64.b64decode(text).decode(errors=errors)


def prefix_end(prefix: str) -> str:
    """The first key after every key starting with ``prefix`` (etcd's ``range_end``)."""
    raw = prefix.encode()
    return base64.b64encode(raw[:-1] + bytes([raw[-1] + 1])).decode()


def canonical(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def res_key(prefix: str, kind: str, key: str) -> str:
    return f"{prefix}{RES}{quote(kind, safe='')}/{key}"


def split_res_key(prefix: str, full: str) -> tuple[str, str]:
    kind, _, key = full[len(prefix) + len(RES) :].partition("/")
    return unquote(kind), key


def log_key(prefix: str, version: int) -> str:
    return f"{prefix}{LOG}{version:0{LOG_DIGITS}d}"


@dataclass(frozen=True, slots=True)
class Head:
    version: int
    floor: int  # the log holds the versions after this one
    commit: str  # id of the attempt that wrote it ("" for a new store)
    mod_revision: int  # etcd revision of the head key (0: absent, a new store)

    @classmethod
    def parse(cls, kv: Json | None) -> Head:
        if kv is None:
            return cls(0, 0, "", 0)
        doc = json.loads(unb64(kv.get("value", "")))
        return cls(int(doc["version"]), int(doc["floor"]), str(doc["commit"]), mod_revision(kv))


@dataclass(frozen=True, slots=True)
class Stored:
    """A resource as it is in etcd: what the commit plan needs to know of it."""

    created_version: int


def mod_revision(kv: Json) -> int:
    return int(kv.get("mod_revision", 0))


def range_op(key: str, *, prefix: bool = False, start: str | None = None) -> Json:
    """A ``request_range`` of one key, or of every key from ``start`` (or the key) below
    ``key`` when ``prefix``."""
    op: Json = {"key": b64(start or key)}
    if prefix:
        op["range_end"] = prefix_end(key)
    return {"request_range": op}


def put_op(key: str, value: str) -> Json:
    return {"request_put": {"key": b64(key), "value": b64(value)}}


def delete_op(key: str, range_end: str | None = None) -> Json:
    op: Json = {"key": b64(key)}
    if range_end is not None:
        op["range_end"] = range_end
    return {"request_delete_range": op}


def unchanged(key: str, revision: int) -> Json:
    """Compare: ``key`` was last written at ``revision`` (0: it does not exist)."""
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


def kvs(response: Json) -> list[Json]:
    """The key-values of one ``response_range`` (the gateway leaves out empty lists)."""
    return list(response.get("response_range", {}).get("kvs", []))


@dataclass(frozen=True, slots=True)
class CommitPlan:
    txn: Json
    version: int
    log: list[tuple[str, str, Op]]


def plan_commit(
    prefix: str,
    head: Head,
    rows: Sequence[tuple[str, str, str | None]],
    stored: Mapping[tuple[str, str], Stored],
    retention: int,
    commit_id: str,
) -> CommitPlan:
    """The transaction committing ``rows`` (kind, key, canonical body or None) on ``head``.

    ``stored`` holds the rows' resources that exist, as read at ``head``; a delete of one that
    is not there raises :class:`KeyError` with ``(kind, key)`` (the caller's ``NotFound``)."""
    new = head.version + 1
    ops: list[Json] = []
    log: list[tuple[str, str, Op]] = []
    for kind, key, text in rows:
        full = res_key(prefix, kind, key)
        if text is None:
            if (kind, key) not in stored:
                raise KeyError((kind, key))
            ops.append(delete_op(full))
            log.append((kind, key, "delete"))
        else:
            old = stored.get((kind, key))
            created = new if old is None else old.created_version
            value = f'{{"body":{text},"created_version":{created},"version":{new}}}'
            ops.append(put_op(full, value))
            log.append((kind, key, "put"))
    log.sort(key=lambda e: (e[0], e[1]))
    floor = max(head.floor, new - retention)
    ops.append(
        put_op(prefix + HEAD, canonical({"commit": commit_id, "floor": floor, "version": new}))
    )
    entry = {"changes": [list(e) for e in log], "commit": commit_id}
    ops.append(put_op(log_key(prefix, new), canonical(entry)))
    if floor > head.floor:  # trim: the log keeps the versions after the floor
        ops.append(delete_op(log_key(prefix, head.floor + 1), b64(log_key(prefix, floor + 1))))
    txn = {"compare": [unchanged(prefix + HEAD, head.mod_revision)], "success": ops}
    return CommitPlan(txn, new, log)


def parse_record(value: str) -> tuple[Json, int, int]:
    """(body, version, created_version) of a ``res/`` value."""
    doc = json.loads(value)
    return doc["body"], int(doc["version"]), int(doc["created_version"])


def parse_log(prefix: str, kvs_: Sequence[Json]) -> list[tuple[int, str, str, Op, str]]:
    """(version, kind, key, op, commit id) of each change in the ``log/`` key-values."""
    out: list[tuple[int, str, str, Op, str]] = []
    for kv in kvs_:
        version = int(unb64(kv["key"])[len(prefix) + len(LOG) :])
        doc = json.loads(unb64(kv["value"]))
        out += [(version, k, n, op, doc["commit"]) for k, n, op in doc["changes"]]
    return out


# --- VPC ownership: <deployment prefix>vpcs/<vpc> = the owning shard's name -------------------

CLAIMS = "vpcs/"


def claim_key(deployment_prefix: str, vpc: str) -> str:
    return f"{deployment_prefix}{CLAIMS}{vpc}"


def create_txn(key: str, value: str) -> Json:
    """Put ``value`` at ``key`` if the key does not exist; either way the answer says what is
    there (``failure``: the range of ``key``)."""
    absent = {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
    return {"compare": [absent], "success": [put_op(key, value)], "failure": [range_op(key)]}


def claim_txn(deployment_prefix: str, vpc: str, shard: str) -> Json:
    """Claim ``vpc`` for ``shard`` if no shard has it; either way the answer says the owner."""
    return create_txn(claim_key(deployment_prefix, vpc), shard)


def claim_owner(answer: Json, shard: str) -> str | None:
    """The owner a :func:`claim_txn` answer reports (``shard`` when the claim won; None if the
    claim lost to an owner that is gone again: ask again)."""
    if answer.get("succeeded"):
        return shard
    found = kvs(answer.get("responses", [{}])[0])
    return unb64(found[0].get("value", "")) if found else None


def release_txn(deployment_prefix: str, vpc: str, shard: str) -> Json:
    """Give ``vpc`` up, only if ``shard`` holds it."""
    key = claim_key(deployment_prefix, vpc)
    mine = {"key": b64(key), "target": "VALUE", "result": "EQUAL", "value": b64(shard)}
    return {"compare": [mine], "success": [delete_op(key)]}


def claims(deployment_prefix: str, kvs_: Sequence[Json]) -> dict[str, str]:
    """VPC -> owner from the ``vpcs/`` key-values."""
    start = len(deployment_prefix) + len(CLAIMS)
    return {unb64(kv["key"])[start:]: unb64(kv.get("value", "")) for kv in kvs_}


@dataclass(frozen=True, slots=True)
class WatchEvent:
    key: str
    value: str | None  # None: deleted
    revision: int


def watch_events(message: Json) -> list[WatchEvent]:
    """The events of one watch-stream message (``{"result": {"events": [...]}}``); the
    gateway leaves out ``type`` for a put (protobuf's zero value)."""
    out = []
    for ev in message.get("result", {}).get("events", []):
        kv = ev.get("kv", {})
        value = None if ev.get("type") == "DELETE" else unb64(kv.get("value", ""), "replace")
        out.append(WatchEvent(unb64(kv["key"], "replace"), value, mod_revision(kv)))
    return out


def apply_events(
    key_prefix: str,
    current: Mapping[str, V],
    events: Sequence[WatchEvent],
    parse: Callable[[str], V],
) -> dict[str, V]:
    """``current`` (name -> parsed value of ``key_prefix + name``) after ``events``."""
    out = dict(current)
    for ev in events:
        name = ev.key[len(key_prefix) :]
        if ev.value is None:
            out.pop(name, None)
        else:
            out[name] = parse(ev.value)
    return out


def apply_claims(
    deployment_prefix: str, current: Mapping[str, str], events: Sequence[WatchEvent]
) -> dict[str, str]:
    """``current`` claims after ``events`` on the ``vpcs/`` keys."""
    return apply_events(deployment_prefix + CLAIMS, current, events, str)


# --- the shard directory (``<deployment prefix>directory/shards/<shard>``) ---------------------
# One key per shard, its entry as canonical JSON (``meshpeer.directory.shard_doc``): seeded
# once from a directory file (:func:`seed_txn`), then read and followed by every shard.

DIRECTORY = "directory/shards/"
SEEDED = "directory/seeded"  # the marker: the directory was seeded once (never again)


def directory_key(deployment_prefix: str, shard: str) -> str:
    return f"{deployment_prefix}{DIRECTORY}{shard}"


def seed_txn(deployment_prefix: str, entries: Mapping[str, Mapping[str, Any]]) -> Json:
    """Put every entry and the :data:`SEEDED` marker, only if neither the marker nor any entry
    is there (a compare over the whole ``directory/shards/`` range): all or nothing, once."""
    shards = deployment_prefix + DIRECTORY
    marker = deployment_prefix + SEEDED
    never = {"key": b64(marker), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
    empty = {**never, "key": b64(shards), "range_end": prefix_end(shards)}
    puts = [
        put_op(directory_key(deployment_prefix, n), canonical(e))
        for n, e in sorted(entries.items())
    ]
    return {"compare": [never, empty], "success": [put_op(marker, "1"), *puts]}


def directory_texts(deployment_prefix: str, kvs_: Sequence[Json]) -> dict[str, str]:
    """Shard name -> its entry's text, from the ``directory/shards/`` key-values."""
    start = len(deployment_prefix) + len(DIRECTORY)
    return {
        unb64(kv["key"], "replace")[start:]: unb64(kv.get("value", ""), "replace") for kv in kvs_
    }


def apply_directory(
    deployment_prefix: str, current: Mapping[str, str], events: Sequence[WatchEvent]
) -> dict[str, str]:
    """``current`` entries' texts after ``events`` on the ``directory/shards/`` keys."""
    return apply_events(deployment_prefix + DIRECTORY, current, events, str)
