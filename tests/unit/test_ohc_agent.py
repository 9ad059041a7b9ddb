"""The OHC agent starts and stops stream clients as the streams it follows change; a shard's
refusal drops what it sent at once; callbacks that arrive while a resync runs are safe."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import ip_address
from typing import Any

import pytest

from meshpeer.protocol import ServiceName
from meshpeer.protocol.messages import PEER_SERVICES, Delta, Snapshot
from meshpeer.protocol.objects import EndpointObject
from meshpeer.protocol.peering import PeeringObject
from meshpeer.protocol.stream import ReplicaState
from ohc.agent import Agent, Ending, applied_versions, ending
from ohc.engine import FlowEngine
from ohc.subscriptions import Sub
from tests.support.peering import peering_object

CTL1, CTL2 = "http://ctl1", "http://ctl2"


class FakeClient:
    """Calls back synchronously, like a StreamClient's green thread would. ``on_stop`` runs
    inside ``stop``: stopping a real client yields to the hub, and other clients' callbacks
    (a Close, a delta) run right there, in the middle of the agent's resync."""

    def __init__(
        self, sub: Sub, auth: str, on_change: Any, on_close: Any, on_http_error: Any = None
    ) -> None:
        self.sub, self.auth, self.on_change, self.on_close = sub, auth, on_change, on_close
        self.on_http_error = on_http_error
        self.running = False
        self.used_auth: str | None = None
        self.only: frozenset[str] | None = None
        self.bytes_received = self.objects_received = 0
        self.on_stop: list[Callable[[], None]] = []

    def start(self) -> None:
        self.running = True
        self.used_auth = self.auth

    def stop(self) -> None:
        self.running = False
        hooks, self.on_stop = self.on_stop, []
        for hook in hooks:
            hook()

    def answer(self, status: int) -> None:
        """The shard answered the client's (re)connect with an HTTP error."""
        self.used_auth = self.auth
        self.on_http_error(status)

    def set_auth(self, auth: str | None) -> None:
        self.auth = auth or ""

    def set_only(self, only: frozenset[str] | None) -> None:
        self.only = only

    def deliver(self, objects: dict[str, Any]) -> None:
        replica = ReplicaState(self.sub.service, self.sub.key)
        snap = Snapshot(self.sub.service, self.sub.key, 1, objects)
        replica.apply(snap)
        self.bytes_received += 100
        self.objects_received += len(objects)
        self.on_change(replica, snap)


def make() -> tuple[Agent, dict[Sub, FakeClient], list[int]]:
    made: dict[Sub, FakeClient] = {}
    updates: list[int] = []

    def factory(sub: Sub, auth: str, cb: Any, closed: Any, failed: Any) -> FakeClient:
        made[sub] = FakeClient(sub, auth, cb, closed, failed)
        return made[sub]

    urls = {"blue": CTL1, "red": CTL2}
    agent = Agent("hv1", [CTL1, CTL2], urls.get, "tok", factory, lambda: updates.append(1))
    return agent, made, updates


def running(agent: Agent) -> set[tuple[str, str, str | None]]:
    return {(str(s.service), s.key, s.policy) for s in agent.clients}


def test_follow_peers_then_drop_everything_when_the_last_endpoint_goes() -> None:
    agent, made, updates = make()
    agent.start()
    assert running(agent) == {("endpoint", "hv1", None)}
    ep1 = made[Sub(CTL1, ServiceName.ENDPOINT, "hv1")]
    ep1.deliver({"blue.b1": {"vpc": "blue", "name": "b1"}})
    assert ("peering", "blue", None) in running(agent) and ("destination", "blue", None) in running(
        agent
    )
    peering = made[Sub(CTL1, ServiceName.PEERING, "blue", None, "hv1")]
    peering.deliver({"red": peering_object("red", CTL2, "p-1", "g1")})
    red = Sub(CTL2, ServiceName.DESTINATION, "red", "p-1", "hv1")
    assert red in agent.clients and made[red].auth == "g1" and made[red].running
    peering.deliver({"red": peering_object("red", CTL2, "p-1", "g2")})
    assert made[red].auth == "g2" and agent.clients[red] is made[red]  # same stream, new grant
    made[red].deliver({"r1": {"ip": "10.2.0.11"}})
    assert agent.received()["objects"] == 4
    ep1.deliver({})
    assert running(agent) == {("endpoint", "hv1", None)}
    assert not made[red].running and agent.received()["objects"] == 4  # totals kept
    assert len(updates) == 5


