"""The shard's BGP speaker shim (meshpeer.controller.speaker) over a real ShardState and store,
with os-ken's speaker and hub replaced by recording fakes: what it hands the shard when the
store fails, across a deliberate session reset, and the out filter each router gets."""

from __future__ import annotations

import ipaddress
import pathlib
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest
from os_ken.lib.packet.bgp import (
    BGP_ATTR_TYPE_ORIGIN,
    BGPPathAttributeMultiExitDisc,
    BGPPathAttributeOrigin,
    IPAddrPrefix,
)
from os_ken.services.protocols.bgp.bgpspeaker import EventPrefix
from os_ken.services.protocols.bgp.info_base.base import PrefixFilter
from os_ken.services.protocols.bgp.info_base.ipv4 import Ipv4Path

from meshpeer.controller import bgp, speaker
from meshpeer.controller import intent as ops
from meshpeer.controller.model import BgpPeer, Host, Subnet
from meshpeer.controller.shard import Delete, ShardState
from meshpeer.store.sqlite import Store
from meshpeer.streaming.publisher import StreamHub
from tests.unit.controller_fixtures import directory, subnets

D = directory(ctl1=["blue", "aqua"])
ROUTER, OTHER = "169.254.250.2", "169.254.250.6"
ONPREM, CAMPUS = "192.168.10.0/24", "172.16.0.0/16"
LATER = 30.0  # seconds: well past a retry of what the store failed to take


