"""NDJSON codec: one message per ``\\n``-terminated line of compact, key-sorted JSON (sans-I/O).

``encode(msg) -> bytes`` and ``Decoder().feed(chunk) -> [msg, ...]``. The decoder takes bytes as
they arrive (any chunk split), validates every field of untrusted input, and raises
:class:`ProtocolError` on anything else; after an error it stays failed (the stream is unusable).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from meshpeer.protocol.messages import (
    MAX_VERSION,
    OBJECT_ID_RE,
    Close,
    Delta,
    ErrorMsg,
    Frame,
    Heartbeat,
    JsonObject,
    Keepalive,
    Message,
    ProtocolError,
    ServiceName,
    Snapshot,
    check_name,
    check_sub,
)

DEFAULT_MAX_LINE = 32 * 1024 * 1024
"""A snapshot is one line, so this bounds snapshot size (bytes, newline excluded)."""
MAX_TEXT = 1024
_SERVICES = frozenset(s.value for s in ServiceName)


def to_wire(msg: Message) -> dict[str, Any]:
    """The JSON object for ``msg`` (``type`` tells which message it is)."""
    match msg:
        case Snapshot(service, key, version, objects):
            return {
                "type": "snapshot",
                "service": service.value,
                "key": key,
                "version": version,
                "objects": objects,
            }
        case Delta(service, key, version, upserts, deletes):
            return {
                "type": "delta",
                "service": service.value,
                "key": key,
                "version": version,
                "upserts": upserts,
                "deletes": list(deletes),
            }
        case Heartbeat(version, now):
            return {"type": "heartbeat", "version": version, "now": now}
        case Close(reason):
            return {"type": "close", "reason": reason}
        case ErrorMsg(code, detail):
            return {"type": "error", "code": code, "detail": detail}
    raise TypeError(f"not a protocol message: {msg!r}")


def encode(msg: Message) -> bytes:
    """One NDJSON line: compact separators, sorted keys, ASCII only, trailing newline."""
    return encode_json(to_wire(msg))


def encode_keepalive(now: float) -> bytes:
    """A channel's keepalive line."""
    return encode_json({"type": "keepalive", "now": now})


def encode_json(doc: dict[str, Any]) -> bytes:
    text = json.dumps(doc, separators=(",", ":"), sort_keys=True, allow_nan=False)
    return text.encode("ascii") + b"\n"


def sub_prefix(sub: int) -> bytes:
    """What :func:`frame` puts before a message's members: ``{"sub":N,``."""
    return b'{"sub":%d,' % sub


def frame(prefix: bytes, line: bytes) -> bytes:
    """A message line (from :func:`encode`) as a frame of the subscription whose
    :func:`sub_prefix` is ``prefix``: the same object with ``sub`` as its first member. The
    message is encoded once and shared by every subscriber; only these bytes differ."""
    return prefix + line[1:]


_FIELDS: dict[str, frozenset[str]] = {
    "snapshot": frozenset({"type", "service", "key", "version", "objects"}),
    "delta": frozenset({"type", "service", "key", "version", "upserts", "deletes"}),
    "heartbeat": frozenset({"type", "version", "now"}),
    "close": frozenset({"type", "reason"}),
    "error": frozenset({"type", "code", "detail"}),
}


def _version(value: object) -> int:
    if type(value) is not int or not 0 <= value <= MAX_VERSION:
        raise ProtocolError("version", "must be an integer in [0, 2**63)")
    return value


def _service(value: object) -> ServiceName:
    if not isinstance(value, str) or value not in _SERVICES:
        raise ProtocolError("service", "unknown service")
    return ServiceName(value)


def _text(field: str, value: object) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise ProtocolError(field, f"must be a string of at most {MAX_TEXT} chars")
    return value


def _objects(field: str, value: object) -> dict[str, JsonObject]:
    if not isinstance(value, dict):
        raise ProtocolError(field, "must be an object")
    for oid, obj in value.items():
        if not OBJECT_ID_RE.fullmatch(oid):
            raise ProtocolError(field, f"bad object id {oid[:64]!r}")
        if not isinstance(obj, dict):
            raise ProtocolError(field, f"object {oid!r} must be a JSON object")
    return value


def _deletes(value: object, upserts: dict[str, JsonObject]) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ProtocolError("deletes", "must be a list")
    for oid in value:
        if not isinstance(oid, str) or not OBJECT_ID_RE.fullmatch(oid):
            raise ProtocolError("deletes", "bad object id")
        if oid in upserts:
            raise ProtocolError("deletes", f"{oid!r} is both upserted and deleted")
    if len(set(value)) != len(value):
        raise ProtocolError("deletes", "repeated id")
    return tuple(value)