def test_a_shared_stream_closed_for_one_peering_restarts_for_the_other() -> None:
    """hv1 has blue and green endpoints; red exports one policy to both, so one stream."""
    agent, made, _ = make()
    agent.start()
    made[Sub(CTL1, ServiceName.ENDPOINT, "hv1")].deliver(
        {"blue.b1": {"vpc": "blue", "name": "b1"}, "green.g1": {"vpc": "green", "name": "g1"}}
    )
    agent.vpc_url = {"blue": CTL1, "green": CTL1, "red": CTL2}.get
    agent.resync()
    for vpc, grant in (("blue", "g-blue"), ("green", "g-green")):
        made[Sub(CTL1, ServiceName.PEERING, vpc, None, "hv1")].deliver(
            {"red": peering_object("red", CTL2, "p-1", grant)}
        )
    red = Sub(CTL2, ServiceName.DESTINATION, "red", "p-1", "hv1")
    first = made[red]
    assert first.auth == "g-green"
    first.used_auth = first.auth  # it (re)connected with green's grant
    first.deliver({"r1": {"ip": "10.2.0.11"}})
    made[Sub(CTL1, ServiceName.PEERING, "green", None, "hv1")].deliver({})  # green unpeers
    first.on_close("peering-gone")  # the server closed the connection opened with its grant
    assert agent.clients[red] is not first and made[red].running
    assert made[red].auth == "g-blue"  # restarted with the peering that still wants it
    assert agent.objects[red] == {"r1": {"ip": "10.2.0.11"}}  # kept until the new snapshot
    made[red].deliver({"r1": {"ip": "10.2.0.11"}})
    for c in agent.clients.values():
        if c.sub not in agent.objects:
            c.deliver({})  # type: ignore[attr-defined]
    assert agent.complete()


def test_applied_reports_use_the_grant_at_a_peers_shard_and_the_token_at_its_own() -> None:
    """hv1's own shard is ctl1; red lives on ctl3, another domain's shard (not in shard_urls)."""
    made: dict[Sub, FakeClient] = {}

    def factory(sub: Sub, auth: str, cb: Any, closed: Any, failed: Any) -> FakeClient:
        made[sub] = FakeClient(sub, auth, cb, closed, failed)
        return made[sub]

    ctl3 = "http://ctl3"
    agent = Agent("hv1", [CTL1], {"blue": CTL1}.get, "tok", factory, lambda: None)
    agent.start()
    made[Sub(CTL1, ServiceName.ENDPOINT, "hv1")].deliver({"blue.b1": {"vpc": "blue", "name": "b1"}})
    made[Sub(CTL1, ServiceName.PEERING, "blue", None, "hv1")].deliver(
        {"red": peering_object("red", ctl3, "p-1", "g1")}
    )
    versions = {sub: 7 for sub in agent.clients}
    reports = agent.applied_reports(versions, agent.objects)
    assert set(reports) == {CTL1, ctl3}
    assert all("grant" not in e for e in reports[CTL1])  # own streams: the host's credential
    assert {e["stream"] for e in reports[CTL1]} >= {"endpoint/hv1//", "peering/blue//hv1"}
    assert reports[ctl3] == [
        {"stream": f"{svc}/red/p-1/", "version": 7, "grant": "g1"}
        for svc in ("destination", "forwarding", "loadbalancer")
    ]


def test_a_peer_stream_is_reported_with_its_grant_at_an_own_shard_too() -> None:
    """Issue 16: a shard takes a host's report of a peer stream only with the grant naming
    that host, also when the shard is one of the host's own (red on ctl2, in shard_urls)."""
    made: dict[Sub, FakeClient] = {}

    def factory(sub: Sub, auth: str, cb: Any, closed: Any, failed: Any) -> FakeClient:
        made[sub] = FakeClient(sub, auth, cb, closed, failed)
        return made[sub]

    agent = Agent("hv1", [CTL1, CTL2], {"blue": CTL1}.get, "tok", factory, lambda: None)
    agent.start()
    made[Sub(CTL1, ServiceName.ENDPOINT, "hv1")].deliver({"blue.b1": {"vpc": "blue", "name": "b1"}})
    made[Sub(CTL1, ServiceName.PEERING, "blue", None, "hv1")].deliver(
        {"red": peering_object("red", CTL2, "p-1", "g1")}
    )
    reports = agent.applied_reports({sub: 7 for sub in agent.clients}, agent.objects)
    peer_entries = [e for e in reports[CTL2] if e["stream"].endswith("/red/p-1/")]
    assert len(peer_entries) == 3 and all(e["grant"] == "g1" for e in peer_entries)


