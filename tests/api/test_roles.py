"""Credentials by role (issue 16): each opens its own share of a real shard and nothing more.

The operator's admin token opens everything but federation; the read-only token GETs (and
own-shard streams); a host's credential its own registration, reports and streams, and the
streams of the VPCs with an endpoint on it; a shard's credential federation only. Host
credentials rotate (two host keys valid at once) and can be revoked.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from meshpeer.controller.auth import host_token
from tests.api.ctlkit import HOST_STATUS, Cluster, Ctl, stream, wait_for

READER = "reader-" + "r" * 24
LAYOUT = {"ctl1": ((1, 999), ("blue", "green"))}


def test_the_read_only_operator_reads_and_writes_nothing(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(layout=LAYOUT, options={"readonly_token": READER})
    ctl = cluster["ctl1"]
    ctl.vpc("blue", "10.1.0.0/24")
    ctl.vm("blue", "b1", "10.1.0.5", host="hv1")
    before = ctl.get("/v1/vpcs/blue/endpoints")
    for path in ("/v1/vpcs", "/v1/vpcs/blue", "/v1/vpcs/blue/endpoints", "/v1/hosts"):
        assert ctl.req("GET", path, token=READER).status == 200, path
    writes = [
        ("POST", "/v1/vpcs", {"name": "green"}),
        ("POST", "/v1/vpcs/blue/endpoints", {"name": "b2", "ip": "10.1.0.6"}),
        ("DELETE", "/v1/vpcs/blue/endpoints/b1", None),
        ("PUT", "/v1/hosts/hv1", {"underlay_ip": "192.0.2.1"}),
        ("PUT", "/v1/hosts/hv1/applied", {"streams": []}),
    ]
    for method, path, body in writes:
        r = ctl.req(method, path, body, token=READER)
        assert (r.status, r.error()[0]) == (403, "forbidden"), (method, path, r.body)
        assert "read-only" in r.error()[2]
    assert ctl.get("/v1/vpcs/blue/endpoints") == before
    assert ctl.req("GET", "/v1/federation/vpcs/blue", token=READER).status == 403
    with stream(ctl, READER, "destination", "blue") as s:
        assert s.next()["type"] == "snapshot"


def test_a_host_credential_opens_its_own_share_only(cluster: Cluster) -> None:
    c1 = cluster["ctl1"]
    c1.vpc("blue", "10.1.0.0/24")
    c1.vpc("green", "10.3.0.0/24")
    c1.vm("blue", "b1", "10.1.0.5", host="hv1")
    c1.vm("green", "g1", "10.3.0.5", host="hv2")
    hv1 = cluster.host_token("hv1")

    def status(method: str, path: str, body: object = None) -> int:
        return c1.req(method, path, body, token=hv1).status

    assert status("PUT", "/v1/hosts/hv1", {"underlay_ip": "192.0.2.1"}) == 200
    assert status("PUT", "/v1/hosts/hv1/status", HOST_STATUS) == 200
    assert status("PUT", "/v1/hosts/hv1/applied", {"streams": []}) == 200
    c1.put("/v1/hosts/hv2", {"underlay_ip": "192.0.2.2"})
    assert status("PUT", "/v1/hosts/hv2", {"underlay_ip": "192.0.2.1"}) == 403
    assert c1.get("/v1/hosts/hv2")["underlay_ip"] == "192.0.2.2"  # not taken over
    assert status("PUT", "/v1/hosts/hv2/status", HOST_STATUS) == 403
    assert status("PUT", "/v1/hosts/hv2/applied", {"streams": []}) == 403
    for method, path in (
        ("GET", "/v1/vpcs"),
        ("GET", "/v1/hosts/hv2"),
        ("DELETE", "/v1/vpcs/blue"),
    ):
        assert status(method, path) == 403, path
    assert status("GET", "/v1/federation/vpcs/blue") == 403

    def opens(token: str | None, service: str, key: str, **extra: str) -> int:
        with stream(c1, token, service, key, **extra) as s:
            return s.status

    assert opens(hv1, "endpoint", "hv1") == 200
    assert opens(hv1, "endpoint", "hv2") == 403
    # hv1's own stream, but naming hv2 as who must apply its writes: ?wait=programmed on
    # hv1's endpoints would then wait for hv2 forever (a security review found it a 200)
    assert opens(hv1, "endpoint", "hv1", host="hv2") == 400
    assert opens(hv1, "destination", "blue", host="hv1") == 200
    assert opens(hv1, "peering", "blue", host="hv1") == 200
    assert opens(hv1, "destination", "green", host="hv1") == 403  # g1 is on hv2, not hv1
    assert opens(hv1, "peering", "green", host="hv2") == 403  # posing as hv2
    assert opens(hv1, "destination", "blue") == 403  # a host names itself
    assert opens(hv1, "federation", "blue") == 403


def test_host_keys_rotate_and_hosts_are_revoked(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(layout=LAYOUT, options={"revoked_hosts": "hv3, hv4"})
    ctl = cluster["ctl1"]
    ctl.stop()
    doc = yaml.safe_load(cluster.directory_file.read_text(encoding="utf-8"))
    new_key = "cd" * 32
    doc["host_keys"]["h2"] = new_key  # the new key beside the old one
    cluster.directory_file.write_text(yaml.safe_dump(doc), encoding="utf-8")
    ctl.start()
    body = {"underlay_ip": "192.0.2.1"}
    old, new = cluster.host_token("hv1"), host_token("hv1", "h2", bytes.fromhex(new_key))
    assert ctl.req("PUT", "/v1/hosts/hv1", body, token=old).status == 200
    assert ctl.req("PUT", "/v1/hosts/hv1", body, token=new).status == 200
    revoked = ctl.req("PUT", "/v1/hosts/hv3", body, token=cluster.host_token("hv3"))
    assert revoked.status == 401, revoked.body
    del doc["host_keys"]["h1"]  # rotation done: the old key goes
    cluster.directory_file.write_text(yaml.safe_dump(doc), encoding="utf-8")
    ctl.restart()
    assert ctl.req("PUT", "/v1/hosts/hv1", body, token=old).status == 401
    assert ctl.req("PUT", "/v1/hosts/hv1", body, token=new).status == 200


def test_a_shard_mints_no_grant_for_a_revoked_host(make_cluster: Callable[..., Cluster]) -> None:
    """A review found the host's own shard minting grants into a revoked host's peering
    stream: its credential was refused, but the grants it held went on opening the peers'
    streams at a shard that had not revoked it."""
    cluster = make_cluster(layout=LAYOUT, options={"revoked_hosts": "hv1"})
    ctl = cluster["ctl1"]
    ctl.vpc("blue", "10.1.0.0/24")
    ctl.vpc("green", "10.3.0.0/24")
    ctl.vm("blue", "b1", "10.1.0.5", host="hv1")
    ctl.vm("green", "g1", "10.3.0.5", host="hv2")
    ctl.peer("blue", "green")
    ctl.peer("green", "blue")
    ctl.wait_state("blue", "to-green", "ACTIVE")
    with stream(ctl, cluster.token, "peering", "green", host="hv2") as s:
        assert set(s.next()["objects"]) == {"blue"}  # hv2 is not revoked
    with stream(ctl, cluster.token, "peering", "blue", host="hv1") as s:
        assert s.next()["objects"] == {}


def blue_and_red(cluster: Cluster, blue: tuple[str, ...], red: tuple[str, ...]) -> tuple[Ctl, Ctl]:
    """blue (ctl1) and red (ctl2), peered ACTIVE, with one VM on each host named."""
    c1, c2 = cluster["ctl1"], cluster["ctl2"]
    c1.vpc("blue", "10.1.0.0/24")
    c2.vpc("red", "10.2.0.0/24")
    for i, host in enumerate(blue, 1):
        c1.vm("blue", f"b{i}", f"10.1.0.{4 + i}", host=host)
    for i, host in enumerate(red, 1):
        c2.vm("red", f"r{i}", f"10.2.0.{4 + i}", host=host)
    c1.peer("blue", "red")
    c2.peer("red", "blue")
    c1.wait_state("blue", "to-red", "ACTIVE")
    return c1, c2


def test_a_host_revoked_in_the_directory_is_refused_by_every_shard_at_once(
    make_cluster: Callable[..., Cluster],
) -> None:
    """``revoked_hosts`` in the shards' directory, taken by running shards (no restart): the
    host's open streams close (``host-revoked``), every shard refuses its credential, its
    shard takes back the grants it minted for it; other hosts go on."""
    cluster = make_cluster(options={"directory_check_interval": 0.2})
    c1, c2 = blue_and_red(cluster, blue=("hv1",), red=("hv1", "hv2"))
    hv1, hv2 = cluster.host_token("hv1"), cluster.host_token("hv2")
    body = {"underlay_ip": "192.0.2.1"}
    for ctl in (c1, c2):
        assert ctl.req("PUT", "/v1/hosts/hv1", body, token=hv1).status == 200
    with (
        stream(c2, hv1, "destination", "red", host="hv1") as own,
        stream(c2, hv2, "destination", "red", host="hv2") as other,
        stream(c1, cluster.token, "peering", "blue", host="hv1") as grants,
    ):
        assert own.next()["type"] == other.next()["type"] == "snapshot"
        assert set(grants.next()["objects"]) == {"red"}
        doc = yaml.safe_load(cluster.directory_file.read_text(encoding="utf-8"))
        doc["revoked_hosts"] = ["hv1"]
        cluster.directory_file.write_text(yaml.safe_dump(doc), encoding="utf-8")
        assert own.next(timeout=30) == {"type": "close", "reason": "host-revoked"}
        assert grants.next(timeout=30)["deletes"] == ["red"]
        for ctl in (c1, c2):
            refused = ctl.req("PUT", "/v1/hosts/hv1", body, token=hv1)
            assert refused.status == 401, (ctl.name, refused.body)
        assert other.quiet(0.5) >= 0  # hv2's stream goes on
    assert c2.req("PUT", "/v1/hosts/hv2", body, token=hv2).status == 200


def test_operator_tokens_rotate_without_refusing_a_client(
    make_cluster: Callable[..., Cluster],
) -> None:
    """Rotation without downtime: the new admin and read-only tokens are valid beside the
    old ones (``api_tokens``, ``readonly_tokens``); the old ones go once clients moved."""
    admin2, reader2 = "admin2-" + "a" * 24, "reader2-" + "r" * 24
    cluster = make_cluster(
        layout=LAYOUT,
        options={"readonly_token": READER, "api_tokens": admin2, "readonly_tokens": reader2},
    )
    ctl = cluster["ctl1"]
    for token, vpc in ((cluster.token, "blue"), (admin2, "green")):
        assert ctl.req("POST", "/v1/vpcs", {"name": vpc}, token=token).status == 201
    for token in (READER, reader2):
        assert ctl.req("GET", "/v1/vpcs/blue", token=token).status == 200
        assert ctl.req("DELETE", "/v1/vpcs/blue", token=token).status == 403
    ctl.stop()  # rotation done: the new tokens become the only ones
    conf = ctl.conf.read_text(encoding="utf-8").splitlines()
    kept = [ln for ln in conf if not ln.startswith(("api_tokens", "readonly_tokens"))]
    kept = [f"api_token = {admin2}" if ln.startswith("api_token ") else ln for ln in kept]
    kept = [f"readonly_token = {reader2}" if ln.startswith("readonly_token") else ln for ln in kept]
    ctl.conf.write_text("\n".join([*kept, ""]), encoding="utf-8")
    ctl.start()
    assert ctl.req("GET", "/v1/vpcs/blue", token=admin2).status == 200
    assert ctl.req("GET", "/v1/vpcs/blue", token=reader2).status == 200
    assert ctl.req("GET", "/v1/vpcs/blue", token=cluster.token).status == 401
    assert ctl.req("GET", "/v1/vpcs/blue", token=READER).status == 401


def test_a_host_evacuated_from_a_vpc_loses_its_streams_at_both_shards(cluster: Cluster) -> None:
    """A review found a host kept following a VPC after its last endpoint there was deleted
    (checked at subscribe time only). Now blue's shard closes hv1's blue streams at the delete,
    and red's shard (another process) closes hv1's stream of red opened with its grant for
    blue, when blue's federation view drops hv1. hv2, still in blue, keeps its streams."""
    c1, c2 = blue_and_red(cluster, blue=("hv1", "hv2"), red=("hv9",))
    with stream(c1, cluster.token, "peering", "blue", host="hv1") as s:
        red = s.next()["objects"]["red"]
    policy = {"policy": red["policy_id"], "host": "hv1"}
    hv1, hv2 = cluster.host_token("hv1"), cluster.host_token("hv2")
    with (
        stream(c1, hv1, "destination", "blue", host="hv1") as own,
        stream(c2, red["grant"], "destination", "red", **policy) as peer,
        stream(c1, hv2, "destination", "blue", host="hv2") as other,
    ):
        assert own.next()["type"] == peer.next()["type"] == other.next()["type"] == "snapshot"
        c1.delete("/v1/vpcs/blue/endpoints/b1")
        assert own.next(timeout=30) == {"type": "close", "reason": "host-left"}
        assert peer.next(timeout=30) == {"type": "close", "reason": "host-left"}
        assert other.next()["deletes"] == ["b1"]
    with stream(c1, hv1, "destination", "blue", host="hv1") as again:
        assert again.status == 403, again.body


