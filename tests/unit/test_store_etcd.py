"""What only the etcd store has to show: many writers, lost answers, a cluster that is gone.

The shared contract (versions, atomicity, restart, log) is tests/unit/test_store.py, run
against both backends.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from meshpeer.controller import standby
from meshpeer.store import Change, Conflict, election
from meshpeer.store import etcdplan as plan
from meshpeer.store.etcd import (
    Diverged,
    EtcdStore,
    Gateway,
    Leadership,
    LostLead,
    Ownership,
    Unavailable,
    follow_claims,
)
from meshpeer.store.settings import store_settings
from tests.support.etcd import EtcdServer, etcd_server
from tests.support.wait import wait_for

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    with etcd_server() as server:
        yield server


@pytest.fixture
def prefix() -> str:
    return f"/etcd-only/{next(_prefixes)}/"


def test_two_writers_never_both_win_a_version(etcd: EtcdServer, prefix: str) -> None:
    """Writers racing with expect_version: each version is won by exactly one of them; the
    losers get Conflict. Without expect_version every commit lands, each at its own version."""
    stores = [EtcdStore.open([etcd.url], prefix) for _ in range(4)]
    won: list[tuple[int, str]] = []
    lost: list[str] = []
    free: list[tuple[int, str]] = []

    def race(i: int, s: EtcdStore) -> None:
        for n in range(15):
            name = f"w{i}-{n}"
            try:
                won.append((s.commit([Change("vpc", name, {})], expect_version=s.version), name))
            except Conflict:
                lost.append(name)
            free.append((s.commit([Change("endpoint", name, {"n": n})]), name))

    threads = [threading.Thread(target=race, args=(i, s)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = stores[0].load()
    versions = [v for v, _ in won + free]
    assert sorted(versions) == list(range(1, snap.version + 1))  # contiguous, none twice
    assert len(won) + len(lost) == len(free) == 60
    for v, name in won:
        assert snap.records[("vpc", name)].version == v
    assert not any(("vpc", name) in snap.records for name in lost)
    for v, name in free:
        assert snap.records[("endpoint", name)].version == v
    log = stores[0].changes_since(0) or []
    assert sorted({e.version for e in log}) == list(range(1, snap.version + 1))
    for s in stores:
        s.close()


def _lose_answer(store: EtcdStore, *, after_sending: bool) -> list[dict[str, Any]]:
    """The next write transaction's answer is lost: after etcd applied it, or before it
    reached etcd (the connection cut either way; then the list returned gets the request, for
    the test to deliver late, as a slow network would)."""
    gw = store._gw
    real = gw.call
    held: list[dict[str, Any]] = []

    def call(path: str, body: dict[str, Any], *, idempotent: bool) -> dict[str, Any]:
        if idempotent:
            return real(path, body, idempotent=True)
        gw.call = real  # type: ignore[method-assign]
        if after_sending:
            real(path, body, idempotent=False)
        else:
            held.append(body)
        raise Unavailable("connection reset", lost=True)

    gw.call = call  # type: ignore[method-assign]
    return held


def test_a_lost_write_that_applies_late_is_never_applied_twice(
    etcd: EtcdServer, prefix: str
) -> None:
    """Lost, not seen applied: the store cannot tell it will not apply yet. Either the next
    commit wins its version (the late one then fails its compare), or the late one lands first
    and every later commit refuses (Diverged): the caller's memory lacks an applied write."""
    with EtcdStore.open([etcd.url], prefix) as s:
        held = _lose_answer(s, after_sending=False)
        with pytest.raises(Unavailable):
            s.commit([Change("vpc", "late", {})])
        assert s.commit([Change("vpc", "next", {})]) == 1  # wins version 1
        late = s._gw.call("kv/txn", held[0], idempotent=False)
        assert not late.get("succeeded")  # compare on head: the late one lost
        assert sorted(k for _, k in s.load().records) == ["next"]

        held = _lose_answer(s, after_sending=False)
        with pytest.raises(Unavailable):
            s.commit([Change("vpc", "late2", {})])
        assert s._gw.call("kv/txn", held[0], idempotent=False).get("succeeded")  # lands late
        with pytest.raises(Diverged, match="did apply at version 2"):
            s.commit([Change("vpc", "after", {})])
        with pytest.raises(Diverged):  # and stays so: the owner must reload
            s.commit([Change("vpc", "after", {})])
        assert sorted(k for _, k in s.load().records) == ["late2", "next"]


