"""The OHC's directory (ohc/directory_updates.py): the file's to start, then each one its own
shard publishes that checks out; one that does not is refused and the running one stays."""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from collections.abc import Callable
from typing import Any

import pytest

from meshpeer.controller.shard import ShardState
from meshpeer.directory import parse_directory
from meshpeer.protocol import ServiceName
from meshpeer.protocol.directory import (
    DIRECTORY_KEY,
    DIRECTORY_STREAM,
    BadDirectory,
    PublicDirectory,
)
from meshpeer.protocol.messages import Delta, Snapshot
from meshpeer.protocol.stream import ReplicaState
from meshpeer.store.sqlite import Store
from meshpeer.streaming.publisher import StreamHub
from ohc.directory_updates import DirectoryFollower, HostDirectory, Update, take_published
from ohc.subscriptions import Sub
from tests.unit.controller_fixtures import directory

# A host's bootstrap: its own shard only (ctl2), as deployment.md says it may be.
BOOT = parse_directory(
    {"shards": {"ctl2": {"url": "http://169.254.9.11:8080", "vni_range": [2000, 2999]}}},
    secrets=False,
)
CTL3 = {"url": "http://169.254.9.13:8080", "vni_range": [5000, 5999], "vpcs": ["zeta"]}


def published(**extra: Any) -> dict[str, Any]:
    """What ctl2 publishes: the two shards of the fixture directory, and ``extra`` entries."""
    return {**PublicDirectory(directory().shards).to_json(), **extra}


def test_a_published_directory_adds_removes_and_changes_shards() -> None:
    got = take_published(BOOT, published(), "ctl2")
    assert (got.added, got.removed, got.changed) == (("ctl1",), (), ("ctl2",))  # ctl2: its VPC
    assert got.directory.url_of("blue") == "http://169.254.9.10:8080"  # pinned at ctl1
    again = take_published(got.directory, published(ctl3=CTL3), "ctl2")
    assert (again.added, again.removed, again.changed) == (("ctl3",), (), ())
    assert again.directory.url_of("zeta") == CTL3["url"]
    same = take_published(again.directory, published(ctl3=CTL3), "ctl2")
    assert not same and same.directory.shards == again.directory.shards
    gone = take_published(again.directory, published(), "ctl2")
    assert (gone.added, gone.removed) == ((), ("ctl3",))


def test_what_does_not_check_out_is_refused_and_the_running_directory_stays() -> None:
    known = HostDirectory(BOOT)
    known.take(published())
    running = known.current
    for bad in (
        published(ctl3={**CTL3, "vni_range": [1500, 5999]}),  # overlaps ctl1's
        published(ctl3={**CTL3, "federation_token": "x" * 20}),  # a secret: not a field
        {"ctl1": published()["ctl1"]},  # without the shard that publishes it
        {},
    ):
        with pytest.raises(BadDirectory):
            known.take(bad)
        assert known.current is running


def test_the_callables_handed_out_follow_each_update() -> None:
    known = HostDirectory(BOOT)
    url_of, replicas, canonical = known.url_of, known.replica_urls, known.canonical_url
    assert known.urls() == ["http://169.254.9.11:8080"]
    assert url_of("zeta") == "http://169.254.9.11:8080"  # the one shard there is
    a, b = "http://169.254.9.13:8080", "http://169.254.9.14:8080"
    known.take(published(ctl3={**CTL3, "replicas": [a, b]}))
    assert url_of("zeta") == a
    assert replicas(b) == (a, b) and canonical(b) == a
    assert known.urls() == sorted(["http://169.254.9.10:8080", "http://169.254.9.11:8080", a])
    assert known.home == "ctl2"  # the file's first shard, whatever the updates list


class FakeClient:
    def __init__(self, sub: Sub, auth: str, on_change: Callable[..., None]) -> None:
        self.sub, self.auth, self.on_change = sub, auth, on_change
        self.running = False
        self.bytes_received = self.objects_received = 0
        self.used_auth: str | None = auth

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False

    def set_auth(self, auth: str | None) -> None:
        self.auth = auth or ""


