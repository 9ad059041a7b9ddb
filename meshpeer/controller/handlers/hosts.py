"""Hosts: registration, status and applied-version reports (the OHCs' side)."""

from __future__ import annotations

import ipaddress
import time

from meshpeer.controller import intent as ops
from meshpeer.controller import responses as out
from meshpeer.controller.handlers.base import FORBIDDEN, NAME, UNAVAILABLE, Handlers, HostLeft
from meshpeer.controller.model import JsonObject
from meshpeer.controller.ondemand import OffloadAsk, Refused, offload_grant
from meshpeer.controller.peering import exported_subnets
from meshpeer.protocol import ServiceName
from meshpeer.protocol.gateways import DEFAULT_ROLE
from meshpeer.protocol.grants import expiry_bucket, mint
from meshpeer.protocol.messages import (
    MAX_DST,
    MAX_VERSION,
    NAME_RE,
    ProtocolError,
    parse_dst,
    parse_stream_name,
)
from meshpeer.rest.errors import ERROR_CODES, ApiError, bad_request
from meshpeer.rest.router import RequestCtx, Route
from meshpeer.rest.schema import Arr, Int, Nullable, Num, Obj, Str

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

OFFLOAD_IN = Obj(
    {
        "vpc": Str(pattern=_PART, description="the host's VPC (an on-demand side)"),
        "peer_vpc": Str(pattern=_PART, description="the peer VPC that side sends to"),
        "dst": Arr(
            Str(format="ip"),
            max_items=MAX_DST,
            description="the peer's addresses the host sends to directly now (its busy pairs);"
            " empty: none any more",
        ),
    },
    {},
    name="OffloadReport",
    description="An on-demand host's busy pairs toward one peer (docs/protocol.md)",
)

OFFLOAD_GRANT = Obj(
    {
        "host": Str(),
        "vpc": Str(),
        "peer_vpc": Str(),
        "dst": Arr(Str(format="ip")),
        "grant": Nullable(Str(description="a grant scoped to dst (null: dst is empty)")),
        "expires_at": Nullable(Num(description="the grant's expiry, Unix seconds")),
    },
    name="OffloadGrant",
)

HOST_IN = Obj(
    {"underlay_ip": Str(format="ip")},
    {"role": out.HOST_ROLE},
    name="HostRegister",
)


