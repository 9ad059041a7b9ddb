"""What only the etcd store has to show: many writers, lost answers, a cluster that is gone.

The shared contract (versions, atomicity, restart, log) is tests/unit/test_store.py, run
against both backends.
"""

from __future__ import annotations

import contextlib
import itertools
import pathlib
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import pytest
import requests

from meshpeer.controller import standby
from meshpeer.controller.shard import ShardState
from meshpeer.directory import DirectoryError, shard_doc, shared_shards
from meshpeer.store import Change, Conflict, election
from meshpeer.store import etcdplan as plan
from meshpeer.store.backends import leadership, open_store
from meshpeer.store.etcd import (
    Diverged,
    EtcdStore,
    Gateway,
    Leadership,
    LostLead,
    Ownership,
    Rejected,
    SharedDirectory,
    Unavailable,
    follow,
    follow_claims,
    shared_directory,
)
from meshpeer.store.settings import store_settings
from meshpeer.store.sqlite import Store
from meshpeer.streaming.publisher import StreamHub
from tests.support.etcd import EtcdServer, etcd_cluster, etcd_server, put_key
from tests.support.wait import wait_for
from tests.unit.controller_fixtures import directory

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
    """The kept connection breaks after the request was sent: the write may have been
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


@contextlib.contextmanager
def _member_answering(
    status: int, body: bytes, tls_files: tuple[str, str] | None = None
) -> Iterator[str]:
    """A member that answers every request with ``status`` and ``body`` (over https with
    ``tls_files``, a certificate and its key): its URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    done = threading.Event()
    answer = b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)
    ctx = None
    if tls_files is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*tls_files)

    def one(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            conn.settimeout(10)
            sock = ctx.wrap_socket(conn, server_side=True) if ctx else conn
            while not done.is_set():
                _read_request(sock)
                sock.sendall(answer)

    def serve() -> None:
        while not done.is_set():
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                threading.Thread(target=one, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"{'https' if ctx else 'http'}://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        done.set()
        thread.join(timeout=5)
        listener.close()


@pytest.mark.parametrize("inside_except", [False, True])
@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (503, b'{"code":14,"message":"etcdserver: request timed out"}', "lost"),
        (500, b'{"code":14,"message":"etcdserver: leader changed"}', "lost"),
        (429, b'{"code":8,"message":"etcdserver: too many requests"}', "next member"),
        (400, b'{"code":3,"message":"etcdserver: too many operations in txn"}', "refused"),
    ],
)
def test_what_a_members_answer_means_for_a_write(
    etcd: EtcdServer, prefix: str, status: int, body: bytes, outcome: str, inside_except: bool
) -> None:
    """etcd without a leader or timing out may still apply a write: it is not sent to the next
    member. Turned away for lack of resources it did not: the next member takes it. A refusal
    is the caller's. The same while the caller happens to be handling a refused connection
    (review R2: nothing is read from what the caller was handling)."""
    put = {"success": [plan.put_op(prefix + "w", "1")]}
    with _member_answering(status, body) as url:
        gw = Gateway([url, etcd.url], timeout=5.0)
        try:
            if inside_except:
                try:
                    requests.post(f"http://127.0.0.1:{_closed_port()}/", timeout=5.0)
                except requests.ConnectionError:
                    got = _outcome(gw, put)
            else:
                got = _outcome(gw, put)
        finally:
            gw.close()
    assert got == outcome
    with closing(Gateway([etcd.url])) as check:
        found = check.call("kv/range", {"key": plan.b64(prefix + "w")}, idempotent=True)
    assert ("kvs" in found) is (outcome == "next member")


def _outcome(gw: Gateway, txn: dict[str, Any]) -> str:
    try:
        gw.call("kv/txn", txn, idempotent=False)
    except Unavailable as exc:
        return "lost" if exc.lost else "unavailable"
    except Rejected:
        return "refused"
    return "next member"


def test_a_member_whose_certificate_does_not_check_out_never_got_the_write(
    tmp_path: pathlib.Path,
) -> None:
    """The handshake failed at the client, before any request: the write goes to the next
    member (review R5)."""
    from meshpeer import pki

    other = pki.make_ca(str(tmp_path), "another CA")
    stranger = pki.issue_server(other, str(tmp_path / "stranger"), "etcd", ["127.0.0.1"])
    with (
        etcd_cluster(1, tls=True) as cluster,
        _member_answering(200, b"{}", (stranger.cert_file, stranger.key_file)) as url,
    ):
        assert cluster.tls is not None
        gw = Gateway([url, *cluster.urls], 5.0, cluster.tls.ca_file, cluster.tls.client_cert)
        key = "/r5/w"
        with closing(gw):
            gw.call("kv/txn", {"success": [plan.put_op(key, "1")]}, idempotent=False)
            found = gw.call("kv/range", {"key": plan.b64(key)}, idempotent=True)
        assert "kvs" in found


