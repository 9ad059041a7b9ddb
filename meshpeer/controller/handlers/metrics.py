"""``GET /metrics``: the shard's Prometheus metrics (meshpeer.metrics, docs/metrics.md).

No token, like ``/healthz``: counts and versions only, no names of VPCs, hosts or tenants."""

from __future__ import annotations

from webob import Response

from meshpeer.metrics import CONTENT_TYPE, ShardMetrics
from meshpeer.rest.router import RequestCtx, Route
from meshpeer.rest.schema import Str


class MetricsHandlers:
    def __init__(self, metrics: ShardMetrics) -> None:
        self.metrics = metrics

    def scrape(self, ctx: RequestCtx) -> Response:
        response = Response(status=200, body=self.metrics.text())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    def routes(self) -> list[Route]:
        return [
            Route(
                "GET",
                "/metrics",
                self.scrape,
                response=Str(description="Prometheus text exposition format 0.0.4"),
                auth=False,
                media_type="text/plain",
                summary="Prometheus metrics (text exposition format); no token needed",
            )
        ]
