"""Subscription protocol messages and the subscribe request (pure, no I/O).

Messages are plain frozen dataclasses. They do not validate themselves: trusted code builds them,
and untrusted bytes become messages only through :mod:`meshpeer.protocol.codec`, which validates
every field. The one untrusted input parsed here is the subscribe request (URL query + header).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, NamedTuple

JsonObject = dict[str, Any]
"""One published object: a JSON object (what the service says about one id)."""

MAX_VERSION = 2**63 - 1
# A host status report (PUT /v1/hosts/{name}/status) lists at most this many of each.
MAX_STATUS_STREAMS = 4096
MAX_STATUS_SKIPPED = 256
MAX_STATUS_TEXT = 1000
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""VPC, host, policy-id, error-code and key names: 1-128 chars, no '/', no whitespace."""
OBJECT_ID_RE = re.compile(r"[!-~]{1,256}")
"""Object ids: 1-256 printable ASCII chars without spaces (IPs, CIDRs, uuids)."""
GRANT_HEADER = "Meshpeer-Grant"  # a peer stream's grant; Authorization says who presents it
CHANNEL_HEADER = "Meshpeer-Channel"  # the id of a channel, in its stream's response head
CHANNEL_ID_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
MAX_SUB = 2**31 - 1
"""Subscription ids on a channel: integers in [0, MAX_SUB], chosen by the subscriber."""
MAX_CHANNEL_ENTRIES = 4096
"""Subscribes plus unsubscribes in one channel control request."""
GRANT_RE = re.compile(r"[A-Za-z0-9._-]{1,2048}")
# Any bearer credential (operator token, host or shard credential, grant): printable ASCII.
TOKEN_RE = re.compile(r"[!-~]{1,4096}")


class ProtocolError(ValueError):
    """Untrusted input broke the protocol; ``field`` names what, ``detail`` says how."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


class ServiceName(StrEnum):
    """The five services of the patent's FIG. 4, and the shards' own (the wire value is the
    string)."""

    ENDPOINT = "endpoint"  # meta-service: what is on host H (key: host name)
    PEERING = "peering"  # peers of VPC V, policy ids, peer controller URL, grants (key: VPC)
    DESTINATION = "destination"  # endpoint IP -> MAC, VNI, host underlay IP (key: VPC)
    FORWARDING = "forwarding"  # routes and next hops (key: VPC)
    LOADBALANCER = "loadbalancer"  # VIP -> backends, weights, health (key: VPC)
    # Between controller shards: a VPC's configured peerings, their export policy ids and
    # what each exports, so the peer shard can tell ACTIVE from INACTIVE (key: VPC).
    FEDERATION = "federation"
    # The shard directory's public part (shards, URLs, replicas, VNI ranges, pinned VPCs),
    # which hosts learn from their shard (key: ``shards``; meshpeer.protocol.directory).
    DIRECTORY = "directory"


class CloseReason(StrEnum):
    """Well-known ``Close.reason`` values (the field is a free string for forward use)."""

    PEERING_GONE = "peering-gone"  # peering deleted or no longer ACTIVE: drop the state
    GRANT_EXPIRED = "grant-expired"  # re-subscribe with a fresh grant
    SHUTDOWN = "shutdown"  # publisher going away: keep state, resume later with since
    HOST_LEFT = "host-left"  # the host has no endpoint left in the VPC: drop the state
    HOST_REVOKED = "host-revoked"  # the host's credential is revoked: drop the state


@dataclass(frozen=True)
class Snapshot:
    """The full state of one service key at ``version``."""

    service: ServiceName
    key: str
    version: int
    objects: dict[str, JsonObject]


@dataclass(frozen=True)
class Delta:
    """The change from ``version - 1`` to ``version``: upsert these ids, delete those."""

    service: ServiceName
    key: str
    version: int
    upserts: dict[str, JsonObject]
    deletes: tuple[str, ...]


@dataclass(frozen=True)
class Heartbeat:
    """Liveness: the stream is at ``version``; ``now`` is the publisher's clock (informational)."""

    version: int
    now: float


@dataclass(frozen=True)
class Close:
    """The publisher ends the stream; see :class:`CloseReason`."""

    reason: str


@dataclass(frozen=True)
class ErrorMsg:
    """An error after the stream started (before it, HTTP status codes are used)."""

    code: str
    detail: str


Message = Snapshot | Delta | Heartbeat | Close | ErrorMsg


@dataclass(frozen=True)
class Keepalive:
    """A channel's liveness frame: one per connection, not per subscription (``now``: the
    publisher's clock, informational)."""

    now: float


@dataclass(frozen=True)
class Frame:
    """One line of a channel: a message of subscription ``sub``, or (``sub`` None) a
    keepalive or an error of the whole channel. ``size``: the line's bytes with its newline."""

    sub: int | None
    msg: Message | Keepalive
    size: int


