"""The OHC agent starts and stops stream clients as the streams it follows change."""

from __future__ import annotations

from typing import Any

from meshpeer.protocol import ServiceName
from meshpeer.protocol.messages import Snapshot
from meshpeer.protocol.stream import ReplicaState
from ohc.agent import Agent
from ohc.subscriptions import Sub

CTL1, CTL2 = "http://ctl1", "http://ctl2"


class FakeClient:
    def __init__(self, sub: Sub, auth: str, on_change: Any, on_close: Any) -> None:
        self.sub, self.auth, self.on_change, self.on_close = sub, auth, on_change, on_close
        self.running = False
        self.bytes_received = self.objects_received = 0

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False

    def set_auth(self, auth: str | None) -> None:
        self.auth = auth or ""

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

    def factory(sub: Sub, auth: str, cb: Any, closed: Any) -> FakeClient:
        made[sub] = FakeClient(sub, auth, cb, closed)
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
    peering.deliver(
        {"red": {"peer_vpc": "red", "controller": CTL2, "policy_id": "p-1", "grant": "g1"}}
    )
    red = Sub(CTL2, ServiceName.DESTINATION, "red", "p-1", "hv1")
    assert red in agent.clients and made[red].auth == "g1" and made[red].running
    peering.deliver(
        {"red": {"peer_vpc": "red", "controller": CTL2, "policy_id": "p-1", "grant": "g2"}}
    )
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
            {"red": {"peer_vpc": "red", "controller": CTL2, "policy_id": "p-1", "grant": grant}}
        )
    red = Sub(CTL2, ServiceName.DESTINATION, "red", "p-1", "hv1")
    first = made[red]
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

    def factory(sub: Sub, auth: str, cb: Any, closed: Any) -> FakeClient:
        made[sub] = FakeClient(sub, auth, cb, closed)
        return made[sub]

    ctl3 = "http://ctl3"
    agent = Agent("hv1", [CTL1], {"blue": CTL1}.get, "tok", factory, lambda: None)
    agent.start()
    made[Sub(CTL1, ServiceName.ENDPOINT, "hv1")].deliver({"blue.b1": {"vpc": "blue", "name": "b1"}})
    made[Sub(CTL1, ServiceName.PEERING, "blue", None, "hv1")].deliver(
        {"red": {"peer_vpc": "red", "controller": ctl3, "policy_id": "p-1", "grant": "g1"}}
    )
    versions = {sub: 7 for sub in agent.clients}
    reports = agent.applied_reports(versions)
    assert set(reports) == {CTL1, ctl3}
    assert all("grant" not in e for e in reports[CTL1])  # the API token covers these
    assert {e["stream"] for e in reports[CTL1]} >= {"endpoint/hv1//", "peering/blue//hv1"}
    assert reports[ctl3] == [
        {"stream": f"{svc}/red/p-1/", "version": 7, "grant": "g1"}
        for svc in ("destination", "forwarding", "loadbalancer")
    ]
