"""Subscription grants: HMAC-SHA256 tokens minted by the subscriber's own controller (pure).

Token: ``mpg1.<key id>.<payload>.<signature>``, where payload is base64url (no padding) of compact
key-sorted JSON ``{"exp", "host", "pol", "sub", "tgt"}`` (and ``"dst"``, a sorted list of IP
addresses, in a grant scoped to destinations) and signature is base64url of
HMAC-SHA256(key[key id], ``mpg1.<key id>.<payload>``). The key id is outside the payload so the
MAC is checked before any JSON of an untrusted token is parsed. Keys are shared between shards
through config; several ids may be live at once, which is how keys rotate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from meshpeer.protocol.messages import MAX_DST, NAME_RE, ProtocolError, check_name

PREFIX = "mpg1"
MIN_KEY_BYTES = 32
MAX_TOKEN = 2048
KEY_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_B64_RE = re.compile(r"[A-Za-z0-9_-]+")


class Rejection(StrEnum):
    """Why a grant was refused (say only this to the client, log ``detail``)."""

    MALFORMED = "malformed"
    UNKNOWN_KEY = "unknown-key"
    BAD_SIGNATURE = "bad-signature"
    EXPIRED = "expired"
    WRONG_SCOPE = "wrong-scope"


class GrantError(Exception):
    """A grant was refused; ``reason`` is a :class:`Rejection`."""

    def __init__(self, reason: Rejection, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Grant:
    """Permission for ``host`` (in ``subscriber_vpc``) to subscribe to ``target_vpc``'s services
    exported under ``policy_id`` until ``expires_at`` (wall-clock Unix seconds)."""

    subscriber_vpc: str
    target_vpc: str
    policy_id: str
    host: str
    expires_at: float
    key_id: str
    # A grant scoped to destinations (an on-demand host's busy pairs, docs/protocol.md): it
    # lets the host follow the target's destination stream narrowed to these addresses
    # (canonical text) only. None: the whole of every stream the policy exports.
    dst: frozenset[str] | None = None


_FIELDS = frozenset({"exp", "host", "pol", "sub", "tgt"})


def _canonical_dst(items: object) -> frozenset[str] | None:
    """A ``dst`` scope's addresses in canonical text; None if it is not a list of 1..MAX
    canonical IP addresses, sorted, without repeats (what ``mint`` writes)."""
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_DST:
        return None
    try:
        canon = [str(ipaddress.ip_address(i)) if isinstance(i, str) else "" for i in items]
    except ValueError:
        return None
    if canon != items or items != sorted(set(items)):
        return None
    return frozenset(canon)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _signature(key: bytes, signed: str) -> str:
    return _b64(hmac.new(key, signed.encode("ascii"), hashlib.sha256).digest())


def _key(keys: Mapping[str, bytes], key_id: str) -> bytes | None:
    key = keys.get(key_id)
    if key is not None and len(key) < MIN_KEY_BYTES:
        raise ValueError(f"grant key {key_id!r} is shorter than {MIN_KEY_BYTES} bytes")
    return key


def expiry_bucket(now: float, ttl: float) -> float:
    """A grant's expiry rounded to whole ``ttl`` buckets, valid for at least one ttl: what
    a shard mints changes once per bucket, not at every recomputation."""
    return (int(now // ttl) + 2) * ttl


def mint(grant: Grant, keys: Mapping[str, bytes]) -> str:
    """Sign ``grant`` with ``keys[grant.key_id]``; raises ValueError on a bad grant or key."""
    try:
        for field in ("subscriber_vpc", "target_vpc", "policy_id", "host"):
            check_name(field, getattr(grant, field))
    except ProtocolError as exc:
        raise ValueError(str(exc)) from None
    if not KEY_ID_RE.fullmatch(grant.key_id):
        raise ValueError("key_id must be 1-64 chars of [A-Za-z0-9_-]")
    if not math.isfinite(grant.expires_at):
        raise ValueError("expires_at must be finite")
    key = _key(keys, grant.key_id)
    if key is None:
        raise ValueError(f"no grant key {grant.key_id!r}")
    body: dict[str, object] = {
        "exp": float(grant.expires_at),
        "host": grant.host,
        "pol": grant.policy_id,
        "sub": grant.subscriber_vpc,
        "tgt": grant.target_vpc,
    }
    if grant.dst is not None:
        dst = sorted(grant.dst)
        if _canonical_dst(dst) is None:
            raise ValueError(f"dst must list 1-{MAX_DST} IP addresses in canonical text")
        body["dst"] = dst
    payload = _b64(json.dumps(body, separators=(",", ":"), sort_keys=True).encode("ascii"))
    signed = f"{PREFIX}.{grant.key_id}.{payload}"
    return f"{signed}.{_signature(key, signed)}"


def _parse_payload(payload: str, key_id: str) -> Grant:
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        body = json.loads(raw.decode("ascii"))
    except (binascii.Error, ValueError) as exc:
        raise GrantError(Rejection.MALFORMED, f"payload: {exc}") from None
    if not isinstance(body, dict) or body.keys() - {"dst"} != _FIELDS:
        raise GrantError(Rejection.MALFORMED, "payload fields")
    dst = _canonical_dst(body["dst"]) if "dst" in body else None
    if "dst" in body and dst is None:
        raise GrantError(Rejection.MALFORMED, "dst")
    exp = body["exp"]
    if type(exp) not in (int, float) or not math.isfinite(exp):
        raise GrantError(Rejection.MALFORMED, "exp")
    names = [body[f] for f in ("sub", "tgt", "pol", "host")]
    if not all(isinstance(n, str) and NAME_RE.fullmatch(n) for n in names):
        raise GrantError(Rejection.MALFORMED, "names")
    return Grant(names[0], names[1], names[2], names[3], float(exp), key_id, dst)


def verify(
    token: str,
    keys: Mapping[str, bytes],
    now: float,
    *,
    target_vpc: str,
    policy_id: str,
    host: str,
) -> Grant:
    """Check ``token`` and its scope; return the grant or raise :class:`GrantError`.

    Order: shape, key id, signature (constant time), payload, expiry (``now >= exp`` is expired),
    scope. The caller must still check that ``grant.subscriber_vpc`` peers with ``target_vpc``
    under ``policy_id`` and that the peering is ACTIVE, and, for a subscription, that the
    grant ``covers`` what it asks.
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN:
        raise GrantError(Rejection.MALFORMED, "not a token")
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != PREFIX:
        raise GrantError(Rejection.MALFORMED, "expected mpg1.<kid>.<payload>.<sig>")
    _, key_id, payload, sig = parts
    if not KEY_ID_RE.fullmatch(key_id) or not _B64_RE.fullmatch(payload):
        raise GrantError(Rejection.MALFORMED, "key id or payload")
    key = _key(keys, key_id)
    if key is None:
        raise GrantError(Rejection.UNKNOWN_KEY, key_id)
    expected = _signature(key, f"{PREFIX}.{key_id}.{payload}")
    if not hmac.compare_digest(expected.encode("ascii"), sig.encode("utf-8")):
        raise GrantError(Rejection.BAD_SIGNATURE)
    grant = _parse_payload(payload, key_id)
    if now >= grant.expires_at:
        raise GrantError(Rejection.EXPIRED, f"expired at {grant.expires_at}")
    scope = (grant.target_vpc, grant.policy_id, grant.host)
    if scope != (target_vpc, policy_id, host):
        raise GrantError(Rejection.WRONG_SCOPE, "grant is for {}/{} on {}".format(*scope))
    return grant


def covers(grant: Grant, only: frozenset[str] | None) -> None:
    """May a subscription narrowed to ``only`` (None: the whole stream) use ``grant``? A grant
    scoped to destinations allows a destination filter within its scope only; raises
    :class:`GrantError` (WRONG_SCOPE) if not. A grant without ``dst`` allows any."""
    if grant.dst is None:
        return
    if only is None:
        raise GrantError(Rejection.WRONG_SCOPE, "grant is for some destinations only: use dst")
    outside = sorted(only - grant.dst)
    if outside:
        shown = ", ".join(outside[:4]) + (" ..." if len(outside) > 4 else "")
        raise GrantError(Rejection.WRONG_SCOPE, f"dst {shown} outside the grant's destinations")
