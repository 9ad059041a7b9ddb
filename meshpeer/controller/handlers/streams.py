"""The subscription streams (OHCs and peer hosts) and the federation views (shards)."""

from __future__ import annotations

from dataclasses import dataclass

from webob import Response

from meshpeer.controller import responses as out
from meshpeer.controller.auth import (
    Action,
    Identity,
    Resource,
    Role,
)
from meshpeer.controller.handlers.base import CONFLICT, FORBIDDEN, UNAVAILABLE, VPC_P, Handlers
from meshpeer.protocol import ServiceName
from meshpeer.protocol.messages import (
    CHANNEL_HEADER,
    CHANNEL_ID_RE,
    GRANT_HEADER,
    MAX_DST,
    MAX_VERSION,
    NAME_RE,
    ProtocolError,
    StreamId,
    SubscribeRequest,
    parse_channel_control,
    parse_subscribe_request,
)
from meshpeer.rest.errors import ApiError, bad_request, forbidden, not_found, too_many
from meshpeer.rest.router import RequestCtx, Route
from meshpeer.rest.schema import Int, Str
from meshpeer.streaming.publisher import ChannelFull, ndjson_response


class StreamHandlers(Handlers):
    def federation_view(self, ctx: RequestCtx) -> tuple[int, object]:
        vpc = ctx.params["vpc"]
        if self.shard.directory.owner_of(vpc) != self.shard.name:
            raise not_found("vpc", f"VPC {vpc!r} is not owned by shard {self.shard.name!r}")
        return 200, {"vpc": vpc, "view": self.shard.views().get(vpc, {})}

    def subscribe(self, ctx: RequestCtx) -> Response:
        """One stream on its own connection (tools, older subscribers; docs/protocol.md)."""
        try:
            req = parse_subscribe_request(ctx.request.GET, ctx.request.headers.get("Authorization"))
        except ProtocolError as exc:
            raise bad_request(exc.field, exc.detail) from exc
        identity = self.access.identity(ctx.request)
        grant = ctx.request.headers.get(GRANT_HEADER, "").strip()
        allowed = self._allowed(identity, req, grant)
        holder = _holder(identity)
        writer = self.shard.hub.wsgi_stream(
            allowed.sid,
            req.since,
            self.heartbeat_interval,
            expires_at=allowed.expires_at,
            tag=allowed.tag,
            host=req.host,
            holder=holder,
            holder_key=identity.key_id if holder else None,
            only=req.only,
        )
        resp: Response = ndjson_response(writer, ctx.request.environ)
        return resp

    def open_channel(self, ctx: RequestCtx) -> Response:
        """A channel: one connection for all of a caller's subscriptions to this shard."""
        identity = self.access.identity(ctx.request)
        holder = _holder(identity)
        writer = self.shard.hub.open_channel(
            self.heartbeat_interval,
            owner=_owner(identity),
            holder=holder,
            holder_key=identity.key_id if holder else None,
        )
        resp: Response = ndjson_response(writer, ctx.request.environ)
        resp.headers[CHANNEL_HEADER] = writer.channel_id
        return resp

    def control_channel(self, ctx: RequestCtx) -> tuple[int, object]:
        """Add and remove subscriptions of a channel; each is checked on its own, and a
        refused one is answered with its status while the others go on."""
        identity = self.access.identity(ctx.request)
        cid = ctx.params["channel"]
        try:
            owner = self.shard.hub.channel_owner(cid)
        except KeyError:
            raise not_found("channel", "no such channel (closed): open a new one") from None
        if owner != _owner(identity):
            raise forbidden("channel", "the channel was opened with another credential")
        try:
            control = parse_channel_control(ctx.body)
        except ProtocolError as exc:
            raise bad_request(exc.field, exc.detail) from exc
        hub = self.shard.hub
        for sub in control.unsubscribe:
            hub.channel_unsubscribe(cid, sub)
        results: list[dict[str, object]] = []
        for i, entry in enumerate(control.subscribe):
            req = entry.request
            try:
                allowed = self._allowed(identity, req, entry.grant or "")
                hub.channel_subscribe(
                    cid,
                    entry.sub,
                    allowed.sid,
                    req.since,
                    expires_at=allowed.expires_at,
                    tag=allowed.tag,
                    host=req.host,
                    only=req.only,
                )
            except ApiError as exc:
                results.append({"sub": entry.sub, "status": exc.status, **exc.body()})
                continue
            except ChannelFull as exc:
                full = too_many(f"subscribe[{i}]", f"{exc}: unsubscribe some, or open another")
                results.append({"sub": entry.sub, "status": 429, **full.body()})
                continue
            except KeyError:  # the channel closed meanwhile (its connection ended)
                raise not_found("channel", "no such channel (closed): open a new one") from None
            results.append({"sub": entry.sub, "status": 200})
        return 200, {"results": results}

    def _allowed(self, identity: Identity, req: SubscribeRequest, grant: str) -> _Allowed:
        """May ``identity`` follow the stream ``req`` names (with a peer stream's ``grant``)?
        ApiError if not (401/403/404/503, docs/protocol.md "Subscription errors")."""
        expires_at: float | None = None
        tag: str | None = None
        if req.policy is not None:
            # The grant names a host; the caller must be that host (or an admin).
            self.access.allow(
                identity, Action.SUBSCRIBE_PEER, Resource(req.host, grant_host=req.host)
            )
            expires_at, tag = self._check_grant(
                grant, req.key, req.policy, req.host, (req.service, req.only)
            )
        elif req.service == ServiceName.FEDERATION:
            self.access.allow(identity, Action.FEDERATE, Resource())
        elif req.service == ServiceName.DIRECTORY:
            self.access.allow(identity, Action.DIRECTORY, Resource())
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
        sid = StreamId(
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
        hub_expiry = None if expires_at is None else self._on_hub_clock(expires_at)
        return _Allowed(sid, hub_expiry, tag)

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
                    "dst": Str(
                        max_length=MAX_DST * 40,
                        description="a peer destination stream narrowed to these IP addresses"
                        f" (comma-separated, 1-{MAX_DST}, within the 8 KB request line: a"
                        " channel for long IPv6 lists): an on-demand host's busy pairs, within"
                        " its grant's dst (docs/protocol.md, Destination filter)",
                    ),
                },
                required_query=frozenset({"service", "key"}),
                media_type="application/x-ndjson",
                summary="Subscribe to a service stream: NDJSON snapshot then deltas; a peer"
                " stream's grant in the Meshpeer-Grant header (docs/protocol.md)",
            ),
            Route(
                "GET",
                "/v1/channel",
                self.open_channel,
                response=out.CHANNEL_FRAME,
                auth=False,
                errors=frozenset({401}),
                media_type="application/x-ndjson",
                summary="Open a channel: one NDJSON stream carrying all of the caller's"
                " subscriptions to this shard, its id in the Meshpeer-Channel header"
                " (docs/protocol.md)",
            ),
            Route(
                "POST",
                "/v1/channels/{channel}",
                self.control_channel,
                body=out.CHANNEL_CONTROL,
                response=out.CHANNEL_RESULTS,
                auth=False,
                handler_auth=True,
                params={"channel": Str(pattern=CHANNEL_ID_RE.pattern)},
                summary="Add (or replace) and remove subscriptions of an open channel; each"
                " subscription is answered on its own (docs/protocol.md)",
            ),
        ]


@dataclass(frozen=True)
class _Allowed:
    sid: StreamId
    expires_at: float | None  # the grant's expiry on the hub's clock
    tag: str | None  # the grant's VPC


def _holder(identity: Identity) -> str | None:
    """The host whose own credential subscribes (its streams close when it leaves)."""
    return identity.name if identity.role is Role.HOST else None


def _owner(identity: Identity) -> tuple[str, str, str | None]:
    return (str(identity.role), identity.name, identity.key_id)
