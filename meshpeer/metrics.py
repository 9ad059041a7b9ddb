"""Prometheus metrics of a controller shard, served at ``GET /metrics`` (docs/metrics.md).

Counted as they happen: REST requests by method, route template and status, and their
duration (:meth:`ShardMetrics.instrument` wraps the WSGI app; the router names the matched
route in ``environ[ROUTE_ENV]``). Read from the shard at each scrape
(:class:`ShardCollector`): store version, intent sizes, peerings by state, streams and
subscribers by service, deltas published. One registry per shard (never the process-global
one), so a test process may hold several.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4 as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest as exposition
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from meshpeer import __version__
from meshpeer.rest.router import ROUTE_ENV  # set by the router on a matched route

UNMATCHED = "unmatched"  # the route label of a request no route matched (bounded labels)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# REST answers take ~1 ms; ?wait=programmed holds one up to 60 s; a stream lives for hours
# (its duration is the time to its first byte: the WSGI app returns then).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

__all__ = ["CONTENT_TYPE", "ShardCollector", "ShardMetrics", "exposition"]

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def by_label(name: str, doc: str, label: str, counts: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[label])
    for key, n in sorted(counts.items()):
        family.add_metric([key], n)
    return family


class ShardCollector(Collector):
    """What the shard holds, read at scrape time (on the hub: no other green thread runs)."""

    def __init__(self, shard: Any) -> None:
        self.shard = shard

    def collect(self) -> Iterator[Metric]:
        shard = self.shard
        intent = shard.intent
        info = GaugeMetricFamily(
            "meshpeer_shard_info",
            "this shard's name and software version",
            labels=["shard", "version"],
        )
        info.add_metric([shard.name, __version__], 1)
        yield info
        yield gauge(
            "meshpeer_shard_store_version",
            "the version of the shard's last committed write",
            shard.store_version,
        )
        yield gauge("meshpeer_shard_vpcs", "VPCs this shard owns", len(intent.vpcs))
        yield gauge(
            "meshpeer_shard_endpoints", "endpoints of this shard's VPCs", len(intent.endpoints)
        )
        yield gauge(
            "meshpeer_shard_routes", "static routes of this shard's VPCs", len(intent.routes)
        )
        yield gauge("meshpeer_shard_hosts", "hosts registered with this shard", len(intent.hosts))
        states = Tally({"ACTIVE": 0, "INACTIVE": 0})
        for vpc, name in intent.peerings:
            st = shard.peering_status(vpc, name)
            states[st.state if st else "INACTIVE"] += 1
        yield by_label(
            "meshpeer_shard_peerings",
            "peering sides of this shard's VPCs by state",
            "state",
            dict(states),
        )
        streams: Tally[str] = Tally()
        subscribers: Tally[str] = Tally()
        for sid, st in shard.hub.stats().items():
            streams[str(sid.service)] += 1
            subscribers[str(sid.service)] += st.subscribers
        yield by_label(
            "meshpeer_shard_streams", "published streams by service", "service", dict(streams)
        )
        yield by_label(
            "meshpeer_shard_stream_subscribers",
            "subscribers attached to the shard's streams, by service",
            "service",
            dict(subscribers),
        )
        yield CounterMetricFamily(
            "meshpeer_shard_deltas_published",
            "deltas pushed to the shard's streams since it started",
            value=shard.hub.deltas_published,
        )


class ShardMetrics:
    def __init__(self, shard: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "meshpeer_http_requests",
            "REST requests answered, by method, route template and status code",
            ["method", "route", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "meshpeer_http_request_duration_seconds",
            "seconds from a REST request to its answer's status line, by method and route",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(ShardCollector(shard))
        # each (method, route[, code])'s child, as ``labels`` returns it: looking it up there
        # (label checks, a lock) cost more than counting the request
        self._counters: dict[tuple[str, str, str], Any] = {}
        self._timers: dict[tuple[str, str], Any] = {}

    def _counter(self, method: str, route: str, code: str) -> Any:
        key = (method, route, code)
        found = self._counters.get(key)
        if found is None:
            found = self._counters[key] = self.requests.labels(method, route, code)
        return found

    def _timer(self, method: str, route: str) -> Any:
        key = (method, route)
        found = self._timers.get(key)
        if found is None:
            found = self._timers[key] = self.latency.labels(method, route)
        return found

    def text(self) -> bytes:
        """The exposition (Prometheus text format) of everything above."""
        return exposition(self.registry)

    def instrument(self, app: WsgiApp) -> WsgiApp:
        """``app`` with every request counted and timed."""

        def counted(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
            t0 = self.clock()
            code = ["500"]  # no status line: the app raised

            def start(status: str, headers: Any, *exc_info: Any) -> Any:
                code[0] = status.split(" ", 1)[0]
                return start_response(status, headers, *exc_info)

            try:
                return app(environ, start)
            finally:
                method = environ.get("REQUEST_METHOD", "")
                method = method if method in METHODS else "other"
                route = environ.get(ROUTE_ENV, UNMATCHED)
                self._counter(method, route, code[0]).inc()
                self._timer(method, route).observe(self.clock() - t0)

        return counted
