"""Who is calling a shard, and what it may do: authentication and authorisation in one place.

Four kinds of caller, each with its own credential (docs/security.md):

- an operator with an admin token (``api_token``, or one of ``api_tokens``): everything
  but federation;
- an operator with a read-only token (``readonly_token``, or one of ``readonly_tokens``):
  reads only;
- a host (its OHC): ``mph1.<host>.<key id>.<mac>``, the MAC of its name under a host key
  that only shards hold (``host_keys`` in the shard directory); it may register and report
  only itself and follow only its own streams and those of the VPCs with endpoints on it; a
  peer stream further needs a grant naming that same host;
- a shard, for federation only: ``mps1.<shard>.<mac>``, the MAC of its name under the
  federation secret, for a shard listed in the directory.

Pure: :class:`Credentials` turns an ``Authorization`` header into an :class:`Identity`;
:func:`authorize` decides an action on a resource for an identity. The REST edge
(``meshpeer.controller.api``) builds the resource from the shard's state and turns a refusal
into 401 (no identity) or 403 (an identity without the right).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

HOST_PREFIX = "mph1"
SHARD_PREFIX = "mps1"
_HOST_LABEL = b"meshpeer host credential\0"
_SHARD_LABEL = b"meshpeer shard credential\0"


class Role(StrEnum):
    ADMIN = "admin"
    READER = "reader"
    HOST = "host"
    SHARD = "shard"


@dataclass(frozen=True)
class Identity:
    """An authenticated caller: ``name`` is the host's or shard's name ("operator" else)."""

    role: Role
    name: str
    # a host's: the directory key its credential is made with (not part of who it is)
    key_id: str | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.role} {self.name!r}"


class Action(StrEnum):
    READ = "read"  # a GET of the operator API
    WRITE = "write"  # a POST, PUT or DELETE of the operator API
    REGISTER = "register"  # PUT /v1/hosts/{host}: a host's underlay address
    REPORT = "report"  # PUT /v1/hosts/{host}/status, /applied and /offload
    SUBSCRIBE = "subscribe"  # an own-shard stream for a host (endpoint, VPC services, peering)
    SUBSCRIBE_PEER = "subscribe-peer"  # a peer VPC's stream, with a grant
    FEDERATE = "federate"  # a federation view or stream
    DIRECTORY = "directory"  # the directory's public part (its stream): any host, operators


@dataclass(frozen=True)
class Resource:
    """What an action is on. ``host``: the host named by the path or query; ``vpc``: the VPC
    of a stream; ``vpc_hosts``: the hosts with an endpoint in ``vpc`` (own-shard streams);
    ``grant_host``: the host a verified grant names (peer streams)."""

    host: str | None = None
    vpc: str | None = None
    vpc_hosts: frozenset[str] = frozenset()
    grant_host: str | None = None


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.allowed


ALLOW = Decision(True)
_OPERATOR_READS = frozenset({Action.READ, Action.SUBSCRIBE, Action.DIRECTORY})


def authorize(identity: Identity, action: Action, resource: Resource) -> Decision:
    """May ``identity`` do ``action`` on ``resource``? The one place that says so."""
    role = identity.role
    if action is Action.FEDERATE:
        return ALLOW if role is Role.SHARD else _deny(identity, "federation is for shards only")
    if role is Role.ADMIN:
        return ALLOW
    if role is Role.READER:
        return ALLOW if action in _OPERATOR_READS else _deny(identity, "read-only")
    if role is Role.SHARD:
        return _deny(identity, "a shard credential opens federation only")
    return _host(identity, action, resource)


def _host(identity: Identity, action: Action, r: Resource) -> Decision:
    me = identity.name
    if action in (Action.READ, Action.WRITE):
        return _deny(identity, "a host credential opens its own registration and streams only")
    if action is Action.DIRECTORY:
        return ALLOW  # every host learns the shards from its own (no secret in it)
    if r.host != me:
        return _deny(identity, f"host {me!r} acts only for itself, not for {r.host!r}")
    if action is Action.SUBSCRIBE and r.vpc is not None and me not in r.vpc_hosts:
        return _deny(identity, f"VPC {r.vpc!r} has no endpoint on host {me!r}")
    if action is Action.SUBSCRIBE_PEER and r.grant_host != me:
        return _deny(identity, f"the grant names host {r.grant_host!r}, not {me!r}")
    return ALLOW


def _deny(identity: Identity, why: str) -> Decision:
    return Decision(False, f"{identity}: {why}")


def host_token(host: str, key_id: str, key: bytes) -> str:
    """The credential of ``host`` under host key ``key_id`` (the lab and tests hand it out)."""
    return f"{HOST_PREFIX}.{host}.{key_id}.{_mac(key, _HOST_LABEL, host)}"


def shard_token(shard: str, federation_secret: str) -> str:
    """What shard ``shard`` presents to its peers for federation."""
    return f"{SHARD_PREFIX}.{shard}.{_mac(federation_secret.encode(), _SHARD_LABEL, shard)}"


def _mac(key: bytes, label: bytes, name: str) -> str:
    return hmac.new(key, label + name.encode(), hashlib.sha256).hexdigest()


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _one_of(token: str, valid: Collection[str]) -> bool:
    """``token`` is one of ``valid`` (an empty one is no token). Every one is compared, in
    constant time each: the answer's timing does not say which one matched."""
    found = False
    for candidate in valid:
        found |= bool(candidate) and _same(token, candidate)
    return found