def test_a_write_whose_answer_was_lost_is_resolved_from_the_log(
    etcd: EtcdServer, prefix: str
) -> None:
    with EtcdStore.open([etcd.url], prefix) as s:
        s.commit([Change("vpc", "a", {})])
        _lose_answer(s, after_sending=True)
        assert s.commit([Change("vpc", "b", {})]) == 2  # applied: acknowledged, once
        _lose_answer(s, after_sending=False)
        with pytest.raises(Unavailable):  # not applied: the caller is told, nothing written
            s.commit([Change("vpc", "c", {})])
        snap = s.load()
        assert (snap.version, sorted(k for _, k in snap.records)) == (2, ["a", "b"])
        assert s.commit([Change("vpc", "c", {})]) == 3


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_no_member_answering_is_unavailable_naming_each(etcd: EtcdServer, prefix: str) -> None:
    dead = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(Unavailable, match=r"etcd unavailable: 127\.0\.0\.1:\d+: .*refused"):
        EtcdStore.open([dead], prefix)
    # a dead member before a live one: the store goes on with the live one
    with EtcdStore.open([dead, etcd.url], prefix) as s:
        assert s.commit([Change("vpc", "a", {})]) == 1


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += conn.recv(4096)
    return body


def _member_that_dies_mid_request() -> tuple[str, threading.Thread]:
    """A member answering one request on a kept connection, then taking the next one and
    going away (its connection closed unanswered, its port refusing)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"

    def serve() -> None:
        conn, _ = listener.accept()
        _read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        _read_request(conn)  # got it (maybe applied it), then gone
        listener.close()
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return url, thread


def test_a_write_a_member_may_have_got_is_never_sent_to_another(
    etcd: EtcdServer, prefix: str
) -> None:
    """The kept connection breaks and the member refuses the retry: the write may have been
    received, so it is a lost answer, not one to send to the next member (twice)."""
    url, thread = _member_that_dies_mid_request()
    gw = Gateway([url, etcd.url])
    assert gw.call("kv/range", {"key": plan.b64(prefix)}, idempotent=True) == {}
    put = {"success": [plan.put_op(prefix + "once", "1")]}
    with pytest.raises(Unavailable) as err:
        gw.call("kv/txn", put, idempotent=False)
    assert err.value.lost
    thread.join(timeout=30)
    found = Gateway([etcd.url]).call(
        "kv/range", {"key": plan.b64(prefix + "once")}, idempotent=True
    )
    assert "kvs" not in found


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"store": "mysql"}, "controller.store: sqlite or etcd, not 'mysql'"),
        ({}, "controller.store_path: required with store = sqlite"),
        ({"store": "etcd"}, "controller.etcd_endpoints: required with store = etcd"),
        ({"store": "etcd", "etcd_endpoints": "h:2379"}, "controller.etcd_endpoints: 'h:2379'"),
        (
            {"store": "etcd", "etcd_endpoints": "http://h:2379", "etcd_prefix": "m"},
            "controller.etcd_prefix: starts and ends with '/'",
        ),
    ],
)
def test_store_settings_name_the_field_they_refuse(values: dict[str, str], error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        store_settings(values, "ctl1")


def test_store_settings_default_to_sqlite_and_put_each_shard_under_its_name() -> None:
    assert store_settings({"store_path": "/s.db"}, "ctl1").path == "/s.db"
    etcd = store_settings(
        {"store": "etcd", "etcd_endpoints": " http://a:2379, http://b:2379 "}, "ctl1"
    )
    assert (etcd.backend, etcd.endpoints, etcd.prefix) == (
        "etcd",
        ("http://a:2379", "http://b:2379"),
        "/meshpeer/shards/ctl1/store/",
    )


# --- VPC ownership claims ------------------------------------------------------------------


def test_a_vpc_is_claimed_once_and_every_follower_learns_it(etcd: EtcdServer) -> None:
    prefix = f"/deploy{next(_prefixes)}/"
    ctl1 = Ownership(Gateway([etcd.url]), prefix)
    ctl2 = Ownership(Gateway([etcd.url]), prefix)
    seen: list[dict[str, str]] = []
    breaks: list[float] = []  # follow_claims sleeps only after its watch broke
    done = threading.Event()

    def sleep(seconds: float) -> None:
        if done.is_set():
            raise _Done
        breaks.append(seconds)

    def follow() -> None:
        with contextlib.suppress(_Done):
            follow_claims(Ownership(Gateway([etcd.url]), prefix), seen.append, sleep)

    threading.Thread(target=follow, daemon=True).start()
    assert ctl1.claim("blue", "ctl1") == "ctl1"
    assert ctl2.claim("blue", "ctl2") == "ctl1"  # the second claim names the owner
    assert ctl1.claim("blue", "ctl1") == "ctl1"  # a claim is idempotent for its owner
    ctl2.release("blue", "ctl2")  # not its own: nothing happens
    assert ctl2.claim("red", "ctl2") == "ctl2"
    wait_for(lambda: seen and seen[-1] == {"blue": "ctl1", "red": "ctl2"}, what="the watch")
    ctl1.release("blue", "ctl1")
    wait_for(lambda: seen[-1] == {"red": "ctl2"}, what="the release, watched")
    assert ctl2.claim("blue", "ctl2") == "ctl2"
    assert ctl1.snapshot()[0] == {"blue": "ctl2", "red": "ctl2"}
    wait_for(lambda: seen[-1] == {"blue": "ctl2", "red": "ctl2"}, what="the new claim, watched")
    done.set()
    assert breaks == []  # one snapshot, then every change from the one watch


class _Done(Exception):
    pass


def test_claims_follow_watch_events() -> None:
    events = [
        plan.WatchEvent("/m/vpcs/blue", "ctl1", 5),
        plan.WatchEvent("/m/vpcs/red", "ctl2", 6),
        plan.WatchEvent("/m/vpcs/blue", None, 7),
    ]
    assert plan.apply_claims("/m/", {"old": "ctl3"}, events) == {"old": "ctl3", "red": "ctl2"}
    message = {
        "result": {
            "events": [
                {
                    "kv": {
                        "key": plan.b64("/m/vpcs/a"),
                        "value": plan.b64("c1"),
                        "mod_revision": "3",
                    }
                },
                {"type": "DELETE", "kv": {"key": plan.b64("/m/vpcs/b"), "mod_revision": "4"}},
            ]
        }
    }
    assert plan.watch_events(message) == [
        plan.WatchEvent("/m/vpcs/a", "c1", 3),
        plan.WatchEvent("/m/vpcs/b", None, 4),
    ]


# --- election on a real etcd ---------------------------------------------------------------


def _leadership(etcd: EtcdServer, prefix: str, me: election.Leader) -> Leadership:
    return Leadership(Gateway([etcd.url]), prefix, "ctl1", me, 2.0, time.monotonic)


def _leader_lease(etcd: EtcdServer, prefix: str) -> int:
    key = election.leader_key(prefix, "ctl1")
    answer = Gateway([etcd.url]).call("kv/range", {"key": plan.b64(key)}, idempotent=True)
    return int(answer["kvs"][0]["lease"])


def test_a_leader_restarted_within_its_ttl_waits_for_its_old_lease(
    etcd: EtcdServer, prefix: str
) -> None:
    """The key naming this replica on the dead process's lease is not a win: the restarted
    replica leads only once it holds the key on its own new lease."""
    me = election.Leader("a", "http://10.0.0.1:8080")
    old = _leadership(etcd, prefix, me).campaign(time.sleep)  # then "killed": never renewed
    term = _leadership(etcd, prefix, me).campaign(time.sleep, poll_s=0.05)
    assert term.lease_id != old.lease_id
    assert _leader_lease(etcd, prefix) == term.lease_id


def test_a_crashed_leader_restarted_lets_the_waiting_standby_lead(
    etcd: EtcdServer, prefix: str
) -> None:
    """A leader killed and restarted at once (its supervisor) and the standby that was waiting
    both see the old lease run out; the restarted one defers its campaign, the standby leads
    (the lab's kill -9 test relies on it), and the restarted one stands by."""
    a = election.Leader("a", "http://10.0.0.1:8080")
    b = election.Leader("b", "http://10.0.0.2:8080")
    _leadership(etcd, prefix, a).campaign(time.sleep)  # then "killed": never renewed
    restarted = _leadership(etcd, prefix, a)
    waiting = _leadership(etcd, prefix, b)
    won: list[str] = []
    threads = [
        threading.Thread(
            target=lambda: (restarted.campaign(time.sleep, 0.05, defer_s=5.0), won.append("a"))
        ),
        threading.Thread(target=lambda: (waiting.campaign(time.sleep, 0.05), won.append("b"))),
    ]
    for t in threads:
        t.start()
    threads[1].join(30)
    assert won == ["b"]
    threads[0].join(30)  # b never renews: once its lease runs out, the restarted one leads
    assert won == ["b", "a"]


def test_a_replica_that_lost_the_lead_cannot_commit(etcd: EtcdServer, prefix: str) -> None:
    """Every commit compares that the leader key is on this replica's lease: once another
    replica leads, the old leader's commit writes nothing and says it lost the lead."""
    a = _leadership(etcd, prefix, election.Leader("a", "http://10.0.0.1:8080"))
    b = _leadership(etcd, prefix, election.Leader("b", "http://10.0.0.2:8080"))
    store = EtcdStore.open([etcd.url], prefix + "store/")
    lost: list[bool] = []
    term = a.campaign(time.sleep)
    store.fence(a.fence(term), lambda: lost.append(True))
    assert store.commit([Change("vpc", "before", {})]) == 1
    a.resign(term)
    b_term = b.campaign(time.sleep)
    assert _leader_lease(etcd, prefix) == b_term.lease_id
    with pytest.raises(LostLead):
        store.commit([Change("vpc", "after", {})])
    assert lost and store.version == 1 and ("vpc", "after") not in store.load().records
    with pytest.raises(LostLead):  # and it stays refused
        store.commit([Change("vpc", "later", {})])


# --- election decisions (pure) ---------------------------------------------------------------


def test_a_term_renews_every_third_of_its_ttl_and_holds_for_one_ttl() -> None:
    term = election.Term(lease_id=7, ttl=3.0, renewed_sent_at=100.0)
    assert term.renewal_due(100.0) == 1.0 and term.renewal_due(101.5) == 0.0
    assert term.holds(102.9) and not term.holds(103.0)
    # etcd counted the TTL from when it got the renewal: from when it was sent is safe
    renewed = term.renewed(101.0, {"result": {"ID": "7", "TTL": "3"}})
    assert renewed == election.Term(7, 3.0, 101.0)
    assert term.renewed(99.0, {"result": {"TTL": "3"}}) == term  # an older answer moves nothing
    assert term.renewed(101.0, {"result": {"ID": "7"}}) is None  # no TTL: the lease is gone


def test_a_campaign_names_the_leader_whoever_won() -> None:
    me = election.Leader("b", "http://10.0.0.2:8080")
    other = election.Leader("a", "http://10.0.0.1:8080")
    txn = election.campaign_txn("/m/", "ctl1", me, 42)
    assert txn["success"][0]["request_put"]["lease"] == "42"
    assert plan.unb64(txn["compare"][0]["key"]) == "/m/leaders/ctl1"
    assert election.campaign_result({"succeeded": True}, me) == (True, me)
    lost = {"responses": [{"response_range": {"kvs": [{"value": plan.b64(other.value())}]}}]}
    assert election.campaign_result(lost, me) == (False, other)
    assert election.campaign_result({"responses": [{"response_range": {}}]}, me) == (False, None)
    stale = {"responses": [{"response_range": {"kvs": [{"value": plan.b64(me.value())}]}}]}
    assert election.campaign_result(stale, me) == (False, me)  # ours before a restart: not won


@pytest.mark.parametrize("ttl", [0, -2.0, 2.5, float("nan"), "2"])
def test_a_leader_ttl_etcd_cannot_grant_as_such_is_refused_naming_the_field(ttl: Any) -> None:
    """etcd grants whole seconds: 0 (a busy renewal loop) or 2.5 (a lease etcd ends before the
    leader's own checks do) is a config error, not a silent round."""
    with pytest.raises(ValueError, match=r"controller\.leader_ttl: a whole number of seconds"):
        Leadership(Gateway(["http://127.0.0.1:1"]), "/m/", "ctl1", _ME, ttl, time.monotonic)
    assert election.lease_ttl(2.0) == 2


_ME = election.Leader("a", "http://10.0.0.1:8080")


def test_a_standby_answers_503_naming_the_leader() -> None:
    body = standby.answer("ctl1", "b", election.Leader("a", "http://10.0.0.1:8080"))
    assert body["error"] == "unavailable" and body["field"] is None
    assert body["leader"] == {"replica": "a", "url": "http://10.0.0.1:8080"}
    assert standby.answer("ctl1", "b", None)["detail"].endswith("is a standby; no leader yet")
