"""Channels on real shards (docs/protocol.md, "Channels"): one connection carries a host's
subscriptions to a shard, and each is checked, served and ended on its own."""

from __future__ import annotations

import json
import time
from typing import Any

from meshpeer.protocol.messages import CHANNEL_HEADER
from tests.api.ctlkit import Cluster, Ctl, stream, tamper
from tests.api.test_roles import blue_and_red


class ChannelReader:
    """``GET /v1/channel`` with a credential, read frame by frame."""

    def __init__(self, ctl: Ctl, credential: str) -> None:
        self.conn = ctl.connection()
        self.conn.request("GET", "/v1/channel", headers={"Authorization": f"Bearer {credential}"})
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.id = self.resp.getheader(CHANNEL_HEADER, "")
        self.held: list[dict[str, Any]] = []  # frames read while waiting for another sub's

    def read(self, timeout: float = 10.0) -> dict[str, Any]:
        sock = self.conn.sock
        assert sock is not None
        sock.settimeout(timeout)
        line = self.resp.readline()
        assert line.endswith(b"\n"), line
        frame: dict[str, Any] = json.loads(line)
        return frame

    def next(self, sub: int, timeout: float = 10.0) -> dict[str, Any]:
        """The next frame of subscription ``sub``, within ``timeout`` seconds. Keepalives are
        skipped; other subscriptions' frames are kept for their own ``next`` (the shard may
        close two subscriptions in either order)."""
        for i, frame in enumerate(self.held):
            if frame.get("sub") == sub:
                return self.held.pop(i)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            frame = self.read(left)
            if frame.get("sub") == sub:
                return frame
            if "sub" in frame:
                self.held.append(frame)
        raise AssertionError(f"no frame of subscription {sub} within {timeout} s: {self.held}")

    def close(self) -> None:
        self.conn.close()


def peer_side(cluster: Cluster, c1: Ctl) -> dict[str, Any]:
    """red's peering object on hv1's peering stream of blue: policy and grant."""
    with stream(c1, cluster.token, "peering", "blue", host="hv1") as s:
        side: dict[str, Any] = s.next()["objects"]["red"]
        return side


def peer_channel(
    cluster: Cluster, red: tuple[str, ...]
) -> tuple[Ctl, dict[str, Any], dict[str, Any], ChannelReader]:
    """blue (hv1) and red (a VM on each of ``red``'s hosts) peered; red's shard, red's side
    as hv1's peering stream lists it, the fields of a subscription of red's destinations
    for hv1, and hv1's channel to red's shard (open: its first keepalive read)."""
    c1, c2 = blue_and_red(cluster, blue=("hv1",), red=red)
    side = peer_side(cluster, c1)
    peer = {"service": "destination", "key": "red", "policy": side["policy_id"], "host": "hv1"}
    ch = ChannelReader(c2, cluster.host_token("hv1"))
    assert ch.status == 200 and ch.read()["type"] == "keepalive"
    return c2, side, peer, ch


def test_a_channel_checks_serves_and_ends_each_subscription_on_its_own(
    cluster: Cluster,
) -> None:
    c2, side, peer, ch = peer_channel(cluster, ("hv2",))
    hv1 = cluster.host_token("hv1")
    try:
        body = {
            "subscribe": [
                {"sub": 1, **peer, "grant": side["grant"]},
                {"sub": 2, **{**peer, "service": "forwarding"}, "grant": tamper(side["grant"])},
                {"sub": 3, "service": "destination", "key": "red", "host": "hv1"},  # not hv1's
            ]
        }
        r = c2.req("POST", f"/v1/channels/{ch.id}", body, token=hv1)
        assert r.status == 200, r.body
        got = {x["sub"]: (x["status"], x.get("field")) for x in r.body["results"]}
        assert got == {1: (200, None), 2: (401, "Authorization"), 3: (403, "key")}
        first = ch.next(1)
        assert first["type"] == "snapshot" and first["key"] == "red"
        assert set(first["objects"]) == {"r1"}
        # only the credential that opened the channel changes it
        r = c2.req("POST", f"/v1/channels/{ch.id}", body, token=cluster.host_token("hv2"))
        assert (r.status, r.body["field"]) == (403, "channel")
        r = c2.req("POST", f"/v1/channels/{ch.id}", {"subscribe": [{"sub": 4}]}, token=hv1)
        assert (r.status, r.body["field"]) == (400, "subscribe[0].service")
        # the subscription that was accepted goes on: a new endpoint of red arrives as a delta
        c2.vm("red", "r9", "10.2.0.99", host="hv2")
        delta = ch.next(1)
        assert delta["type"] == "delta" and "r9" in delta["upserts"]
        assert delta["version"] == first["version"] + 1
        # a subscription added later resumes since the version it holds: deltas only
        since = {"sub": 5, **peer, "grant": side["grant"], "since": first["version"]}
        r = c2.req("POST", f"/v1/channels/{ch.id}", {"subscribe": [since]}, token=hv1)
        assert r.body["results"] == [{"sub": 5, "status": 200}]
        resumed = ch.next(5)
        assert (resumed["type"], resumed["version"]) == ("delta", delta["version"])
        # the peering ends: its subscriptions close, each with its reason; the channel lives
        c2.delete("/v1/vpcs/red/peerings/to-blue")
        assert ch.next(1) == {"sub": 1, "type": "close", "reason": "peering-gone"}
        assert ch.next(5) == {"sub": 5, "type": "close", "reason": "peering-gone"}
        assert ch.read(timeout=15)["type"] == "keepalive"
    finally:
        ch.close()
    r = c2.req("POST", f"/v1/channels/{ch.id}", {"unsubscribe": [1]}, token=hv1)
    assert r.status in (200, 404)  # gone once the shard has seen the connection end


def test_a_channel_needs_a_credential(cluster: Cluster) -> None:
    ch = ChannelReader(cluster["ctl1"], "nobody")
    try:
        assert ch.status == 401
    finally:
        ch.close()
