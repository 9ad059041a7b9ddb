"""The directory service's objects (meshpeer.protocol.directory): what a shard publishes to its
hosts is the directory's public part, checked whole as a directory file's ``shards`` are."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from meshpeer.directory import SHARD_ONLY
from meshpeer.protocol.codec import Decoder, encode
from meshpeer.protocol.directory import DIRECTORY_STREAM, BadDirectory, PublicDirectory
from meshpeer.protocol.messages import ServiceName, Snapshot
from tests.unit.controller_fixtures import directory

CTL3 = {"url": "https://10.0.3.1:8080", "vni_range": [5000, 5999], "vpcs": ["zeta"]}


def objects() -> dict[str, Any]:
    return PublicDirectory(directory().shards).to_json()


def test_the_objects_are_each_shards_entry_and_parse_back_to_the_same_shards() -> None:
    d = directory(ctl1=["blue"], ctl2=[])
    got = PublicDirectory(d.shards).to_json()
    assert got == {
        "ctl1": {"url": "http://169.254.9.10:8080", "vni_range": [1000, 1999], "vpcs": ["blue"]},
        "ctl2": {"url": "http://169.254.9.11:8080", "vni_range": [2000, 2999]},
    }
    assert PublicDirectory.parse(got, listing="ctl1") == PublicDirectory(d.shards)
    # as a snapshot of the stream, through the codec (the host's side of the wire)
    sid = DIRECTORY_STREAM
    line = encode(Snapshot(sid.service, sid.key, 7, got))
    (msg,) = Decoder().feed(line)
    assert isinstance(msg, Snapshot) and msg.service is ServiceName.DIRECTORY
    assert PublicDirectory.parse(msg.objects).shards == d.shards


def test_replicas_travel_with_their_shard() -> None:
    entry = {**CTL3, "replicas": ["https://10.0.3.1:8080", "https://10.0.3.2:8080"]}
    parsed = PublicDirectory.parse({**objects(), "ctl3": entry}).shards["ctl3"]
    assert parsed.replicas == ("https://10.0.3.1:8080", "https://10.0.3.2:8080")
    assert PublicDirectory({"ctl3": parsed}).to_json()["ctl3"] == entry


def test_no_secret_is_published() -> None:
    d = directory()
    assert d.grant_keys and d.federation_token  # the shards' directory has them
    text = json.dumps(PublicDirectory(d.shards).to_json())
    assert d.federation_token not in text
    assert not any(key.hex() in text for key in d.grant_keys.values())


@pytest.mark.parametrize(
    ("change", "field", "detail"),
    [
        ({"ctl3": {**CTL3, "vni_range": [1500, 5999]}}, "shards.ctl3.vni_range", "overlaps"),
        ({"ctl3": {**CTL3, "vpcs": ["blue"]}}, "shards.ctl3.vpcs", "already owned"),
        ({"ctl3": {**CTL3, "url": "ftp://x"}}, "shards.ctl3.url", "https://"),
        ({"ctl3": {**CTL3, "grant_keys": {"k1": "00" * 32}}}, "shards.ctl3.grant_keys", "unknown"),
        ({"ctl3": {**CTL3, "replicas": ["https://10.0.3.2:8080"]}}, "shards.ctl3.replicas", "url"),
        ({"Bad_Name": CTL3}, "shards.Bad_Name", "bad shard name"),
        ({"ctl3": "https://10.0.3.1:8080"}, "shards.ctl3", "mapping"),
    ],
)
def test_a_set_that_does_not_check_out_is_refused_naming_the_field(
    change: dict[str, Any], field: str, detail: str
) -> None:
    with pytest.raises(BadDirectory) as err:
        PublicDirectory.parse({**objects(), **change})
    assert err.value.field == field and detail in err.value.detail, err.value


@pytest.mark.parametrize("secret", SHARD_ONLY)
def test_a_secret_in_place_of_a_shard_is_refused(secret: str) -> None:
    with pytest.raises(BadDirectory, match="shards"):
        PublicDirectory.parse({**objects(), secret: {"k1": "00" * 32}})


def test_nothing_or_not_the_publisher_is_refused() -> None:
    with pytest.raises(BadDirectory) as err:
        PublicDirectory.parse({})
    assert err.value.field == "shards"
    with pytest.raises(BadDirectory) as err:
        PublicDirectory.parse(["ctl1"])
    assert err.value.field == "objects"
    with pytest.raises(BadDirectory) as err:
        PublicDirectory.parse(objects(), listing="ctl9")
    assert err.value.field == "shards.ctl9" and "absent" in err.value.detail


def test_the_documented_directory_parses_and_writes_back() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    lines = [ln for ln in doc.splitlines() if ln.startswith("{") and '"directory"' in ln]
    assert lines
    for line in lines:
        (msg,) = Decoder().feed((line + "\n").encode())
        assert isinstance(msg, Snapshot) and msg.service is ServiceName.DIRECTORY
        assert PublicDirectory.parse(msg.objects).to_json() == msg.objects


def test_each_shard_lists_the_vpcs_it_claimed_after_those_it_pins() -> None:
    """Claims (etcd's ``vpcs/``) travel in the claimant's ``vpcs``, as ``owner_of`` decides:
    a pin wins over a claim, and a claim by a shard not listed is left out (its hash)."""
    d = directory(ctl1=["blue"], ctl2=[])
    claims = {"teal": "ctl1", "gold": "ctl2", "blue": "ctl2", "mint": "ctl9", "aqua": "ctl1"}
    public = PublicDirectory.of(d.shards, claims)
    assert public.to_json()["ctl1"]["vpcs"] == ["blue", "aqua", "teal"]
    assert public.to_json()["ctl2"]["vpcs"] == ["gold"]
    assert PublicDirectory.parse(public.to_json()) == public  # a VPC under one shard each
    host = dataclasses.replace(d, shards=public.shards)  # a host's: no claims of its own
    shard = dataclasses.replace(d, claims=claims, claimed=True)
    for vpc in ("blue", "teal", "gold", "mint", "aqua", "zeta", "cyan"):
        assert host.owner_of(vpc) == shard.owner_of(vpc), vpc
    assert PublicDirectory.of(d.shards, {}) == PublicDirectory(d.shards)
