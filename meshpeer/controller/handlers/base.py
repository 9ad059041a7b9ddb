"""What the REST handlers of every resource share: schemas of path parts, the ?wait
query, caller checks, intent errors as HTTP errors, and the peer-grant check."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from webob import Request

from meshpeer.controller import intent as ops
from meshpeer.controller.auth import (
    Action,
    Credentials,
    Identity,
    OperatorTokens,
    Resource,
    authorize,
)
from meshpeer.controller.intent import IntentError
from meshpeer.controller.model import JsonObject
from meshpeer.controller.ondemand import check_subscription
from meshpeer.controller.peering import side_toward
from meshpeer.controller.shard import ShardState
from meshpeer.protocol import ServiceName
from meshpeer.protocol.grants import GrantError, Rejection, verify
from meshpeer.rest.errors import ApiError, bad_request, forbidden, not_found, unauthorized
from meshpeer.rest.router import RequestCtx
from meshpeer.rest.schema import Int, Schema, Str

NAME = Str(format="name")
VPC_P = {"vpc": NAME}
ITEM_P = {"vpc": NAME, "name": NAME}
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

CONFLICT, FORBIDDEN, UNAVAILABLE = frozenset({409}), frozenset({403}), frozenset({503})


Fetch = Callable[[str], "dict[str, Any] | None"]


class HostLeft(ApiError):
    """A good grant whose VPC has no endpoint on the host that presents it (any more): 403.
    An applied report ignores such an entry instead of refusing the whole report."""

    def __init__(self, vpc: str, host: str) -> None:
        super().__init__(403, "forbidden", "host", f"VPC {vpc!r} has no endpoint on {host!r}")


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


class Access:
    """Who is calling and what they may do (meshpeer.controller.auth decides): the operator
    tokens this shard was given and the credentials in its directory."""

    def __init__(
        self,
        shard: ShardState,
        api_token: str,
        readonly_token: str | None,
        api_tokens: Sequence[str],
        readonly_tokens: Sequence[str],
    ) -> None:
        self.shard = shard
        self.api_token = api_token
        self.readonly_token = readonly_token
        self.api_tokens = tuple(api_tokens)  # valid beside api_token (rotation)
        self.readonly_tokens = tuple(readonly_tokens)
        self.from_file = OperatorTokens()  # operator_tokens_file's, replaced when it changes

    def credentials(self) -> Credentials:
        d = self.shard.directory
        return Credentials(
            self.api_token,
            self.readonly_token,
            d.host_keys,
            d.federation_token,
            frozenset(d.shards),
            self.shard.revoked_hosts,
            (*self.api_tokens, *self.from_file.admin),
            (*self.readonly_tokens, *self.from_file.readonly),
        )

    def identity(self, request: Request) -> Identity:
        header = request.headers.get("Authorization")
        identity = self.credentials().identify(header)
        if identity is None:
            raise unauthorized("invalid bearer token" if header else "missing bearer token")
        return identity

    def allow(
        self, identity: Identity, action: Action, resource: Resource, field: str | None = None
    ) -> None:
        decision = authorize(identity, action, resource)
        if not decision:
            raise forbidden(field, decision.reason)


class Handlers:
    """What every resource's handlers share: the shard, who may call (``access``), how to
    ask a remote shard for a VPC's view, the stream heartbeat and the ``?wait=programmed``
    signal."""

    def __init__(
        self,
        shard: ShardState,
        access: Access,
        fetch_view: Fetch,
        heartbeat_interval: float,
        applied: AppliedSignal,
    ) -> None:
        self.shard = shard
        self.access = access
        self.fetch_view = fetch_view
        self.heartbeat_interval = heartbeat_interval
        self.applied = applied

    def _with_version(self, kind: str, key: str, body: JsonObject) -> JsonObject:
        return {**body, "version": self.shard.version_of(kind, key)}

    def _on_hub_clock(self, wall: float) -> float:
        """A grant's expiry (Unix seconds) on the stream hub's clock (monotonic)."""
        return float(self.shard.hub.clock() + (wall - self.shard.clock()))

    def _intent(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except IntentError as exc:
            raise ApiError(exc.status, _code(exc.status), exc.field, exc.detail) from exc

    def _programmed(
        self, ctx: RequestCtx, kind: str, key: str | Sequence[str], body: JsonObject
    ) -> JsonObject:
        """With ?wait=programmed, hold the answer until every host that follows a changed
        stream reports applying it, or ``timeout`` seconds pass; say which hosts are pending.
        ``key``: one resource, or the resources of one batch."""
        self.shard.writes.done()  # applied: other writes may go on while this one waits
        keys = [key] if isinstance(key, str) else key
        if any(self.shard.versions.get((kind, k), 0) > self.shard.store_version for k in keys):
            self.shard.settled()  # staged, not synced yet: no answer before its sync
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

    def _host(self, name: str, field: str = "name") -> Any:
        host = self.shard.intent.hosts.get(name)
        if host is None:
            raise not_found(field, f"no host {name!r}: register it with PUT /v1/hosts/{name}")
        return host

    def _vpc_hosts(self, vpc: str) -> frozenset[str]:
        return frozenset(e.host for e in self.shard.intent.endpoints_of(vpc) if e.host)

    def _check_grant(
        self,
        token: str,
        vpc: str,
        policy: str,
        host: str | None,
        subscribing: tuple[ServiceName, frozenset[str] | None] | None = None,
    ) -> tuple[float, str]:
        """A peer host's grant: valid signature and scope, and the peering ACTIVE right now.
        ``subscribing``: the service and destination filter of a subscription, which the
        grant must cover (``meshpeer.controller.ondemand.check_subscription``)."""
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
            if subscribing is not None:
                views = self.shard.views()
                forwarding, relays = side_toward(
                    self.shard.intent, views, grant.subscriber_vpc, vpc
                )
                check_subscription(grant, *subscribing, forwarding, host in relays)
        except GrantError as exc:
            # A bad or expired credential is 401; a good grant for something else is 403.
            status = 403 if exc.reason == Rejection.WRONG_SCOPE else 401
            code = "forbidden" if status == 403 else "unauthorized"
            detail = f"grant rejected ({exc.reason}): {exc.detail}"
            auth = (("WWW-Authenticate", 'Bearer error="invalid_token"'),) if status == 401 else ()
            raise ApiError(status, code, "Authorization", detail, auth) from exc
        # The grant outlives the host's last endpoint in its VPC: the VPC's shard knows its
        # endpoints, a peer shard the hosts the VPC's last federation view lists (a host that
        # just joined and is not listed yet is refused and tries again within a second). A
        # gateway relaying for the VPC counts as placed (docs/gateways.md; listed in views).
        if self.shard.directory.owner_of(grant.subscriber_vpc) == self.shard.name:
            placed = self.shard.intent.placed(grant.subscriber_vpc, host)
            placed = placed or host in self.shard.intent.relay_hosts(grant.subscriber_vpc)
        else:
            placed = self.shard.listed_in_view(grant.subscriber_vpc, host) is not False
        if not placed:
            raise HostLeft(grant.subscriber_vpc, host)
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


def _code(status: int) -> str:
    return {400: "bad_request", 404: "not_found", 409: "conflict"}.get(status, "error")