def test_an_applied_report_keeps_its_streams_and_ignores_a_left_vpcs(cluster: Cluster) -> None:
    """hv1 serves blue (ctl1) and red (ctl2) and follows red's export to blue with its grant.
    After hv1 leaves blue, its next applied report to ctl2 still lists that peer stream (the
    OHC had not yet taken the close): the rest of the report is recorded and the left VPC's
    entry is ignored, and said so. It used to be refused whole (403), hv1's own red stream
    with it, so a ``?wait=programmed`` write to red waited for hv1 in vain."""
    c1, c2 = blue_and_red(cluster, blue=("hv1",), red=("hv1",))
    hv1 = cluster.host_token("hv1")
    assert c2.req("PUT", "/v1/hosts/hv1", {"underlay_ip": "192.0.2.1"}, token=hv1).status == 200
    with stream(c1, cluster.token, "peering", "blue", host="hv1") as s:
        red = s.next()["objects"]["red"]
    peer_name = f"destination/red/{red['policy_id']}/"
    with (
        stream(c2, hv1, "destination", "red", host="hv1") as own,
        stream(c2, red["grant"], "destination", "red", policy=red["policy_id"], host="hv1") as peer,
    ):
        own_version = own.next()["version"]
        assert peer.next()["type"] == "snapshot"
        c1.delete("/v1/vpcs/blue/endpoints/b1")
        assert peer.next(timeout=30) == {"type": "close", "reason": "host-left"}
        report = {
            "streams": [
                {"stream": "destination/red//", "version": own_version},
                {"stream": peer_name, "version": own_version, "grant": red["grant"]},
            ]
        }
        r = c2.req("PUT", "/v1/hosts/hv1/applied", report, token=hv1)
        assert r.status == 200, r.body
        assert r.body["ignored"] == [
            {"stream": peer_name, "reason": "VPC 'blue' has no endpoint on 'hv1'"}
        ], r.body
        applied = c2.get("/v1/hosts/hv1")["applied"]
        assert applied.get("destination/red//") == own_version, applied
        assert peer_name not in applied, applied
        # Another refusal of a grant still refuses the report whole.
        tampered = {"streams": [report["streams"][0], {**report["streams"][1], "grant": "x"}]}
        r = c2.req("PUT", "/v1/hosts/hv1/applied", tampered, token=hv1)
        assert (r.status, r.body["field"]) == (401, "streams[1].grant"), r.body


