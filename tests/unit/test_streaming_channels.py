"""Channels over loopback: many subscriptions on one connection, each on its own.

A real eventlet WSGI server in-process serves the controller's two channel routes, reduced
(open a channel; subscribe and unsubscribe, each entry checked on its own: a grant equal to
``bad`` is refused with 401, as a shard refuses a bad grant), and green clients. As in
test_streaming.py, nothing patches the stdlib.
"""

from __future__ import annotations

import io
import json
import pathlib
import socket
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import eventlet
import pytest
import webob
from webob import Request

from meshpeer.controller.api import ControllerApi
from meshpeer.controller.federation import Federation
from meshpeer.protocol import ProtocolError, ServiceName, Snapshot
from meshpeer.protocol.codec import (
    FrameDecoder,
    encode,
    encode_keepalive,
    frame,
    sub_prefix,
)
from meshpeer.protocol.messages import (
    CHANNEL_HEADER,
    Close,
    Delta,
    Frame,
    Heartbeat,
    Keepalive,
    parse_channel_control,
)
from meshpeer.rest import Api
from meshpeer.streaming import StreamHub, StreamId, ndjson_response
from meshpeer.streaming.channel import Channel, Subscription
from ohc.clients import Channels
from ohc.subscriptions import Sub
from tests.unit.test_controller_shard import shard
from tests.unit.test_streaming import (
    FAST,
    Recorder,
    Server,
    json_error,
    objs,
    wait_until,
)

DEST = ServiceName.DESTINATION
RED, BLUE, GREEN = StreamId(DEST, "red"), StreamId(DEST, "blue"), StreamId(DEST, "green")
PEER = StreamId(DEST, "peer", "p-1", "hv1")


