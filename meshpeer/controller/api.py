"""The controller's REST API (/v1): the route table, body schemas and thin handlers.

Handlers translate: path and body in, a call to the intent checks and ShardState out. The
OpenAPI document at /v1/openapi.json is generated from this same table.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from webob import Request, Response

from meshpeer import __version__
from meshpeer.controller import intent as ops
from meshpeer.controller import responses as out
from meshpeer.controller.auth import (
    Action,
    Credentials,
    Identity,
    Resource,
    Role,
    authorize,
    route_action,
)
from meshpeer.controller.intent import IntentError, PeerFacts
from meshpeer.controller.model import Backend, BgpPeer, JsonObject, Subnet
from meshpeer.controller.peering import ACTIVE, INACTIVE, VPC_OBJ, peer_ranges
from meshpeer.controller.shard import Delete, ShardState
from meshpeer.protocol import ServiceName
from meshpeer.protocol.grants import GrantError, Rejection, verify
from meshpeer.protocol.messages import (
    GRANT_HEADER,
    MAX_VERSION,
    NAME_RE,
    ProtocolError,
    parse_stream_name,
    parse_subscribe_request,
)
from meshpeer.rest.errors import ApiError, bad_request, forbidden, not_found, unauthorized
from meshpeer.rest.router import RequestCtx, Route
from meshpeer.rest.schema import Arr, Bool, Int, Obj, Schema, Str
from meshpeer.streaming.publisher import ndjson_response
from policies.export import PolicyError, parse_export_policy, ranges_outside
from policies.routes import DEFAULT_PREFERENCE

NAME = Str(format="name")
SUBNET_CIDR = Str(
    format="cidr",
    description="at least 4 addresses; not a /0 (a default route), and overlapping no"
    " unspecified, loopback, multicast or broadcast address (0.0.0.0, 127.0.0.0/8, 224.0.0.0/4,"
    " 255.255.255.255, ::, ::1, ff00::/8), which no host programs for an endpoint",
)
SUBNET_IN = Obj({"cidr": SUBNET_CIDR}, {"name": NAME}, name="SubnetCreate")
VPC_IN = Obj(
    {"name": NAME},
    {
        "subnets": Arr(SUBNET_IN),
        "vni": Int(1, (1 << 24) - 1),
        "asn": Int(1, 65535, description="BGP AS number toward on-prem routers (default 64512)"),
    },
    name="VpcCreate",
)
BGP_IN = Obj(
    {
        "peer_asn": Int(1, 65535, description="the on-prem router's AS number (eBGP)"),
        "peer_ip": Str(format="ip", description="the router's link-local IPv4 address"),
        "local_ip": Str(format="ip", description="the shard's link-local IPv4 address"),
    },
    {},
    name="BgpPeer",
    description="A BGP session to an on-prem router (router, vpn, interconnect endpoints;"
    " docs/routing.md)",
)
BACKEND = Obj({"endpoint": NAME}, {"weight": Int(1, 65535)}, name="Backend")
ENDPOINT_IN = Obj(
    {"name": NAME, "ip": Str(format="ip")},
    {
        "kind": Str(enum=("vm", "ilb", "router", "vpn", "interconnect")),
        "mac": Str(format="mac"),
        "host": NAME,
        "backends": Arr(BACKEND, max_items=256),
        "bgp": BGP_IN,
    },
    name="EndpointCreate",
)
EXPORT = Obj(
    {},
    out.EXPORT_FIELDS,
    name="ExportPolicy",
    description="What this VPC shows the peer; every restriction narrows it (docs/policies.md)",
)
# What either write of a peering side may set (all optional on create and update).
PEERING_SETTINGS: dict[str, Schema] = {
    "export": EXPORT,
    "import_custom_routes": Bool(),
    "inbound": out.INBOUND,
    "preference": out.PREFERENCE,
}
PEERING_IN = Obj(
    {"name": NAME, "peer_vpc": NAME},
    PEERING_SETTINGS,
    name="PeeringCreate",
)
# "effective" is taken by GET /v1/vpcs/{vpc}/routes/effective.
ROUTE_IN = Obj(
    {
        "name": Str(format="name", reserved=("effective",)),
        "prefix": Str(format="cidr"),
        "next_hop": Str(format="ip"),
    },
    {"priority": Int(0, 65535)},
    name="RouteCreate",
)
WAIT_Q: dict[str, Schema] = {
    "wait": Str(
        enum=("programmed",),
        description="Hold the answer (up to `timeout` s, default 10) until every host that must"
        " act on the write has applied it; the answer says `programmed` and `pending_hosts`."
        " `programmed: true` only when no host is pending: the hosts following a stream the"
        " write changed, the endpoint's own host (even one that never registered: it stays"
        " pending until it boots and applies it), and for an ACTIVE peering every host of both"
        " VPCs (the peer's destinations on this VPC's hosts, and the way back). An INACTIVE"
        " peering has nothing programmed: `programmed: false`, no wait (docs/protocol.md).",
    ),
    "timeout": Int(0, 60),
}
_PART = NAME_RE.pattern
STREAM_NAME = Str(
    pattern=f"({'|'.join(s.value for s in ServiceName)})/{_PART}/({_PART})?/({_PART})?",
    description="service/key/policy/host, as in docs/protocol.md",
)
MAX_APPLIED = 4096  # an OHC reports a few streams per VPC it serves
APPLIED_IN = Obj(
    {
        "streams": Arr(
            Obj(
                {"stream": STREAM_NAME, "version": Int(0, MAX_VERSION)},
                {"grant": Str(max_length=4096)},  # a peer's host: the grant it subscribed with
                name="AppliedStream",
            ),
            max_items=MAX_APPLIED,
            description="the reporting host's own streams (not another host's endpoint or"
            " peering stream: 400); only streams this shard publishes are kept, one version per"
            " stream",
        )
    },
    {},
    name="AppliedReport",
    description="Stream versions an OHC has programmed into its switch",
)
HOST_IN = Obj({"underlay_ip": Str(format="ip")}, {}, name="HostRegister")
VPC_P = {"vpc": NAME}
ITEM_P = {"vpc": NAME, "name": NAME}

Fetch = Callable[[str], "dict[str, Any] | None"]


class Waitable(Protocol):
    def wait(self, timeout: float) -> object: ...


class AppliedSignal(Protocol):
    """Wakes the requests waiting for ``?wait=programmed`` when an OHC reports. ``event()``
    is taken before checking, so a report between the check and the wait is not missed."""

    def event(self) -> Waitable: ...

    def notify(self) -> None: ...


class PollingSignal:
    """Without an event loop (tools, tests): waiters simply look again every 10 ms."""

    def event(self) -> Waitable:
        return self

    def wait(self, timeout: float) -> object:
        time.sleep(min(timeout, 0.01))
        return None

    def notify(self) -> None:
        pass


def _check_own_stream(name: str, host: str, where: str) -> str | None:
    """A host reports only streams it follows itself: another host's endpoint stream (keyed by
    that host) or peering stream (per host) is refused. Returns the stream's policy."""
    try:
        service, key, policy, for_host = parse_stream_name(name)
    except ProtocolError as exc:
        raise bad_request(where, exc.detail) from exc
    owner = key if service is ServiceName.ENDPOINT else for_host
    if owner is not None and owner != host:
        raise bad_request(where, f"{name!r} is host {owner!r}'s stream; {host!r} reports its own")
    return policy


