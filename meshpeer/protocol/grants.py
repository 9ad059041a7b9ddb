"""Subscription grants: HMAC-SHA256 tokens minted by the subscriber's own controller (pure).

Token: ``mpg1.<key id>.<payload>.<signature>``, where payload is base64url (no padding) of compact
key-sorted JSON ``{"exp", "host", "pol", "sub", "tgt"}`` and signature is base64url of
HMAC-SHA256(key[key id], ``mpg1.<key id>.<payload>``). The key id is outside the payload so the
MAC is checked before any JSON of an untrusted token is parsed. Keys are shared between shards
through config; several ids may be live at once, which is how keys rotate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from meshpeer.protocol.messages import NAME_RE, ProtocolError, check_name

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


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _signature(key: bytes, signed: str) -> str:
    return _b64(hmac.new(key, signed.encode("ascii"), hashlib.sha256).digest())


def _key(keys: Mapping[str, bytes], key_id: str) -> bytes | None:
    key = keys.get(key_id)
    if key is not None and len(key) < MIN_KEY_BYTES:
        raise ValueError(f"grant key {key_id!r} is shorter than {MIN_KEY_BYTES} bytes")
    return key


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
    body = {
        "exp": float(grant.expires_at),
        "host": grant.host,
        "pol": grant.policy_id,
        "sub": grant.subscriber_vpc,
        "tgt": grant.target_vpc,
    }
    payload = _b64(json.dumps(body, separators=(",", ":"), sort_keys=True).encode("ascii"))
    signed = f"{PREFIX}.{grant.key_id}.{payload}"
    return f"{signed}.{_signature(key, signed)}"


def _parse_payload(payload: str, key_id: str) -> Grant:
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        body = json.loads(raw.decode("ascii"))
    except (binascii.Error, ValueError) as exc:
        raise GrantError(Rejection.MALFORMED, f"payload: {exc}") from None
    if not isinstance(body, dict) or body.keys() != {"exp", "host", "pol", "sub", "tgt"}:
        raise GrantError(Rejection.MALFORMED, "payload fields")
    exp = body["exp"]
    if type(exp) not in (int, float) or not math.isfinite(exp):
        raise GrantError(Rejection.MALFORMED, "exp")
    names = [body[f] for f in ("sub", "tgt", "pol", "host")]
    if not all(isinstance(n, str) and NAME_RE.fullmatch(n) for n in names):
        raise GrantError(Rejection.MALFORMED, "names")
    return Grant(names[0], names[1], names[2], names[3], float(exp), key_id)


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
    under ``policy_id`` and that the peering is ACTIVE.
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