def test_a_ca_file_gone_for_a_moment_is_unavailable_and_the_lease_keeper_goes_on(
    tmp_path: pathlib.Path,
) -> None:
    """A rotation that removes the CA file and writes it again: meanwhile requests refuses
    every request, kept connections too, with a bare OSError (review R1). That is the store
    unavailable (a 503; nothing was sent), and the lease keeper goes on trying, as it does
    while etcd cannot be reached."""
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    gw = Gateway([f"https://127.0.0.1:{_closed_port()}"], timeout=1.0, ca_file=str(ca))
    ca.unlink()
    with pytest.raises(Unavailable, match=r"ca\.pem") as got:
        gw.call("kv/txn", {}, idempotent=False)
    assert not got.value.lost
    lead = Leadership(gw, "/p/", "s1", election.Leader("r1", "http://x"), 2.0, lambda: 100.0)
    sleeps: list[float] = []

    class Enough(Exception):
        pass

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) > 3:
            raise Enough

    with pytest.raises(Enough):
        lead.keep(election.Term(0x1234, 2, 100.0), sleep)


def test_without_etcd_ca_file_https_trusts_the_systems_store_or_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """Never certifi's bundle, requests' default (review R4)."""
    bundle = tmp_path / "system.pem"
    bundle.write_text("x")
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    assert Gateway(["https://127.0.0.1:1"]).members[0].client.session.verify == str(bundle)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "none.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "none"))
    with pytest.raises(ValueError, match=r"controller\.etcd_ca_file: required"):
        Gateway(["https://127.0.0.1:1"])
    Gateway(["http://127.0.0.1:1"])  # plain http needs none


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


def _leadership(
    etcd: EtcdServer, prefix: str, me: election.Leader, gateway: Gateway | None = None
) -> Leadership:
    gw = gateway or Gateway([etcd.url])
    return Leadership(gw, prefix, "ctl1", me, 2.0, time.monotonic)


def _leader_lease(etcd: EtcdServer, prefix: str) -> int:
    key = election.leader_key(prefix, "ctl1")
    with closing(Gateway([etcd.url])) as gw:
        answer = gw.call("kv/range", {"key": plan.b64(key)}, idempotent=True)
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


def test_a_restarted_replica_that_saw_another_lead_no_longer_defers(
    etcd: EtcdServer, prefix: str
) -> None:
    """Found by the lab's failover benchmark (a write loop and kills every few seconds): a
    replica restarted while its dead process's key was there, which then saw another replica
    lead (the key taken over between two of its looks, so it never saw it absent), still
    deferred its campaign when that leader died; the replica restarted after *that* crash
    deferred too, and won the toss about half the time: the standby that had been waiting
    did not take over. Once it has seen another leader it is a waiting standby like any."""
    a = election.Leader("a", "http://10.0.0.1:8080")
    b = election.Leader("b", "http://10.0.0.2:8080")
    gw = Gateway([etcd.url])  # every one's (closed after: no socket left to the GC)
    dead = _leadership(etcd, prefix, a, gw).campaign(time.sleep)  # a's process, then "killed"
    restarted = _leadership(etcd, prefix, a, gw)
    other = _leadership(etcd, prefix, b, gw)
    slept: list[float] = []
    steps = iter(
        [
            # between two looks of the restarted a: the old lease goes and b takes over
            lambda: (
                gw.call("lease/revoke", {"ID": str(dead.lease_id)}, idempotent=True),
                b_term.append(other.campaign(time.sleep)),
            ),
            # a has seen b lead; then b dies (its lease gone at once)
            lambda: gw.call("lease/revoke", {"ID": str(b_term[0].lease_id)}, idempotent=True),
        ]
    )
    b_term: list[election.Term] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        next(steps, lambda: None)()

    try:
        term = restarted.campaign(sleep, poll_s=0.01, defer_s=0.77)
    finally:
        gw.close()
    assert restarted.leader == a and _leader_lease(etcd, prefix) == term.lease_id
    assert 0.77 not in slept, slept  # it campaigned at once, as a waiting standby does


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


# --- the shard directory in etcd -----------------------------------------------------------


def _put(etcd: EtcdServer, key: str, value: str | bytes | None) -> None:
    """What an operator's ``etcdctl put`` (None: ``del``) does."""
    put_key(etcd.url, key, value)


