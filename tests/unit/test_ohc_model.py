"""Address parsing's fast path for IPv4 text (ohc/model.py ``TextIPv4``) decides as ipaddress."""

from __future__ import annotations

import copy
import ipaddress
import pickle

from hypothesis import given, settings
from hypothesis import strategies as st

from ohc.model import BadObject, TextIPv4, parse_ip, parse_mac


def _endpoint_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    broadcast = ip.version == 4 and int(ip) == 0xFFFF_FFFF
    return not (ip.is_unspecified or ip.is_multicast or ip.is_loopback or broadcast)


@settings(max_examples=500)
@given(st.integers(0, 2**32 - 1) | st.sampled_from([0, 0xE0000000, 0x7F000001, 2**32 - 1]))
def test_ipv4_text_is_parsed_and_checked_as_ipaddress_does(n: int) -> None:
    want = ipaddress.IPv4Address(n)
    try:
        got = parse_ip(str(want))
    except BadObject:
        assert not _endpoint_address(want)
        return
    assert _endpoint_address(want)
    assert isinstance(got, TextIPv4)
    assert got == want and hash(got) == hash(want) and str(got) == str(want)
    assert got in ipaddress.ip_network(f"{want}/8", strict=False)


def test_other_spellings_take_the_slow_path_or_fail() -> None:
    assert not isinstance(parse_ip("::ffff:10.0.0.1"), TextIPv4)
    for bad in ("10.0.0", "010.0.0.1", "10.0.0.256", " 10.0.0.1", "10.0.0.1/32"):
        try:
            parse_ip(bad)
        except BadObject:
            continue
        raise AssertionError(f"{bad!r} accepted")


def test_a_text_address_copies_pickles_and_counts_like_an_address() -> None:
    ip = parse_ip("10.1.2.3")
    assert isinstance(ip, TextIPv4)
    for other in (copy.copy(ip), copy.deepcopy(ip), pickle.loads(pickle.dumps(ip))):
        assert other == ip and str(other) == "10.1.2.3" and isinstance(other, TextIPv4)
    assert str(ip + 1) == "10.1.2.4" and str(ip - 3) == "10.1.2.0"


def test_a_mac_with_anything_after_it_is_refused() -> None:
    for bad in ("02:00:00:00:00:01\n", "02:00:00:00:00:01 ", "02:00:00:00:00:0100"):
        try:
            parse_mac(bad)
        except BadObject:
            continue
        raise AssertionError(f"{bad!r} accepted")
    assert parse_mac("02:AB:00:00:00:01") == "02:ab:00:00:00:01"
