"""meshpeer.metrics: each REST request counted and timed under its method, route and code."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from meshpeer.metrics import ShardMetrics
from meshpeer.rest.router import ROUTE_ENV
from tests.support.metrics import Samples, parse, value


class _NoShard:
    """The collector of shard state is not scraped here (``ShardMetrics`` only keeps it)."""


def _app(status: str) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ[ROUTE_ENV] = "/v1/things/{name}"
        start_response(status, [])
        return [b""]

    return app


def test_requests_are_counted_per_method_route_and_code_each_time() -> None:
    """The labelled children are kept per (method, route[, code]): counts and latencies
    still land on the right series, every time."""
    metrics = ShardMetrics(_NoShard(), clock=iter(range(100)).__next__)
    for status, n in (("201 Created", 3), ("409 Conflict", 2), ("201 Created", 1)):
        app = metrics.instrument(_app(status))
        for _ in range(n):
            app({"REQUEST_METHOD": "POST"}, lambda *a: None)
    metrics.instrument(_app("200 OK"))({"REQUEST_METHOD": "GET"}, lambda *a: None)
    samples = _requests_only(metrics)
    route = "/v1/things/{name}"
    count = "meshpeer_http_requests_total"
    assert value(samples, count, method="POST", route=route, code="201") == 4
    assert value(samples, count, method="POST", route=route, code="409") == 2
    assert value(samples, count, method="GET", route=route, code="200") == 1
    timed = "meshpeer_http_request_duration_seconds_count"
    assert value(samples, timed, method="POST", route=route) == 6
    timed_sum = "meshpeer_http_request_duration_seconds_sum"
    assert value(samples, timed_sum, method="POST", route=route) == 6  # 1 s each


def _requests_only(metrics: ShardMetrics) -> Samples:
    """The two request series, scraped without the shard's own collector."""
    registry = CollectorRegistry()
    registry.register(metrics.requests)
    registry.register(metrics.latency)
    return parse(generate_latest(registry).decode())