def test_the_directory_is_seeded_once_and_a_shard_follows_it_refusing_bad_entries(
    etcd: EtcdServer, tmp_path: pathlib.Path
) -> None:
    prefix = f"/deploy{next(_prefixes)}/"
    d = directory()  # ctl1: blue, green; ctl2: red
    docs = {name: shard_doc(s) for name, s in d.shards.items()}
    with closing(Gateway([etcd.url])) as gw:
        assert SharedDirectory(gw, prefix).seed(docs) == ["ctl1", "ctl2"]
        # another shard's file: ctl1 elsewhere and a new shard ctl3: seeded already, so
        # nothing of it is put (etcd's entries stay); ctl3 is added in etcd, by an operator
        ctl3 = {"url": "http://169.254.9.13:8080", "vni_range": [5000, 5999]}
        other = {**docs, "ctl1": {**docs["ctl1"], "url": "http://elsewhere:1"}, "ctl3": ctl3}
        assert SharedDirectory(gw, prefix).seed(other) == []
    _put(etcd, f"{prefix}directory/shards/ctl3", plan.canonical(ctl3))

    store = Store.open(str(tmp_path / "s.db"), synchronous="NORMAL")
    s = ShardState("ctl1", d, store, StreamHub(base_version=1 << 32), lambda: 1000.0)
    seen: list[tuple[dict[str, str], bool]] = []
    done = threading.Event()

    def take(texts: dict[str, str]) -> None:
        if done.is_set():
            raise _Done
        seen.append((texts, s.take_shared_directory(texts)))

    def sleep(seconds: float) -> None:
        if done.is_set():
            raise _Done
        time.sleep(seconds)

    def run() -> None:
        with contextlib.suppress(_Done), closing(Gateway([etcd.url])) as gw:
            follow(SharedDirectory(gw, prefix), take, sleep)

    follower = threading.Thread(target=run, daemon=True)
    follower.start()
    try:
        wait_for(lambda: "ctl3" in s.directory.shards, what="ctl3, put in etcd, read")
        assert s.directory.shards["ctl1"].url == d.shards["ctl1"].url  # the first seed's
        key = f"{prefix}directory/shards/"
        moved = {**docs["ctl2"], "url": "http://10.0.0.99:8080"}
        _put(etcd, key + "ctl2", plan.canonical(moved))  # an operator moves ctl2
        wait_for(lambda: s.directory.url_of("red") == "http://10.0.0.99:8080", what="ctl2 moved")
        for name, bad, why in [
            ("ctl2", "{not json", "shards.ctl2: not JSON"),
            ("ctl2", plan.canonical({**moved, "vni_range": [5500, 6000]}), "overlaps"),
            ("ctl3", plan.canonical({**ctl3, "url": "ftp://x"}), "shards.ctl3.url"),
            ("ctl1", None, "shards.ctl1: absent"),  # the reader itself removed
        ]:
            before, n = s.directory, len(seen)
            _put(etcd, key + name, bad)
            texts, taken = wait_for(lambda: seen[n:] and seen[-1], what=f"{name} {why}")  # noqa: B023
            assert texts.get(name) == bad and taken is False, (texts, why)
            with pytest.raises(DirectoryError, match=re.escape(why)):
                shared_shards(texts, "ctl1")
            assert s.directory is before  # refused whole: what runs stays
            good = {"ctl1": docs["ctl1"], "ctl2": moved, "ctl3": ctl3}[name]
            _put(etcd, key + name, plan.canonical(good))
            wait_for(lambda: seen[-1][0].get(name) == plan.canonical(good), what="restored")  # noqa: B023
        assert s.directory.shards["ctl3"].vni_range == (5000, 5999)
        assert s.directory.url_of("red") == "http://10.0.0.99:8080"
    finally:
        done.set()
        _put(etcd, f"{prefix}directory/shards/ctl1", "x")  # the watch hands it over: it stops
        follower.join(30)
        store.close()
    assert not follower.is_alive()


