"""The controller's per-write cost, in process: one shard's ``ShardState`` on the scenario.

Every REST write ends in ``ShardState.commit`` -> ``refresh`` -> ``mux.desired_streams`` and a
``StreamHub.publish`` per stream, whatever the write was. This builds the shard exactly as the
controller would (a store preloaded with the scenario, the other shards' federation views set as
if replicated) and times ``commit`` of one new endpoint, with ``cProfile`` on a few of them.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

import meshpeer
from meshpeer.controller import intent as ops
from meshpeer.controller.model import Intent, store_key
from meshpeer.controller.peering import federation_view
from meshpeer.controller.shard import ShardState
from meshpeer.directory import parse_directory
from meshpeer.protocol import ServiceName
from meshpeer.store.sqlite import Change, Store
from meshpeer.streaming.publisher import StreamHub

from .cluster import Cluster, _addr
from .scenario import Scenario


def _shard(cluster: Cluster, name: str, path: Path) -> ShardState:
    store = Store.open(str(path), synchronous="NORMAL")
    res = cluster.resources(name)
    store.commit([Change(*store_key(r), r.to_json()) for r in res])
    directory = parse_directory(yaml.safe_load(cluster.directory_file.read_text()))
    shard = ShardState(name, directory, store, StreamHub(base_version=1 << 32), time.time)
    # Federation views of the other shards' VPCs, as the federation streams would deliver.
    for other in cluster.ctls:
        if other == name:
            continue
        intent = Intent()
        for r in cluster.resources(other, with_endpoints=False):
            intent.put(r)
        for v in intent.vpcs:
            shard.remote_views[v] = federation_view(intent, other, v)
    return shard


def measure(cluster: Cluster, writes: int = 10, profiled: int = 3, top: int = 12) -> dict[str, Any]:
    """Seconds per endpoint create on shard ctl1 (validation + commit), and the hot functions."""
    sc: Scenario = cluster.scenario
    name = cluster.scenario.shards[0]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        shard = _shard(cluster, name, Path(tmp) / "s.db")
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        shard.refresh()  # peerings become ACTIVE with the views set: the full publication
        first_refresh_s = time.perf_counter() - t0
        mine = [v for v in sc.vpcs if sc.shard_of[v] == name]
        validate, commit = [], []
        prof = cProfile.Profile()
        for i in range(writes + profiled):
            v = mine[i % len(mine)]
            e = sc.new_endpoint(v, f"rc{i:04d}", i)
            t0 = time.perf_counter()
            if i >= writes:
                prof.enable()
            ep = ops.new_endpoint(shard.intent, v, e.name, "vm", _addr(e.ip), None, e.host, [])
            t1 = time.perf_counter()
            shard.commit([ep])
            t2 = time.perf_counter()
            if i >= writes:
                prof.disable()
            else:
                validate.append(t1 - t0)
                commit.append(t2 - t1)
        shard.store.close()
    buf = io.StringIO()
    st = pstats.Stats(prof, stream=buf)
    st.sort_stats("tottime").print_stats(top)
    base = Path(meshpeer.__file__).parent.parent
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in sorted(
        st.stats.items(),  # type: ignore[attr-defined]
        key=lambda kv: -kv[1][3],
    ):
        if "meshpeer" in file or "policies" in file:
            rows.append(
                {
                    "function": f"{os.path.relpath(file, base)}:{line}:{func}",
                    "calls_per_write": nc / profiled,
                    "cum_ms_per_write": ct / profiled * 1e3,
                    "own_ms_per_write": tt / profiled * 1e3,
                }
            )
    streams = shard.hub.stats()
    return {
        "shard": name,
        "endpoints_on_shard": len(shard.intent.endpoints),
        "hosts": len(shard.intent.hosts),
        "streams": len(streams),
        "peering_streams": sum(1 for s in streams if s.service == ServiceName.PEERING),
        "objects_published": sum(s.objects for s in streams.values()),
        "load_s": load_s,
        "first_refresh_s": first_refresh_s,
        "validate_ms": 1e3 * sum(validate) / len(validate),
        "commit_ms": 1e3 * sum(commit) / len(commit),
        "hot_cumulative": rows[:top],
        "pstats_tottime": buf.getvalue(),
    }
