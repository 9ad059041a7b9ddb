"""meshpeer.controller.auth: who a credential names, and what each role may do (issue 16)."""

from __future__ import annotations

import pytest

from meshpeer.controller.auth import (
    Action,
    Credentials,
    Decision,
    Identity,
    Resource,
    Role,
    authorize,
    host_token,
    route_action,
    shard_token,
)
from meshpeer.controller.directory import DirectoryError, parse_directory

KEY = bytes(range(32))
NEW_KEY = bytes(range(1, 33))
FED = "federation-secret-0123"
CREDS = Credentials("admin-tok", "reader-tok", {"h1": KEY, "h2": NEW_KEY}, FED, {"ctl1", "ctl2"})
HV1 = Identity(Role.HOST, "hv1")


def bearer(token: str) -> str:
    return f"Bearer {token}"


def test_each_credential_names_its_holder() -> None:
    assert CREDS.identify(bearer("admin-tok")) == Identity(Role.ADMIN, "operator")
    assert CREDS.identify(bearer("reader-tok")) == Identity(Role.READER, "operator")
    assert CREDS.identify(bearer(host_token("hv1", "h1", KEY))) == HV1
    assert CREDS.identify(f"bearer {host_token('hv1', 'h2', NEW_KEY)}") == HV1  # rotation
    assert CREDS.identify(bearer(shard_token("ctl2", FED))) == Identity(Role.SHARD, "ctl2")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Basic admin-tok",
        bearer("admin-tok2"),
        bearer(FED),  # the raw federation secret is no credential
        bearer(host_token("hv1", "h1", NEW_KEY)),  # signed with another key id's key
        bearer(host_token("hv1", "h9", KEY)),  # unknown key id
        bearer(host_token("hv1", "h1", KEY).replace("hv1", "hv2")),  # renamed: MAC fails
        bearer(shard_token("ctl9", FED)),  # not a shard of the directory
        bearer(shard_token("ctl1", "another-secret-000")),
    ],
)
def test_anything_else_names_nobody(header: str | None) -> None:
    assert CREDS.identify(header) is None


def test_a_revoked_host_and_a_shard_without_secret_name_nobody() -> None:
    revoked = Credentials("a", None, {"h1": KEY}, FED, {"ctl1"}, frozenset({"hv1"}))
    assert revoked.identify(bearer(host_token("hv1", "h1", KEY))) is None
    assert revoked.identify(bearer(host_token("hv2", "h1", KEY))) == Identity(Role.HOST, "hv2")
    no_reader = Credentials("a", None, {}, "", {"ctl1"})
    assert no_reader.identify(bearer(shard_token("ctl1", ""))) is None


def test_operators() -> None:
    admin, reader = Identity(Role.ADMIN, "operator"), Identity(Role.READER, "operator")
    for action in Action:
        assert bool(authorize(admin, action, Resource())) is (action is not Action.FEDERATE)
    allowed = {a for a in Action if authorize(reader, a, Resource(host="hv1", vpc="blue"))}
    assert allowed == {Action.READ, Action.SUBSCRIBE}


def test_a_shard_federates_only() -> None:
    shard = Identity(Role.SHARD, "ctl2")
    allowed = {a for a in Action if authorize(shard, a, Resource(host="ctl2"))}
    assert allowed == {Action.FEDERATE}


def test_a_host_acts_for_itself_only() -> None:
    mine = Resource(host="hv1", vpc="blue", vpc_hosts=frozenset({"hv1", "hv2"}), grant_host="hv1")
    for action in (Action.REGISTER, Action.REPORT, Action.SUBSCRIBE, Action.SUBSCRIBE_PEER):
        assert authorize(HV1, action, mine), action
        theirs = Resource("hv2", "blue", frozenset({"hv1", "hv2"}), "hv2")
        assert not authorize(HV1, action, theirs), action
    for action in (Action.READ, Action.WRITE, Action.FEDERATE):
        assert not authorize(HV1, action, mine), action
    assert authorize(HV1, Action.SUBSCRIBE, Resource(host="hv1"))  # its endpoint stream
    unrelated = Resource(host="hv1", vpc="red", vpc_hosts=frozenset({"hv2"}))
    refused = authorize(HV1, Action.SUBSCRIBE, unrelated)
    assert (
        isinstance(refused, Decision)
        and not refused.allowed
        and "no endpoint on host 'hv1'" in refused.reason
    )
    replayed = Resource(host="hv1", grant_host="hv2")
    assert not authorize(HV1, Action.SUBSCRIBE_PEER, replayed)


def test_routes_map_to_actions() -> None:
    assert route_action("PUT", "/v1/hosts/{name}", {"name": "hv1"}) == (
        Action.REGISTER,
        Resource(host="hv1"),
    )
    assert route_action("PUT", "/v1/hosts/{name}/applied", {"name": "hv2"})[0] is Action.REPORT
    assert route_action("PUT", "/v1/hosts/{name}/status", {"name": "hv2"})[0] is Action.REPORT
    assert route_action("GET", "/v1/hosts/{name}", {"name": "hv2"})[0] is Action.READ
    assert route_action("PUT", "/v1/vpcs/{vpc}/peerings/{name}", {})[0] is Action.WRITE
    assert route_action("GET", "/v1/federation/vpcs/{vpc}", {})[0] is Action.FEDERATE


def test_a_host_key_id_is_one_credential_field() -> None:
    """Host credentials split on "." (``identify``): a key id with one would lock every host
    out once keys rotate to it; the directory refuses it (a security review found it taken)."""
    raw = {
        "shards": {"ctl1": {"url": "http://127.0.0.1:1", "vni_range": [1000, 1999], "vpcs": []}},
        "grant_keys": {"k1": "00" * 32},
        "federation_token": "f" * 32,
        "host_keys": {"2026.1": "11" * 32},
    }
    with pytest.raises(DirectoryError, match=r"host_keys\.2026\.1"):
        parse_directory(raw)