def channel_app(
    hub: StreamHub, heartbeat: float = 5.0, expiry: dict[str, float] | None = None
) -> Callable[..., Any]:
    """The controller's channel routes, reduced: the grant ``bad`` is refused (401) and an
    unknown stream is 404, each for its own entry; a grant in ``expiry`` expires after that
    many seconds."""

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        req = webob.Request(environ)
        if req.method == "GET" and req.path == "/v1/channel":
            writer = hub.open_channel(heartbeat, owner=req.headers.get("Authorization"))
            resp = ndjson_response(writer, environ)
            resp.headers[CHANNEL_HEADER] = writer.channel_id
            return resp(environ, start_response)
        cid = req.path.rpartition("/")[2]
        try:
            owner = hub.channel_owner(cid)
        except KeyError:
            return json_error(start_response, "404 Not Found", "not_found")
        if owner != req.headers.get("Authorization"):
            return json_error(start_response, "403 Forbidden", "forbidden")
        control = parse_channel_control(json.loads(req.body))
        for sub in control.unsubscribe:
            hub.channel_unsubscribe(cid, sub)
        results = []
        for entry in control.subscribe:
            if entry.grant == "bad":
                results.append({"sub": entry.sub, "status": 401, "error": "unauthorized"})
                continue
            lifetime = (expiry or {}).get(entry.grant or "")
            try:
                hub.channel_subscribe(
                    cid,
                    entry.sub,
                    StreamId.of(entry.request),
                    entry.request.since,
                    expires_at=None if lifetime is None else hub.clock() + lifetime,
                    only=entry.request.only,  # a destination filter, as the shard's
                )
            except KeyError:
                results.append({"sub": entry.sub, "status": 404, "error": "not_found"})
                continue
            results.append({"sub": entry.sub, "status": 200})
        body = json.dumps({"results": results}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    return app


def serve(cleanup: list[Any], hub: StreamHub, port: int = 0, **kw: Any) -> Server:
    server = Server(channel_app(hub, **kw), port=port)
    cleanup.append(server)
    return server


class Errors:
    def __init__(self) -> None:
        self.statuses: list[int] = []

    def on_http_error(self, status: int) -> None:
        self.statuses.append(status)


def channel(cleanup: list[Any], url: str, **kw: Any) -> Channel:
    kw.setdefault("backoff", FAST)
    kw.setdefault("heartbeat_timeout", 30.0)
    ch = Channel(url, "host-cred", **kw)
    cleanup.insert(0, ch)
    return ch


def follow(ch: Channel, sid: StreamId, rec: Recorder, **kw: Any) -> Subscription:
    sub = ch.subscription(
        sid.service,
        sid.key,
        policy=sid.policy,
        host=sid.host,
        on_change=rec.on_change,
        on_close=rec.on_close,
        **kw,
    )
    sub.start()
    return sub


def setup_three(hub: StreamHub) -> None:
    hub.publish(RED, objs(1))
    hub.publish(BLUE, objs(2))
    hub.publish(GREEN, objs(3))


# --- codec and request ------------------------------------------------------------------------


def test_a_frame_is_the_message_encoded_once_with_its_sub_first() -> None:
    line = encode(Delta(DEST, "red", 7, objs(1), ("10.0.0.9",)))
    framed = frame(sub_prefix(42), line)
    assert framed.startswith(b'{"sub":42,"deletes"')
    got = FrameDecoder().feed(framed + encode_keepalive(3.5))
    assert got == [
        Frame(42, Delta(DEST, "red", 7, objs(1), ("10.0.0.9",)), len(framed)),
        Frame(None, Keepalive(3.5), len(encode_keepalive(3.5))),
    ]
    for bad in (
        line,  # a delta without its sub
        b'{"sub":true,' + line[1:],  # a boolean is not an id
        b'{"sub":-1,' + line[1:],
        b'{"now":1,"sub":3,"type":"keepalive"}\n',  # a keepalive is the channel's
        b'{"now":1,"type":"keepalive","x":1}\n',
    ):
        with pytest.raises(ProtocolError):
            FrameDecoder().feed(bad)


def test_control_requests_name_the_bad_field() -> None:
    ok = parse_channel_control(
        {
            "subscribe": [
                {"sub": 1, "service": "destination", "key": "red", "since": 5},
                {
                    "sub": 2,
                    "service": "destination",
                    "key": "b",
                    "policy": "p",
                    "host": "h",
                    "grant": "mpg1.k.x.y",
                },
            ],
            "unsubscribe": [3],
        }
    )
    assert [e.sub for e in ok.subscribe] == [1, 2] and ok.unsubscribe == (3,)
    assert ok.subscribe[0].request.since == 5 and ok.subscribe[1].grant == "mpg1.k.x.y"
    cases = {
        "subscribe[0].key": {"subscribe": [{"sub": 1, "service": "destination", "key": "-x"}]},
        "subscribe[0].since": {
            "subscribe": [{"sub": 1, "service": "destination", "key": "x", "since": "5"}]
        },
        "subscribe[0].host": {
            "subscribe": [{"sub": 1, "service": "destination", "key": "x", "policy": "p"}]
        },
        "subscribe[0].sub": {"subscribe": [{"service": "destination", "key": "x"}]},
        "subscribe[0].oops": {"subscribe": [{"sub": 1, "oops": 1}]},
        "unsubscribe[1]": {"unsubscribe": [1, 2.5]},
        "subscribe": {
            "subscribe": [{"sub": 1, "service": "endpoint", "key": "h"}],
            "unsubscribe": [1],
        },
    }
    for field, doc in cases.items():
        with pytest.raises(ProtocolError) as exc:
            parse_channel_control(doc)
        assert exc.value.field == field


# --- the hub's side -----------------------------------------------------------------------------


def test_every_subscriber_of_a_delta_gets_the_same_encoded_bytes() -> None:
    hub = StreamHub()
    hub.publish(RED, objs(1))
    a, b = hub.open_channel(5.0), hub.open_channel(5.0)
    for n, w in enumerate((a, b)):
        assert isinstance(FrameDecoder().feed(next(w))[0].msg, Keepalive)
        hub.channel_subscribe(w.channel_id, n, RED, 0)
        next(w)  # the heartbeat of a subscriber already current
    hub.publish(RED, objs(1, 2))
    fa, fb = next(a), next(b)
    assert fa[len(sub_prefix(0)) :] == fb[len(sub_prefix(1)) :]
    stream = hub._streams[RED]
    delta = stream.log.resume(0)[0]
    assert stream.encode(delta) is stream.encode(delta)  # encoded once, then shared


# --- client and server ---------------------------------------------------------------------------


def test_many_subscriptions_share_one_connection_and_each_gets_its_stream(
    cleanup: list[Any],
) -> None:
    hub = StreamHub()
    setup_three(hub)
    server = serve(cleanup, hub, heartbeat=0.05)  # a closed connection is seen at a write
    ch = channel(cleanup, server.url)
    recs = {sid: Recorder() for sid in (RED, BLUE, GREEN)}
    subs = {sid: follow(ch, sid, recs[sid]) for sid in recs}
    wait_until(lambda: all(s.version == 0 for s in subs.values()))
    assert hub.channels() == 1 and ch.connects == 1
    assert ch.sockets() <= 2  # the stream and the kept-alive control connection
    hub.publish(BLUE, objs(2, 4))
    wait_until(lambda: subs[BLUE].version == 1)
    assert dict(subs[BLUE].replica.objects) == objs(2, 4)
    assert recs[RED].seen == [("Snapshot", 0)] and recs[BLUE].seen == [
        ("Snapshot", 0),
        ("Delta", 1),
    ]
    assert subs[BLUE].bytes_received == hub.stats()[BLUE].bytes_sent  # frames counted per sub
    subs[GREEN].stop()
    wait_until(lambda: hub.stats()[GREEN].subscribers == 0, what="unsubscribed")
    assert hub.stats()[RED].subscribers == 1 and hub.channels() == 1
    for s in (subs[RED], subs[BLUE]):
        s.stop()
    wait_until(lambda: hub.channels() == 0, what="an empty channel hangs up")


def test_each_subscription_resumes_since_its_own_version(cleanup: list[Any]) -> None:
    hub = StreamHub()
    setup_three(hub)
    server = serve(cleanup, hub)
    ch = channel(cleanup, server.url)
    recs = {sid: Recorder() for sid in (RED, BLUE)}
    subs = {sid: follow(ch, sid, recs[sid]) for sid in recs}
    wait_until(lambda: all(s.version == 0 for s in subs.values()))
    hub.publish(RED, objs(1, 5))
    wait_until(lambda: subs[RED].version == 1)
    server.stop()  # the connection drops: both keep their state (fail static)
    wait_until(lambda: not ch.connected)
    hub.publish(RED, objs(1, 5, 6))  # red moves on to 2, blue to 1, while nobody listens
    hub.publish(BLUE, objs(2, 7))
    serve(cleanup, hub, port=server.port)
    wait_until(lambda: subs[RED].version == 2 and subs[BLUE].version == 1)
    # each resumed with its own since: only the deltas it missed, no second snapshot
    assert recs[RED].seen == [("Snapshot", 0), ("Delta", 1), ("Delta", 2)]
    assert recs[BLUE].seen == [("Snapshot", 0), ("Delta", 1)]
    assert ch.connects == 2


def test_a_refused_subscription_ends_alone_and_comes_back_with_a_good_grant(
    cleanup: list[Any],
) -> None:
    hub = StreamHub()
    setup_three(hub)
    hub.publish(PEER, objs(9))
    server = serve(cleanup, hub)
    ch = channel(cleanup, server.url)
    rec, peer_rec, errors = Recorder(), Recorder(), Errors()
    red = follow(ch, RED, rec)
    peer = follow(ch, PEER, peer_rec, auth="bad", on_http_error=errors.on_http_error)
    wait_until(lambda: red.version == 0 and 401 in errors.statuses)
    assert peer.version is None and peer.last_status == 401
    hub.publish(RED, objs(1, 2))  # the other subscription goes on
    wait_until(lambda: red.version == 1)
    peer.set_auth("good")  # a fresh grant cuts the retry wait short
    wait_until(lambda: peer.version == 0)
    assert ch.connects == 1


def test_a_closed_subscription_ends_alone(cleanup: list[Any]) -> None:
    hub = StreamHub()
    setup_three(hub)
    server = serve(cleanup, hub)
    ch = channel(cleanup, server.url)
    rec_red, rec_blue = Recorder(), Recorder()
    red, blue = follow(ch, RED, rec_red), follow(ch, BLUE, rec_blue)
    wait_until(lambda: red.version == 0 and blue.version == 0)
    hub.close_stream(BLUE, "peering-gone")
    assert blue.wait(10)
    assert rec_blue.closes == ["peering-gone"] and not blue.running
    hub.publish(RED, objs(1, 2))
    wait_until(lambda: red.version == 1)
    assert red.running and ch.connects == 1


def test_an_expired_grant_closes_its_subscription_which_resubscribes(
    cleanup: list[Any],
) -> None:
    hub = StreamHub()
    setup_three(hub)
    hub.publish(PEER, objs(9))
    server = serve(cleanup, hub, expiry={"short": 0.05})
    ch = channel(cleanup, server.url)
    rec, peer_rec = Recorder(), Recorder()
    red = follow(ch, RED, rec)
    peer = follow(ch, PEER, peer_rec, auth="short")
    wait_until(lambda: peer_rec.closes.count("grant-expired") >= 2, what="expiry, twice")
    assert peer.running and peer.version == 0
    hub.publish(RED, objs(1, 2))
    wait_until(lambda: red.version == 1)
    assert rec.closes == [] and ch.connects == 1


def test_one_keepalive_per_connection_not_per_subscription(cleanup: list[Any]) -> None:
    hub = StreamHub()
    setup_three(hub)
    server = serve(cleanup, hub, heartbeat=0.02)
    ch = channel(cleanup, server.url)
    subs = [follow(ch, sid, Recorder()) for sid in (RED, BLUE, GREEN)]
    wait_until(lambda: all(s.version == 0 for s in subs))
    start = ch.keepalives_received
    wait_until(lambda: ch.keepalives_received >= start + 5, what="keepalives")
    # idle subscriptions hear nothing of their own: the channel's keepalive is the liveness
    assert all(s.heartbeats_received == 0 for s in subs)
    assert hub.keepalives_sent >= ch.keepalives_received


def test_a_silent_channel_is_reopened_and_resumed(cleanup: list[Any]) -> None:
    hub = StreamHub()
    setup_three(hub)
    server = serve(cleanup, hub, heartbeat=3600.0)  # the shard sends no keepalive
    ch = channel(cleanup, server.url, heartbeat_timeout=0.2)
    rec = Recorder()
    red = follow(ch, RED, rec)
    wait_until(lambda: red.version == 0)
    wait_until(lambda: ch.connects >= 2, what="a reconnect after silence")
    # the reconnect was for the silence (the error stays until a session ends otherwise)
    assert ch.last_error is not None and "nothing heard for 0.2s" in ch.last_error
    hub.publish(RED, objs(1, 2))
    wait_until(lambda: red.version == 1)
    assert rec.seen[0] == ("Snapshot", 0) and ("Snapshot", 1) not in rec.seen


def test_unknown_streams_are_refused_one_by_one(cleanup: list[Any]) -> None:
    hub = StreamHub()
    setup_three(hub)
    server = serve(cleanup, hub)
    ch = channel(cleanup, server.url)
    errors = Errors()
    red = follow(ch, RED, Recorder())
    gone = follow(ch, StreamId(DEST, "nope"), Recorder(), on_http_error=errors.on_http_error)
    wait_until(lambda: red.version == 0 and 404 in errors.statuses)
    assert gone.version is None and gone.running  # it keeps asking, with backoff


def test_heartbeat_of_a_current_subscriber_checks_its_version() -> None:
    hub = StreamHub()
    hub.publish(RED, objs(1))
    w = hub.open_channel(5.0)
    next(w)
    hub.channel_subscribe(w.channel_id, 3, RED, 0)
    (f,) = FrameDecoder().feed(next(w))
    assert f.sub == 3 and isinstance(f.msg, Heartbeat) and f.msg.version == 0
    hub.channel_subscribe(w.channel_id, 4, RED, None)
    (f,) = FrameDecoder().feed(next(w))
    assert f.sub == 4 and f.msg == Snapshot(DEST, "red", 0, objs(1))
    hub.close_stream(RED, "peering-gone")
    frames = FrameDecoder().feed(next(w))
    assert {(f.sub, f.msg) for f in frames} == {
        (3, Close("peering-gone")),
        (4, Close("peering-gone")),
    }
    w.close()
    assert hub.channels() == 0


def test_an_expired_grant_is_closed_on_a_busy_channel() -> None:
    now = [0.0]
    hub = StreamHub(clock=lambda: now[0])
    hub.publish(RED, objs(1))
    hub.publish(PEER, objs(9))
    w = hub.open_channel(5.0)
    next(w)
    hub.channel_subscribe(w.channel_id, 1, RED, 0)
    hub.channel_subscribe(w.channel_id, 2, PEER, 0, expires_at=10.0)
    next(w)  # both heartbeats
    seen: list[Frame] = []
    for n in range(2, 6):  # red changes before every write: the ready queue is never empty
        now[0] = 5.0 * n
        hub.publish(RED, objs(1, n))
        seen += FrameDecoder().feed(next(w))
    closes = [f for f in seen if f.sub == 2 and isinstance(f.msg, Close)]
    assert [c.msg.reason for c in closes if isinstance(c.msg, Close)] == ["grant-expired"]
    assert hub.stats()[PEER].subscribers == 0 and hub.stats()[RED].subscribers == 1


def test_unsubscribes_refused_by_the_shard_are_asked_again(cleanup: list[Any]) -> None:
    hub = StreamHub()
    setup_three(hub)
    app, refusals = channel_app(hub), [1]

    def refusing(environ: dict[str, Any], start_response: Any) -> Any:
        # the first control request that drops a subscription is refused (e.g. overloaded)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        if b"unsubscribe" in body and refusals:
            refusals.pop()
            return json_error(start_response, "503 Service Unavailable", "unavailable")
        return app(environ, start_response)

    server = Server(refusing)
    cleanup.append(server)
    ch = channel(cleanup, server.url)
    red, green = follow(ch, RED, Recorder()), follow(ch, GREEN, Recorder())
    wait_until(lambda: red.version == 0 and green.version == 0)
    green.stop()
    wait_until(lambda: not refusals, what="the refusal")
    wait_until(lambda: hub.stats()[GREEN].subscribers == 0, what="unsubscribed after all")
    assert hub.stats()[RED].subscribers == 1 and ch.connects == 1


def test_a_channel_carries_a_bounded_number_of_subscriptions(tmp_path: pathlib.Path) -> None:
    s = shard(tmp_path)
    s.hub.max_channel_subscriptions = 2
    handlers = ControllerApi(s, "t", lambda vpc: None)
    api = Api(handlers.routes(), handlers.guard)
    auth = {"Authorization": "Bearer t", "Content-Type": "application/json"}
    for hv in ("hv1", "hv2", "hv3"):
        put = Request.blank(f"/v1/hosts/{hv}", method="PUT", headers=auth)
        put.body = json.dumps({"underlay_ip": "192.0.2.1"}).encode()
        assert put.get_response(api).status_int == 200
    status, headers, app_iter = Request.blank("/v1/channel", headers=auth).call_application(api)
    assert status.startswith("200")
    cid = dict(headers)[CHANNEL_HEADER]

    def control(doc: object) -> Any:
        post = Request.blank(f"/v1/channels/{cid}", method="POST", headers=auth)
        post.body = json.dumps(doc).encode()
        return post.get_response(api)

    def ep(sub: int, hv: str) -> dict[str, object]:
        return {"sub": sub, "service": "endpoint", "key": hv}

    answer = control({"subscribe": [ep(1, "hv1"), ep(2, "hv2"), ep(3, "hv3")]})
    assert answer.status_int == 200
    assert [(r["sub"], r["status"], r.get("field")) for r in answer.json["results"]] == [
        (1, 200, None),
        (2, 200, None),
        (3, 429, "subscribe[2]"),  # one too many
    ]
    assert answer.json["results"][2]["error"] == "too_many_requests"
    answer = control({"subscribe": [ep(1, "hv3")]})  # replacing an id in use is not more
    assert [r["status"] for r in answer.json["results"]] == [200]
    stats = s.hub.stats()
    assert [
        stats[StreamId(ServiceName.ENDPOINT, hv)].subscribers for hv in ("hv1", "hv2", "hv3")
    ] == [0, 1, 1]
    answer = control({"unsubscribe": [2], "subscribe": [ep(3, "hv2")]})  # room again
    assert [r["status"] for r in answer.json["results"]] == [200]
    app_iter.close()
    assert s.hub.channels() == 0


def test_a_channel_left_without_subscriptions_closes_and_is_forgotten(
    cleanup: list[Any],
) -> None:
    hub = StreamHub()
    setup_three(hub)
    server = serve(cleanup, hub, heartbeat=0.05)
    factory = Channels("host-cred")
    cleanup.insert(0, factory)
    rec_red, rec_blue = Recorder(), Recorder()

    def start(sid: StreamId, rec: Recorder) -> Subscription:
        sub = factory(Sub(server.url, sid.service, sid.key), "g", rec.on_change, rec.on_close)
        sub.start()
        return sub

    red, blue = start(RED, rec_red), start(BLUE, rec_blue)
    ch = factory.channels[server.url]
    wait_until(lambda: red.version == 0 and blue.version == 0 and ch.sockets() == 2)
    red.stop()
    hub.close_stream(BLUE, "peering-gone")  # the last one ends from the shard's side
    assert blue.wait(10)
    wait_until(lambda: ch.sockets() == 0 and hub.channels() == 0, what="both sockets closed")
    wait_until(lambda: ch._control is None or ch._control.dead, what="the control thread ends")
    assert factory.channels == {}  # a new subscription opens a new channel
    green = start(GREEN, Recorder())
    wait_until(lambda: green.version == 0)
    assert factory.channels[server.url] is not ch


class FederatingShard:
    """What Federation reads of its shard: the remote VPCs its peerings need, where they are."""

    def __init__(self, url: str) -> None:
        self.name = "s1"
        self.directory = SimpleNamespace(federation_token="f" * 32, url_of=lambda vpc: url)
        self.listeners: list[Any] = []
        self.wanted: set[str] = set()
        self.views: dict[str, Any] = {}

    def remote_peer_vpcs(self) -> set[str]:
        return self.wanted

    def set_remote_view(self, vpc: str, view: Any) -> None:
        self.views[vpc] = view

    def forget_remote_view(self, vpc: str) -> None:
        self.views.pop(vpc, None)


def test_federation_forgets_the_channel_of_a_shard_it_no_longer_follows(
    cleanup: list[Any],
) -> None:
    hub = StreamHub()
    hub.publish(StreamId(ServiceName.FEDERATION, "red"), objs(1))
    server = serve(cleanup, hub, heartbeat=0.05)
    shard = FederatingShard(server.url)
    federation = Federation(shard, ca_file=None)  # type: ignore[arg-type]
    cleanup.insert(0, federation)
    shard.wanted = {"red"}
    federation.sync()
    wait_until(lambda: "red" in shard.views)
    ch = federation.channels[server.url]
    shard.wanted = set()  # the last peering with that shard's VPCs is gone
    federation.sync()
    assert federation.channels == {}
    wait_until(lambda: ch.sockets() == 0 and hub.channels() == 0, what="both sockets closed")


def test_a_slow_on_change_does_not_make_the_channel_look_dead(cleanup: list[Any]) -> None:
    hub = StreamHub()
    setup_three(hub)
    server = serve(cleanup, hub, heartbeat=0.05)
    ch = channel(cleanup, server.url, heartbeat_timeout=0.3)
    rec = Recorder()

    def slow(replica: Any, msg: Any) -> None:  # a big snapshot applied to the switch
        rec.on_change(replica, msg)
        if isinstance(msg, Delta):
            eventlet.sleep(0.6)  # longer than heartbeat_timeout; the shard kept talking

    red = ch.subscription(DEST, "red", on_change=slow, on_close=rec.on_close)
    red.start()
    wait_until(lambda: red.version == 0)
    hub.publish(RED, objs(1, 2))
    wait_until(lambda: red.version == 1)
    hub.publish(RED, objs(1, 2, 3))
    wait_until(lambda: red.version == 2)
    assert ch.connects == 1 and ch.last_error is None


def test_a_protocol_error_in_one_subscription_ends_it_not_the_channel(
    cleanup: list[Any],
) -> None:
    hub = StreamHub()
    setup_three(hub)
    app = channel_app(hub)

    def lying(environ: dict[str, Any], start_response: Any) -> Any:
        # a subscription to "liar" is served blue's frames: another key than it asked for
        if environ["REQUEST_METHOD"] == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length).replace(b'"liar"', b'"blue"')
            environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(body), str(len(body))
        return app(environ, start_response)

    server = Server(lying)
    cleanup.append(server)
    ch = channel(cleanup, server.url)
    red, liar = follow(ch, RED, Recorder()), follow(ch, StreamId(DEST, "liar"), Recorder())
    wait_until(lambda: red.version == 0)
    wait_until(lambda: (liar.last_error or ch.last_error) is not None, what="the bad frame")
    hub.publish(RED, objs(1, 2))
    wait_until(lambda: red.version == 1)
    assert ch.connects == 1 and ch.last_error is None
    assert liar.version is None and liar.running and "key" in (liar.last_error or "")


