"""ShardState over a real store and stream hub: writes, publication, restarts, closing peers."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import pathlib
from typing import Any
from urllib.parse import urlencode

import pytest
from webob import Request

from meshpeer.controller import intent as ops
from meshpeer.controller.api import ControllerApi
from meshpeer.controller.auth import host_token, shard_token
from meshpeer.controller.model import Host, Intent
from meshpeer.controller.peering import federation_view
from meshpeer.controller.shard import Delete, ShardState
from meshpeer.directory import shard_doc, shared_shards
from meshpeer.protocol import ServiceName
from meshpeer.protocol.codec import Decoder
from meshpeer.protocol.grants import Grant, mint
from meshpeer.protocol.messages import (
    GRANT_HEADER,
    Close,
    Delta,
    Heartbeat,
    Message,
    Snapshot,
    StreamId,
)
from meshpeer.rest import Api
from meshpeer.store import etcdplan as plan
from meshpeer.store.etcd import Gateway, SharedDirectory
from meshpeer.store.sqlite import Change, Store
from meshpeer.streaming.publisher import StreamHub
from policies.export import ExportPolicy
from policies.routes import DEFAULT_PREFERENCE
from tests.unit.controller_fixtures import add_vm, add_vpc, directory, peer, subnets

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
        if sid.service not in (ServiceName.FEDERATION, ServiceName.DIRECTORY)  # the shard's own
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


HOST_KEY = bytes(range(32))


def follow(
    api: Api, host: str, service: str, key: str, grant: str | None = None, key_id: str = "h1"
) -> Any:
    """``host`` subscribes with its own credential, made with directory key ``key_id`` (and a
    grant for a peer's stream)."""
    query = {"service": service, "key": key, "host": host}
    headers = {"Authorization": f"Bearer {host_token(host, key_id, HOST_KEY)}"}
    if grant is not None:
        query["policy"] = ExportPolicy().policy_id
        headers[GRANT_HEADER] = grant
    return Request.blank("/v1/subscribe?" + urlencode(query), headers=headers).get_response(api)


def next_message(answer: Any) -> Message:
    """The stream's next message (a heartbeat after 50 ms idle, if nothing else comes)."""
    (message,) = Decoder().feed(next(answer.app_iter))
    return message


def test_a_host_that_leaves_a_vpc_loses_its_streams_of_it(tmp_path: pathlib.Path) -> None:
    """Found by a security review: a subscription was checked when it was made only, so a
    host evacuated from a VPC went on following the VPC's destinations (and, with the grant
    it was given for the VPC, its peers'). Its last endpoint there gone (or moved to another
    host), its own-credential streams of the VPC close; other hosts' stay open."""
    vms = (*BLUE_VMS[:1], ("hv1", "b2", "10.1.0.12"), *BLUE_VMS[1:])
    s, _, api = blue_on_hosts(tmp_path, vms=vms)
    grant = s.hub.objects(StreamId(ServiceName.PEERING, "blue", None, "hv1"))["red"]["grant"]
    assert isinstance(grant, str)
    own = follow(api, "hv1", "destination", "blue")
    peer = follow(api, "hv1", "destination", "red", grant)
    other = follow(api, "hv3", "destination", "blue")
    answers = (own, peer, other)
    try:
        assert [a.status_int for a in answers] == [200, 200, 200]
        for a in answers:
            assert isinstance(next_message(a), Snapshot)
        s.commit(deletes=[Delete("endpoint", "blue/b1")])  # hv1 still holds b2
        assert [type(next_message(a)) for a in answers] == [Delta, Heartbeat, Delta]
        s.commit(deletes=[Delete("endpoint", "blue/b2")])  # hv1's last one in blue
        assert next_message(own) == Close("host-left")
        assert next_message(peer) == Close("host-left")
        assert isinstance(next_message(other), Delta)
        # Its grant has not expired, but it serves no host outside the VPC any more.
        again = follow(api, "hv1", "destination", "red", grant)
        assert again.status_int == 403 and "no endpoint" in again.json["detail"], again.json
        assert follow(api, "hv1", "destination", "blue").status_int == 403
        # Moved to another host: the host it left loses the VPC too.
        b3 = s.intent.endpoints[("blue", "b3")]
        s.commit([dataclasses.replace(b3, host="hv4")])
        assert next_message(other) == Close("host-left")
    finally:
        for a in answers:
            a.app_iter.close()


def test_a_host_that_leaves_a_peer_shards_vpc_loses_that_peers_streams(
    tmp_path: pathlib.Path,
) -> None:
    """The peer VPC's shard learns who left from the VPC's federation view (its host list):
    it closes the host's streams, and (found by a review) refuses the grant the host still
    holds, which would otherwise open them again until it expires."""
    d = dataclasses.replace(directory(ctl1=["blue"], ctl2=["red"]), host_keys={"h1": HOST_KEY})
    store = Store.open(str(tmp_path / "ctl2.db"), synchronous="NORMAL")
    ctl2 = ShardState("ctl2", d, store, StreamHub(base_version=1 << 32), lambda: 1000.0)
    ctl2.commit([ops.new_vpc(ctl2.intent, d, "ctl2", "red", subnets("10.2.0.0/24"), None)])
    ctl2.commit([ops.new_peering(ctl2.intent, "red", "p", "blue", ExportPolicy(), False, None)])
    blue = Intent()
    add_vpc(blue, d, "ctl1", "blue", "10.1.0.0/24")
    peer(blue, "blue", "red")
    add_vm(blue, "blue", "b1", "10.1.0.11", "hv1")
    add_vm(blue, "blue", "b2", "10.1.0.12", "hv3")
    ctl2.set_remote_view("blue", federation_view(blue, "ctl1", "blue"))
    sid = StreamId(ServiceName.DESTINATION, "red", ExportPolicy().policy_id)
    hv1 = ctl2.hub.wsgi_stream(sid, None, tag="blue", host="hv1", holder="hv1")
    hv3 = ctl2.hub.wsgi_stream(sid, None, tag="blue", host="hv3", holder="hv3")
    try:
        blue.drop("endpoint", "blue/b1")
        ctl2.set_remote_view("blue", federation_view(blue, "ctl1", "blue"))
        log = ctl2.hub._streams[sid].log
        assert Close("host-left") in hv1._outbox.queue.drain(log)
        assert not any(isinstance(m, Close) for m in hv3._outbox.queue.drain(log))
        api = Api(*_api(ctl2))
        policy = ExportPolicy().policy_id
        for host, status in (("hv1", 403), ("hv3", 200)):
            grant = mint(Grant("blue", "red", policy, host, 5000.0, "k1"), d.grant_keys)
            answer = follow(api, host, "destination", "red", grant)
            assert answer.status_int == status, (host, answer.status)  # no body: a stream
            if status == 200:
                answer.app_iter.close()  # the stream
    finally:
        hv1.close()
        hv3.close()


def _api(s: ShardState) -> tuple[Any, Any]:
    handlers = ControllerApi(s, "t", lambda vpc: None, heartbeat_interval=0.05)
    return handlers.routes(), handlers.guard


BLUE_VMS = (("hv1", "b1", "10.1.0.11"), ("hv3", "b3", "10.1.0.13"))


def blue_on_hosts(
    tmp_path: pathlib.Path,
    host_keys: tuple[str, ...] = ("h1",),
    vms: tuple[tuple[str, str, str], ...] = BLUE_VMS,
) -> tuple[ShardState, Any, Api]:
    """``build``'s shard with hosts keyed by ``host_keys`` and blue's ``vms`` (host, name,
    ip): the shard, its directory and its REST API."""
    store = Store.open(str(tmp_path / "s.db"), synchronous="NORMAL")
    d = dataclasses.replace(D, host_keys=dict.fromkeys(host_keys, HOST_KEY))
    s = ShardState("ctl1", d, store, StreamHub(base_version=1 << 32), lambda: 1000.0)
    build(s)
    for host, name, ip in vms:
        ip_ = ipaddress.ip_address(ip)
        s.commit([ops.new_endpoint(s.intent, "blue", name, "vm", ip_, None, host, [])])
    return s, d, Api(*_api(s))


def test_a_host_revoked_in_the_directory_loses_its_streams_and_grants(
    tmp_path: pathlib.Path,
) -> None:
    """``revoked_hosts`` was a per-shard option while host keys are shared, and the host's
    own shard kept minting grants for it. Now the directory names it for every shard; a
    running shard takes it from a changed file: it closes the host's open subscriptions and
    stops minting grants for it."""
    s, d, api = blue_on_hosts(tmp_path)
    on_hv1 = StreamId(ServiceName.PEERING, "blue", None, "hv1")
    assert "red" in s.hub.objects(on_hv1)
    hv1, hv3 = follow(api, "hv1", "destination", "blue"), follow(api, "hv3", "destination", "blue")
    try:
        assert isinstance(next_message(hv1), Snapshot) and isinstance(next_message(hv3), Snapshot)
        ignored = s.adopt_directory(dataclasses.replace(d, revoked_hosts=frozenset({"hv1"})))
        assert ignored == []
        assert next_message(hv1) == Close("host-revoked")
        assert isinstance(next_message(hv3), Heartbeat)
        assert s.hub.objects(on_hv1) == {}  # no grant minted for it any more
        assert follow(api, "hv1", "destination", "blue").status_int == 401
        s.adopt_directory(d)  # taken back: served again
        assert "red" in s.hub.objects(on_hv1)
        assert follow(api, "hv1", "destination", "blue").status_int == 200
    finally:
        hv1.app_iter.close()
        hv3.app_iter.close()


def test_a_reload_on_etcd_does_not_call_claims_and_leaders_a_change(
    tmp_path: pathlib.Path,
) -> None:
    """Found by a review: with the etcd store the claims and each shard's leader URL come from
    etcd, not the file, so every reload of an unchanged file said they "need a restart"."""
    s, d, _ = blue_on_hosts(tmp_path)
    s.take_claims({"zeta": s.name})
    s.take_leaders({s.name: "http://10.9.9.9:8080"})  # another replica of it leads now
    assert s.adopt_directory(d) == []
    assert s.directory.claims == {"zeta": s.name}
    assert s.directory.shards[s.name].url == "http://10.9.9.9:8080"
    added = dataclasses.replace(d.shards[s.name], name="ctl9", vpcs=())
    shards = {**d.shards, "ctl9": added}  # a shard added to the file: etcd's shards decide
    running = s.directory.shards
    assert s.adopt_directory(dataclasses.replace(d, shards=shards)) == []
    assert s.directory.shards == running  # the file only seeds etcd (docs/store.md)


def _etcd_texts(shards: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {name: plan.canonical(doc) for name, doc in shards.items()}


def _with_ctl2(d: Any) -> dict[str, dict[str, Any]]:
    """``d``'s entries as etcd holds them, and a second shard ctl2 (VNIs 5000-5999)."""
    ctl2 = {"url": "http://169.254.9.20:8080", "vni_range": [5000, 5999]}
    return {**{n: shard_doc(x) for n, x in d.shards.items()}, "ctl2": ctl2}


def test_a_directory_change_in_etcd_that_strands_a_held_vpc_is_refused(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Review E4: etcd's directory is taken live, but not a change that leaves one of this
    shard's VNIs outside its range (another shard's next VPC could get it) or pins one of its
    VPCs elsewhere. Refused whole, logged naming the entry, what runs stays."""
    s, d, _ = blue_on_hosts(tmp_path)
    held = s.intent.vpcs["blue"].vni
    docs = _with_ctl2(d)
    assert s.take_shared_directory(_etcd_texts(docs))
    lo, hi = d.shards["ctl1"].vni_range
    others = [v for v in docs["ctl1"]["vpcs"] if v != "blue"]
    for changed, why in [
        ({"ctl1": {**docs["ctl1"], "vni_range": [10000, 10999]}}, "ctl1.vni_range: leaves out"),
        (  # blue's VNI handed to ctl2
            {
                "ctl1": {**docs["ctl1"], "vni_range": [held + 1, hi]},
                "ctl2": {**docs["ctl2"], "vni_range": [lo, held]},
            },
            f"shards.ctl1.vni_range: leaves out VNI {held} of its VPC 'blue'",
        ),
        (
            {"ctl1": {**docs["ctl1"], "vpcs": others}, "ctl2": {**docs["ctl2"], "vpcs": ["blue"]}},
            "shards.ctl2.vpcs: pins VPC 'blue', held by 'ctl1'",
        ),
    ]:
        before = s.directory
        texts = _etcd_texts({**docs, **changed})
        assert shared_shards(texts, "ctl1")  # checks out as a file would
        caplog.clear()
        assert s.take_shared_directory(texts) is False, changed
        assert why in caplog.text
        assert s.directory is before
    moved = {**docs, "ctl2": {**docs["ctl2"], "url": "http://10.0.0.7:8080"}}
    assert s.take_shared_directory(_etcd_texts(moved))  # a change that strands nothing
    assert s.directory.shards["ctl2"].url == "http://10.0.0.7:8080"


def test_a_shard_does_not_start_on_a_directory_that_strands_a_vpc_it_holds(
    tmp_path: pathlib.Path,
) -> None:
    """Review E4, at start: the same check as a running shard's, and the shard stops naming
    the entry (its store holds blue, etcd gives its VNI range to another shard)."""
    from ryu_apps.controller import _check_held

    s, d, _ = blue_on_hosts(tmp_path)
    shared = SharedDirectory(Gateway(["http://127.0.0.1:1"]), "/meshpeer/")  # not reached
    _check_held(shared, s)  # what it holds is in its range: it starts
    held = s.intent.vpcs["blue"].vni
    moved = dataclasses.replace(d.shards["ctl1"], vni_range=(held + 5000, held + 5999))
    s.directory = dataclasses.replace(s.directory, shards={"ctl1": moved})
    with pytest.raises(SystemExit, match=r"directory/shards/\).*shards.ctl1.vni_range: leaves out"):
        _check_held(shared, s)


def test_a_shard_without_a_leader_takes_its_entrys_url_once_the_entry_moves(
    tmp_path: pathlib.Path,
) -> None:
    """Review E5: a shard's last leader's URL stays while the shard has no leader only as
    long as it is still one of its entry's URLs; an entry moved in etcd is taken."""
    s, d, _ = blue_on_hosts(tmp_path)
    docs = _with_ctl2(d)
    old = docs["ctl2"]["url"]
    replicas = [old, "http://10.0.0.6:8080"]
    both = {**docs, "ctl2": {**docs["ctl2"], "replicas": replicas}}
    assert s.take_shared_directory(_etcd_texts(both))
    s.take_leaders({"ctl2": "http://10.0.0.6:8080"})  # its second replica leads
    assert s.directory.shards["ctl2"].url == "http://10.0.0.6:8080"
    s.take_leaders({})  # no leader now: the last one's URL, still one of its replicas, stays
    assert s.directory.shards["ctl2"].url == "http://10.0.0.6:8080"
    moved = {**docs, "ctl2": {**docs["ctl2"], "url": "http://10.9.9.9:8080"}}
    assert s.take_shared_directory(_etcd_texts(moved))  # moved while it has no leader
    assert s.directory.shards["ctl2"].url == "http://10.9.9.9:8080"
    s.take_leaders({"ctl2": "http://10.9.9.8:8080"})  # a leader, wherever it says it is
    assert s.directory.shards["ctl2"].url == "http://10.9.9.8:8080"


class RecordedClaims:
    def __init__(self) -> None:
        self.released: list[tuple[str, str]] = []

    def claim(self, vpc: str, shard: str) -> str:
        return shard

    def release(self, vpc: str, shard: str) -> None:
        self.released.append((vpc, shard))


def test_claims_orphaned_by_a_failed_create_or_a_lost_release_are_released_at_start(
    tmp_path: pathlib.Path,
) -> None:
    """Found by a review: a claim whose commit then failed, or whose release after a delete
    was lost, stayed in etcd for ever. At start a shard releases its claims on VPCs it does
    not have, and only those."""
    s, _, _ = blue_on_hosts(tmp_path)
    claims = RecordedClaims()
    s.ownership = claims
    s.take_claims({"ghost": s.name, "blue": s.name, "theirs": "ctl2"})
    s.reconcile_claims()
    assert claims.released == [("ghost", s.name)]


def test_a_host_key_taken_out_of_the_directory_closes_what_it_opened(
    tmp_path: pathlib.Path,
) -> None:
    """Found by a review: a key removed from the directory refused the next request made with
    it, but the streams already opened with it went on. hv1 follows with key h1, hv3 with h2;
    h1 goes: hv1's stream closes, hv3's stays."""
    s, d, api = blue_on_hosts(tmp_path, ("h1", "h2"))
    hv1 = follow(api, "hv1", "destination", "blue", key_id="h1")
    hv3 = follow(api, "hv3", "destination", "blue", key_id="h2")
    try:
        assert isinstance(next_message(hv1), Snapshot) and isinstance(next_message(hv3), Snapshot)
        s.adopt_directory(dataclasses.replace(d, host_keys={"h2": HOST_KEY}))
        assert next_message(hv1) == Close("host-revoked")
        assert isinstance(next_message(hv3), Heartbeat)
        assert follow(api, "hv1", "destination", "blue", key_id="h1").status_int == 401
        assert follow(api, "hv1", "destination", "blue", key_id="h2").status_int == 200
    finally:
        hv1.app_iter.close()
        hv3.app_iter.close()


def test_a_shard_mints_no_grant_for_a_host_revoked_at_start(tmp_path: pathlib.Path) -> None:
    store = Store.open(str(tmp_path / "s.db"), synchronous="NORMAL")
    d = dataclasses.replace(D, revoked_hosts=frozenset({"hv1"}))
    s = ShardState("ctl1", d, store, StreamHub(base_version=1 << 32), lambda: 1000.0)
    build(s)
    ip = ipaddress.ip_address("10.1.0.11")
    s.commit([ops.new_endpoint(s.intent, "blue", "b1", "vm", ip, None, "hv1", [])])
    assert s.hub.objects(StreamId(ServiceName.PEERING, "blue", None, "hv1")) == {}
    assert "blue" in s.hub.objects(StreamId(ServiceName.PEERING, "red", None, "hv2"))


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


def test_the_shard_publishes_the_directory_as_listed_to_any_host(tmp_path: pathlib.Path) -> None:
    """Hosts learn the directory from their shard (docs/protocol.md, "Directory"): one stream
    for every host, each shard as listed (not the URL its leader has now), never a secret;
    a shard added to the directory running is published as a delta; a shard credential is
    refused it."""
    s, d, api = blue_on_hosts(tmp_path)
    sid = StreamId(ServiceName.DIRECTORY, "shards")
    assert dict(s.hub.objects(sid)) == {
        "ctl1": {
            "url": d.shards["ctl1"].url,
            "vni_range": [1000, 1999],
            "vpcs": ["blue", "green", "red"],
        }
    }
    hv7 = follow(api, "hv7", "directory", "shards")  # no endpoint anywhere: still its
    try:
        assert hv7.status_int == 200
        first = next_message(hv7)
        assert isinstance(first, Snapshot) and set(first.objects) == {"ctl1"}
        ctl3 = {"url": "http://169.254.9.13:8080", "vni_range": [5000, 5999]}
        listed = json.dumps(first.objects["ctl1"])
        assert s.take_shared_directory({"ctl1": listed, "ctl3": json.dumps(ctl3)})
        delta = next_message(hv7)
        assert isinstance(delta, Delta) and delta.upserts == {"ctl3": ctl3}
        assert delta.version == first.version + 1 and delta.deletes == ()
        s.take_leaders({"ctl1": "http://10.9.9.9:8080"})  # another replica of ctl1 leads
        assert s.directory.shards["ctl1"].url == "http://10.9.9.9:8080"
        assert isinstance(next_message(hv7), Heartbeat)  # hosts keep the listed URL
        text = json.dumps(dict(s.hub.objects(sid)))
        assert d.federation_token not in text and HOST_KEY.hex() not in text
    finally:
        hv7.app_iter.close()
    fed = Request.blank(
        "/v1/subscribe?service=directory&key=shards",
        headers={"Authorization": f"Bearer {shard_token('ctl1', d.federation_token)}"},
    ).get_response(api)
    assert fed.status_int == 403
    assert follow(api, "hv7", "directory", "nodes").status_int == 404


def test_a_batch_is_pending_on_each_host_it_places_until_that_host_applies(
    tmp_path: pathlib.Path,
) -> None:
    """What a batch's endpoints must apply is computed once per host and shared by them:
    each key still waits for its own host, and the batch for all of them."""
    from meshpeer.protocol.messages import stream_name

    s = shard(tmp_path)
    build(s)
    items = [
        ops.NewEndpoint(f"b{n}", "vm", ipaddress.ip_address(f"10.2.0.{100 + n}"), None, host)
        for n, host in enumerate(["hv1", "hv2", "hv1", "hv3"])
    ]
    s.commit(ops.new_endpoints(s.intent, "red", items))
    keys = [f"red/b{n}" for n in range(4)]
    assert s.pending_hosts("endpoint", keys) == ["hv1", "hv2", "hv3"]
    on_hv1 = StreamId(ServiceName.ENDPOINT, "hv1")
    s.report_applied("hv1", {stream_name(*on_hv1): s.hub.version(on_hv1)})
    assert s.pending_hosts("endpoint", keys) == ["hv2", "hv3"]
    assert s.pending_hosts("endpoint", "red/b2") == []
    assert s.pending_hosts("endpoint", "red/b3") == ["hv3"]
    assert s.pending_hosts("endpoint", ["red/b0", "red/b1"]) == ["hv2"]
