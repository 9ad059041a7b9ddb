"""Publisher log, subscriber queue, subscriber replica, heartbeat timing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshpeer.protocol import (
    Close,
    Decoder,
    Delta,
    ErrorMsg,
    Heartbeat,
    Message,
    Outcome,
    ProtocolError,
    ReplicaState,
    ServiceLog,
    ServiceName,
    Snapshot,
    SubscriberQueue,
    encode,
    heartbeat_due,
    peer_dead,
)
from meshpeer.protocol.stream import narrow

DEST = ServiceName.DESTINATION


def ep(n: int) -> dict[str, object]:
    return {"mac": f"02:00:00:00:00:{n:02x}", "vni": 100, "host_ip": "192.168.0.2"}


def log_with(n: int, history: int = 8) -> ServiceLog:
    log = ServiceLog(DEST, "red", history=history)
    for v in range(1, n + 1):
        log.apply(v, {f"10.0.0.{v}": ep(v)})
    return log


# --- ServiceLog -----------------------------------------------------------------------------


def test_apply_returns_normalized_delta() -> None:
    log = ServiceLog(DEST, "red", objects={"a": {"x": 1}, "b": {"x": 2}})
    delta = log.apply(1, {"a": {"x": 1}, "c": {"x": 3}}, ["b", "zz"])
    assert delta == Delta(DEST, "red", 1, {"c": {"x": 3}}, ("b",))
    assert dict(log.objects) == {"a": {"x": 1}, "c": {"x": 3}}
    assert log.version == 1


def test_apply_requires_next_version() -> None:
    log = log_with(2)
    for bad in (2, 4, 0):
        with pytest.raises(ValueError, match="does not follow"):
            log.apply(bad, {})
    assert log.version == 2


def test_apply_rejects_upsert_and_delete_of_same_id() -> None:
    with pytest.raises(ValueError, match="both"):
        ServiceLog(DEST, "red").apply(1, {"a": {}}, ["a"])


def test_snapshot_is_a_copy() -> None:
    log = log_with(1)
    snap = log.snapshot()
    log.apply(2, {}, ["10.0.0.1"])
    assert snap.version == 1 and "10.0.0.1" in snap.objects


def test_resume_none_gives_snapshot() -> None:
    log = log_with(3)
    assert log.resume(None) == [log.snapshot()]


def test_resume_current_gives_nothing() -> None:
    assert log_with(3).resume(3) == []


def test_resume_gives_held_deltas() -> None:
    log = log_with(5)
    out = log.resume(2)
    assert [m.version for m in out if isinstance(m, Delta)] == [3, 4, 5]
    assert len(out) == 3


def test_resume_older_than_history_gives_snapshot() -> None:
    log = log_with(10, history=4)  # holds 7..10
    assert [m.version for m in log.resume(6) if isinstance(m, Delta)] == [7, 8, 9, 10]
    assert log.resume(5) == [log.snapshot()]


def test_resume_from_the_future_gives_snapshot() -> None:
    log = log_with(3)
    assert log.resume(4) == [log.snapshot()]


def test_log_started_at_a_later_version_never_matches_old_since() -> None:
    log = ServiceLog(DEST, "red", version=100, objects={"a": {}})
    assert log.resume(42) == [Snapshot(DEST, "red", 100, {"a": {}})]
    log.apply(101, {"b": {}})
    assert log.resume(100) == [Delta(DEST, "red", 101, {"b": {}}, ())]


def test_zero_history_always_snapshots() -> None:
    log = log_with(3, history=0)
    assert log.resume(2) == [log.snapshot()]


# --- SubscriberQueue --------------------------------------------------------------------------


def test_queue_passes_messages_in_order() -> None:
    log = log_with(0)
    queue = SubscriberQueue(maxlen=4)
    sent: list[Message] = [log.apply(1, {"a": {}}), Heartbeat(1, 10.0), log.apply(2, {"b": {}})]
    for m in sent:
        queue.push(m)
    assert queue.drain(log) == sent
    assert queue.drain(log) == []


def test_overflow_drops_deltas_and_next_drain_is_a_fresh_snapshot() -> None:
    log = log_with(0)
    queue = SubscriberQueue(maxlen=2)
    for v in range(1, 6):  # overflow at the third push; later deltas are dropped too
        queue.push(log.apply(v, {f"o{v}": {}}))
    assert queue.needs_snapshot and len(queue) == 0 and queue.overflows == 1
    assert queue.drain(log) == [log.snapshot()]
    assert not queue.needs_snapshot
    queue.push(log.apply(6, {"o6": {}}))
    assert [m.version for m in queue.drain(log) if isinstance(m, Delta)] == [6]


def test_close_replaces_queue_and_ends_stream() -> None:
    log = log_with(0)
    queue = SubscriberQueue(maxlen=2)
    for v in range(1, 4):
        queue.push(log.apply(v, {}))
    queue.push(Close("peering-gone"))
    queue.push(log.apply(4, {}))
    queue.push(ErrorMsg("late", ""))
    assert queue.closed
    assert queue.drain(log) == [Close("peering-gone")]


def test_pushed_snapshot_supersedes_queue() -> None:
    log = log_with(0)
    queue = SubscriberQueue(maxlen=3)
    queue.push(log.apply(1, {}))
    queue.push(log.snapshot())
    assert queue.drain(log) == [log.snapshot()]


def test_queue_rejects_zero_maxlen() -> None:
    with pytest.raises(ValueError):
        SubscriberQueue(0)


# --- ReplicaState ---------------------------------------------------------------------------


def test_replica_follows_snapshot_then_deltas() -> None:
    log = log_with(2)
    replica = ReplicaState(DEST, "red")
    assert replica.since is None
    assert replica.apply(log.snapshot()) is Outcome.APPLIED
    d = log.apply(3, {"x": {"y": 1}}, ["10.0.0.1"])
    assert replica.apply(d) is Outcome.APPLIED
    assert replica.version == replica.since == 3
    assert dict(replica.objects) == dict(log.objects)
    assert replica.apply(Heartbeat(3, 0.0)) is Outcome.OK


def test_replica_detects_gap_and_keeps_state() -> None:
    log = log_with(2)
    replica = ReplicaState(DEST, "red")
    replica.apply(log.snapshot())
    log.apply(3, {"lost": {}})
    before = dict(replica.objects)
    assert replica.apply(log.apply(4, {"z": {}})) is Outcome.RESYNC
    assert dict(replica.objects) == before and replica.version == 2
    assert replica.apply(Heartbeat(4, 0.0)) is Outcome.RESYNC
    for m in log.resume(replica.since):
        assert isinstance(m, Delta)
        assert replica.apply(m) is Outcome.APPLIED
    assert dict(replica.objects) == dict(log.objects)


def test_replica_delta_before_snapshot_needs_resync() -> None:
    assert ReplicaState(DEST, "red").apply(Delta(DEST, "red", 1, {}, ())) is Outcome.RESYNC


def test_replica_rejects_other_stream() -> None:
    replica = ReplicaState(DEST, "red")
    with pytest.raises(ProtocolError):
        replica.apply(Snapshot(DEST, "blue", 1, {}))
    with pytest.raises(ProtocolError):
        replica.apply(Snapshot(ServiceName.FORWARDING, "red", 1, {}))


# --- the whole path, as a property ------------------------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("apply"), st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 3))
        ),
        st.tuples(st.just("drain"), st.just({})),
        st.tuples(st.just("reconnect"), st.just({})),
    ),
    max_size=60,
)


@given(ops, st.integers(1, 4), st.integers(0, 6))
def test_subscriber_always_converges(
    script: list[tuple[str, dict[str, int]]], maxlen: int, history: int
) -> None:
    """Publisher -> queue -> bytes -> decoder -> replica never gaps and ends equal to the log."""
    log = ServiceLog(DEST, "red", history=history)
    replica = ReplicaState(DEST, "red")

    def connect() -> tuple[SubscriberQueue, Decoder]:
        queue = SubscriberQueue(maxlen)
        for m in log.resume(replica.since):
            queue.push(m)
        return queue, Decoder()

    def deliver(queue: SubscriberQueue, decoder: Decoder) -> None:
        wire = b"".join(encode(m) for m in queue.drain(log))
        for m in decoder.feed(wire):
            assert isinstance(m, Snapshot | Delta | Heartbeat)
            assert replica.apply(m) is not Outcome.RESYNC

    queue, decoder = connect()
    for op, arg in script:
        if op == "apply":
            upserts = {k: {"n": n} for k, n in arg.items() if n}
            deletes = [k for k, n in arg.items() if not n]
            queue.push(log.apply(log.version + 1, upserts, deletes))
            queue.push(Heartbeat(log.version, 0.0))
        elif op == "drain":
            deliver(queue, decoder)
        else:  # connection lost: undelivered messages are gone, resume with since
            queue, decoder = connect()
    deliver(queue, decoder)
    assert replica.version == log.version
    assert dict(replica.objects) == dict(log.objects)


# --- heartbeat timing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("last", "now", "due"), [(10.0, 14.9, False), (10.0, 15.0, True), (10.0, 99.0, True)]
)
def test_heartbeat_due(last: float, now: float, due: bool) -> None:
    assert heartbeat_due(last, now, 5.0) is due


def test_heartbeat_due_when_clock_goes_back() -> None:
    assert heartbeat_due(10.0, 9.0, 5.0)


@pytest.mark.parametrize(
    ("last", "now", "dead"), [(10.0, 25.0, False), (10.0, 25.1, True), (10.0, 5.0, False)]
)
def test_peer_dead(last: float, now: float, dead: bool) -> None:
    assert peer_dead(last, now, 15.0) is dead


# --- destination filter (docs/protocol.md, "Destination filter") ----------------------------

# One write: upsert endpoint name -> address (an address may move to another name), or delete.
WRITES = st.lists(
    st.tuples(st.sampled_from("abcdef"), st.none() | st.sampled_from(["10.0.0.1", "10.0.0.2",
                                                                    "10.0.0.3"])),
    max_size=12,
)  # fmt: skip


@given(writes=WRITES, resume_at=st.integers(0, 12), only=st.sets(st.sampled_from(
    ["10.0.0.1", "10.0.0.2", "10.0.0.3"])))  # fmt: skip
def test_a_narrowed_replica_holds_exactly_the_streams_objects_of_its_addresses(
    writes: list[tuple[str, str | None]], resume_at: int, only: set[str]
) -> None:
    """Whatever the writes, a narrowed subscriber's replica is the stream's objects of its
    addresses at the stream's version: one that followed from the start, and one that left
    at ``resume_at`` and resumed with the deltas since the version it held (no state kept
    between the two subscriptions)."""
    allowed = frozenset(only)

    def fed(replica: ReplicaState, msgs: list[Message]) -> ReplicaState:
        for msg in msgs:
            assert isinstance(msg, Snapshot | Delta)
            assert replica.apply(narrow(msg, allowed)) is Outcome.APPLIED  # type: ignore[arg-type]
        return replica

    log = ServiceLog(DEST, "red", history=64)
    live = fed(ReplicaState(DEST, "red"), [log.snapshot()])
    held = None
    for v, (name, ip) in enumerate(writes, 1):
        if v - 1 == resume_at:
            held = fed(ReplicaState(DEST, "red"), [log.snapshot()])
        fed(live, [log.apply(v, {name: {"ip": ip}} if ip else {}, [] if ip else [name])])
    want = {k: o for k, o in log.objects.items() if o.get("ip") in allowed}
    assert dict(live.objects) == want and live.version == log.version
    if held is not None:
        fed(held, log.resume(held.version))
        assert dict(held.objects) == want and held.version == log.version