@dataclass(frozen=True)
class Credentials:
    """Every credential a shard accepts. Several host keys may be live at once (rotation:
    add the new key, hand out new tokens, then drop the old key); ``revoked_hosts`` are
    refused whatever key signed them. Operator tokens rotate the same way: ``admin_tokens``
    and ``readonly_tokens`` are valid beside ``admin_token`` and ``readonly_token``."""

    admin_token: str
    readonly_token: str | None
    host_keys: Mapping[str, bytes]
    federation_secret: str
    shards: Collection[str]
    revoked_hosts: Collection[str] = frozenset()
    admin_tokens: Collection[str] = ()
    readonly_tokens: Collection[str] = ()

    def identify(self, authorization: str | None) -> Identity | None:
        """The caller an ``Authorization: Bearer`` header names, or None (not a credential)."""
        token = bearer(authorization)
        if token is None:
            return None
        if _one_of(token, [self.admin_token, *self.admin_tokens]):
            return Identity(Role.ADMIN, "operator")
        if _one_of(token, [self.readonly_token or "", *self.readonly_tokens]):
            return Identity(Role.READER, "operator")
        parts = token.split(".")
        if parts[0] == HOST_PREFIX and len(parts) == 4:
            return self._host(parts[1], parts[2], token)
        if parts[0] == SHARD_PREFIX and len(parts) == 3:
            return self._shard(parts[1], token)
        return None

    def _shard(self, shard: str, token: str) -> Identity | None:
        if shard not in self.shards or not self.federation_secret:
            return None
        ok = _same(token, shard_token(shard, self.federation_secret))
        return Identity(Role.SHARD, shard) if ok else None

    def _host(self, host: str, key_id: str, token: str) -> Identity | None:
        key = self.host_keys.get(key_id)
        if key is None or host in self.revoked_hosts:
            return None
        ok = _same(token, host_token(host, key_id, key))
        return Identity(Role.HOST, host, key_id) if ok else None


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive)."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def route_action(method: str, path: str, params: Mapping[str, str]) -> tuple[Action, Resource]:
    """The action a REST route takes (the stream and federation routes decide their own)."""
    if method == "PUT" and path == "/v1/hosts/{name}":
        return Action.REGISTER, Resource(host=params["name"])
    if method == "PUT" and path in (
        "/v1/hosts/{name}/status",
        "/v1/hosts/{name}/applied",
        "/v1/hosts/{name}/offload",  # an on-demand host's busy pairs (docs/protocol.md)
    ):
        return Action.REPORT, Resource(host=params["name"])
    if path.startswith("/v1/federation/"):
        return Action.FEDERATE, Resource()
    return (Action.READ if method == "GET" else Action.WRITE), Resource()


@dataclass(frozen=True)
class OperatorTokens:
    """Operator tokens from ``operator_tokens_file``, valid beside the configured ones and
    re-read when the file changes: rotation without a restart (add, move the clients, drop)."""

    admin: tuple[str, ...] = ()
    readonly: tuple[str, ...] = ()


MIN_TOKEN_CHARS = 16


def parse_operator_tokens(doc: object) -> OperatorTokens:
    """``{admin: [..], readonly: [..]}`` (both optional); ValueError names what is wrong."""
    if doc is None:
        return OperatorTokens()
    if not isinstance(doc, Mapping):
        raise ValueError("expected a mapping with `admin` and `readonly` lists")
    unknown = sorted(set(doc) - {"admin", "readonly"})
    if unknown:
        raise ValueError(f"unknown keys {unknown}: expected `admin` and `readonly`")
    out: dict[str, tuple[str, ...]] = {}
    for role in ("admin", "readonly"):
        tokens = doc.get(role) or []
        if not isinstance(tokens, list):
            raise ValueError(f"{role}: expected a list of tokens")
        for i, t in enumerate(tokens):
            if not isinstance(t, str) or len(t) < MIN_TOKEN_CHARS or t != t.strip():
                raise ValueError(f"{role}[{i}]: a token is a string of {MIN_TOKEN_CHARS}+ chars")
        out[role] = tuple(tokens)
    return OperatorTokens(out["admin"], out["readonly"])