def test_the_follower_takes_changes_refuses_bad_ones_and_moves_with_its_shard(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clients: list[FakeClient] = []

    def make(sub: Sub, auth: str, on_change: Any, on_close: Any, on_error: Any) -> FakeClient:
        clients.append(FakeClient(sub, auth, on_change))
        return clients[-1]

    updates: list[Update] = []
    known = HostDirectory(BOOT)
    follower = DirectoryFollower("hv1", known, make, "mph1.hv1.h1.x", updates.append)
    follower.start()
    (first,) = clients
    assert first.sub == Sub(BOOT.shards["ctl2"].url, ServiceName.DIRECTORY, DIRECTORY_KEY)
    assert first.running and first.auth == "mph1.hv1.h1.x"
    replica = ReplicaState(ServiceName.DIRECTORY, DIRECTORY_KEY)

    def send(msg: Snapshot | Delta) -> None:
        replica.apply(msg)
        first.on_change(replica, msg)

    send(Snapshot(ServiceName.DIRECTORY, DIRECTORY_KEY, 1, published()))
    assert [u.added for u in updates] == [("ctl1",)]
    send(Delta(ServiceName.DIRECTORY, DIRECTORY_KEY, 2, {"ctl3": CTL3}, ()))
    assert [u.added for u in updates] == [("ctl1",), ("ctl3",)]
    running = known.current
    with caplog.at_level(logging.ERROR):
        bad = {**CTL3, "vni_range": [1000, 1000]}
        send(Delta(ServiceName.DIRECTORY, DIRECTORY_KEY, 3, {"ctl3": bad}, ()))
    assert len(updates) == 2 and known.current is running
    assert "vni_range: overlaps the range of shard" in caplog.text and follower.refused
    assert first.running  # it goes on: the next change that checks out is taken
    moved = dict(published()["ctl2"], url="http://169.254.9.99:8080")
    send(Delta(ServiceName.DIRECTORY, DIRECTORY_KEY, 4, {"ctl2": moved, "ctl3": CTL3}, ()))
    assert updates[-1].changed == ("ctl2",) and follower.refused is None
    assert not first.running and clients[-1].running  # followed at the shard's new URL
    assert clients[-1].sub.url == "http://169.254.9.99:8080"
    follower.stop()
    assert not clients[-1].running


def test_the_home_shard_is_the_files_first() -> None:
    two = dataclasses.replace(directory(), shards=dict(reversed(directory().shards.items())))
    assert HostDirectory(two).home == "ctl2"
    assert HostDirectory(directory()).home == "ctl1"


def test_a_vpc_claimed_by_a_shard_it_does_not_hash_to_is_found_at_its_claimant(
    tmp_path: pathlib.Path,
) -> None:
    """Found by the previous change's own "left": claims (etcd) were not published, so a host
    looked up a VPC created at a shard its name does not hash to at its hash shard. The
    claim taken by the shard's watch is a delta of the claimant's entry; released, the VPC
    goes back to its hash."""
    d = directory(ctl1=["blue"], ctl2=[])
    assert d.owner_of("teal") == "ctl2"  # its hash
    store = Store.open(str(tmp_path / "s.db"), synchronous="NORMAL")
    s = ShardState("ctl1", d, store, StreamHub(base_version=1 << 32), lambda: 1000.0)
    known = HostDirectory(dataclasses.replace(BOOT, shards={"ctl1": d.shards["ctl1"]}))
    ctl1, ctl2 = d.shards["ctl1"].url, d.shards["ctl2"].url
    known.take(s.hub.objects(DIRECTORY_STREAM))
    assert known.url_of("teal") == ctl2
    version = s.hub.version(DIRECTORY_STREAM)
    s.take_claims({"teal": "ctl1"})  # created at ctl1: its claim in etcd, seen by the watch
    assert s.hub.version(DIRECTORY_STREAM) > version
    update = known.take(s.hub.objects(DIRECTORY_STREAM))
    assert update.changed == ("ctl1",)
    assert known.url_of("teal") == ctl1
    s.take_claims({})  # deleted: its claim released
    known.take(s.hub.objects(DIRECTORY_STREAM))
    assert known.url_of("teal") == ctl2
    store.close()