def test_a_shard_does_not_start_on_a_directory_in_etcd_that_does_not_check_out(
    etcd: EtcdServer,
) -> None:
    from ryu_apps.controller import _read_shared

    prefix = f"/deploy{next(_prefixes)}/"
    d = directory()
    with closing(Gateway([etcd.url])) as gw:
        shared = SharedDirectory(gw, prefix)
        started = _read_shared(shared, d, "ctl1")  # seeds, then reads what it seeded
        assert started.shards == d.shards
        overlapping = {**shard_doc(d.shards["ctl2"]), "vni_range": [1500, 1600]}
        _put(etcd, f"{prefix}directory/shards/ctl2", plan.canonical(overlapping))
        with pytest.raises(SystemExit, match=r"directory/shards/\).*ctl2.vni_range: overlaps"):
            _read_shared(shared, d, "ctl1")
        _put(etcd, f"{prefix}directory/shards/ctl2", b"\xff\xfe")  # not UTF-8: named too
        with pytest.raises(SystemExit, match=r"directory/shards/\).*shards.ctl2: not JSON"):
            _read_shared(shared, d, "ctl1")


def test_an_entry_removed_or_reassigned_in_etcd_is_not_seeded_again(etcd: EtcdServer) -> None:
    """Seeding happens once per directory (a marker key, all entries in one transaction): an
    operator's removal in etcd sticks through every later start with the old file, and a
    removed shard's range given to a new one keeps etcd's directory valid (review E2)."""
    from ryu_apps.controller import _read_shared

    prefix = f"/deploy{next(_prefixes)}/"
    d = directory()  # ctl1 1000-1999, ctl2 2000-2999
    docs = {name: shard_doc(s) for name, s in d.shards.items()}
    key = f"{prefix}directory/shards/"
    with closing(Gateway([etcd.url])) as gw:
        shared = SharedDirectory(gw, prefix)
        assert shared.seed(docs) == ["ctl1", "ctl2"]
        _put(etcd, key + "ctl2", None)  # ctl2 retired, in etcd (docs/store.md)
        assert shared.seed(docs) == [], "ctl2 came back from a file"
        assert sorted(shared.snapshot()[0]) == ["ctl1"]
        ctl3 = {"url": "http://169.254.9.13:8080", "vni_range": [2000, 2999]}  # ctl2's range
        _put(etcd, key + "ctl3", plan.canonical(ctl3))
        started = _read_shared(shared, d, "ctl1")  # ctl1 restarts on its unchanged file
        assert sorted(started.shards) == ["ctl1", "ctl3"]
        _put(etcd, key + "ctl3", None)
        _put(etcd, key + "ctl1", None)  # every entry gone: still seeded, nothing comes back
        assert shared.seed(docs) == [] and shared.snapshot()[0] == {}
    # a directory put by hand (entries, no marker) is not seeded over, and is marked
    other = f"/deploy{next(_prefixes)}/"
    _put(etcd, f"{other}directory/shards/ctl1", plan.canonical(docs["ctl1"]))
    with closing(Gateway([etcd.url])) as gw:
        hand = SharedDirectory(gw, other)
        assert hand.seed(docs) == [] and sorted(hand.snapshot()[0]) == ["ctl1"]
        _put(etcd, f"{other}directory/shards/ctl1", None)
        assert hand.seed(docs) == [] and hand.snapshot()[0] == {}


def test_an_entry_that_is_not_utf8_is_refused_naming_it(etcd: EtcdServer) -> None:
    """A value (or key) that is not UTF-8 reaches ``shared_shards``, which names the entry;
    it is not a broken read retried for ever (review E7)."""
    prefix = f"/deploy{next(_prefixes)}/"
    d = directory()
    with closing(Gateway([etcd.url])) as gw:
        shared = SharedDirectory(gw, prefix)
        shared.seed({n: shard_doc(s) for n, s in d.shards.items()})
        _put(etcd, f"{prefix}directory/shards/ctl2", b"\xff\xfe")
        texts, _ = shared.snapshot()
        with pytest.raises(DirectoryError, match=r"shards\.ctl2: not JSON"):
            shared_shards(texts, "ctl1")
    raw = {"key": plan.b64(f"{prefix}directory/shards/ctl2"), "value": "//4=", "mod_revision": "9"}
    (event,) = plan.watch_events({"result": {"events": [{"kv": raw}]}})
    watched = shared.apply({"ctl1": texts["ctl1"]}, [event])
    with pytest.raises(DirectoryError, match=r"shards\.ctl2: not JSON"):
        shared_shards(watched, "ctl1")


# --- shards to etcd over TLS with a client certificate ----------------------------------------