def from_wire(doc: object) -> Message:
    """Validate one decoded JSON value and build the message it describes."""
    if not isinstance(doc, dict):
        raise ProtocolError("type", "a message must be a JSON object")
    kind = doc.get("type")
    if not isinstance(kind, str) or kind not in _FIELDS:
        raise ProtocolError("type", f"unknown message type {str(kind)[:32]!r}")
    if doc.keys() != _FIELDS[kind]:
        odd = sorted(doc.keys() ^ _FIELDS[kind])
        raise ProtocolError(odd[0][:64], f"{kind}: missing or unknown field")
    match kind:
        case "snapshot":
            return Snapshot(
                _service(doc["service"]),
                check_name("key", doc["key"]),
                _version(doc["version"]),
                _objects("objects", doc["objects"]),
            )
        case "delta":
            upserts = _objects("upserts", doc["upserts"])
            return Delta(
                _service(doc["service"]),
                check_name("key", doc["key"]),
                _version(doc["version"]),
                upserts,
                _deletes(doc["deletes"], upserts),
            )
        case "heartbeat":
            now = doc["now"]
            if type(now) not in (int, float) or not math.isfinite(now):
                raise ProtocolError("now", "must be a finite number")
            return Heartbeat(_version(doc["version"]), float(now))
        case "close":
            return Close(_text("reason", doc["reason"]))
        case _:
            return ErrorMsg(check_name("code", doc["code"]), _text("detail", doc["detail"]))


# Object fields whose values repeat across a stream's objects (a peer VPC's 50k destinations
# sit on a handful of hosts): one string each instead of one per object, 7 MiB at 50k.
SHARED_VALUES = frozenset({"host", "host_ip", "kind", "vpc"})


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ProtocolError("json", "repeated key in object")
    for k in SHARED_VALUES.intersection(out):
        if type(v := out[k]) is str:
            out[k] = sys.intern(v)
    return out


def _no_constants(name: str) -> Any:
    raise ProtocolError("json", f"{name} is not allowed")


def _load(line: bytes) -> Any:
    try:
        return json.loads(
            line.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
        )
    except ProtocolError:
        raise
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError, int digits
        raise ProtocolError("json", f"malformed line: {str(exc)[:128]}") from None


def decode_line(line: bytes) -> Message:
    """Decode one line (without its newline)."""
    return from_wire(_load(line))


def decode_frame(line: bytes) -> Frame:
    """Decode one line of a channel (without its newline): a message with its ``sub``, or a
    keepalive or channel error without one."""
    doc = _load(line)
    sub = None
    if isinstance(doc, dict) and "sub" in doc:
        sub = check_sub("sub", doc.pop("sub"))
    if isinstance(doc, dict) and doc.get("type") == "keepalive":
        if sub is not None or doc.keys() != {"type", "now"}:
            raise ProtocolError("keepalive", "missing or unknown field")
        now = doc["now"]
        if type(now) not in (int, float) or not math.isfinite(now):
            raise ProtocolError("now", "must be a finite number")
        return Frame(None, Keepalive(float(now)), len(line) + 1)
    msg = from_wire(doc)
    if sub is None and not isinstance(msg, ErrorMsg):
        raise ProtocolError("sub", f"a {type(msg).__name__.lower()} frame needs a sub")
    return Frame(sub, msg, len(line) + 1)


T = TypeVar("T")


class LineDecoder(Generic[T]):
    """Incremental NDJSON decoder; feed it bytes in any split, get whole lines back as
    ``parse`` makes them.

    A line longer than ``max_line`` bytes is rejected as soon as that many bytes are buffered
    without a newline, so memory stays bounded by ``max_line`` plus one chunk.
    """

    def __init__(self, parse: Callable[[bytes], T], max_line: int = DEFAULT_MAX_LINE) -> None:
        self._parse = parse
        self.max_line = max_line
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf already known to hold no newline
        self._failed: ProtocolError | None = None

    def feed(self, data: bytes) -> list[T]:
        """Buffer ``data``; return every message completed by it, in order."""
        if self._failed is not None:
            raise self._failed
        self._buf += data
        out: list[T] = []
        try:
            while (end := self._buf.find(b"\n", self._scanned)) >= 0:
                if end > self.max_line:
                    raise ProtocolError("line", f"longer than {self.max_line} bytes")
                line = bytes(self._buf[:end])
                del self._buf[: end + 1]
                self._scanned = 0
                out.append(self._parse(line))
            self._scanned = len(self._buf)
            if self._scanned > self.max_line:
                raise ProtocolError("line", f"longer than {self.max_line} bytes")
        except ProtocolError as exc:
            self._failed = exc
            if not out:
                raise
            # Hand back the good messages before the bad line; the next call raises.
        return out

    def eof(self) -> None:
        """The stream ended: raise if a partial line is left over."""
        if self._failed is None and self._buf:
            self._failed = ProtocolError("line", "stream ended inside a line")
        if self._failed is not None:
            raise self._failed


class Decoder(LineDecoder[Message]):
    """The decoder of one subscription stream (``GET /v1/subscribe``): messages."""

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        super().__init__(decode_line, max_line)


class FrameDecoder(LineDecoder[Frame]):
    """The decoder of a channel: frames."""

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        super().__init__(decode_frame, max_line)
