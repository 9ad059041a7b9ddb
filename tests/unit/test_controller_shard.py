"""ShardState over a real store and stream hub: writes, publication, restarts, closing peers."""

from __future__ import annotations

import ipaddress
import json
import pathlib
from typing import Any

import pytest
from webob import Request

from meshpeer.controller import intent as ops
from meshpeer.controller.api import ControllerApi
from meshpeer.controller.model import Host
from meshpeer.controller.shard import Delete, ShardState
from meshpeer.protocol import ServiceName
from meshpeer.protocol.messages import Close, StreamId
from meshpeer.rest import Api
from meshpeer.store.sqlite import Change, Store
from meshpeer.streaming.publisher import StreamHub
from policies.export import ExportPolicy
from policies.routes import DEFAULT_PREFERENCE
from tests.unit.controller_fixtures import directory, subnets

D = directory(ctl1=["blue", "green", "red"])


def shard(path: pathlib.Path) -> ShardState:
    store = Store.open(str(path / "s.db"), synchronous="NORMAL")
    return ShardState(
        "ctl1", D, store, StreamHub(base_version=store.next_incarnation() << 32), lambda: 1000.0
    )


def build(s: ShardState) -> None:
    for name, cidr in (("blue", "10.1.0.0/24"), ("green", "10.3.0.0/24"), ("red", "10.2.0.0/24")):
        s.commit([ops.new_vpc(s.intent, D, "ctl1", name, subnets(cidr), None)])
    s.commit([Host("hv2", ipaddress.ip_address("169.254.101.12"))])
    ep = ops.new_endpoint(
        s.intent, "red", "r1", "vm", ipaddress.ip_address("10.2.0.11"), None, "hv2", []
    )
    s.commit([ep])
    for a, b in (("blue", "red"), ("red", "blue"), ("green", "red"), ("red", "green")):
        s.commit([ops.new_peering(s.intent, a, f"to-{b}", b, ExportPolicy(), False, None)])


def test_one_stream_per_policy_and_closing_only_the_departed_peer(tmp_path: pathlib.Path) -> None:
    s = shard(tmp_path)
    build(s)
    pid = ExportPolicy().policy_id
    sid = StreamId(ServiceName.DESTINATION, "red", pid)
    assert sid in s.hub and set(s.hub.objects(sid)) == {"r1"}
    assert s.service_sets[("red", pid)] == ["to-blue", "to-green"]
    blue = s.hub.wsgi_stream(sid, None, tag="blue")
    green = s.hub.wsgi_stream(sid, None, tag="green")
    try:
        s.commit(deletes=[Delete("peering", "blue/to-red")])
        assert sid in s.hub  # green still uses red's policy stream
        queues: dict[str, Any] = {"blue": blue, "green": green}
        closed = {
            name: any(isinstance(m, Close) for m in w._outbox.queue.drain(s.hub._streams[sid].log))
            for name, w in queues.items()
        }
        assert closed == {"blue": True, "green": False}
        s.commit(deletes=[Delete("peering", "green/to-red")])
        assert sid not in s.hub  # no ACTIVE peering uses the policy: the stream is gone
    finally:
        blue.close()
        green.close()


def test_restart_serves_the_same_intent_and_versions(tmp_path: pathlib.Path) -> None:
    s = shard(tmp_path)
    build(s)
    before = (
        dict(s.versions),
        {k: v.to_json() for k, v in s.intent.endpoints.items()},
        s.store.version,
    )
    states = {k: v.state for k, v in s.states.items()}
    s.store.close()
    again = shard(tmp_path)
    assert (
        dict(again.versions),
        {k: v.to_json() for k, v in again.intent.endpoints.items()},
        again.store.version,
    ) == before
    assert {k: v.state for k, v in again.states.items()} == states
    first = min(v for sid in again.hub.stream_ids() for v in [again.hub.version(sid)])
    assert first >= 2 << 32  # stream versions after a restart exceed any sent before


def published(s: ShardState) -> dict[Any, dict[str, Any]]:
    return {
        tuple(sid): dict(s.hub.objects(sid))
        for sid in s.hub.stream_ids()
        if sid.service != ServiceName.FEDERATION
    }


def full_recompute(s: ShardState) -> dict[Any, dict[str, Any]]:
    from meshpeer.controller.mux import desired_streams

    pub = desired_streams(s.intent, s.states, s.grants, s.clock())
    return {tuple(sid): objs for sid, objs in pub.streams.items()}