def test_a_channel_finds_the_shards_new_leader_and_resumes_there(cleanup: list[Any]) -> None:
    """Replicas (docs/store.md): the leader dies, the old leader's place answers 503 as a
    standby; the channel tries the shard's other replica, where the new leader serves the same
    stream, and each subscription resumes there with its since (no second snapshot)."""
    from meshpeer.controller import standby
    from meshpeer.store.election import Leader

    hub = StreamHub()
    setup_three(hub)
    leader = serve(cleanup, hub)
    other = Server(lambda env, start: [])  # a port for the second replica; nothing there yet
    other.stop()
    ch = channel(cleanup, leader.url, replicas=[leader.url, other.url])
    rec = Recorder()
    red = follow(ch, RED, rec)
    wait_until(lambda: red.version == 0)
    leader.stop()  # the leader is gone: its URL now answers as a standby naming the new one
    gone = Server(standby.app("ctl1", "a", lambda: Leader("b", other.url)), port=leader.port)
    cleanup.append(gone)
    hub.publish(RED, objs(1, 5))  # the new leader has moved on meanwhile
    serve(cleanup, hub, port=other.port)
    wait_until(lambda: red.version == 1, what="red resumed at the new leader")
    assert ch.at == other.url and ch.url == leader.url  # still known by the directory's URL
    assert rec.seen == [("Snapshot", 0), ("Delta", 1)]