# --- refusals and re-entrant callbacks (issue 21, part 2) -----------------------------------

BLUE_PEERING = Sub(CTL1, ServiceName.PEERING, "blue", None, "hv1")
RED_PEERING = Sub(CTL2, ServiceName.PEERING, "red", None, "hv1")


def peer_subs(url: str, vpc: str, policy: str) -> list[Sub]:
    return [Sub(url, s, vpc, policy, "hv1") for s in PEER_SERVICES]


def peer(vpc: str, url: str, policy: str, grant: str) -> dict[str, Any]:
    return {vpc: peering_object(vpc, url, policy, grant)}


def blue_and_red_peered_on_one_host() -> tuple[Agent, dict[Sub, FakeClient]]:
    """hv1 holds b2 (blue, on ctl1) and r1 (red, on ctl2), and blue peers with red: hv1
    follows red's services at ctl2 for blue and blue's at ctl1 for red, and has them all."""
    agent, made, _ = make()
    agent.start()
    made[Sub(CTL1, ServiceName.ENDPOINT, "hv1")].deliver({"blue.b2": {"vpc": "blue"}})
    made[Sub(CTL2, ServiceName.ENDPOINT, "hv1")].deliver({"red.r1": {"vpc": "red"}})
    made[BLUE_PEERING].deliver(peer("red", CTL2, "p-red", "g-blue"))
    made[RED_PEERING].deliver(peer("blue", CTL1, "p-blue", "g-red"))
    for c in list(agent.clients.values()):
        if c.sub not in agent.objects:
            c.deliver({f"{c.sub.key}-obj": {"ip": "10.0.0.1"}})  # type: ignore[attr-defined]
    assert agent.complete()
    return agent, made


def peer_objects(agent: Agent) -> set[Sub]:
    return {s for s in agent.objects if s.policy is not None}


def test_closes_arriving_while_a_resync_drops_streams_leave_no_peer_state() -> None:
    """The lab's race: blue deletes blue-red. hv1's OHC reads blue's peering stream (red
    gone) and drops red's streams; stopping the first one yields, and the Closes
    (peering-gone) of blue's streams, sent to hv1 for red, arrive right then. Today the
    inner resync drops streams the outer one is about to drop (KeyError in _drop), the outer
    resync dies half way, and streams and objects are left behind (flows kept)."""
    agent, made = blue_and_red_peered_on_one_host()
    failures: list[BaseException] = []

    def close_blue_streams() -> None:
        for sub in peer_subs(CTL1, "blue", "p-blue"):
            try:  # a StreamClient logs what its callback raises and goes on
                made[sub].on_close("peering-gone")
            except Exception as exc:
                failures.append(exc)

    made[peer_subs(CTL2, "red", "p-red")[0]].on_stop.append(close_blue_streams)
    made[BLUE_PEERING].deliver({})  # blue's side is gone
    assert failures == []
    assert not any(s in agent.clients for s in peer_subs(CTL2, "red", "p-red"))
    assert peer_objects(agent) == set(), "peer state kept after the peering was deleted"
    assert agent.complete()
    made[RED_PEERING].deliver({})  # red's side goes INACTIVE
    assert peer_objects(agent) == set() and not any(s.policy for s in agent.clients)
    assert agent.complete()


def test_a_resync_asked_for_during_a_resync_runs_after_it() -> None:
    """A callback that resyncs from inside a stop (re-entrant) neither nests nor is lost:
    the outer resync goes round again and the new wanted set wins."""
    agent, made = blue_and_red_peered_on_one_host()
    red_dest = peer_subs(CTL2, "red", "p-red")[0]
    # While red's first stream stops, red's peering stream drops blue too (delivered by
    # another green thread): that resync must wait for the one running.
    made[red_dest].on_stop.append(lambda: made[RED_PEERING].deliver({}))
    made[BLUE_PEERING].deliver({})
    assert peer_objects(agent) == set() and not any(s.policy for s in agent.clients)
    assert all(not made[s].running for s in peer_subs(CTL1, "blue", "p-blue"))
    assert agent.complete()