class ControllerApi:
    """Handlers bound to one shard. ``fetch_view`` asks a remote shard for a VPC's view;
    ``applied`` wakes ``?wait=programmed`` waiters (the app passes one on its hub: waiting
    must not block it)."""

    def __init__(
        self,
        shard: ShardState,
        api_token: str,
        fetch_view: Fetch,
        heartbeat_interval: float = 5.0,
        applied: AppliedSignal | None = None,
        readonly_token: str | None = None,
        api_tokens: Sequence[str] = (),
        readonly_tokens: Sequence[str] = (),
    ) -> None:
        self.shard = shard
        self.api_token = api_token
        self.fetch_view = fetch_view
        self.heartbeat_interval = heartbeat_interval
        self.applied = applied or PollingSignal()
        self.readonly_token = readonly_token
        self.api_tokens = tuple(api_tokens)  # valid beside api_token (rotation)
        self.readonly_tokens = tuple(readonly_tokens)

    # --- who is calling (meshpeer.controller.auth decides) -------------------------------

    def credentials(self) -> Credentials:
        d = self.shard.directory
        return Credentials(
            self.api_token,
            self.readonly_token,
            d.host_keys,
            d.federation_token,
            frozenset(d.shards),
            self.shard.revoked_hosts,
            self.api_tokens,
            self.readonly_tokens,
        )

    def guard(self, route: Route, params: Mapping[str, str], request: Request) -> None:
        """The router's check for every authenticated route."""
        action, resource = route_action(route.method, route.path, params)
        self._allow(self._identity(request), action, resource)

    def _identity(self, request: Request) -> Identity:
        header = request.headers.get("Authorization")
        identity = self.credentials().identify(header)
        if identity is None:
            raise unauthorized("invalid bearer token" if header else "missing bearer token")
        return identity

    def _allow(
        self, identity: Identity, action: Action, resource: Resource, field: str | None = None
    ) -> None:
        decision = authorize(identity, action, resource)
        if not decision:
            raise forbidden(field, decision.reason)

    def _vpc_hosts(self, vpc: str) -> frozenset[str]:
        return frozenset(e.host for e in self.shard.intent.endpoints_of(vpc) if e.host)

    # --- helpers ------------------------------------------------------------------------

    def _with_version(self, kind: str, key: str, body: JsonObject) -> JsonObject:
        return {**body, "version": self.shard.version_of(kind, key)}

    def _intent(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except IntentError as exc:
            raise ApiError(exc.status, _code(exc.status), exc.field, exc.detail) from exc

    def _programmed(self, ctx: RequestCtx, kind: str, key: str, body: JsonObject) -> JsonObject:
        """With ?wait=programmed, hold the answer until every host that follows a changed
        stream reports applying it, or ``timeout`` seconds pass; say which hosts are pending."""
        deadline = time.monotonic() + ctx.query.get("timeout", 10)
        while True:
            event = self.applied.event()
            pending = self.shard.pending_hosts(kind, key)
            left = deadline - time.monotonic()
            if not pending or ctx.query.get("wait") != "programmed" or left <= 0:
                return {**body, "programmed": not pending, "pending_hosts": pending}
            event.wait(left)

    def _vpc(self, name: str) -> Any:
        return self._intent(ops.need_vpc, self.shard.intent, name)

    # --- VPCs and subnets ------------------------------------------------------------------

    def list_vpcs(self, ctx: RequestCtx) -> tuple[int, object]:
        vpcs = sorted(self.shard.intent.vpcs.values(), key=lambda v: v.name)
        return 200, {"vpcs": [self._with_version("vpc", v.name, v.to_json()) for v in vpcs]}

    def create_vpc(self, ctx: RequestCtx) -> tuple[int, object]:
        b = ctx.body
        subnets = [
            Subnet(s.get("name", f"s{i}"), ipaddress.ip_network(s["cidr"]))
            for i, s in enumerate(b.get("subnets", []))
        ]
        vpc = self._intent(
            ops.new_vpc,
            self.shard.intent,
            self.shard.directory,
            self.shard.name,
            b["name"],
            subnets,
            b.get("vni"),
            b.get("asn"),
        )
        self.shard.commit([vpc])
        return 201, self._with_version("vpc", vpc.name, vpc.to_json())

    def placement(self, ctx: RequestCtx) -> tuple[int, object]:
        """Which shard owns (or would own) a VPC name: where to create and manage it."""
        name = ctx.params["vpc"]
        d = self.shard.directory
        owner = d.owner_of(name)
        pinned = name in d.shards[owner].vpcs
        return 200, {"vpc": name, "shard": owner, "url": d.shards[owner].url, "pinned": pinned}

    def get_vpc(self, ctx: RequestCtx) -> tuple[int, object]:
        vpc = self._vpc(ctx.params["vpc"])
        return 200, self._with_version("vpc", vpc.name, vpc.to_json())

    def delete_vpc(self, ctx: RequestCtx) -> tuple[int, object]:
        vpc = self._intent(ops.check_vpc_delete, self.shard.intent, ctx.params["vpc"])
        version = self.shard.commit(deletes=[Delete("vpc", vpc.name)])
        return 200, {"deleted": vpc.name, "version": version}

    def list_subnets(self, ctx: RequestCtx) -> tuple[int, object]:
        return 200, {"subnets": [s.to_json() for s in self._vpc(ctx.params["vpc"]).subnets]}

    def create_subnet(self, ctx: RequestCtx) -> tuple[int, object]:
        vpc = self._vpc(ctx.params["vpc"])
        name = ctx.body.get("name", f"s{len(vpc.subnets)}")
        subnet = Subnet(name, ipaddress.ip_network(ctx.body["cidr"]))
        peers = self._peer_ranges(vpc.name)
        updated = self._intent(ops.add_subnet, self.shard.intent, vpc, subnet, peers)
        version = self.shard.commit([updated])
        return 201, {**subnet.to_json(), "version": version}

    def get_subnet(self, ctx: RequestCtx) -> tuple[int, object]:
        vpc = self._vpc(ctx.params["vpc"])
        found = next((s for s in vpc.subnets if s.name == ctx.params["name"]), None)
        if found is None:
            raise not_found("subnet", f"no subnet {ctx.params['name']!r} in VPC {vpc.name!r}")
        return 200, found.to_json()

    def delete_subnet(self, ctx: RequestCtx) -> tuple[int, object]:
        vpc = self._vpc(ctx.params["vpc"])
        updated = self._intent(ops.remove_subnet, self.shard.intent, vpc, ctx.params["name"])
        version = self.shard.commit([updated])
        return 200, {"deleted": ctx.params["name"], "version": version}

    def _peer_ranges(self, vpc: str) -> dict[str, list[Any]]:
        views = self.shard.views()
        return {
            p.peer_vpc: list(peer_ranges(views.get(p.peer_vpc)))
            for p in self.shard.intent.peerings_of(vpc)
        }

    # --- endpoints ----------------------------------------------------------------------

    def list_endpoints(self, ctx: RequestCtx) -> tuple[int, object]:
        vpc = self._vpc(ctx.params["vpc"]).name
        eps = self.shard.intent.endpoints_of(vpc)
        return 200, {
            "endpoints": [
                self._with_version("endpoint", f"{vpc}/{e.name}", e.to_json()) for e in eps
            ]
        }

    def create_endpoint(self, ctx: RequestCtx) -> tuple[int, object]:
        b = ctx.body
        backends = [Backend(x["endpoint"], x.get("weight", 1)) for x in b.get("backends", [])]
        ep = self._intent(
            ops.new_endpoint,
            self.shard.intent,
            ctx.params["vpc"],
            b["name"],
            b.get("kind", "vm"),
            ipaddress.ip_address(b["ip"]),
            b.get("mac"),
            b.get("host"),
            backends,
            _bgp_peer(b.get("bgp")),
        )
        self.shard.commit([ep])
        key = f"{ep.vpc}/{ep.name}"
        body = self._with_version("endpoint", key, ep.to_json())
        return 201, self._programmed(ctx, "endpoint", key, body)

    def get_endpoint(self, ctx: RequestCtx) -> tuple[int, object]:
        vpc = self._vpc(ctx.params["vpc"]).name
        ep = self.shard.intent.endpoints.get((vpc, ctx.params["name"]))
        if ep is None:
            raise not_found("endpoint", f"no endpoint {ctx.params['name']!r} in VPC {vpc!r}")
        key = f"{vpc}/{ep.name}"
        body = self._with_version("endpoint", key, ep.to_json())
        return 200, self._programmed(ctx, "endpoint", key, body)

    def put_endpoint_bgp(self, ctx: RequestCtx) -> tuple[int, object]:
        return self._write_bgp(ctx, _bgp_peer(ctx.body))

    def delete_endpoint_bgp(self, ctx: RequestCtx) -> tuple[int, object]:
        return self._write_bgp(ctx, None)

    def _write_bgp(self, ctx: RequestCtx, bgp: BgpPeer | None) -> tuple[int, object]:
        vpc = self._vpc(ctx.params["vpc"]).name
        ep = self.shard.intent.endpoints.get((vpc, ctx.params["name"]))
        if ep is None:
            raise not_found("endpoint", f"no endpoint {ctx.params['name']!r} in VPC {vpc!r}")
        updated = self._intent(ops.set_bgp, self.shard.intent, ep, bgp)
        if updated != ep:
            self.shard.commit([updated])
        key = f"{vpc}/{ep.name}"
        return 200, self._with_version("endpoint", key, updated.to_json())

    def delete_endpoint(self, ctx: RequestCtx) -> tuple[int, object]:
        ep = self._intent(
            ops.check_endpoint_delete, self.shard.intent, ctx.params["vpc"], ctx.params["name"]
        )
        key = f"{ep.vpc}/{ep.name}"
        version = self.shard.commit(deletes=[Delete("endpoint", key)])
        return 200, self._programmed(ctx, "endpoint", key, {"deleted": ep.name, "version": version})

    # --- peerings -------------------------------------------------------------------------

    def _peering_json(self, vpc: str, name: str) -> JsonObject:
        p = self.shard.intent.peerings[(vpc, name)]
        st = self.shard.peering_status(vpc, name)
        body = self._with_version("peering", f"{vpc}/{name}", p.to_json())
        body["state"] = st.state if st else INACTIVE
        body["state_details"] = st.details if st else "not evaluated yet"
        body["peer_export_policy_id"] = st.peer_policy_id if st else None
        return body

    def list_peerings(self, ctx: RequestCtx) -> tuple[int, object]:
        vpc = self._vpc(ctx.params["vpc"]).name
        return 200, {
            "peerings": [
                self._peering_json(vpc, p.name) for p in self.shard.intent.peerings_of(vpc)
            ]
        }

    def _peer_facts(self, peer_vpc: str, fetched: dict[str, Any]) -> PeerFacts | None:
        """Facts about the peer VPC: local, replicated, or asked of its shard right now (a
        view asked for is put in ``fetched``)."""
        view = self.shard.views().get(peer_vpc)
        owner = self.shard.directory.owner_of(peer_vpc)
        if view is None and owner != self.shard.name:
            view = self.fetch_view(peer_vpc)
            if view is not None:
                fetched[peer_vpc] = view
        elif view is None and owner == self.shard.name:
            return PeerFacts(False)
        if view is None:
            return None
        return PeerFacts(VPC_OBJ in view, peer_ranges(view))

    def create_peering(self, ctx: RequestCtx) -> tuple[int, object]:
        b = ctx.body
        vpc = self._vpc(ctx.params["vpc"]).name
        try:
            export = parse_export_policy(b.get("export"), "export")
        except PolicyError as exc:
            raise bad_request(exc.field, exc.detail) from exc
        fetched: dict[str, Any] = {}
        facts = self._peer_facts(b["peer_vpc"], fetched) if b["peer_vpc"] != vpc else None
        p = self._intent(
            ops.new_peering,
            self.shard.intent,
            vpc,
            b["name"],
            b["peer_vpc"],
            export,
            b.get("import_custom_routes", False),
            facts,
            b.get("inbound", "all"),
            b.get("preference", DEFAULT_PREFERENCE),
        )
        # The peer's view just fetched decides the state now (ACTIVE at once when the peer
        # has configured its side), not when the federation stream first delivers it.
        for peer_vpc, view in fetched.items():
            self.shard.adopt_fetched_view(peer_vpc, view)
        self.shard.commit([p])
        warnings = self._export_warnings(vpc, b.get("export"))
        return 201, {**self._peering_programmed(ctx, vpc, p.name), "warnings": warnings}

    def _export_warnings(self, vpc: str, raw: object) -> list[JsonObject]:
        """Export ranges in a request that overlap nothing of ``vpc``: accepted, warned."""
        intent = self.shard.intent
        subnets = (s.cidr for s in intent.vpcs[vpc].subnets)
        routes = (r.prefix for r in intent.routes_of(vpc))
        found = ranges_outside(raw, "export", subnets, routes)
        return [{"field": w.field, "detail": w.detail} for w in found]

    def _peering_programmed(self, ctx: RequestCtx, vpc: str, name: str) -> JsonObject:
        """An INACTIVE peering has nothing programmed for it: ``programmed`` is false at once
        (its ``state_details`` say why); an ACTIVE one waits like any write."""
        body = self._peering_json(vpc, name)
        if body["state"] != ACTIVE:
            return {**body, "programmed": False, "pending_hosts": []}
        return self._programmed(ctx, "peering", f"{vpc}/{name}", body)

    def update_peering(self, ctx: RequestCtx) -> tuple[int, object]:
        p = self._intent(
            ops.check_peering, self.shard.intent, ctx.params["vpc"], ctx.params["name"]
        )
        b = ctx.body
        try:
            export = parse_export_policy(b["export"], "export") if "export" in b else p.export
        except PolicyError as exc:
            raise bad_request(exc.field, exc.detail) from exc
        updated = replace(
            p,
            export=export,
            import_custom_routes=b.get("import_custom_routes", p.import_custom_routes),
            inbound=b.get("inbound", p.inbound),
            preference=b.get("preference", p.preference),
        )
        self.shard.commit([updated])
        warnings = self._export_warnings(p.vpc, b["export"]) if "export" in b else []
        return 200, {**self._peering_programmed(ctx, p.vpc, p.name), "warnings": warnings}

    def get_peering(self, ctx: RequestCtx) -> tuple[int, object]:
        p = self._intent(
            ops.check_peering, self.shard.intent, ctx.params["vpc"], ctx.params["name"]
        )
        return 200, self._peering_programmed(ctx, p.vpc, p.name)

    def delete_peering(self, ctx: RequestCtx) -> tuple[int, object]:
        p = self._intent(
            ops.check_peering, self.shard.intent, ctx.params["vpc"], ctx.params["name"]
        )
        key = f"{p.vpc}/{p.name}"
        version = self.shard.commit(deletes=[Delete("peering", key)])
        return 200, self._programmed(ctx, "peering", key, {"deleted": p.name, "version": version})

    # --- routes -----------------------------------------------------------------------------

    def list_routes(self, ctx: RequestCtx) -> tuple[int, object]:
        vpc = self._vpc(ctx.params["vpc"]).name
        rs = self.shard.intent.routes_of(vpc)
        return 200, {
            "routes": [self._with_version("route", f"{vpc}/{r.name}", r.to_json()) for r in rs]
        }

    def create_route(self, ctx: RequestCtx) -> tuple[int, object]:
        b = ctx.body
        r = self._intent(
            ops.new_route,
            self.shard.intent,
            ctx.params["vpc"],
            b["name"],
            ipaddress.ip_network(b["prefix"]),
            ipaddress.ip_address(b["next_hop"]),
            b.get("priority", 1000),
        )
        self.shard.commit([r])
        return 201, self._with_version("route", f"{r.vpc}/{r.name}", r.to_json())

    def get_route(self, ctx: RequestCtx) -> tuple[int, object]:
        r = self._intent(ops.check_route, self.shard.intent, ctx.params["vpc"], ctx.params["name"])
        return 200, self._with_version("route", f"{r.vpc}/{r.name}", r.to_json())

    def delete_route(self, ctx: RequestCtx) -> tuple[int, object]:
        r = self._intent(ops.check_route, self.shard.intent, ctx.params["vpc"], ctx.params["name"])
        version = self.shard.commit(deletes=[Delete("route", f"{r.vpc}/{r.name}")])
        return 200, {"deleted": r.name, "version": version}

    def bgp_status(self, ctx: RequestCtx) -> tuple[int, object]:
        vpc = self._vpc(ctx.params["vpc"])
        return 200, {"vpc": vpc.name, "asn": vpc.asn, "sessions": self.shard.bgp_status(vpc.name)}

    def effective_routes(self, ctx: RequestCtx) -> tuple[int, object]:
        vpc = self._vpc(ctx.params["vpc"]).name
        return 200, {"vpc": vpc, "routes": self.shard.effective_routes(vpc)}

    # --- hosts, multiplexer, health -----------------------------------------------------------

    def put_host(self, ctx: RequestCtx) -> tuple[int, object]:
        host = ops.new_host(ctx.params["name"], ipaddress.ip_address(ctx.body["underlay_ip"]))
        if self.shard.intent.hosts.get(host.name) != host:
            self.shard.commit([host])
        return 200, self._with_version("host", host.name, host.to_json())

    def get_host(self, ctx: RequestCtx) -> tuple[int, object]:
        host = self._host(ctx.params["name"], field="host")  # "host": as it always said
        return 200, {
            **self._with_version("host", host.name, host.to_json()),
            "status": self.shard.host_status.get(host.name),
            "applied": dict(sorted(self.shard.applied.get(host.name, {}).items())),
        }

    def put_host_status(self, ctx: RequestCtx) -> tuple[int, object]:
        """A host's own OHC says how it stands (its own credential). Soft state,
        one report per registered host, kept until the next."""
        host = self._host(ctx.params["name"])
        self.shard.host_status[host.name] = {**ctx.body, "reported_at": time.time()}
        return 200, {"host": host.name}

    def _host(self, name: str, field: str = "name") -> Any:
        host = self.shard.intent.hosts.get(name)
        if host is None:
            raise not_found(field, f"no host {name!r}: register it with PUT /v1/hosts/{name}")
        return host

    def list_hosts(self, ctx: RequestCtx) -> tuple[int, object]:
        hosts = sorted(self.shard.intent.hosts.values(), key=lambda h: h.name)
        return 200, {"hosts": [self._with_version("host", h.name, h.to_json()) for h in hosts]}

    def put_applied(self, ctx: RequestCtx) -> tuple[int, object]:
        """A host reports for itself (the guard checked its credential). A peer stream (one
        with a policy) comes with the grant the host follows it with, checked like a
        subscription, whoever reports; a report of own streams (or of none) names a host
        registered here. All checked before anything is recorded."""
        host = ctx.params["name"]
        streams = ctx.body["streams"]
        policies = [
            _check_own_stream(s["stream"], host, f"streams[{i}].stream")
            for i, s in enumerate(streams)
        ]
        if not streams or None in policies:
            self._host(host)  # an own host registers before it reports
        for i, (s, policy) in enumerate(zip(streams, policies, strict=True)):
            if policy is not None:
                self._check_applied_grant(s, host, f"streams[{i}]")
        self.shard.report_applied(host, {s["stream"]: s["version"] for s in streams})
        self.applied.notify()
        return 200, {"host": host, "streams": len(streams)}

    def _check_applied_grant(self, s: JsonObject, host: str, where: str) -> None:
        try:
            _, vpc, policy, _ = parse_stream_name(s["stream"])
        except ProtocolError as exc:
            raise bad_request(f"{where}.stream", exc.detail) from exc
        if policy is None or "grant" not in s:
            raise ApiError(
                401,
                "unauthorized",
                f"{where}.grant",
                "a host reports each peer stream with the grant it follows it with",
                (("WWW-Authenticate", "Bearer"),),
            )
        try:
            self._check_grant(s["grant"], vpc, policy, host)
        except ApiError as exc:
            raise ApiError(
                exc.status, exc.error, f"{where}.grant", exc.detail, exc.headers
            ) from exc

    def multiplexer(self, ctx: RequestCtx) -> tuple[int, object]:
        return 200, {"shard": self.shard.name, **self.shard.counts()}

    def healthz(self, ctx: RequestCtx) -> tuple[int, object]:
        version = self.shard.store.version
        return 200, {
            "status": "ok",
            "shard": self.shard.name,
            "version": version,
            "store_version": version,
            "software_version": __version__,
        }

    # --- federation and subscriptions ---------------------------------------------------

    def federation_view(self, ctx: RequestCtx) -> tuple[int, object]:
        vpc = ctx.params["vpc"]
        if self.shard.directory.owner_of(vpc) != self.shard.name:
            raise not_found("vpc", f"VPC {vpc!r} is not owned by shard {self.shard.name!r}")
        return 200, {"vpc": vpc, "view": self.shard.views().get(vpc, {})}

    def subscribe(self, ctx: RequestCtx) -> Response:
        try:
            req = parse_subscribe_request(ctx.request.GET, ctx.request.headers.get("Authorization"))
        except ProtocolError as exc:
            raise bad_request(exc.field, exc.detail) from exc
        identity = self._identity(ctx.request)
        expires_at: float | None = None
        tag: str | None = None
        if req.policy is not None:
            # The grant names a host; the caller must be that host (or an admin).
            grant = ctx.request.headers.get(GRANT_HEADER, "").strip()
            self._allow(identity, Action.SUBSCRIBE_PEER, Resource(req.host, grant_host=req.host))
            expires_at, tag = self._check_grant(grant, req.key, req.policy, req.host)
        elif req.service == ServiceName.FEDERATION:
            self._allow(identity, Action.FEDERATE, Resource())
        elif req.service == ServiceName.ENDPOINT:
            if req.host not in (None, req.key):  # it names who must apply its writes
                raise bad_request("host", "an endpoint stream is its own host's: host = key")
            self._allow(identity, Action.SUBSCRIBE, Resource(req.key), "key")
        else:
            vpc = Resource(req.host, req.key, self._vpc_hosts(req.key))
            self._allow(identity, Action.SUBSCRIBE, vpc, "key")
        # Streams are shared by every subscriber (for peers: of one policy, the multiplexer's
        # point); the host scopes a grant and names who must apply. The peering service alone
        # is per host (it carries that host's grants).
        sid = (
            req.service,
            req.key,
            req.policy,
            req.host if req.service == ServiceName.PEERING else None,
        )
        if sid not in self.shard.hub:
            raise not_found(
                "key",
                f"no {req.service} stream for {req.key!r}"
                + (f" under policy {req.policy}" if req.policy else ""),
            )
        wall_to_mono = None
        if expires_at is not None:
            wall_to_mono = self.shard.hub.clock() + (expires_at - self.shard.clock())
        holder = identity.name if identity.role is Role.HOST else None  # closed if it leaves
        writer = self.shard.hub.wsgi_stream(
            sid,
            req.since,
            self.heartbeat_interval,
            expires_at=wall_to_mono,
            tag=tag,
            host=req.host,
            holder=holder,
        )
        resp: Response = ndjson_response(writer, ctx.request.environ)
        return resp

    def _check_grant(
        self, token: str, vpc: str, policy: str, host: str | None
    ) -> tuple[float, str]:
        """A peer host's grant: valid signature and scope, and the peering ACTIVE right now."""
        if host is None:
            raise bad_request("host", "a peer subscription names its host")
        try:
            grant = verify(
                token,
                self.shard.directory.grant_keys,
                self.shard.clock(),
                target_vpc=vpc,
                policy_id=policy,
                host=host,
            )
        except GrantError as exc:
            # A bad or expired credential is 401; a good grant for something else is 403.
            status = 403 if exc.reason == Rejection.WRONG_SCOPE else 401
            code = "forbidden" if status == 403 else "unauthorized"
            detail = f"grant rejected ({exc.reason}): {exc.detail}"
            auth = (("WWW-Authenticate", 'Bearer error="invalid_token"'),) if status == 401 else ()
            raise ApiError(status, code, "Authorization", detail, auth) from exc
        # The grant outlives the host's last endpoint in its VPC: the VPC's shard knows its
        # endpoints, a peer shard the hosts the VPC's last federation view lists (a host that
        # just joined and is not listed yet is refused and tries again within a second).
        if self.shard.directory.owner_of(grant.subscriber_vpc) == self.shard.name:
            placed = self.shard.intent.placed(grant.subscriber_vpc, host)
        else:
            placed = self.shard.listed_in_view(grant.subscriber_vpc, host) is not False
        if not placed:
            raise forbidden("host", f"VPC {grant.subscriber_vpc!r} has no endpoint on {host!r}")
        for p in self.shard.intent.peerings_of(vpc):
            if p.peer_vpc != grant.subscriber_vpc or p.export.policy_id != policy:
                continue
            st = self.shard.peering_status(vpc, p.name)
            if st is not None and st.active:
                return grant.expires_at, grant.subscriber_vpc
            if p.peer_vpc not in self.shard.views():
                # Not heard from the peer's shard yet (this shard just started): neither yes
                # nor no. A refusal would make the peer's hosts drop their flows at once.
                raise ApiError(
                    503,
                    "unavailable",
                    "policy",
                    f"VPC {p.peer_vpc!r} not heard from yet: the peering's state is unknown",
                    (("Retry-After", "1"),),
                )
        raise ApiError(
            403,
            "forbidden",
            "policy",
            f"VPC {vpc!r} has no ACTIVE peering exporting {policy} to {grant.subscriber_vpc!r}",
        )

    # --- the table ----------------------------------------------------------------------

    def routes(self) -> list[Route]:
        c, e403, e503 = frozenset({409}), frozenset({403}), frozenset({503})
        return [
            Route(
                "GET",
                "/healthz",
                self.healthz,
                response=out.HEALTH,
                auth=False,
                summary="Liveness; no token needed",
            ),
            Route(
                "GET",
                "/v1/vpcs",
                self.list_vpcs,
                response=out.VPCS,
                summary="List VPCs of this shard",
            ),
            Route(
                "POST",
                "/v1/vpcs",
                self.create_vpc,
                response=out.VPC,
                body=VPC_IN,
                status=201,
                summary="Create a VPC (VNI allocated from the shard's range)",
            ),
            Route(
                "GET",
                "/v1/vpcs/{vpc}",
                self.get_vpc,
                response=out.VPC,
                params=VPC_P,
                summary="Get a VPC",
            ),
            Route(
                "GET",
                "/v1/placement/{vpc}",
                self.placement,
                response=out.PLACEMENT,
                params=VPC_P,
                summary="Which shard owns a VPC name (pinned in the directory, else by hash)",
            ),
            Route(
                "DELETE",
                "/v1/vpcs/{vpc}",
                self.delete_vpc,
                response=out.DELETED,
                params=VPC_P,
                summary="Delete a VPC with no peerings, endpoints or routes",
            ),
            Route(
                "GET",
                "/v1/vpcs/{vpc}/subnets",
                self.list_subnets,
                response=out.SUBNETS,
                params=VPC_P,
                summary="List subnets",
            ),
            Route(
                "POST",
                "/v1/vpcs/{vpc}/subnets",
                self.create_subnet,
                response=out.SUBNET_CREATED,
                body=SUBNET_IN,
                params=VPC_P,
                status=201,
                summary="Add a subnet",
            ),
            Route(
                "GET",
                "/v1/vpcs/{vpc}/subnets/{name}",
                self.get_subnet,
                response=out.SUBNET,
                params=ITEM_P,
                summary="Get a subnet",
            ),
            Route(
                "DELETE",
                "/v1/vpcs/{vpc}/subnets/{name}",
                self.delete_subnet,
                response=out.DELETED,
                params=ITEM_P,
                summary="Delete an empty subnet",
            ),
            Route(
                "GET",
                "/v1/vpcs/{vpc}/endpoints",
                self.list_endpoints,
                response=out.ENDPOINTS,
                params=VPC_P,
                summary="List endpoints",
            ),
            Route(
                "POST",
                "/v1/vpcs/{vpc}/endpoints",
                self.create_endpoint,
                response=out.ENDPOINT_PROGRAMMED,
                query=WAIT_Q,
                body=ENDPOINT_IN,
                params=VPC_P,
                status=201,
                summary="Create an endpoint",
            ),
            Route(
                "GET",
                "/v1/vpcs/{vpc}/endpoints/{name}",
                self.get_endpoint,
                response=out.ENDPOINT_PROGRAMMED,
                query=WAIT_Q,
                params=ITEM_P,
                summary="Get an endpoint",
            ),
            Route(
                "PUT",
                "/v1/vpcs/{vpc}/endpoints/{name}/bgp",
                self.put_endpoint_bgp,
                response=out.ENDPOINT,
                body=BGP_IN,
                params=ITEM_P,
                summary="Set the endpoint's BGP session to an on-prem router (docs/routing.md)",
            ),
            Route(
                "DELETE",
                "/v1/vpcs/{vpc}/endpoints/{name}/bgp",
                self.delete_endpoint_bgp,
                response=out.ENDPOINT,
                params=ITEM_P,
                summary="Remove the endpoint's BGP session: its learned routes go with it",
            ),
            Route(
                "DELETE",
                "/v1/vpcs/{vpc}/endpoints/{name}",
                self.delete_endpoint,
                response=out.DELETED_PROGRAMMED,
                query=WAIT_Q,
                params=ITEM_P,
                summary="Delete an endpoint",
            ),
            Route(
                "GET",
                "/v1/vpcs/{vpc}/peerings",
                self.list_peerings,
                response=out.PEERINGS,
                params=VPC_P,
                summary="List peerings with their state",
            ),
            Route(
                "POST",
                "/v1/vpcs/{vpc}/peerings",
                self.create_peering,
                response=out.PEERING_WRITTEN,
                query=WAIT_Q,
                body=PEERING_IN,
                params=VPC_P,
                status=201,
                summary="Configure this VPC's side of a peering",
            ),
            Route(
                "GET",
                "/v1/vpcs/{vpc}/peerings/{name}",
                self.get_peering,
                query=WAIT_Q,
                response=out.PEERING_PROGRAMMED,
                params=ITEM_P,
                summary="Get a peering: state (ACTIVE/INACTIVE) and why",
            ),
            Route(
                "PUT",
                "/v1/vpcs/{vpc}/peerings/{name}",
                self.update_peering,
                query=WAIT_Q,
                response=out.PEERING_WRITTEN,
                body=Obj(
                    {},
                    PEERING_SETTINGS,
                    name="PeeringUpdate",
                ),
                params=ITEM_P,
                summary="Change a peering's export policy, route import, inbound or preference",
            ),
            Route(
                "DELETE",
                "/v1/vpcs/{vpc}/peerings/{name}",
                self.delete_peering,
                response=out.DELETED_PROGRAMMED,
                query=WAIT_Q,
                params=ITEM_P,
                summary="Delete this VPC's side of a peering",
            ),
            Route(
                "GET",
                "/v1/vpcs/{vpc}/routes",
                self.list_routes,
                response=out.ROUTES,
                params=VPC_P,
                summary="List static routes",
            ),
            Route(
                "POST",
                "/v1/vpcs/{vpc}/routes",
                self.create_route,
                response=out.ROUTE,
                body=ROUTE_IN,
                params=VPC_P,
                status=201,
                summary="Create a static route via an endpoint",
            ),
            Route(
                "GET",
                "/v1/vpcs/{vpc}/routes/effective",
                self.effective_routes,
                response=out.EFFECTIVE_ROUTES,
                params=VPC_P,
                summary="Every route the VPC sees, with origin and import decision",
            ),
            Route(
                "GET",
                "/v1/vpcs/{vpc}/bgp",
                self.bgp_status,
                response=out.BGP_STATUS,
                params=VPC_P,
                summary="The VPC's BGP sessions: up or not, announced, learned (docs/routing.md)",
            ),
            Route(
                "GET",
                "/v1/vpcs/{vpc}/routes/{name}",
                self.get_route,
                response=out.ROUTE,
                params=ITEM_P,
                summary="Get a static route",
            ),
            Route(
                "DELETE",
                "/v1/vpcs/{vpc}/routes/{name}",
                self.delete_route,
                response=out.DELETED,
                params=ITEM_P,
                summary="Delete a static route",
            ),
            Route(
                "GET",
                "/v1/hosts",
                self.list_hosts,
                response=out.HOSTS,
                summary="List registered hosts",
            ),
            Route(
                "GET",
                "/v1/hosts/{name}",
                self.get_host,
                response=out.HOST_DETAIL,
                params={"name": NAME},
                summary="Get a host",
            ),
            Route(
                "PUT",
                "/v1/hosts/{name}",
                self.put_host,
                response=out.HOST,
                body=HOST_IN,
                params={"name": NAME},
                summary="Register a host and its underlay IP",
            ),
            Route(
                "PUT",
                "/v1/hosts/{name}/status",
                self.put_host_status,
                response=out.HOST_STATUS_ACK,
                body=out.HOST_STATUS,
                params={"name": NAME},
                summary="A host's OHC reports its health: streams, fail-static, skipped, last error",
            ),
            Route(
                "PUT",
                "/v1/hosts/{name}/applied",
                self.put_applied,
                response=out.APPLIED,
                body=APPLIED_IN,
                params={"name": NAME},
                errors=e403 | e503,
                summary="An OHC reports the stream versions its switch holds (for ?wait=programmed):"
                " the host's own credential, and a grant per peer stream",
            ),
            Route(
                "GET",
                "/v1/multiplexer",
                self.multiplexer,
                response=out.MULTIPLEXER,
                summary="Service sets published, peerings and subscribers per service",
            ),
            Route(
                "GET",
                "/v1/federation/vpcs/{vpc}",
                self.federation_view,
                response=out.FEDERATION_VIEW,
                params=VPC_P,
                summary="A VPC's federation view, for peer shards (a shard credential)",
            ),
            Route(
                "GET",
                "/v1/subscribe",
                self.subscribe,
                response=out.STREAM_MESSAGE,
                auth=False,
                errors=e403 | e503 | c | frozenset({401, 404}),
                query={
                    "service": Str(enum=tuple(s.value for s in ServiceName)),
                    "key": out.PROTOCOL_NAME,
                    "policy": Str(
                        pattern=NAME_RE.pattern,
                        description="a peer stream's export policy id; needs host",
                    ),
                    "host": Str(pattern=NAME_RE.pattern, description="the subscribing host"),
                    "since": Int(0, MAX_VERSION, description="decimal, no sign, no leading zeros"),
                },
                required_query=frozenset({"service", "key"}),
                media_type="application/x-ndjson",
                summary="Subscribe to a service stream: NDJSON snapshot then deltas; a peer"
                " stream's grant in the Meshpeer-Grant header (docs/protocol.md)",
            ),
        ]


def _bgp_peer(raw: Mapping[str, Any] | None) -> BgpPeer | None:
    """A validated ``BgpPeer`` body (the schema checked types); an IPv6 address is a 400."""
    if raw is None:
        return None
    ips = {}
    for field in ("peer_ip", "local_ip"):
        ip = ipaddress.ip_address(raw[field])
        if not isinstance(ip, ipaddress.IPv4Address):
            raise bad_request(f"bgp.{field}", f"{ip}: BGP sessions are IPv4 only")
        ips[field] = ip
    return BgpPeer(raw["peer_asn"], ips["peer_ip"], ips["local_ip"])


def _code(status: int) -> str:
    return {400: "bad_request", 404: "not_found", 409: "conflict"}.get(status, "error")