def test_a_replica_listed_twice_does_not_stop_the_rotation(cleanup: list[Any]) -> None:
    """``replicas: [A, B, B]`` (review s6, E1): both replicas are standbys first, then A
    leads; the channel must come back to A rather than ask B for ever."""
    from meshpeer.controller import standby

    hub = StreamHub()
    setup_three(hub)
    b_asked: list[str] = []
    b_app = standby.app("ctl1", "b", lambda: None)

    def b(environ: dict[str, Any], start_response: Any) -> Any:
        b_asked.append(environ["PATH_INFO"])
        return b_app(environ, start_response)

    a = Server(standby.app("ctl1", "a", lambda: None))
    cleanup.append(a)
    other = Server(b)
    cleanup.append(other)
    ch = channel(cleanup, a.url, replicas=[a.url, other.url, other.url])
    rec = Recorder()
    red = follow(ch, RED, rec)
    wait_until(lambda: bool(b_asked), what="the channel went on to B")
    a.stop()  # A is elected
    serve(cleanup, hub, port=a.port)
    wait_until(lambda: red.version == 0, what="red followed at A, the leader")
    assert ch.at == a.url


def test_an_open_channel_takes_its_shards_new_replicas(cleanup: list[Any]) -> None:
    """A channel kept the replicas it was opened with: a shard whose directory entry gained a
    replica (the leader now) left the host's open channel asking the standby for ever. The
    host's directory changed, ``Channels.take_replicas`` hands each open channel its shard's
    list, and the channel finds the leader there; a replica taken out of the list is left."""
    from meshpeer.controller import standby

    hub = StreamHub()
    setup_three(hub)
    a = Server(standby.app("ctl1", "a", lambda: None))  # a standby that knows no leader
    cleanup.append(a)
    leader = serve(cleanup, hub)
    listed = {a.url: (a.url,)}
    factory = Channels("host-cred", replicas=lambda url: listed.get(url, (url,)))
    cleanup.insert(0, factory)
    rec = Recorder()
    red = factory(Sub(a.url, RED.service, RED.key), "g", rec.on_change, rec.on_close)
    red.start()
    ch = factory.channels[a.url]
    wait_until(lambda: ch.last_error is not None, what="a refused by the standby")
    assert ch.replicas == (a.url,) and red.version is None
    listed[a.url] = (a.url, leader.url)  # the directory now lists the leader
    factory.take_replicas()
    wait_until(lambda: red.version == 0, what="red followed at the new replica")
    assert ch.at == leader.url and ch.url == a.url
    listed[a.url] = (a.url,)  # the leader's replica taken out: the next try is the shard's url
    factory.take_replicas()
    ch._next_replica()
    assert ch.at == a.url


