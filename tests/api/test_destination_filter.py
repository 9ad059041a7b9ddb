"""A peer destination stream narrowed to some addresses (docs/protocol.md, "Destination
filter"): what an on-demand host follows for its busy pairs only (docs/gateways.md). On real
shards: blue (ctl1, hv1) peers with red (ctl2), which has r1..r4 on hv2."""

from __future__ import annotations

import json
from typing import Any

from tests.api.ctlkit import Cluster, stream, tamper
from tests.api.test_channels import peer_channel, peer_side
from tests.api.test_roles import blue_and_red


def size(frame: dict[str, Any]) -> int:
    return len(json.dumps(frame, separators=(",", ":")))


def test_a_narrowed_subscription_carries_only_its_addresses_at_the_streams_versions(
    cluster: Cluster,
) -> None:
    c2, side, peer, ch = peer_channel(cluster, ("hv2", "hv2", "hv2", "hv2"))
    hv1 = cluster.host_token("hv1")
    try:
        body = {
            "subscribe": [
                {"sub": 1, **peer, "grant": side["grant"]},
                {"sub": 2, **peer, "grant": side["grant"], "dst": ["10.2.0.5"]},
                # the grant is checked per subscription, narrowed or not
                {"sub": 3, **peer, "grant": tamper(side["grant"]), "dst": ["10.2.0.5"]},
            ]
        }
        bad = [
            {**peer, "service": "forwarding", "dst": ["10.2.0.5"]},  # not a destination stream
            {**peer, "dst": ["10.2.0"]},
            {**peer, "dst": []},
            {"service": "destination", "key": "blue", "host": "hv1", "dst": ["10.1.0.5"]},
        ]
        for entry in bad:
            one = {"subscribe": [{"sub": 9, **entry, "grant": side["grant"]}]}
            r = c2.req("POST", f"/v1/channels/{ch.id}", one, token=hv1)
            assert r.status == 400 and r.body["field"].startswith("subscribe[0].dst"), r.body
        r = c2.req("POST", f"/v1/channels/{ch.id}", body, token=hv1)
        assert r.status == 200, r.body
        got = {x["sub"]: (x["status"], x.get("field")) for x in r.body["results"]}
        assert got == {1: (200, None), 2: (200, None), 3: (401, "Authorization")}
        whole, narrow = ch.next(1), ch.next(2)
        assert set(whole["objects"]) == {"r1", "r2", "r3", "r4"}
        assert narrow["type"] == "snapshot" and set(narrow["objects"]) == {"r1"}
        assert narrow["objects"]["r1"] == whole["objects"]["r1"]
        assert narrow["version"] == whole["version"]
        received = {1: size(whole), 2: size(narrow)}
        # a write elsewhere in red: the same version, nothing of it but its key
        for i in range(5, 9):
            c2.vm("red", f"r{i}", f"10.2.0.{4 + i}", host="hv2")
            d1, d2 = ch.next(1), ch.next(2)
            assert d1["type"] == d2["type"] == "delta" and d1["version"] == d2["version"]
            assert f"r{i}" in d1["upserts"] and d2["upserts"] == {}
            received[1] += size(d1)
            received[2] += size(d2)
        print(f"\nbytes received: whole stream {received[1]}, narrowed to r1 {received[2]}")
        assert received[2] < received[1]
        # a delete of its address reaches it
        c2.delete("/v1/vpcs/red/endpoints/r1")
        assert "r1" in ch.next(1)["deletes"] and "r1" in ch.next(2)["deletes"]
        last = d2["version"] + 1
        # resumed since its version: deltas only, narrowed as before
        c2.vm("red", "r1", "10.2.0.5", host="hv2")
        ch.next(1)
        again = {"sub": 7, **peer, "grant": side["grant"], "dst": ["10.2.0.5"], "since": last}
        r = c2.req("POST", f"/v1/channels/{ch.id}", {"subscribe": [again]}, token=hv1)
        assert r.body["results"] == [{"sub": 7, "status": 200}]
        resumed = ch.next(7)
        assert (resumed["type"], resumed["version"]) == ("delta", last + 1)
        assert set(resumed["upserts"]) == {"r1"}
        # the refused entries subscribed nothing: no frame of sub 9 came among the others'
        assert [f for f in ch.held if f.get("sub") == 9] == []
    finally:
        ch.close()


def test_a_plain_subscribe_takes_dst_in_its_query(cluster: Cluster) -> None:
    c1, c2 = blue_and_red(cluster, blue=("hv1",), red=("hv2", "hv2"))
    side = peer_side(cluster, c1)
    query = {"policy": side["policy_id"], "host": "hv1"}
    with stream(c2, side["grant"], "destination", "red", **query, dst="10.2.0.6") as s:
        assert s.status == 200, s.body
        assert set(s.next()["objects"]) == {"r2"}
    with stream(c2, side["grant"], "destination", "red", **query, dst="10.2.0.x") as s:
        assert (s.status, s.body["field"]) == (400, "dst")
    with stream(c2, side["grant"], "forwarding", "red", **query, dst="10.2.0.6") as s:
        assert (s.status, s.body["field"]) == (400, "dst")
