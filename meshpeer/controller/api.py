"""The controller's REST API (/v1): one route table from the handlers of each resource.

Handlers translate: path and body in, a call to the intent checks and ShardState out. They
live one module per resource in ``meshpeer.controller.handlers`` (VPCs and subnets,
endpoints, peerings, routes, hosts, streams, service); this module binds them to one shard
and puts their routes together. The OpenAPI document at /v1/openapi.json is generated from
this same table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from webob import Request

from meshpeer.controller.auth import Credentials, route_action
from meshpeer.controller.handlers.base import Access, AppliedSignal, Fetch, PollingSignal
from meshpeer.controller.handlers.endpoints import EndpointHandlers
from meshpeer.controller.handlers.hosts import HostHandlers
from meshpeer.controller.handlers.metrics import MetricsHandlers
from meshpeer.controller.handlers.peerings import PeeringHandlers
from meshpeer.controller.handlers.routes import RouteHandlers
from meshpeer.controller.handlers.service import ServiceHandlers
from meshpeer.controller.handlers.streams import StreamHandlers
from meshpeer.controller.handlers.ui import UiHandlers
from meshpeer.controller.handlers.vpcs import VpcHandlers
from meshpeer.controller.shard import ShardState, WriteLock
from meshpeer.metrics import ShardMetrics
from meshpeer.rest.errors import error_for, internal, unavailable
from meshpeer.rest.router import Route
from meshpeer.store.etcd import Rejected, Unavailable
from meshpeer.store.sqlite import CommitFailed


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
        self.applied = applied or PollingSignal()
        self.access = Access(shard, api_token, readonly_token, api_tokens, readonly_tokens)
        shared = (shard, self.access, fetch_view, heartbeat_interval, self.applied)
        self.service = ServiceHandlers(*shared)
        self.metrics = ShardMetrics(shard)
        # in the order of the route table (and of the OpenAPI document)
        self.resources = (
            VpcHandlers(*shared),
            EndpointHandlers(*shared),
            PeeringHandlers(*shared),
            RouteHandlers(*shared),
            HostHandlers(*shared),
        )
        self.streams = StreamHandlers(*shared)

    def credentials(self) -> Credentials:
        return self.access.credentials()

    def guard(self, route: Route, params: Mapping[str, str], request: Request) -> None:
        """The router's check for every authenticated route."""
        action, resource = route_action(route.method, route.path, params)
        self.access.allow(self.access.identity(request), action, resource)

    def routes(self) -> list[Route]:
        health, multiplexer = self.service.routes()
        table = [health, *MetricsHandlers(self.metrics).routes(), *UiHandlers().routes()]
        for handlers in self.resources:
            table += [_one_write_at_a_time(r, lambda: self.shard.writes) for r in handlers.routes()]
        return [_store_down_is_503(r) for r in [*table, multiplexer, *self.streams.routes()]]


def _one_write_at_a_time(route: Route, writes: Callable[[], WriteLock]) -> Route:
    """A write to a resource holds the shard's ``writes()`` lock from its checks to its apply
    (or until it waits for hosts: ``?wait=programmed`` lets go first); reads never wait for
    it. Looked up per request: a route table is also built without a shard (the schema
    tests' syntax-only API)."""
    if route.method in ("GET", "HEAD"):
        return route
    handler = route.handler

    def call(ctx: Any) -> Any:
        with writes().held():
            return handler(ctx)

    return replace(route, handler=call)


def _store_down_is_503(route: Route) -> Route:
    """A write that finds the intent store unavailable (etcd without quorum, docs/store.md)
    or whose group commit failed (SQLite): 503 saying so, nothing written; one etcd refused
    for its size: 413 saying how to fit it. Reads are served from memory and never get here."""
    handler = route.handler

    def call(ctx: Any) -> Any:
        try:
            return handler(ctx)
        except Unavailable as exc:
            outcome = "unknown until etcd answers again" if exc.lost else "nothing was written"
            raise unavailable(f"the intent store is unavailable ({outcome}): {exc}") from exc
        except CommitFailed as exc:  # a group commit (SQLite): every write of it fails alike
            raise unavailable(f"the intent store could not commit: {exc}") from exc
        except Rejected as exc:  # etcd refused the change set itself: nothing was written
            if exc.too_large:
                raise error_for(
                    413,
                    "the intent store refused the change as too large, nothing was written "
                    "(split it, or raise etcd's --max-txn-ops / --max-request-bytes: "
                    f"docs/deployment.md): {exc}",
                ) from exc
            raise internal(f"the intent store refused the write: {exc}") from exc

    return replace(route, handler=call)