class Blackhole:
    """A replica whose machine is gone: a listening socket whose accept queue is full, so
    Linux drops every new SYN and a connect neither completes nor fails (no RST)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.fillers: list[socket.socket] = []
        for _ in range(64):  # fill the queue until a connect hangs (Linux: after one)
            filler = socket.socket()
            filler.settimeout(0.2)
            try:
                filler.connect(self.sock.getsockname())
            except TimeoutError:
                filler.close()
                return
            self.fillers.append(filler)
        raise AssertionError("the accept queue never filled")

    def stop(self) -> None:
        for s in (*self.fillers, self.sock):
            s.close()


def test_a_silent_leader_is_left_for_the_next_replica(cleanup: list[Any]) -> None:
    """A leader whose machine went away mid-stream sends nothing (no RST): after the silence
    the channel's next connection goes to the other replica, not to the silent one."""
    hub = StreamHub()
    setup_three(hub)
    opened: list[str] = []

    def counting(name: str, app: Callable[..., Any]) -> Callable[..., Any]:
        def counted(environ: dict[str, Any], start_response: Any) -> Any:
            if environ["REQUEST_METHOD"] == "GET":
                opened.append(name)
            return app(environ, start_response)

        return counted

    silent = Server(counting("a", channel_app(hub, heartbeat=3600.0)))  # no keepalive
    other = Server(counting("b", channel_app(hub, heartbeat=0.05)))
    cleanup += [silent, other]
    ch = channel(cleanup, silent.url, replicas=[silent.url, other.url], heartbeat_timeout=0.5)
    red = follow(ch, RED, Recorder())
    wait_until(lambda: red.version == 0 and len(opened) >= 2, what="a second connection")
    assert opened[:2] == ["a", "b"], opened


def test_a_replica_that_never_answers_a_connect_is_left_quickly(cleanup: list[Any]) -> None:
    """A connect to a replica whose machine is gone waits ``CONNECT_TIMEOUT`` (3 s), not the
    heartbeat timeout (600 s here), before the channel tries the next replica (review s6,
    E2: a new channel starts at the directory's URL, the old leader's)."""
    hub = StreamHub()
    setup_three(hub)
    gone = Blackhole()
    cleanup.append(gone)
    leader = serve(cleanup, hub)
    ch = channel(cleanup, gone.url, replicas=[gone.url, leader.url], heartbeat_timeout=600.0)
    red = follow(ch, RED, Recorder())
    wait_until(lambda: red.version == 0, timeout=60.0, what="red followed at the leader")
    assert ch.at == leader.url
