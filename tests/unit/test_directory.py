"""The shard directory's replicas (meshpeer/directory.py): each URL once, in one shard."""

from __future__ import annotations

from typing import Any

import pytest

from meshpeer.directory import DirectoryError, parse_directory

A, B = "http://ctl1:8080", "http://ctl1:8081"


def doc(**shards: Any) -> dict[str, Any]:
    return {"shards": shards}


def test_a_replica_listed_twice_is_refused_naming_the_field() -> None:
    """A duplicate made a host's channel rotate between the copies and never reach the
    leader (review s6, E1)."""
    with pytest.raises(DirectoryError, match=r"^shards\.ctl1\.replicas: .*8081 listed twice"):
        parse_directory(
            doc(ctl1={"url": A, "vni_range": [1, 9], "replicas": [A, B, B + "/"]}),
            secrets=False,
        )


def test_a_replica_of_two_shards_is_refused_naming_the_field() -> None:
    with pytest.raises(DirectoryError, match=r"^shards\.ctl2\.replicas: .* shard 'ctl1' too"):
        parse_directory(
            doc(
                ctl1={"url": A, "vni_range": [1, 9], "replicas": [A, B]},
                ctl2={"url": "http://ctl2:8080", "vni_range": [10, 19],
                      "replicas": ["http://ctl2:8080", B]},
            ),
            secrets=False,
        )  # fmt: skip


def test_distinct_replicas_parse() -> None:
    d = parse_directory(
        doc(ctl1={"url": A, "vni_range": [1, 9], "replicas": [A, B]}), secrets=False
    )
    assert d.replica_urls(B) == (A, B)