def test_drop_is_idempotent() -> None:
    agent, made = blue_and_red_peered_on_one_host()
    sub = peer_subs(CTL2, "red", "p-red")[0]
    agent._drop(sub)
    agent._drop(sub)
    assert sub not in agent.clients and sub not in agent.objects and not made[sub].running


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_refused_resubscription_drops_that_peers_state_at_once(status: int) -> None:
    """Red's stream of blue's destinations reconnects and blue's shard says no (the grant or
    the peering is gone) before red's peering stream has caught up: the state goes now, and
    the stream does not hold the host's view incomplete (which would keep every flow)."""
    agent, made = blue_and_red_peered_on_one_host()
    blue_dest = peer_subs(CTL1, "blue", "p-blue")[0]
    made[blue_dest].answer(status)
    assert blue_dest not in agent.objects and blue_dest in agent.clients
    assert agent.complete(), "a refused stream must not count as missing"
    made[blue_dest].deliver({"b2": {"ip": "10.1.0.12"}})  # the shard serves it again
    assert agent.objects[blue_dest] and blue_dest not in agent.refused


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
def test_an_unreachable_or_busy_shard_keeps_the_last_state(status: int) -> None:
    agent, made = blue_and_red_peered_on_one_host()
    blue_dest = peer_subs(CTL1, "blue", "p-blue")[0]
    made[blue_dest].answer(status)
    assert agent.objects[blue_dest], "fail static: an unreachable shard's state is kept"


def test_peering_gone_drops_the_state_even_while_the_stream_is_still_wanted() -> None:
    """The Close comes before red's own peering stream says blue is gone: the stream is
    still wanted with the same grant, so a new client starts, but the objects go now."""
    agent, made = blue_and_red_peered_on_one_host()
    subs = peer_subs(CTL1, "blue", "p-blue")
    old = made[subs[0]]
    for sub in subs:
        made[sub].on_close("peering-gone")
    assert all(s in agent.clients for s in subs) and agent.clients[subs[0]] is not old
    assert not any(s in agent.objects for s in subs), "revoked state kept (fail static)"
    assert agent.complete()
    old.on_change(ReplicaState(ServiceName.DESTINATION, "blue"), None)  # late: ignored
    assert subs[0] not in agent.objects


@pytest.mark.parametrize("reason", ["shutdown", "grant-expired"])
def test_a_close_that_asks_for_a_reconnect_keeps_the_state(reason: str) -> None:
    agent, made = blue_and_red_peered_on_one_host()
    sub = peer_subs(CTL1, "blue", "p-blue")[0]
    client = made[sub]
    client.on_close(reason)
    assert agent.clients[sub] is client and agent.objects[sub]


@pytest.mark.parametrize(
    ("status", "close", "want"),
    [
        (400, None, Ending.REFUSED),
        (401, None, Ending.REFUSED),
        (403, None, Ending.REFUSED),
        (404, None, Ending.REFUSED),
        (410, None, Ending.REFUSED),
        (408, None, Ending.UNREACHABLE),
        (429, None, Ending.UNREACHABLE),
        (500, None, Ending.UNREACHABLE),
        (503, None, Ending.UNREACHABLE),
        (None, None, Ending.UNREACHABLE),
        (None, "peering-gone", Ending.REFUSED),
        (None, "gone", Ending.REFUSED),
        (None, "shutdown", Ending.RECONNECT),
        (None, "grant-expired", Ending.RECONNECT),
    ],
)
def test_what_an_ending_means(status: int | None, close: str | None, want: Ending) -> None:
    assert ending(status=status, close=close) is want


def test_a_peering_version_is_applied_only_once_its_peers_services_are_in() -> None:
    """A shard reads "applied peering/blue/hv1 at n" as "blue's peerings are programmed on
    hv1"; while red's services have not arrived (or red's shard refuses them for now), it
    must not hear that."""
    agent, made = blue_and_red_peered_on_one_host()
    versions = dict.fromkeys(agent.objects, 5)
    assert applied_versions(versions, agent.objects)[BLUE_PEERING] == 5
    red_dest = peer_subs(CTL2, "red", "p-red")[0]
    made[red_dest].answer(403)
    versions = dict.fromkeys(agent.objects, 6)
    held = applied_versions(versions, agent.objects)
    assert BLUE_PEERING not in held and held[RED_PEERING] == 6


def test_a_peer_service_not_followed_is_not_waited_for() -> None:
    """A side through the gateways follows no peer destinations (and a gateway only them):
    its peering stream is applied once the services it does follow are in, not never."""
    agent, _ = blue_and_red_peered_on_one_host()
    red_dest = peer_subs(CTL2, "red", "p-red")[0]
    versions = {s: 7 for s in agent.objects if s != red_dest}
    assert BLUE_PEERING not in applied_versions(versions, agent.objects)
    followed = set(agent.clients) - {red_dest}
    assert applied_versions(versions, agent.objects, followed)[BLUE_PEERING] == 7


