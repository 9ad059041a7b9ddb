"""The subscription streams (OHCs and peer hosts) and the federation views (shards)."""

from __future__ import annotations

from webob import Response

from meshpeer.controller import responses as out
from meshpeer.controller.auth import (
    Action,
    Resource,
    Role,
)
from meshpeer.controller.handlers.base import CONFLICT, FORBIDDEN, UNAVAILABLE, VPC_P, Handlers
from meshpeer.protocol import ServiceName
from meshpeer.protocol.messages import (
    GRANT_HEADER,
    MAX_VERSION,
    NAME_RE,
    ProtocolError,
    parse_subscribe_request,
)
from meshpeer.rest.errors import bad_request, not_found
from meshpeer.rest.router import RequestCtx, Route
from meshpeer.rest.schema import Int, Str
from meshpeer.streaming.publisher import ndjson_response


class StreamHandlers(Handlers):
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
        identity = self.access.identity(ctx.request)
        expires_at: float | None = None
        tag: str | None = None
        if req.policy is not None:
            # The grant names a host; the caller must be that host (or an admin).
            grant = ctx.request.headers.get(GRANT_HEADER, "").strip()
            self.access.allow(
                identity, Action.SUBSCRIBE_PEER, Resource(req.host, grant_host=req.host)
            )
            expires_at, tag = self._check_grant(grant, req.key, req.policy, req.host)
        elif req.service == ServiceName.FEDERATION:
            self.access.allow(identity, Action.FEDERATE, Resource())
        elif req.service == ServiceName.ENDPOINT:
            if req.host not in (None, req.key):  # it names who must apply its writes
                raise bad_request("host", "an endpoint stream is its own host's: host = key")
            self.access.allow(identity, Action.SUBSCRIBE, Resource(req.key), "key")
        else:
            hosts = self._vpc_hosts(req.key)
            if req.service == ServiceName.PEERING:  # a gateway relaying for the VPC
                hosts |= frozenset(self.shard.intent.relay_hosts(req.key))
            vpc = Resource(req.host, req.key, hosts)
            self.access.allow(identity, Action.SUBSCRIBE, vpc, "key")
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
        holder = identity.name if identity.role is Role.HOST else None  # closed if it leaves
        writer = self.shard.hub.wsgi_stream(
            sid,
            req.since,
            self.heartbeat_interval,
            expires_at=None if expires_at is None else self._on_hub_clock(expires_at),
            tag=tag,
            host=req.host,
            holder=holder,
            holder_key=identity.key_id if holder else None,
        )
        resp: Response = ndjson_response(writer, ctx.request.environ)
        return resp

    def routes(self) -> list[Route]:
        return [
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
                errors=FORBIDDEN | UNAVAILABLE | CONFLICT | frozenset({401, 404}),
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
