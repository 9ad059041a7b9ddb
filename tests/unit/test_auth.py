"""meshpeer.controller.auth: who a credential names, and what each role may do (issue 16)."""

from __future__ import annotations

import re

import pytest

from meshpeer.controller.auth import (
    Action,
    Credentials,
    Decision,
    Identity,
    OperatorTokens,
    Resource,
    Role,
    authorize,
    host_token,
    parse_operator_tokens,
    route_action,
    shard_token,
)
from meshpeer.directory import (
    DirectoryError,
    credentials_update,
    parse_directory,
    public_doc,
)

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
    assert allowed == {Action.READ, Action.SUBSCRIBE, Action.DIRECTORY}


def test_a_shard_federates_only() -> None:
    shard = Identity(Role.SHARD, "ctl2")
    allowed = {a for a in Action if authorize(shard, a, Resource(host="ctl2"))}
    assert allowed == {Action.FEDERATE}


def test_every_host_reads_the_directory_a_shard_does_not() -> None:
    """The directory's public part (its stream) is every host's: no host, VPC or grant."""
    for host in ("hv1", "gw9"):
        assert authorize(Identity(Role.HOST, host), Action.DIRECTORY, Resource())
    assert not authorize(Identity(Role.SHARD, "ctl2"), Action.DIRECTORY, Resource())


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


def _doc(**extra: object) -> dict[str, object]:
    return {
        "shards": {"ctl1": {"url": "http://127.0.0.1:1", "vni_range": [1000, 1999], "vpcs": []}},
        "grant_keys": {"k1": "00" * 32},
        "federation_token": "f" * 32,
        "host_keys": {"h1": "11" * 32},
        **extra,
    }


def test_revoked_hosts_live_in_the_shards_directory_only() -> None:
    """One list for every shard (host keys are shared: a per-shard list let the other shards
    accept a host revoked at one); hosts' copies do not carry it."""
    d = parse_directory(_doc(revoked_hosts=["hv3"]))
    assert d.revoked_hosts == frozenset({"hv3"})
    assert parse_directory(_doc()).revoked_hosts == frozenset()
    for bad in ("hv3", ["hv3", 7], ["Not A Host"]):
        with pytest.raises(DirectoryError, match=r"^revoked_hosts:"):
            parse_directory(_doc(revoked_hosts=bad))
    assert "revoked_hosts" not in public_doc(_doc(revoked_hosts=["hv3"]))
    host_copy = parse_directory(public_doc(_doc(revoked_hosts=["hv3"])), secrets=False)
    assert host_copy.revoked_hosts == frozenset()


def test_a_running_shard_takes_host_keys_and_revocations_only() -> None:
    running = parse_directory(_doc())
    loaded = parse_directory(
        _doc(revoked_hosts=["hv3"], host_keys={"h2": "22" * 32}, federation_token="g" * 32)
    )
    updated, ignored = credentials_update(running, loaded)
    assert updated.revoked_hosts == {"hv3"} and set(updated.host_keys) == {"h2"}
    assert updated.federation_token == running.federation_token
    assert ignored == ["federation_token"]


def test_operator_tokens_rotate_with_several_valid_at_once() -> None:
    """The admin and read-only tokens had one value each: changing one cut every client
    still holding the old one. Now a list is valid beside each; an empty one opens nothing."""
    creds = Credentials(
        "admin-old", "reader-old", {}, FED, {"ctl1"},
        admin_tokens=("admin-new", ""), readonly_tokens=("reader-new",),
    )  # fmt: skip
    admin, reader = Identity(Role.ADMIN, "operator"), Identity(Role.READER, "operator")
    for token, who in (
        ("admin-old", admin),
        ("admin-new", admin),
        ("reader-old", reader),
        ("reader-new", reader),
    ):
        assert creds.identify(bearer(token)) == who, token
    for token in ("admin-newer", "reader", "admin-old,admin-new"):
        assert creds.identify(bearer(token)) is None, token
    no_reader = Credentials("admin-old", None, {}, FED, {"ctl1"}, readonly_tokens=("",))
    assert no_reader.identify(bearer("admin-old")) == admin
    assert no_reader.identify("Bearer  ") is None


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ([], "a mapping"),
        ({"admins": []}, "unknown keys"),
        ({"admin": "x" * 20}, "admin: expected a list"),
        ({"admin": ["short"]}, "admin[0]"),
        ({"readonly": ["y" * 20, " " + "z" * 20]}, "readonly[1]"),
    ],
)
def test_an_operator_tokens_file_that_does_not_parse_is_refused_whole(
    doc: object, error: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        parse_operator_tokens(doc)


def test_operator_tokens_from_a_file_are_valid_beside_the_others() -> None:
    tokens = parse_operator_tokens({"admin": ["a" * 20], "readonly": ["r" * 20]})
    assert parse_operator_tokens(None) == OperatorTokens()
    creds = Credentials("t" * 20, None, {}, "f" * 20, frozenset(), frozenset(), tokens.admin,
                        tokens.readonly)  # fmt: skip
    assert creds.identify("Bearer " + "a" * 20) == Identity(Role.ADMIN, "operator")
    assert creds.identify("Bearer " + "r" * 20) == Identity(Role.READER, "operator")