def test_scoped_refresh_equals_a_full_recompute(tmp_path: pathlib.Path) -> None:
    """Each write recomputes only its VPCs and hosts; the result must equal recomputing all."""
    s = shard(tmp_path)
    build(s)
    assert published(s) == full_recompute(s)
    ip = ipaddress.ip_address
    steps = [
        lambda: s.commit(
            [ops.new_endpoint(s.intent, "blue", "b1", "vm", ip("10.1.0.11"), None, "hv1", [])]
        ),
        lambda: s.commit([Host("hv1", ip("169.254.101.11"))]),
        # red already has r1 on hv2: the endpoint fast path patches the streams in place
        lambda: s.commit(
            [ops.new_endpoint(s.intent, "red", "r3", "vm", ip("10.2.0.13"), None, "hv2", [])]
        ),
        lambda: s.commit(
            [ops.new_endpoint(s.intent, "red", "r4", "vm", ip("10.2.0.14"), None, "hv2", [])]
        ),
        lambda: s.commit(deletes=[Delete("endpoint", "red/r3")]),
        lambda: s.commit([Host("hv2", ip("169.254.101.99"))]),  # a host moves: destinations change
        lambda: s.commit(
            [ops.new_endpoint(s.intent, "red", "r2", "vm", ip("10.2.0.12"), None, "hv1", [])]
        ),
        lambda: s.commit(deletes=[Delete("peering", "red/to-blue")]),  # blue-red goes INACTIVE
        lambda: s.commit(deletes=[Delete("endpoint", "red/r1")]),
        lambda: s.commit(deletes=[Delete("endpoint", "blue/b1")]),  # hv1 keeps only r2
        lambda: s.commit(
            [ops.new_peering(s.intent, "red", "to-blue", "blue", ExportPolicy(), False, None)]
        ),
    ]
    for step in steps:
        step()
        assert published(s) == full_recompute(s)


def test_programmed_once_every_subscribed_host_reports_the_version(tmp_path: pathlib.Path) -> None:
    from meshpeer.protocol.messages import stream_name

    s = shard(tmp_path)
    build(s)
    sid = StreamId(ServiceName.DESTINATION, "red", None)
    hv1 = s.hub.wsgi_stream(sid, None, host="hv1")
    hv3 = s.hub.wsgi_stream(sid, None, host="hv3")
    try:
        ep = ops.new_endpoint(
            s.intent, "red", "r9", "vm", ipaddress.ip_address("10.2.0.99"), None, "hv2", []
        )
        s.commit([ep])
        # hv2 follows nothing here, but r9 is on it: it must act too.
        assert s.pending_hosts("endpoint", "red/r9") == ["hv1", "hv2", "hv3"]
        version = s.hub.version(sid)
        on_hv2 = StreamId(ServiceName.ENDPOINT, "hv2")
        s.report_applied("hv2", {stream_name(*on_hv2): s.hub.version(on_hv2)})
        s.report_applied("hv1", {stream_name(*sid): version})
        s.report_applied("hv3", {stream_name(*sid): version - 1})  # behind: still pending
        assert s.pending_hosts("endpoint", "red/r9") == ["hv3"]
        s.report_applied("hv3", {stream_name(*sid): version})
        assert s.pending_hosts("endpoint", "red/r9") == []
    finally:
        hv1.close()
        hv3.close()


def test_applied_reports_keep_only_published_streams(tmp_path: pathlib.Path) -> None:
    """Memory held for applied reports is bounded by the streams the shard publishes."""
    from meshpeer.protocol.messages import stream_name

    s = shard(tmp_path)
    build(s)
    pid = ExportPolicy().policy_id
    published = stream_name(ServiceName.DESTINATION, "red", pid, None)
    junk = {f"destination/nosuch{i}//": 1 for i in range(100)} | {"not a stream": 1}
    s.report_applied("hv2", {published: 5, **junk})
    assert s.applied == {"hv2": {published: 5}}
    s.report_applied("hv2", {published: 3})  # an older report arriving late lowers nothing
    assert s.applied == {"hv2": {published: 5}}
    s.report_applied("hv9", junk)
    assert "hv9" not in s.applied
    s.commit(deletes=[Delete("peering", "blue/to-red"), Delete("peering", "green/to-red")])
    assert StreamId(ServiceName.DESTINATION, "red", pid) not in s.hub
    s.report_applied("hv2", {})  # the next report drops what is no longer published
    assert "hv2" not in s.applied


def report(api: Api, host: str, streams: list[dict[str, Any]], token: str | None) -> Any:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    request = Request.blank(
        f"/v1/hosts/{host}/applied",
        method="PUT",
        headers={**auth, "Content-Type": "application/json"},
        body=json.dumps({"streams": streams}).encode(),
    )
    return request.get_response(api)


