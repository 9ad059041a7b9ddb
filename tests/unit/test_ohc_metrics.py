"""ohc.metrics: stream lag and the values an OHC's /metrics shows after syncs."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest

from ohc.metrics import Lag, OhcMetrics, streams_behind
from tests.support.metrics import parse

URL = "https://10.0.0.1:8080"


def stream(name: str, state: str, version: int | None) -> dict[str, Any]:
    return {"stream": name, "shard": URL, "state": state, "version": version, "detail": None}


def values(m: OhcMetrics) -> dict[str, float]:
    """name[label value]... -> value, for short asserts."""
    return {
        name + "".join(f"[{v}]" for _, v in labels): v
        for (name, labels), v in parse(generate_latest(m.registry).decode()).items()
    }


def test_lag_counts_from_the_oldest_change_not_on_the_switch() -> None:
    lag = Lag()
    assert lag.seconds(100.0) == 0.0
    lag.changed(10.0)
    lag.changed(12.0)  # still waiting since 10
    assert lag.seconds(15.0) == 5.0
    lag.started()  # the sync takes both changes
    lag.changed(14.0)  # arrives during the sync: the next one takes it
    lag.done(ok=True)
    assert lag.seconds(20.0) == 6.0
    lag.started()
    lag.done(ok=True)
    assert lag.seconds(30.0) == 0.0
    lag.changed(40.0)
    lag.started()
    lag.done(ok=False)  # a failed sync leaves its changes waiting
    assert lag.seconds(45.0) == 5.0


def test_streams_behind_compares_received_and_synced_versions() -> None:
    states = [
        stream("destination/blue//", "delivered", 7),
        stream("endpoint/hv1//", "delivered", 3),
        stream("destination/red/p-1/hv1", "waiting", None),
    ]
    applied = {URL: {"destination/blue//": 6, "endpoint/hv1//": 3}}
    assert streams_behind(states, applied) == 1
    assert streams_behind(states, {}) == 2


def test_a_sync_sets_flows_counts_changes_and_observes_its_duration() -> None:
    now = [100.0]
    states = [stream("destination/blue//", "delivered", 7), stream("x//", "waiting", None)]
    applied: dict[str, dict[str, int]] = {}
    m = OhcMetrics(lambda: states, lambda: applied, clock=lambda: now[0])
    before = values(m)
    assert before["meshpeer_ohc_syncs_total[ok]"] == 0
    assert before["meshpeer_ohc_fail_static"] == 1
    assert before["meshpeer_ohc_streams[waiting]"] == 1
    m.changed()
    now[0] = 102.5
    assert values(m)["meshpeer_ohc_stream_lag_seconds"] == 2.5
    m.started()
    last = {"compile_s": 0.01, "total_s": 0.02, "flows": 40, "groups": 2, "at": 1.7e9,
            "counts": {"flow_add": 40, "group_add": 2, "flow_delete": 0}}  # fmt: skip
    m.synced(last)
    applied[URL] = {"destination/blue//": 7}
    states[1] = stream("x//", "delivered", 1)
    after = values(m)
    assert after["meshpeer_ohc_syncs_total[ok]"] == 1
    assert after["meshpeer_ohc_flows_installed"] == 40
    assert after["meshpeer_ohc_groups_installed"] == 2
    assert after["meshpeer_ohc_switch_changes_total[flow_add]"] == 40
    assert after["meshpeer_ohc_sync_duration_seconds_count"] == 1
    assert after["meshpeer_ohc_sync_duration_seconds_bucket[0.05]"] == 1
    assert after["meshpeer_ohc_sync_duration_seconds_bucket[0.025]"] == 0
    assert after["meshpeer_ohc_stream_lag_seconds"] == 0
    assert after["meshpeer_ohc_fail_static"] == 0
    assert after["meshpeer_ohc_streams_behind"] == 1  # x// at 1, not yet synced
    m.started()
    m.failed()
    assert values(m)["meshpeer_ohc_syncs_total[failed]"] == 1