def test_a_grant_renewed_in_an_applied_report_keeps_the_peer_stream_open(
    make_cluster: Callable[..., Cluster],
) -> None:
    """Grants live ``grant_ttl`` (3 s here) and are minted afresh on hv1's peering stream as
    they age. hv1 follows red's export to blue at ctl2 with its first grant and reports applied
    with each fresher one, as its OHC does after every sync: the stream stays open past the
    first grant's expiry, heartbeats only, no Close and no reconnect. Before, it closed with
    ``grant-expired`` and the OHC had to resubscribe."""
    cluster = make_cluster(options={"grant_ttl": 3.0, "tick_interval": 0.5})
    c1, c2 = blue_and_red(cluster, blue=("hv1",), red=("hv2",))
    hv1 = cluster.host_token("hv1")

    def red_side() -> dict[str, Any]:
        with stream(c1, cluster.token, "peering", "blue", host="hv1") as s:
            side: dict[str, Any] = s.next()["objects"]["red"]
            return side

    first = red_side()
    name = f"destination/red/{first['policy_id']}/"
    latest = first
    with stream(c2, first["grant"], "destination", "red", policy=first["policy_id"], host="hv1") as peer:  # fmt: skip
        assert peer.next()["type"] == "snapshot"
        while time.time() < first["expires_at"] + 2:
            latest = red_side()
            body = {"streams": [{"stream": name, "version": 1, "grant": latest["grant"]}]}
            r = c2.req("PUT", "/v1/hosts/hv1/applied", body, token=hv1)
            assert r.status == 200, r.body
            msg = peer.read(timeout=10)
            assert msg is not None and msg["type"] == "heartbeat", msg
    assert latest["expires_at"] > first["expires_at"]