class HostHandlers(Handlers):
    def put_host(self, ctx: RequestCtx) -> tuple[int, object]:
        host = ops.new_host(
            ctx.params["name"],
            ipaddress.ip_address(ctx.body["underlay_ip"]),
            ctx.body.get("role", DEFAULT_ROLE),
        )
        if self.shard.intent.hosts.get(host.name) != host:
            self.shard.commit([host])
        else:  # unchanged, maybe by a staged write: answered after that write's sync
            self.shard.settled()
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

    def list_hosts(self, ctx: RequestCtx) -> tuple[int, object]:
        hosts = sorted(self.shard.intent.hosts.values(), key=lambda h: h.name)
        return 200, {"hosts": [self._with_version("host", h.name, h.to_json()) for h in hosts]}

    def put_applied(self, ctx: RequestCtx) -> tuple[int, object]:
        """A host reports for itself (the guard checked its credential). A peer stream (one
        with a policy) comes with the grant the host follows it with, checked like a
        subscription, whoever reports; a report of own streams (or of none) names a host
        registered here. All checked before anything is recorded. A peer stream followed with
        a grant for a VPC the host has left since (the OHC has not taken the close yet) is
        left out and named in ``ignored``; any other refusal refuses the whole report. A
        fresher grant than the one a peer stream was subscribed with renews the subscription:
        it expires later, and no stream is dropped when grants rotate."""
        host = ctx.params["name"]
        streams = ctx.body["streams"]
        policies = [
            _check_own_stream(s["stream"], host, f"streams[{i}].stream")
            for i, s in enumerate(streams)
        ]
        if not streams or None in policies:
            self._host(host)  # an own host registers before it reports
        ignored = []
        renewals: list[tuple[tuple[object, ...], str | None, float]] = []
        for i, (s, policy) in enumerate(zip(streams, policies, strict=True)):
            if policy is None:
                continue
            try:
                renewals.append(self._check_applied_grant(s, host, f"streams[{i}]"))
            except HostLeft as exc:
                ignored.append({"stream": s["stream"], "reason": exc.detail})
        left = {s["stream"] for s in ignored}
        kept = {s["stream"]: s["version"] for s in streams if s["stream"] not in left}
        self.shard.report_applied(host, kept)
        for sid, tag, expires_at in renewals:
            self.shard.hub.renew(sid, host, tag, self._on_hub_clock(expires_at))
        self.applied.notify()
        answer: dict[str, object] = {"host": host, "streams": len(streams)}
        if ignored:
            answer["ignored"] = ignored
        return 200, answer

    def put_offload(self, ctx: RequestCtx) -> tuple[int, object]:
        """An on-demand host's busy pairs toward one peer (its own credential): a grant to
        follow the peer's destinations of those pairs only (``meshpeer.controller.ondemand``).
        Soft state: nothing is stored; the host asks again before the grant expires."""
        host = ctx.params["name"]  # placed in the VPC, registered or not (as its peering stream)
        body = ctx.body
        try:
            dst = parse_dst(body["dst"]) if body["dst"] else frozenset[str]()
        except ProtocolError as exc:
            raise bad_request(exc.field, exc.detail) from exc
        ask = OffloadAsk(host, body["vpc"], body["peer_vpc"], dst)
        intent, grants = self.shard.intent, self.shard.grants
        side = next((p for p in intent.peerings_of(ask.vpc) if p.peer_vpc == ask.peer_vpc), None)
        now = self.shard.clock()
        try:
            grant = offload_grant(
                ask,
                placed=intent.placed(ask.vpc, host),
                revoked=host in grants.revoked,
                side=side,
                status=self.shard.peering_status(ask.vpc, side.name) if side else None,
                exported=exported_subnets(self.shard.views(), ask.peer_vpc, ask.vpc),
                key_id=grants.directory.signing_key_id,
                expires_at=expiry_bucket(now, grants.ttl),
            )
        except Refused as exc:
            headers = (("Retry-After", "1"),) if exc.status == 503 else ()
            raise ApiError(
                exc.status, ERROR_CODES[exc.status], exc.field, exc.detail, headers
            ) from exc
        answer: dict[str, object] = {
            "host": host,
            "vpc": ask.vpc,
            "peer_vpc": ask.peer_vpc,
            "dst": sorted(dst),
            "grant": None if grant is None else mint(grant, grants.directory.grant_keys),
            "expires_at": None if grant is None else grant.expires_at,
        }
        return 200, answer

    def _check_applied_grant(
        self, s: JsonObject, host: str, where: str
    ) -> tuple[tuple[object, ...], str | None, float]:
        """Check a peer stream's grant; returns the stream's id, the grant's tag and expiry."""
        try:
            service, vpc, policy, _ = parse_stream_name(s["stream"])
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
            expires_at, tag = self._check_grant(s["grant"], vpc, policy, host)
        except HostLeft:
            raise
        except ApiError as exc:
            raise ApiError(
                exc.status, exc.error, f"{where}.grant", exc.detail, exc.headers
            ) from exc
        return (service, vpc, policy, None), tag, expires_at

    def routes(self) -> list[Route]:
        return [
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
                summary="Register a host, its underlay IP and its role (hypervisor or gateway)",
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
                errors=FORBIDDEN | UNAVAILABLE,
                summary="An OHC reports the stream versions its switch holds (for ?wait=programmed):"
                " the host's own credential, and a grant per peer stream",
            ),
            Route(
                "PUT",
                "/v1/hosts/{name}/offload",
                self.put_offload,
                response=OFFLOAD_GRANT,
                body=OFFLOAD_IN,
                params={"name": NAME},
                errors=FORBIDDEN | UNAVAILABLE | frozenset({404, 409}),
                summary="An on-demand host reports its busy pairs toward a peer; the answer is"
                " a grant for those destinations only (docs/protocol.md, Offload grants)",
            ),
        ]


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
