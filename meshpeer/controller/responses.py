"""Schemas of the controller API's success bodies (published in /v1/openapi.json).

Each mirrors one builder: a model's ``to_json`` (controller/model.py), a handler's envelope
(controller/api.py), the stream codec (protocol/codec.py). Every field is required unless the
builder leaves it out, and objects allow no other field, so a builder that adds, drops or
retypes a field breaks tests/api/test_api_openapi.py (every route's real answers validated
against this document) and the schemathesis run (response-schema conformance).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import get_args

from meshpeer.controller.peering import ACTIVE, INACTIVE
from meshpeer.protocol import ServiceName, gateways
from meshpeer.protocol import peering as peering_wire
from meshpeer.protocol.messages import (
    GRANT_RE,
    MAX_CHANNEL_ENTRIES,
    MAX_DST,
    MAX_STATUS_SKIPPED,
    MAX_STATUS_STREAMS,
    MAX_STATUS_TEXT,
    MAX_SUB,
    MAX_VERSION,
    NAME_RE,
)
from meshpeer.rest.schema import Arr, Bool, Free, Int, Map, Nullable, Num, Obj, OneOf, Schema, Str
from policies import routes

NAME = Str(format="name")
IP = Str(format="ip")
CIDR = Str(format="cidr")
VERSION = Int(0, MAX_VERSION, description="the store version of this object's last write")
OBJ_VERSION = Nullable(VERSION)
PROTOCOL_NAME = Str(pattern=NAME_RE.pattern, description="1-128 chars of [A-Za-z0-9._-]")

PROGRAMMED: Mapping[str, Schema] = {
    "programmed": Bool(description="every host that must apply this write has reported it"),
    "pending_hosts": Arr(NAME, description="hosts that have not reported applying it yet"),
}


def _with(base: Obj, name: str, extra: Mapping[str, Schema], description: str = "") -> Obj:
    """``base`` plus ``extra`` required fields, as another named schema."""
    return Obj({**base.required, **extra}, base.optional, name=name, description=description)


SUBNET = Obj({"name": NAME, "cidr": CIDR, "gateway": IP}, name="Subnet")
SUBNET_CREATED = _with(SUBNET, "SubnetCreated", {"version": VERSION})
VPC = Obj(
    {
        "name": NAME,
        "vni": Int(1, (1 << 24) - 1),
        "subnets": Arr(SUBNET),
        "asn": Int(1, 65535, description="BGP AS number toward on-prem routers"),
        "version": OBJ_VERSION,
    },
    name="Vpc",
)
VPCS = Obj({"vpcs": Arr(VPC)}, name="VpcList")
SUBNETS = Obj({"subnets": Arr(SUBNET)}, name="SubnetList")

DELETED = Obj({"deleted": NAME, "version": VERSION}, name="Deleted")
DELETED_PROGRAMMED = _with(DELETED, "DeletedProgrammed", PROGRAMMED)

ENDPOINT = Obj(
    {
        "name": NAME,
        "vpc": NAME,
        "kind": Str(enum=("vm", "ilb", "router", "vpn", "interconnect")),
        "ip": IP,
        "mac": Nullable(Str(format="mac")),
        "host": Nullable(NAME),
        "version": OBJ_VERSION,
    },
    {
        "backends": Arr(Obj({"endpoint": NAME, "weight": Int(1, 65535)}, name="BackendView")),
        "spillover": Arr(
            Obj({"vpc": NAME, "endpoint": NAME, "weight": Int(1, 65535)}, name="SpilloverView"),
            description="backends in peered VPCs that take a share of the new connections "
            "while the local ones are overloaded (docs/gateways.md, overload shift)",
        ),
        "bgp": Obj(
            {"peer_asn": Int(1, 65535), "peer_ip": IP, "local_ip": IP},
            name="BgpPeerView",
            description="its BGP session to an on-prem router (docs/routing.md)",
        ),
    },
    name="Endpoint",
    description="backends, spillover: ILBs only; bgp: router, vpn and interconnect endpoints"
    " with a session",
)
ENDPOINT_PROGRAMMED = _with(ENDPOINT, "EndpointProgrammed", PROGRAMMED)
ENDPOINTS = Obj({"endpoints": Arr(ENDPOINT)}, name="EndpointList")
ENDPOINT_BATCH = Obj(
    {"endpoints": Arr(ENDPOINT), "version": VERSION, **PROGRAMMED}, name="EndpointBatchCreated"
)

# An export policy's fields: all optional in a request (controller/api.py), all in an answer.
EXPORT_FIELDS: Mapping[str, Schema] = {
    "ranges": Arr(CIDR, max_items=256),
    "private_only": Bool(),
    "ipv6_only": Bool(),
    "custom_routes": Bool(),
}
EXPORT_CONFIG = Obj(
    EXPORT_FIELDS,
    name="ExportPolicyConfig",
    description="The export policy as stored (normalised)",
)
INBOUND = Str(
    enum=peering_wire.INBOUND,
    description="What this side lets in from the peer: `all` (default), or `replies`: only"
    " answers to connections this VPC's endpoints opened (docs/policies.md, One-way peering)",
)
FORWARDING = Str(
    enum=gateways.FORWARDING,
    description="How this side's hosts send to the peer: `direct` (default: straight to the"
    " peer endpoint's host), `gateway` (through the gateway hosts' select group; no per-peer-"
    "endpoint flows on this side's hosts), `on-demand` (through the gateways; a busy pair"
    " goes direct, docs/gateways.md)",
)
PREFERENCE = Int(
    routes.MIN_PREFERENCE,
    routes.MAX_PREFERENCE,
    description="How much this side prefers the peer's routes over other peers' routes to the"
    f" same prefix: higher wins (default {routes.DEFAULT_PREFERENCE}; docs/routing.md)",
)
PEERING = Obj(
    {
        "name": NAME,
        "vpc": NAME,
        "peer_vpc": NAME,
        "export": EXPORT_CONFIG,
        "export_policy_id": PROTOCOL_NAME,
        "import_custom_routes": Bool(),
        "inbound": INBOUND,
        "preference": PREFERENCE,
        "forwarding": FORWARDING,
        "version": OBJ_VERSION,
        "state": Str(enum=(ACTIVE, INACTIVE)),
        "state_details": Str(),
        "peer_export_policy_id": Nullable(PROTOCOL_NAME),
    },
    name="Peering",
)
PEERING_PROGRAMMED = _with(PEERING, "PeeringProgrammed", PROGRAMMED)
WARNING = Obj(
    {"field": Str(), "detail": Str()},
    name="Warning",
    description="accepted, but likely not what was meant; field names the input as in errors",
)
PEERING_WRITTEN = _with(
    PEERING_PROGRAMMED,
    "PeeringWritten",
    {"warnings": Arr(WARNING)},
    description="warnings: each export range that overlaps no subnet of the VPC (nor, with"
    " custom_routes, a custom route): it exports nothing now (docs/policies.md)",
)
PEERINGS = Obj({"peerings": Arr(PEERING)}, name="PeeringList")

ROUTE = Obj(
    {
        "name": NAME,
        "vpc": NAME,
        "prefix": CIDR,
        "next_hop": IP,
        "priority": Int(0, 65535),
        "version": OBJ_VERSION,
    },
    name="Route",
)
ROUTES = Obj({"routes": Arr(ROUTE)}, name="RouteList")
_ROUTE_FIELDS: Mapping[str, Schema] = {
    "prefix": CIDR,
    "kind": Str(enum=("subnet", "static", "dynamic")),
    "origin": Str(description="local, or peer:<vpc>"),
    "next_hop": Nullable(IP),
    "priority": Nullable(Int(0, 65535)),
}
_PEER_PREFERENCE = Int(
    routes.MIN_PREFERENCE,
    routes.MAX_PREFERENCE,
    description="peer routes only: the preference of the local peering side that imports it",
)
RULE = Str(
    enum=get_args(routes.Reason),
    description="the filter or conflict rule that left the route out (docs/routing.md)",
)
ROUTE_WINNER = Obj(
    _ROUTE_FIELDS,
    {"preference": _PEER_PREFERENCE},
    name="RouteWinner",
    description="the installed route this one lost to",
)
ROUTE_LOSER = Obj(
    {**_ROUTE_FIELDS, "rule": RULE},
    {"preference": _PEER_PREFERENCE},
    name="RouteLoser",
    description="a route to the same prefix that lost to this one, and by which rule",
)
EFFECTIVE_ROUTE = Obj(
    {**_ROUTE_FIELDS, "installed": Bool()},
    {
        "imported": Bool(description="peer routes only"),
        "preference": _PEER_PREFERENCE,
        "reason": Str(description="why the route is not installed: its rule, in words"),
        "rule": RULE,
        "winner": ROUTE_WINNER,
        "losers": Arr(ROUTE_LOSER, description="installed routes: the routes they beat"),
    },
    name="EffectiveRoute",
)
BGP_STATUS = Obj(
    {
        "vpc": NAME,
        "asn": Int(1, 65535),
        "sessions": Arr(
            Obj(
                {
                    "endpoint": NAME,
                    "peer_ip": IP,
                    "peer_asn": Int(1, 65535),
                    "local_ip": IP,
                    "local_asn": Int(1, 65535),
                    "established": Bool(),
                    "announced": Arr(CIDR),
                    "announced_next_hop": IP,
                    "learned": Arr(
                        Obj(
                            {
                                "prefix": Str(),
                                "med": Nullable(Int(0, (1 << 32) - 1)),
                                "stale": Bool(description="kept from before a restart"),
                                "accepted": Bool(
                                    description="a route of the VPC: not 0.0.0.0/0, not inside"
                                    " one of its subnets"
                                ),
                            },
                            name="BgpLearnedRoute",
                        )
                    ),
                },
                name="BgpSession",
            )
        ),
    },
    name="BgpStatus",
)
EFFECTIVE_ROUTES = Obj({"vpc": NAME, "routes": Arr(EFFECTIVE_ROUTE)}, name="EffectiveRoutes")

HOST_ROLE = Str(
    enum=gateways.HOST_ROLES,
    description="`hypervisor` (default): runs endpoints; `gateway`: runs none and forwards"
    " Geneve between hosts for peerings whose side says `forwarding: gateway`"
    " (docs/gateways.md)",
)
HOST = Obj(
    {"name": NAME, "underlay_ip": IP, "role": HOST_ROLE, "version": OBJ_VERSION}, name="Host"
)
_TEXT = Str(max_length=MAX_STATUS_TEXT)
_TIME = Num(description="seconds since the Unix epoch")
STREAM_STATE = Obj(
    {
        "stream": Str(max_length=600, description="service/key/policy/host (docs/protocol.md)"),
        "shard": Str(max_length=2048, description="the URL of the shard that serves it"),
        "state": Str(
            enum=("delivered", "waiting", "refused"),
            description="delivered: its objects are held; waiting: no snapshot yet, its flows"
            " are kept as they were (fail static); refused: its shard said no (detail)",
        ),
        "version": Nullable(Int(0, MAX_VERSION)),
        "detail": Nullable(_TEXT),
    },
    name="StreamState",
)
SKIP = Obj(
    {"what": Str(max_length=64), "name": Str(max_length=600), "reason": _TEXT},
    name="Skip",
    description="a port, endpoint or stream object the host did not program, and why",
)
HOST_STATUS = Obj(
    {
        "complete": Bool(description="every followed stream delivered or was refused"),
        "fail_static": Bool(
            description="some followed stream has not delivered yet: the host keeps the flows"
            " it had for it and deletes none (docs/flowsync.md)"
        ),
        "streams": Arr(STREAM_STATE, max_items=MAX_STATUS_STREAMS),
        "skipped": Arr(SKIP, max_items=MAX_STATUS_SKIPPED),
        "last_error": Nullable(
            Obj(
                {"at": _TIME, "what": _TEXT},
                name="HostError",
                description="the OHC's last failure (a sync, a report, a registration) and when",
            )
        ),
        "syncs": Int(0),
        "flows": Int(0),
        "groups": Int(0),
        "last_sync_at": Nullable(_TIME),
    },
    name="HostStatus",
    description="what the host's OHC last reported about itself (PUT /v1/hosts/{name}/status)",
)
HOST_STATUS_ACK = Obj({"host": NAME}, name="HostStatusAck")
HOST_DETAIL = _with(
    HOST,
    "HostDetail",
    {
        "status": Nullable(
            _with(
                HOST_STATUS,
                "HostStatusReported",
                {"reported_at": _TIME},
                "the OHC's last status report, as this shard received it at reported_at"
                " (null until the OHC reports, after its first sync)",
            )
        ),
        "applied": Map(
            Int(0, MAX_VERSION),
            description="stream name -> the version the host's switch holds, for this shard's"
            " streams (from its applied reports)",
        ),
    },
)
HOSTS = Obj({"hosts": Arr(HOST)}, name="HostList")
APPLIED = Obj(
    {"host": NAME, "streams": Int(0, description="streams in the report")},
    {
        "ignored": Arr(
            Obj({"stream": Str(), "reason": Str()}, name="IgnoredStream"),
            description="peer streams not recorded: followed with a grant for a VPC that has"
            " no endpoint on the host any more (the rest of the report is recorded)",
        )
    },
    name="AppliedAck",
)

COUNT = Int(0)
MULTIPLEXER = Obj(
    {
        "shard": PROTOCOL_NAME,
        "service_sets": COUNT,
        "services_published": COUNT,
        "active_peerings": COUNT,
        "peerings": COUNT,
        "streams": COUNT,
        "subscribers": Map(COUNT, description="service/key/policy[/host] -> subscribers"),
        "service_sets_by_vpc": Map(
            Map(Arr(Str())), description="vpc -> export policy id -> peerings sharing it"
        ),
    },
    name="Multiplexer",
)
HEALTH = Obj(
    {
        "status": Str(enum=("ok",)),
        "shard": PROTOCOL_NAME,
        "version": Int(0, MAX_VERSION, description="the intent store's version (= store_version)"),
        "store_version": Int(0, MAX_VERSION, description="the intent store's version"),
        "software_version": Str(description="meshpeer's version, as `--version` says"),
    },
    name="Health",
)
PLACEMENT = Obj(
    {
        "vpc": NAME,
        "shard": PROTOCOL_NAME,
        "url": Str(description="the owning shard's REST base URL"),
        "pinned": Bool(description="listed under the shard in the directory (else: by hash)"),
    },
    name="Placement",
)
FEDERATION_VIEW = Obj(
    {"vpc": NAME, "view": Map(Free(), description="object id -> object (docs/protocol.md)")},
    name="FederationView",
)

_SERVICE = Str(enum=tuple(s.value for s in ServiceName))
_OBJECTS = Map(Free(), description="object id -> object")
STREAM_MESSAGE = OneOf(
    (
        Obj(
            {
                "type": Str(enum=("snapshot",)),
                "service": _SERVICE,
                "key": PROTOCOL_NAME,
                "version": VERSION,
                "objects": _OBJECTS,
            },
            name="Snapshot",
        ),
        Obj(
            {
                "type": Str(enum=("delta",)),
                "service": _SERVICE,
                "key": PROTOCOL_NAME,
                "version": VERSION,
                "upserts": _OBJECTS,
                "deletes": Arr(Str()),
            },
            name="Delta",
        ),
        Obj(
            {"type": Str(enum=("heartbeat",)), "version": VERSION, "now": Num()},
            name="Heartbeat",
        ),
        Obj({"type": Str(enum=("close",)), "reason": Str()}, name="Close"),
        Obj({"type": Str(enum=("error",)), "code": Str(), "detail": Str()}, name="StreamError"),
    ),
    description="One NDJSON line of a subscription: a snapshot first, then deltas and"
    " heartbeats (docs/protocol.md)",
)
_SUB = Int(0, MAX_SUB, description="the subscription's id on its channel")
CHANNEL_FRAME = OneOf(
    (
        Obj({"type": Str(enum=("keepalive",)), "now": Num()}, name="Keepalive"),
        Obj(
            {"sub": _SUB, "type": Str(enum=("snapshot", "delta", "heartbeat", "close", "error"))},
            {
                "service": _SERVICE,
                "key": PROTOCOL_NAME,
                "version": VERSION,
                "objects": _OBJECTS,
                "upserts": _OBJECTS,
                "deletes": Arr(Str()),
                "now": Num(),
                "reason": Str(),
                "code": Str(),
                "detail": Str(),
            },
            name="ChannelFrame",
            description="a StreamMessage of subscription `sub`",
        ),
    ),
    description="One NDJSON line of a channel: a keepalive, or a subscription's message with"
    " its `sub` (docs/protocol.md)",
)
CHANNEL_CONTROL = Obj(
    optional={
        "subscribe": Arr(
            Obj(
                {"sub": _SUB, "service": _SERVICE, "key": PROTOCOL_NAME},
                {
                    "policy": PROTOCOL_NAME,
                    "host": PROTOCOL_NAME,
                    "since": Int(0, MAX_VERSION),
                    "grant": Str(pattern=GRANT_RE.pattern),
                    "dst": Arr(Str(format="ip"), min_items=1, max_items=MAX_DST),
                },
                name="ChannelSubscribe",
                description="the query of /v1/subscribe (`since` an integer, `dst` a list)"
                " and a peer stream's `grant`",
            ),
            max_items=MAX_CHANNEL_ENTRIES,
        ),
        "unsubscribe": Arr(_SUB, max_items=MAX_CHANNEL_ENTRIES),
    },
    name="ChannelControl",
)
CHANNEL_RESULTS = Obj(
    {
        "results": Arr(
            Obj(
                {"sub": _SUB, "status": Int(200, 599)},
                {"error": Str(), "field": Nullable(Str()), "detail": Str()},
                name="ChannelResult",
                description="200: subscribed, its frames follow on the channel; else the"
                " status and error body GET /v1/subscribe would have answered",
            )
        )
    },
    name="ChannelResults",
)
