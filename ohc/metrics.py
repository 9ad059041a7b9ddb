"""Prometheus metrics of an on-host controller (docs/metrics.md), served on a loopback port.

The OHC has no REST API; with ``metrics_port`` set it serves ``GET /metrics`` on
``metrics_host`` (default 127.0.0.1) through the shards' HTTP server (meshpeer.rest.server),
read by a Prometheus or agent on the host. The app tells :class:`OhcMetrics` what happens
(a stream changed, a sync started, ended or failed); the rest is read at scrape time from
the agent's stream states and the last sync's versions.

Stream lag: ``meshpeer_ohc_stream_lag_seconds`` is how long the oldest stream change not yet on
the switch has waited (0 when the switch holds everything received), and
``meshpeer_ohc_streams_behind`` how many followed streams hold a newer version than the switch.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

STREAM_STATES = ("delivered", "waiting", "refused")
# A delta sync takes milliseconds; a first sync at 50k peer endpoints, seconds.
SYNC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

States = Callable[[], Sequence[Mapping[str, Any]]]
Applied = Callable[[], Mapping[str, Mapping[str, int]]]


def streams_behind(
    states: Sequence[Mapping[str, Any]], applied: Mapping[str, Mapping[str, int]]
) -> int:
    """Followed streams whose received version is not the one the last sync put on the switch.
    ``states``: the agent's ``stream_states()``; ``applied``: shard URL -> stream -> version
    (``reporting.synced_versions``)."""
    return sum(
        1
        for s in states
        if s["version"] is not None and applied.get(s["shard"], {}).get(s["stream"]) != s["version"]
    )


class Lag:
    """When the oldest stream change not yet on the switch arrived (pure: times are given)."""

    def __init__(self) -> None:
        self.pending_since: float | None = None  # changes no sync has taken yet
        self.syncing_since: float | None = None  # changes the running sync took

    def changed(self, now: float) -> None:
        if self.pending_since is None:
            self.pending_since = now

    def started(self) -> None:
        self.syncing_since, self.pending_since = self.pending_since, None

    def done(self, ok: bool) -> None:
        """A failed sync leaves its changes pending (the retry takes them)."""
        if not ok and self.syncing_since is not None:
            self.pending_since = min(self.syncing_since, self.pending_since or self.syncing_since)
        self.syncing_since = None

    def seconds(self, now: float) -> float:
        oldest = [t for t in (self.pending_since, self.syncing_since) if t is not None]
        return max(0.0, now - min(oldest)) if oldest else 0.0


class _StreamCollector(Collector):
    def __init__(self, metrics: OhcMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        states = m.states()
        by_state = Tally({s: 0 for s in STREAM_STATES})
        by_state.update(s["state"] for s in states)
        family = GaugeMetricFamily(
            "meshpeer_ohc_streams", "followed streams by state", labels=["state"]
        )
        for state, n in sorted(by_state.items()):
            family.add_metric([state], n)
        yield family
        yield GaugeMetricFamily(
            "meshpeer_ohc_fail_static",
            "1 while a followed stream has not delivered: the switch keeps its flows as they were",
            value=int(by_state["waiting"] > 0),
        )
        yield GaugeMetricFamily(
            "meshpeer_ohc_streams_behind",
            "followed streams holding a newer version than the switch",
            value=streams_behind(states, m.applied()),
        )
        yield GaugeMetricFamily(
            "meshpeer_ohc_stream_lag_seconds",
            "seconds the oldest stream change not yet on the switch has waited (0: none)",
            value=m.lag.seconds(m.clock()),
        )


class OhcMetrics:
    def __init__(
        self,
        states: States,
        applied: Applied,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.states = states
        self.applied = applied
        self.clock = clock
        self.lag = Lag()
        self.registry = CollectorRegistry()
        r = self.registry
        self.syncs = Counter(
            "meshpeer_ohc_syncs", "syncs of br-int by result", ["result"], registry=r
        )
        self.sync_seconds = Histogram(
            "meshpeer_ohc_sync_duration_seconds",
            "seconds of a successful sync: compile, read back, plan and send",
            buckets=SYNC_BUCKETS,
            registry=r,
        )
        self.flows = Gauge("meshpeer_ohc_flows_installed", "flows on br-int", registry=r)
        self.groups = Gauge("meshpeer_ohc_groups_installed", "groups on br-int", registry=r)
        self.changes = Counter(
            "meshpeer_ohc_switch_changes",
            "flow and group changes sent to br-int, by kind",
            ["kind"],
            registry=r,
        )
        self.last_sync = Gauge(
            "meshpeer_ohc_last_sync_timestamp_seconds",
            "when the last successful sync ended (Unix time)",
            registry=r,
        )
        for result in ("ok", "failed"):
            self.syncs.labels(result)
        r.register(_StreamCollector(self))

    def changed(self) -> None:
        self.lag.changed(self.clock())

    def started(self) -> None:
        self.lag.started()

    def synced(self, last: Mapping[str, Any]) -> None:
        """``last``: the app's record of the sync that just ended."""
        self.lag.done(ok=True)
        self.syncs.labels("ok").inc()
        self.sync_seconds.observe(last["compile_s"] + last["total_s"])
        self.flows.set(last["flows"])
        self.groups.set(last["groups"])
        self.last_sync.set(last["at"])
        for kind, n in last["counts"].items():
            self.changes.labels(kind).inc(n)

    def failed(self) -> None:
        self.lag.done(ok=False)
        self.syncs.labels("failed").inc()

    def serve(self, host: str, port: int) -> tuple[Any, int]:
        """Serve ``GET /metrics`` on ``host:port`` in a green thread: (thread, bound port)."""
        from meshpeer.rest.server import serve  # the OHC imports the HTTP server only here

        return serve(make_wsgi_app(self.registry), host, port)