def test_operator_tokens_rotate_from_a_file_without_a_restart(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    """``operator_tokens_file`` is re-read when it changes: a new admin token works beside the
    old one, then the old one goes, and the shard never restarted (same pid). A file that
    does not parse changes nothing."""
    old, new = "old-admin-" + "o" * 20, "new-admin-" + "n" * 20
    tokens = tmp_path / "operator-tokens.yaml"
    tokens.write_text(yaml.safe_dump({"admin": [old]}), encoding="utf-8")
    cluster = make_cluster(
        layout=LAYOUT,
        options={"operator_tokens_file": str(tokens), "directory_check_interval": 0.1},
    )
    ctl = cluster["ctl1"]
    assert ctl.proc is not None
    pid = ctl.proc.pid

    def status(token: str) -> int:
        return ctl.req("GET", "/v1/vpcs", token=token).status

    assert (status(old), status(new)) == (200, 401)
    tokens.write_text(yaml.safe_dump({"admin": [old, new]}), encoding="utf-8")
    wait_for(lambda: status(new) == 200, 20.0, what="the new token taken")
    assert status(old) == 200  # both valid at once: clients move over
    tokens.write_text(yaml.safe_dump({"admin": [new]}), encoding="utf-8")
    wait_for(lambda: status(old) == 401, 20.0, what="the old token dropped")
    tokens.write_text("admin: [short]\n", encoding="utf-8")  # refused whole
    logged = f"operator tokens {tokens} not taken"
    wait_for(lambda: logged in ctl.log.read_text(encoding="utf-8"), 20.0, what="the bad file")
    assert status(new) == 200 and status(cluster.token) == 200
    assert ctl.proc is not None and ctl.proc.pid == pid