@dataclass(frozen=True)
class SubscribeRequest:
    """A validated ``GET /v1/subscribe`` request."""

    service: ServiceName
    key: str
    since: int | None
    grant: str | None
    policy: str | None = None
    host: str | None = None
    # A peer destination stream narrowed to these addresses (canonical text): an on-demand
    # host's subscription for its busy pairs only (docs/protocol.md, "Destination filter").
    only: frozenset[str] | None = None


# The services a VPC publishes per export policy, which a peer's hosts follow (FIG. 4).
PEER_SERVICES = (ServiceName.DESTINATION, ServiceName.FORWARDING, ServiceName.LOADBALANCER)


class StreamId(NamedTuple):
    """One published stream: the publisher's key and the multiplexer's. ``key`` is a VPC
    name (a host name for the endpoint meta-service); a plain ``(service, key, policy, host)``
    tuple compares equal."""

    service: ServiceName
    key: str
    policy: str | None = None
    host: str | None = None

    @classmethod
    def of(cls, request: SubscribeRequest) -> StreamId:
        """The stream a validated subscribe request asks for."""
        return cls(request.service, request.key, request.policy, request.host)


@dataclass(frozen=True)
class ChannelSubscribe:
    """One subscription asked for on a channel: ``sub`` names it in the channel's frames;
    ``grant`` is a peer stream's grant (the channel's credential says who presents it)."""

    sub: int
    request: SubscribeRequest
    grant: str | None


@dataclass(frozen=True)
class ChannelControl:
    """A validated channel control request: subscriptions to add (or replace, same ``sub``)
    and subscription ids to end."""

    subscribe: tuple[ChannelSubscribe, ...]
    unsubscribe: tuple[int, ...]


_QUERY_FIELDS = frozenset({"service", "key", "since", "policy", "host", "dst"})
MAX_DST = 256  # addresses one destination filter names


def parse_dst(value: object, field: str = "dst") -> frozenset[str]:
    """A destination filter: a list of IP addresses (in a query, one comma-separated string
    of them), 1..MAX_DST, each in canonical text; ProtocolError naming ``field``."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_DST:
        raise ProtocolError(field, f"must list 1-{MAX_DST} IP addresses")
    out: set[str] = set()
    for item in items:
        try:  # no IPv6 zone index, as the REST schema's ``ip`` format (review gw2, G3)
            ip = ipaddress.ip_address(item) if isinstance(item, str) and "%" not in item else None
        except ValueError:
            ip = None
        if ip is None:
            raise ProtocolError(field, f"{str(item)[:64]!r} is not an IP address")
        out.add(str(ip))
    return frozenset(out)


def narrowed(
    request: SubscribeRequest, only: frozenset[str], field: str = "dst"
) -> SubscribeRequest:
    """``request`` with a destination filter: a peer destination stream's only."""
    if request.service != ServiceName.DESTINATION or request.policy is None:
        raise ProtocolError(field, "narrows a peer destination stream only (with a policy)")
    return replace(request, only=only)