@pytest.mark.parametrize(
    ("host", "stream", "version", "token", "status", "field"),
    [
        # Issue 17: another host's streams were kept as this host's.
        ("hv2", "endpoint/hv1//", 1, "t", 400, "streams[0].stream"),
        ("hv2", "peering/red//hv1", 1, "t", 400, "streams[0].stream"),
        # Bounded since issue 21.
        ("hv2", "destination/red//", 2**70, "t", 400, "streams[0].version"),
        ("hv2", "../../etc", 1, "t", 400, "streams[0].stream"),
        ("hv9", "destination/red//", 1, "t", 404, "name"),
        # Issue 16: no credential, nothing looked at (a host reports with its own).
        ("hv2", "peering/red//hv1", 1, None, 401, None),
        ("hv2", "destination/red//", 2**70, None, 401, None),
        ("hv9", "destination/red//", 1, None, 401, None),
    ],
)
def test_an_applied_report_names_a_known_host_and_its_own_streams(
    tmp_path: pathlib.Path,
    host: str,
    stream: str,
    version: int,
    token: str | None,
    status: int,
    field: str,
) -> None:
    s = shard(tmp_path)
    build(s)
    s.commit([Host("hv1", ipaddress.ip_address("169.254.101.11"))])
    handlers = ControllerApi(s, "t", lambda vpc: None)
    api = Api(handlers.routes(), handlers.guard)
    answer = report(api, host, [{"stream": stream, "version": version}], token)
    assert (answer.status_int, answer.json["field"]) == (status, field), answer.json
    assert s.applied == {}
    own = [{"stream": "endpoint/hv2//", "version": 1}, {"stream": "peering/red//hv2", "version": 1}]
    assert report(api, "hv2", own, "t").status_int == 200


def test_a_restarted_shard_keeps_remote_peerings_active_before_the_peer_answers(
    tmp_path: pathlib.Path,
) -> None:
    """Fail static across this shard's own restart: the peer's last view comes from the store,
    so hosts are never told to drop a peering while the federation stream reconnects (a kill -9
    of a shard once lost pings this way)."""
    d = directory(ctl1=["blue"], ctl2=["red"])

    def ctl(name: str) -> ShardState:
        store = Store.open(str(tmp_path / f"{name}.db"), synchronous="NORMAL")
        hub = StreamHub(base_version=store.next_incarnation() << 32)
        return ShardState(name, d, store, hub, lambda: 1000.0)

    ctl1, ctl2 = ctl("ctl1"), ctl("ctl2")
    ctl1.commit([ops.new_vpc(ctl1.intent, d, "ctl1", "blue", subnets("10.1.0.0/24"), None)])
    ctl2.commit([ops.new_vpc(ctl2.intent, d, "ctl2", "red", subnets("10.2.0.0/24"), None)])
    ctl2.commit([ops.new_peering(ctl2.intent, "red", "p", "blue", ExportPolicy(), False, None)])
    # As the REST API does: fetch the peer's view, then write the peering; the federation
    # stream then delivers the very same view.
    ctl1.adopt_fetched_view("red", dict(ctl2.own_views["red"]))
    ctl1.commit([ops.new_peering(ctl1.intent, "blue", "p", "red", ExportPolicy(), False, None)])
    ctl1.set_remote_view("red", dict(ctl2.own_views["red"]))
    assert ctl1.states[("blue", "p")].active
    active = set(ctl1.active_peers())
    ctl1.store.close()

    again = ctl("ctl1")  # no federation stream has delivered anything yet
    assert again.states[("blue", "p")].active, again.states
    assert again.active_peers() == active
    pid = ExportPolicy().policy_id
    assert StreamId(ServiceName.DESTINATION, "blue", pid) in again.hub
    # The peering gone while the shard was down: its kept view goes too.
    again.commit(deletes=[Delete("peering", "blue/p")])
    again.forget_remote_view("red")
    again.store.close()
    third = ctl("ctl1")
    assert third.remote_views == {} and third.store.load().meta == {}
    third.store.close()


def test_a_kept_view_that_does_not_parse_is_dropped(tmp_path: pathlib.Path) -> None:
    s = shard(tmp_path)
    s.store.set_meta("remote_view/red", "[1, 2")
    s.store.set_meta("remote_view/gone", json.dumps({"vpc": {}}))
    s.store.close()
    again = shard(tmp_path)  # red is owned by ctl1 here: not a remote VPC, nothing restored
    assert again.remote_views == {} and again.store.load().meta == {}
    again.store.close()


def test_a_peering_stored_before_preference_loads_at_the_default(tmp_path: pathlib.Path) -> None:
    """A record the code wrote before the field existed: the same behaviour as then."""
    s = shard(tmp_path)
    build(s)
    body = s.intent.peerings[("red", "to-blue")].to_json()
    del body["preference"]
    s.store.commit([Change("peering", "red/to-blue", body)])
    s.store.close()
    again = shard(tmp_path)
    assert again.intent.peerings[("red", "to-blue")].preference == DEFAULT_PREFERENCE
    objs = again.hub.objects(StreamId(ServiceName.PEERING, "red", None, "hv2"))
    assert objs["blue"]["preference"] == DEFAULT_PREFERENCE
