"""Liveness and the multiplexer's counters."""

from __future__ import annotations

from meshpeer import __version__
from meshpeer.controller import responses as out
from meshpeer.controller.handlers.base import Handlers
from meshpeer.rest.router import RequestCtx, Route


class ServiceHandlers(Handlers):
    def healthz(self, ctx: RequestCtx) -> tuple[int, object]:
        version = self.shard.store_version
        return 200, {
            "status": "ok",
            "shard": self.shard.name,
            "version": version,
            "store_version": version,
            "software_version": __version__,
        }

    def multiplexer(self, ctx: RequestCtx) -> tuple[int, object]:
        return 200, {"shard": self.shard.name, **self.shard.counts()}

    def routes(self) -> list[Route]:
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
                "/v1/multiplexer",
                self.multiplexer,
                response=out.MULTIPLEXER,
                summary="Service sets published, peerings and subscribers per service",
            ),
        ]