def check_name(field: str, value: object) -> str:
    """Return ``value`` if it is a valid name (see :data:`NAME_RE`), else raise ProtocolError."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise ProtocolError(field, "must be 1-128 chars of [A-Za-z0-9._-], starting alphanumeric")
    return value


def parse_since(value: str) -> int:
    """Parse a decimal version (no sign, no spaces, no leading zeros) into an int."""
    if not re.fullmatch(r"0|[1-9][0-9]{0,18}", value) or int(value) > MAX_VERSION:
        raise ProtocolError("since", "must be a decimal integer in [0, 2**63)")
    return int(value)


def parse_subscribe_request(
    query: Mapping[str, str], authorization: str | None = None
) -> SubscribeRequest:
    """Validate the query of ``GET /v1/subscribe`` and the ``Authorization`` header.

    ``query`` may be a multi-dict (webob ``request.GET``): a repeated parameter is rejected.
    The credential is taken only from ``Authorization: Bearer <token>``, never from the URL (URLs
    are logged). A peer stream (one with a ``policy``) needs a grant whose scope names a host, so
    ``policy`` requires ``host``. ``grant`` here is the bearer token, whatever it is: the caller's
    credential (a peer stream's grant travels in the ``Meshpeer-Grant`` header, docs/protocol.md).
    """
    seen: dict[str, str] = {}
    for name, value in query.items():
        if name not in _QUERY_FIELDS:
            raise ProtocolError(name[:64], "unknown query parameter")
        if name in seen:
            raise ProtocolError(name, "repeated query parameter")
        if not isinstance(value, str):
            raise ProtocolError(name, "must be a string")
        seen[name] = value
    if "service" not in seen:
        raise ProtocolError("service", "missing")
    try:
        service = ServiceName(seen["service"])
    except ValueError:
        raise ProtocolError("service", f"must be one of {[s.value for s in ServiceName]}") from None
    if "key" not in seen:
        raise ProtocolError("key", "missing")
    key = check_name("key", seen["key"])
    since = parse_since(seen["since"]) if "since" in seen else None
    policy = check_name("policy", seen["policy"]) if "policy" in seen else None
    host = check_name("host", seen["host"]) if "host" in seen else None
    # Anything but a well-formed bearer token counts as no credential: the server then
    # answers 401 like every other route, not 400.
    grant = None
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and TOKEN_RE.fullmatch(token):
            grant = token
    if policy is not None and host is None:
        raise ProtocolError("host", "required with a policy (the grant's scope names the host)")
    request = SubscribeRequest(service, key, since, grant, policy, host)
    return narrowed(request, parse_dst(seen["dst"])) if "dst" in seen else request


def stream_name(service: str, key: str, policy: str | None, host: str | None) -> str:
    """A stream's name in applied-version reports: ``service/key/policy/host``.

    Every subscriber of a stream reads the same log, so the subscribing host is part of the
    name only for the ``peering`` service, which is published per host.
    """
    own_host = host if service == ServiceName.PEERING else None
    return f"{service}/{key}/{policy or ''}/{own_host or ''}"


def parse_stream_name(name: str) -> tuple[ServiceName, str, str | None, str | None]:
    """The inverse of :func:`stream_name`: (service, key, policy, host); ProtocolError if
    ``name`` is not one."""
    parts = name.split("/")
    if len(parts) != 4:
        raise ProtocolError("stream", "must be service/key/policy/host")
    service, key, policy, host = parts
    try:
        svc = ServiceName(service)
    except ValueError:
        raise ProtocolError("stream", f"unknown service {service!r}") from None
    check_name("stream", key)
    for part in (policy, host):
        if part:
            check_name("stream", part)
    return svc, key, policy or None, host or None


_ENTRY_FIELDS = frozenset({"sub", "service", "key", "policy", "host", "since", "grant", "dst"})


def check_sub(field: str, value: object) -> int:
    """A subscription id: an integer in [0, MAX_SUB] (booleans are not integers)."""
    if type(value) is not int or not 0 <= value <= MAX_SUB:
        raise ProtocolError(field, f"must be an integer in [0, {MAX_SUB}]")
    return value


def parse_channel_subscribe(doc: object, where: str) -> ChannelSubscribe:
    """Validate one entry of a channel control request's ``subscribe`` list: the fields of
    ``GET /v1/subscribe``'s query with the same rules (``since`` a JSON integer), ``sub`` and
    a peer stream's ``grant``. ProtocolError names the field as ``where.field``."""
    if not isinstance(doc, dict):
        raise ProtocolError(where, "must be an object")
    for name in doc:
        if name not in _ENTRY_FIELDS:
            raise ProtocolError(f"{where}.{str(name)[:64]}", "unknown field")
    sub = check_sub(f"{where}.sub", doc.get("sub"))
    since = doc.get("since")
    if since is not None and (type(since) is not int or not 0 <= since <= MAX_VERSION):
        raise ProtocolError(f"{where}.since", "must be an integer in [0, 2**63)")
    grant = doc.get("grant")
    if grant is not None and (not isinstance(grant, str) or not GRANT_RE.fullmatch(grant)):
        raise ProtocolError(f"{where}.grant", "must be a grant token")
    query = {k: doc[k] for k in ("service", "key", "policy", "host") if k in doc}
    try:
        request = parse_subscribe_request(query)
    except ProtocolError as exc:
        raise ProtocolError(f"{where}.{exc.field}", exc.detail) from None
    if "dst" in doc:  # a JSON list of addresses here
        request = narrowed(request, parse_dst(doc["dst"], f"{where}.dst"), f"{where}.dst")
    return ChannelSubscribe(sub, replace(request, since=since), grant)


def parse_channel_control(doc: object) -> ChannelControl:
    """Validate a channel control request body: ``{"subscribe": [entry, ...], "unsubscribe":
    [sub, ...]}``, both optional, at most MAX_CHANNEL_ENTRIES together, no id twice."""
    if not isinstance(doc, dict):
        raise ProtocolError("body", "must be an object")
    for name in doc:
        if name not in ("subscribe", "unsubscribe"):
            raise ProtocolError(str(name)[:64], "unknown field")
    adds, drops = doc.get("subscribe", []), doc.get("unsubscribe", [])
    for name, value in (("subscribe", adds), ("unsubscribe", drops)):
        if not isinstance(value, list):
            raise ProtocolError(name, "must be a list")
    if len(adds) + len(drops) > MAX_CHANNEL_ENTRIES:
        raise ProtocolError("subscribe", f"at most {MAX_CHANNEL_ENTRIES} entries in all")
    subscribe = tuple(parse_channel_subscribe(d, f"subscribe[{i}]") for i, d in enumerate(adds))
    unsubscribe = tuple(check_sub(f"unsubscribe[{i}]", d) for i, d in enumerate(drops))
    ids = [e.sub for e in subscribe] + list(unsubscribe)
    if len(set(ids)) != len(ids):
        raise ProtocolError("subscribe", "a subscription id is named twice")
    return ChannelControl(subscribe, unsubscribe)