def test_a_shard_reaches_an_etcd_that_asks_for_client_certificates_only_with_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through the configured CA and straight to etcd: an environment's CA bundle or proxy
    (what requests would take by default) changes nothing."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/ca.pem")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with etcd_cluster(1, tls=True) as cluster:
        assert cluster.tls is not None
        (url,) = cluster.urls
        assert url.startswith("https://")
        values = {
            "store": "etcd",
            "etcd_endpoints": url,
            "etcd_ca_file": cluster.tls.ca_file,
            "etcd_cert_file": cluster.tls.client_cert[0],
            "etcd_key_file": cluster.tls.client_cert[1],
        }
        settings = store_settings(values, "ctl1")
        assert settings.client_cert == cluster.tls.client_cert
        store = open_store(settings)
        assert store.commit([Change("vpc", "blue", {})]) == 1
        store.close()
        shared = shared_directory(settings)
        assert shared is not None
        try:
            assert shared.seed({"ctl1": {"url": "https://x", "vni_range": [1, 9]}})
        finally:
            shared.close()
        # the same cluster without the certificate: refused. With TLS 1.3 the client sees
        # either etcd's alert (bad certificate) or only the close after the handshake, as the
        # timing goes (review E1); either way the error names the client certificate
        bare = {k: v for k, v in values.items() if k not in ("etcd_cert_file", "etcd_key_file")}
        with pytest.raises(Unavailable, match=r"(?i)certificate"):
            open_store(store_settings(bare, "ctl1"))


@contextlib.contextmanager
def _member_that_closes_at_once() -> Iterator[int]:
    """A port whose every connection is closed as soon as it is taken (nothing read)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        done.set()
        thread.join(timeout=5)
        listener.close()


@pytest.mark.parametrize(("scheme", "hint"), [("https", True), ("http", False)])
def test_an_https_member_that_closes_at_the_handshake_is_said_to_refuse_the_certificate(
    scheme: str, hint: bool
) -> None:
    """What a client without an accepted certificate often sees (TLS 1.3): only the close.
    The error says what it most likely means (review E1); a plain http member's does not.
    The close comes after the request may have been sent: a read goes on, a write does not."""
    with _member_that_closes_at_once() as port:
        gateway = Gateway([f"{scheme}://127.0.0.1:{port}"], timeout=5.0)
        with pytest.raises(Unavailable) as got:
            gateway.call("kv/range", {}, idempotent=True)
        assert ("client certificate refused?" in str(got.value)) is hint, got.value
        assert not got.value.lost
        with pytest.raises(Unavailable) as got:
            gateway.call("kv/txn", {}, idempotent=False)
        assert got.value.lost
        gateway.close()


def test_a_certificate_key_or_ca_that_does_not_load_stops_the_shard_naming_them(
    tmp_path: pathlib.Path,
) -> None:
    """Loaded when the shard starts (``leadership``, in the app's ValueError -> SystemExit),
    not first at the campaign's connection, retried for ever at INFO (review E6)."""
    from meshpeer import pki

    ca = pki.make_ca(str(tmp_path), "test CA")
    one = pki.issue_client(ca, str(tmp_path / "one"), "ctl1")
    two = pki.issue_client(ca, str(tmp_path / "two"), "ctl1")
    base = {"store": "etcd", "etcd_endpoints": "https://127.0.0.1:2379",
            "etcd_ca_file": ca.cert_file}  # fmt: skip
    me = election.Leader("ctl1", "https://127.0.0.1:8080")
    for cert, key, ca_file, why in [
        ("/nonexistent/ctl1.pem", one.key_file, ca.cert_file, "No such file"),
        (one.cert_file, two.key_file, ca.cert_file, "KEY_VALUES_MISMATCH"),
        (one.cert_file, one.key_file, str(tmp_path / "missing-ca.pem"), "No such file"),
    ]:
        values = {**base, "etcd_cert_file": cert, "etcd_key_file": key, "etcd_ca_file": ca_file}
        with pytest.raises(ValueError, match=r"controller\.etcd_cert_file/.*" + why):
            leadership(store_settings(values, "ctl1"), "ctl1", me, 3.0)
    good = {**base, "etcd_cert_file": one.cert_file, "etcd_key_file": one.key_file}
    assert leadership(store_settings(good, "ctl1"), "ctl1", me, 3.0) is not None


def test_a_client_certificate_goes_with_its_key_and_https() -> None:
    base = {"store": "etcd", "etcd_endpoints": "https://a:2379"}
    for values, field in [
        ({**base, "etcd_cert_file": "/c.pem"}, "controller.etcd_cert_file"),
        ({**base, "etcd_key_file": "/c.key"}, "controller.etcd_cert_file"),
        (
            {**base, "etcd_endpoints": "https://a:2379,http://b:2379", "etcd_cert_file": "/c.pem",
             "etcd_key_file": "/c.key"},
            "must be https://",
        ),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=re.escape(field)):
            store_settings(values, "ctl1")