def test_a_refused_peering_stream_takes_the_peers_it_listed_with_it() -> None:
    """Blue's own shard refuses hv1's peering stream (say 404: blue has no endpoint here any
    more, and the endpoint stream has not said so yet): what it listed is not followed."""
    agent, made = blue_and_red_peered_on_one_host()
    made[BLUE_PEERING].answer(404)
    assert not any(s in agent.clients for s in peer_subs(CTL2, "red", "p-red"))
    assert not any(s in agent.objects for s in peer_subs(CTL2, "red", "p-red"))
    assert all(s in agent.objects for s in peer_subs(CTL1, "blue", "p-blue"))  # red's peers
    assert agent.complete()
    assert agent.refusals() == {f"peering/blue at {CTL1}": "HTTP 404"}


def test_a_peering_object_is_parsed_once_per_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent parses each peering object as it arrives; what to follow, the applied
    reports and the flow engine's view take it as parsed (they parsed it again, each)."""
    calls: list[object] = []
    real = PeeringObject.parse

    def counted(obj: object) -> PeeringObject:
        calls.append(obj)
        return real(obj)

    monkeypatch.setattr(PeeringObject, "parse", staticmethod(counted))
    agent, made, _ = make()
    agent.start()
    b1 = EndpointObject("blue", "b1", ip_address("10.1.0.11"), "02:00:00:00:01:0b", 1001)
    made[Sub(CTL1, ServiceName.ENDPOINT, "hv1")].deliver({"blue.b1": b1.to_json()})
    replica = ReplicaState(ServiceName.PEERING, "blue")
    snap = Snapshot(ServiceName.PEERING, "blue", 1, peer("red", CTL2, "p-red", "g1"))
    replica.apply(snap)
    made[BLUE_PEERING].on_change(replica, snap)
    engine = FlowEngine("169.254.0.11")
    every_reader = [
        agent.resync,
        lambda: agent.applied_reports({s: 1 for s in agent.clients}, agent.objects),
        lambda: engine.update(agent.take_changes(), {("blue", "b1"): 10}, 1),
    ]
    for read in every_reader:
        read()
    assert len(calls) == 1
    assert engine.state().flows and not engine.skipped()
    delta = Delta(ServiceName.PEERING, "blue", 2, peer("green", CTL2, "p-green", "g2"), ())
    replica.apply(delta)
    made[BLUE_PEERING].on_change(replica, delta)
    for read in every_reader:
        read()
    assert calls[1:] == [delta.upserts["green"]]  # the new one only
    assert {peer for _, peer in engine.roles} == {None, "red", "green"}  # both followed


def test_an_on_demand_hosts_busy_pairs_narrow_one_subscription_of_the_peers_destinations() -> None:
    """docs/gateways.md, on-demand: no peer destination stream until a pair is busy; then one
    subscription narrowed to the busy addresses, narrowed again (same client, its objects
    kept until the new snapshot) as pairs come and go, and dropped once none is left."""
    agent, made, _ = make()
    agent.start()
    made[Sub(CTL1, ServiceName.ENDPOINT, "hv1")].deliver({"blue.b1": {"vpc": "blue"}})
    on_demand = peering_object("red", CTL2, "p-1", "g1") | {"forwarding": "on-demand"}
    made[Sub(CTL1, ServiceName.PEERING, "blue", None, "hv1")].deliver({"red": on_demand})
    red = Sub(CTL2, ServiceName.DESTINATION, "red", "p-1", "hv1")
    assert red not in agent.clients
    agent.offloaded = {("blue", "red"): ({ip_address("10.2.0.11")}, "g-11")}
    agent.resync()
    client = made[red]
    assert client.running and client.sub.only == frozenset({"10.2.0.11"})
    assert agent.auth[red] == "g-11"  # the grant minted for the busy pair
    client.deliver({"r1": {"ip": "10.2.0.11"}})
    agent.offloaded = {
        ("blue", "red"): ({ip_address("10.2.0.11"), ip_address("10.2.0.12")}, "g-12")
    }
    agent.resync()
    assert agent.clients[red] is client and client.only == frozenset({"10.2.0.11", "10.2.0.12"})
    assert client.auth == "g-12"
    assert agent.objects[red] == {"r1": {"ip": "10.2.0.11"}}
    agent.offloaded = {}
    agent.resync()
    assert red not in agent.clients and not client.running and red not in agent.objects