class Hub:
    """os-ken's hub as the speaker uses it, on a clock of its own: ``later(seconds)`` runs
    what falls due meanwhile, in time order. A call that raises ends its green thread, as on
    the real hub, and is recorded."""

    def __init__(self) -> None:
        self.now = 0.0
        self.due: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self.died: list[BaseException] = []

    def spawn(self, fn: Callable[..., None], *args: Any) -> None:
        self.spawn_after(0.0, fn, *args)

    def spawn_after(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        self.due.append((self.now + delay, len(self.due) + int(self.now * 1e6), fn, args))

    def later(self, seconds: float = 0.0) -> None:
        until = self.now + seconds
        while ready := sorted(d for d in self.due if d[0] <= until):
            self.due.remove(ready[0])
            self.now, _, fn, args = ready[0]
            try:
                fn(*args)
            except Exception as exc:  # the green thread dies
                self.died.append(exc)
        self.now = until


class OsKen:
    """os-ken's BGPSpeaker as the shim drives it; ``neighbor_del`` of a live session reports
    it down from inside the call, as os-ken's FSM does."""

    def __init__(self) -> None:
        self.neighbors: dict[str, int] = {}
        self.filters: dict[str, list[PrefixFilter]] = {}
        self.prefixes: dict[str, str] = {}
        self.up: set[str] = set()
        self.on_down: Callable[[str, int], None] = lambda ip, asn: None

    def neighbor_add(self, ip: str, asn: int, **_: Any) -> None:
        self.neighbors[ip] = asn

    def neighbor_del(self, ip: str) -> None:
        asn = self.neighbors.pop(ip)
        if ip in self.up:
            self.up.discard(ip)
            self.on_down(ip, asn)

    def out_filter_set(self, ip: str, filters: list[PrefixFilter]) -> None:
        self.filters[ip] = filters

    def prefix_add(self, prefix: str, next_hop: str) -> None:
        self.prefixes[prefix] = next_hop

    def prefix_del(self, prefix: str) -> None:
        del self.prefixes[prefix]

    def permitted(self, ip: str) -> list[str]:
        return [f.prefix for f in self.filters[ip] if f.policy == PrefixFilter.POLICY_PERMIT]


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Hub:
    fake = Hub()
    monkeypatch.setattr(speaker, "hub", fake)
    return fake


def peer(ip: str, asn: int = 65001) -> BgpPeer:
    return BgpPeer(asn, ipaddress.IPv4Address(ip), ipaddress.IPv4Address("169.254.250.1"))


def shard(path: pathlib.Path) -> ShardState:
    """blue (10.1.0.0/24, 10.1.1.0/24): v1 (vpn, hv1) holds a session to ROUTER."""
    store = Store.open(str(path / "s.db"), synchronous="NORMAL")
    s = ShardState(
        "ctl1", D, store, StreamHub(base_version=store.next_incarnation() << 32), lambda: 1000.0
    )
    s.commit(
        [ops.new_vpc(s.intent, D, "ctl1", "blue", subnets("10.1.0.0/24", "10.1.1.0/24"), None)]
    )
    s.commit([Host("hv1", ipaddress.ip_address("169.254.101.11"))])
    ip = ipaddress.ip_address("10.1.0.5")
    s.commit([ops.new_endpoint(s.intent, "blue", "v1", "vpn", ip, None, "hv1", [], peer(ROUTER))])
    return s


def speaking(s: ShardState) -> tuple[speaker.Speaker, OsKen]:
    sp = speaker.Speaker(s, 64512, None, "127.0.0.1", 0)
    fake = OsKen()
    fake.on_down = sp._on_down
    sp.speaker = fake
    s.listeners.append(sp.sync)
    sp.start()
    return sp, fake


def announce(sp: speaker.Speaker, ip: str, prefix: str, med: int | None = None) -> None:
    """What os-ken calls when the router at ``ip`` announces ``prefix``."""
    net = ipaddress.ip_network(prefix)
    pattrs: dict[int, Any] = {BGP_ATTR_TYPE_ORIGIN: BGPPathAttributeOrigin(0)}
    if med is not None:
        pattrs[speaker.MED_ATTR] = BGPPathAttributeMultiExitDisc(med)
    nlri = IPAddrPrefix(net.prefixlen, str(net.network_address))
    path = Ipv4Path(None, nlri, 1, pattrs=pattrs, nexthop=ip)
    sp._on_route(EventPrefix(path, False), ip, 65001)


def routes(s: ShardState, vpc: str = "blue") -> dict[str, bool]:
    """The VPC's published dynamic routes, each with whether it is stale."""
    return {d.prefix: s.learned[d.peer_ip][d.prefix].stale for d in s.dynamic.get(vpc, ())}


def failing_store(s: ShardState, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """The store answers 'database is locked' until the returned function is called."""
    write, locked = s.store.set_meta, {"yes"}

    def set_meta(name: str, value: str | None) -> None:
        if locked:
            raise sqlite3.OperationalError("database is locked")
        write(name, value)

    monkeypatch.setattr(s.store, "set_meta", set_meta)
    return lambda: locked.clear()


def test_a_session_down_while_the_store_fails_leaves_the_callback_and_is_retried(
    tmp_path: pathlib.Path, hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a review: the down callback wrote the store and refreshed the shard inside
    os-ken's connection_lost, which catches nothing: an exception there stopped it before
    it reconnects, and the session never came back."""
    s = shard(tmp_path)
    sp, _ = speaking(s)
    sp._on_up(ROUTER, 65001)
    announce(sp, ROUTER, ONPREM)
    hub.later()
    assert routes(s) == {ONPREM: False}
    recover = failing_store(s, monkeypatch)
    sp._on_down(ROUTER, 65001)  # must return: os-ken goes on to reconnect
    assert ROUTER not in s.bgp_established
    hub.later()
    assert routes(s) == {ONPREM: False}  # not stored yet, so not withdrawn yet
    recover()
    hub.later(LATER)
    assert routes(s) == {}
    assert hub.died == []


def test_a_burst_the_store_failed_to_take_is_kept_and_handed_over_again(
    tmp_path: pathlib.Path, hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a review: the flush emptied the queue before the write, so a write that
    failed lost the routes of the burst."""
    s = shard(tmp_path)
    sp, _ = speaking(s)
    recover = failing_store(s, monkeypatch)
    announce(sp, ROUTER, ONPREM)
    announce(sp, ROUTER, CAMPUS, med=50)
    hub.later()
    assert routes(s) == {}
    announce(sp, ROUTER, "172.17.0.0/16")  # comes in while the retry waits: queued behind
    recover()
    hub.later(LATER)
    assert routes(s) == {ONPREM: False, CAMPUS: False, "172.17.0.0/16": False}
    assert s.learned[ROUTER][CAMPUS].med == 50
    assert set(bgp.restored(s.store.get_meta("bgp_learned"))[ROUTER]) == set(routes(s))
    assert hub.died == []


def test_a_deliberate_reset_keeps_the_learned_routes_until_announced_again_or_expired(
    tmp_path: pathlib.Path, hub: Hub
) -> None:
    """Found by a review: a change of what a session announces (here a subnet added to the
    VPC) deletes and adds the neighbor again, and its learned routes were forgotten: every
    dynamic route of the VPC was withdrawn from hosts and peers until the router announced
    them again."""
    s = shard(tmp_path)
    sp, fake = speaking(s)
    fake.up.add(ROUTER)
    announce(sp, ROUTER, ONPREM)
    announce(sp, ROUTER, CAMPUS)
    hub.later()
    announce(sp, ROUTER, "10.99.0.0/16")  # the old session's, not taken yet: out of date
    vpc = ops.add_subnet(
        s.intent, s.intent.vpcs["blue"], Subnet("s9", ipaddress.ip_network("10.1.2.0/24")), {}
    )
    s.commit([vpc])
    assert "10.1.2.0/24" in fake.permitted(ROUTER)  # the neighbor was added again
    hub.later()
    assert routes(s) == {ONPREM: True, CAMPUS: True}  # still published, stale
    fake.up.add(ROUTER)
    announce(sp, ROUTER, ONPREM)  # the new session: CAMPUS is not announced again
    hub.later()
    assert routes(s) == {ONPREM: False, CAMPUS: True}
    hub.later(speaker.STALE_TIME)
    assert routes(s) == {ONPREM: False}
    assert hub.died == []


def test_a_second_reset_gives_the_routes_a_full_grace_time_again(
    tmp_path: pathlib.Path, hub: Hub
) -> None:
    s = shard(tmp_path)
    sp, _ = speaking(s)
    announce(sp, ROUTER, ONPREM)
    hub.later()
    for k, cidr in enumerate(("10.1.2.0/24", "10.1.3.0/24")):
        vpc = ops.add_subnet(
            s.intent, s.intent.vpcs["blue"], Subnet(f"s{k + 5}", ipaddress.ip_network(cidr)), {}
        )
        s.commit([vpc])
        hub.later(speaker.STALE_TIME / 2 + 1)
    assert routes(s) == {ONPREM: True}  # the first reset's grace time is over, not the second's
    hub.later(speaker.STALE_TIME / 2)
    assert routes(s) == {}


def test_a_router_is_sent_only_the_prefixes_its_vpc_won(tmp_path: pathlib.Path, hub: Hub) -> None:
    """Found by a review: two VPCs of the shard announcing one prefix with different next
    hops, the speaker's one table holds the winner's route, and the loser's router was
    sent it (its filter permitted all of its VPC's prefixes)."""
    s = shard(tmp_path)
    aqua = ops.new_vpc(s.intent, D, "ctl1", "aqua", subnets("10.1.1.0/24", "10.1.2.0/24"), None)
    s.commit([aqua])
    ip = ipaddress.ip_address("10.1.2.5")
    s.commit(
        [
            ops.new_endpoint(
                s.intent, "aqua", "a1", "router", ip, None, "hv1", [], peer(OTHER, 65002)
            )
        ]
    )
    _, fake = speaking(s)
    assert fake.prefixes["10.1.1.0/24"] == "10.1.2.1"  # aqua's, first by name
    assert fake.permitted(ROUTER) == ["10.1.0.0/24"]
    assert fake.permitted(OTHER) == ["10.1.1.0/24", "10.1.2.0/24"]
    s.commit(deletes=[Delete("endpoint", "aqua/a1")])  # aqua no longer announces it
    assert fake.prefixes["10.1.1.0/24"] == "10.1.0.1"  # blue's now
    assert fake.permitted(ROUTER) == ["10.1.0.0/24", "10.1.1.0/24"]
    assert OTHER not in fake.neighbors
