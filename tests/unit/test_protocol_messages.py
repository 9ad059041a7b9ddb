"""Subscribe request parsing: strict validation of untrusted query and header."""

from __future__ import annotations

import pytest

from meshpeer.protocol import ProtocolError, ServiceName, SubscribeRequest, parse_subscribe_request
from meshpeer.protocol.messages import parse_dst

GRANT = "mpg1.k1.eyJ9.c2ln"


def test_minimal_request() -> None:
    req = parse_subscribe_request({"service": "endpoint", "key": "host-1"})
    assert req == SubscribeRequest(ServiceName.ENDPOINT, "host-1", None, None)


def test_full_request_with_grant() -> None:
    query = {
        "service": "destination",
        "key": "red",
        "policy": "p-1f2e",
        "host": "h1",
        "since": "42",
    }
    req = parse_subscribe_request(query, authorization=f"Bearer {GRANT}")
    assert req == SubscribeRequest(ServiceName.DESTINATION, "red", 42, GRANT, "p-1f2e", "h1")


def test_bearer_scheme_is_case_insensitive() -> None:
    query = {"service": "forwarding", "key": "red", "policy": "p", "host": "h"}
    assert parse_subscribe_request(query, f"bearer {GRANT}").grant == GRANT


def test_since_zero_is_valid() -> None:
    assert parse_subscribe_request({"service": "peering", "key": "v", "since": "0"}).since == 0


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"key": "red"}, "service"),
        ({"service": "destination"}, "key"),
        ({"service": "nope", "key": "red"}, "service"),
        ({"service": "Destination", "key": "red"}, "service"),
        ({"service": "destination", "key": ""}, "key"),
        ({"service": "destination", "key": "../etc"}, "key"),
        ({"service": "destination", "key": "a b"}, "key"),
        ({"service": "destination", "key": "x" * 129}, "key"),
        ({"service": "destination", "key": "red", "since": "-1"}, "since"),
        ({"service": "destination", "key": "red", "since": "+1"}, "since"),
        ({"service": "destination", "key": "red", "since": "01"}, "since"),
        ({"service": "destination", "key": "red", "since": " 1"}, "since"),
        ({"service": "destination", "key": "red", "since": "1.0"}, "since"),
        ({"service": "destination", "key": "red", "since": ""}, "since"),
        ({"service": "destination", "key": "red", "since": str(2**63)}, "since"),
        ({"service": "destination", "key": "red", "since": "١٢"}, "since"),
        ({"service": "destination", "key": "red", "policy": "p/1"}, "policy"),
        ({"service": "destination", "key": "red", "host": ""}, "host"),
        ({"service": "destination", "key": "red", "grant": GRANT}, "grant"),
        ({"service": "destination", "key": "red", "extra": "1"}, "extra"),
    ],
)
def test_rejects_bad_query(query: dict[str, str], field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_subscribe_request(query)
    assert info.value.field == field


class _MultiDict:
    """Stand-in for webob's MultiDict: items() returns every pair, repeats included."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = pairs

    def items(self) -> list[tuple[str, str]]:
        return self._pairs


def test_rejects_repeated_parameter() -> None:
    query = _MultiDict([("service", "destination"), ("key", "red"), ("key", "blue")])
    with pytest.raises(ProtocolError, match="repeated"):
        parse_subscribe_request(query)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "authorization", ["", "Bearer", "Bearer ", "Basic abc", f"Bearer {GRANT} x", "Bearer \x7f"]
)
def test_anything_but_a_bearer_token_is_no_credential(authorization: str) -> None:
    """The server then answers 401 as on every other route (not a 400 parse error)."""
    query = {"service": "destination", "key": "red", "policy": "p", "host": "h"}
    assert parse_subscribe_request(query, authorization).grant is None


def test_any_printable_bearer_token_is_taken() -> None:
    query = {"service": "endpoint", "key": "hv1"}
    assert parse_subscribe_request(query, "Bearer a+b/c=").grant == "a+b/c="
    assert parse_subscribe_request(query, f"bearer  {GRANT} ").grant == GRANT


def test_policy_requires_host_and_a_token_alone_is_a_shard_credential() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_subscribe_request(
            {"service": "destination", "key": "red", "policy": "p"}, f"Bearer {GRANT}"
        )
    assert info.value.field == "host"
    own = parse_subscribe_request({"service": "endpoint", "key": "hv1"}, "Bearer shard-token")
    assert (own.grant, own.policy, own.host) == ("shard-token", None, None)


@pytest.mark.parametrize("value", ["fe80::1%eth0", "10.2.0.5,fe80::1%1"])
def test_a_destination_filter_takes_no_ipv6_zone_index(value: str) -> None:
    """Review gw2, G3: the query's ``dst`` took ``fe80::1%eth0``, which the channel body (the
    REST schema's ``ip`` format) refuses; both edges now say no, naming ``dst``."""
    with pytest.raises(ProtocolError) as info:
        parse_dst(value)
    assert info.value.field == "dst"
    query = {"service": "destination", "key": "red", "policy": "p-1", "host": "hv1", "dst": value}
    with pytest.raises(ProtocolError):
        parse_subscribe_request(query, None)
