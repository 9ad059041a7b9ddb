"""NDJSON codec: round trips, arbitrary chunk splits, rejection of malformed input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshpeer.protocol import (
    Close,
    Decoder,
    Delta,
    ErrorMsg,
    Heartbeat,
    Message,
    ProtocolError,
    ServiceName,
    Snapshot,
    encode,
)

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
oids = st.from_regex(r"[!-~]{1,30}", fullmatch=True)
versions = st.integers(min_value=0, max_value=2**63 - 1)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
object_maps = st.dictionaries(oids, json_objects, max_size=5)
services = st.sampled_from(list(ServiceName))
snapshots = st.builds(Snapshot, services, names, versions, object_maps)


@st.composite
def deltas(draw: st.DrawFn) -> Delta:
    upserts = draw(object_maps)
    deletes = draw(st.lists(oids.filter(lambda o: o not in upserts), unique=True, max_size=5))
    return Delta(draw(services), draw(names), draw(versions), upserts, tuple(deletes))


messages: st.SearchStrategy[Message] = st.one_of(
    snapshots,
    deltas(),
    st.builds(Heartbeat, versions, st.floats(allow_nan=False, allow_infinity=False)),
    st.builds(Close, st.text(max_size=50)),
    st.builds(ErrorMsg, names, st.text(max_size=50)),
)


@given(messages)
def test_round_trip(msg: Message) -> None:
    line = encode(msg)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert Decoder().feed(line) == [msg]


@given(st.lists(messages, max_size=6), st.data())
def test_any_chunk_split_decodes_the_same(msgs: list[Message], data: st.DataObject) -> None:
    stream = b"".join(encode(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = Decoder()
    out: list[Message] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out += decoder.feed(stream[start:end])
    decoder.eof()
    assert out == msgs


def test_encoding_is_compact_sorted_ascii() -> None:
    msg = Snapshot(ServiceName.DESTINATION, "red", 3, {"10.0.0.5": {"vni": 7, "mac": "é"}})
    assert encode(msg) == (
        b'{"key":"red","objects":{"10.0.0.5":{"mac":"\\u00e9","vni":7}},'
        b'"service":"destination","type":"snapshot","version":3}\n'
    )


def test_byte_at_a_time() -> None:
    msgs: list[Message] = [Heartbeat(1, 2.5), Close("shutdown")]
    decoder = Decoder()
    out = [m for b in b"".join(map(encode, msgs)) for m in decoder.feed(bytes([b]))]
    assert out == msgs


def _line(doc: Any) -> bytes:
    return json.dumps(doc).encode() + b"\n"


GOOD_DELTA = {"type": "delta", "service": "forwarding", "key": "red", "version": 1}


@pytest.mark.parametrize(
    "line",
    [
        b"\n",
        b"not json\n",
        b"[1]\n",
        b'"snapshot"\n',
        b"\xff\xfe\n",
        b'{"type":"heartbeat","version":1,"now":NaN}\n',
        b'{"type":"heartbeat","version":1,"now":Infinity}\n',
        b'{"type":"close","reason":"a","reason":"b"}\n',
        b"[" * 100_000 + b"]" * 100_000 + b"\n",
        b'{"type":"heartbeat","version":' + b"9" * 5000 + b',"now":1}\n',
        _line({"type": "bogus"}),
        _line({"reason": "x"}),
        _line({"type": "close"}),
        _line({"type": "close", "reason": "x", "extra": 1}),
        _line({"type": "close", "reason": 5}),
        _line({"type": "close", "reason": "x" * 1025}),
        _line({"type": "error", "code": "bad code", "detail": ""}),
        _line({"type": "heartbeat", "version": -1, "now": 0}),
        _line({"type": "heartbeat", "version": 2**63, "now": 0}),
        _line({"type": "heartbeat", "version": True, "now": 0}),
        _line({"type": "heartbeat", "version": 1.0, "now": 0}),
        _line({"type": "heartbeat", "version": 1, "now": "0"}),
        _line({"type": "heartbeat", "version": 1, "now": 1e400}),
        _line({"type": "snapshot", "service": "dns", "key": "red", "version": 1, "objects": {}}),
        _line({"type": "snapshot", "service": ["x"], "key": "red", "version": 1, "objects": {}}),
        _line({"type": "snapshot", "service": "peering", "key": "", "version": 1, "objects": {}}),
        _line({"type": "snapshot", "service": "peering", "key": "v", "version": 1, "objects": []}),
        _line(
            {
                "type": "snapshot",
                "service": "peering",
                "key": "v",
                "version": 1,
                "objects": {"a": 1},
            }
        ),
        _line(
            {
                "type": "snapshot",
                "service": "peering",
                "key": "v",
                "version": 1,
                "objects": {"": {}},
            }
        ),
        _line(
            {
                "type": "snapshot",
                "service": "peering",
                "key": "v",
                "version": 1,
                "objects": {"a b": {}},
            }
        ),
        _line({**GOOD_DELTA, "upserts": {}, "deletes": "a"}),
        _line({**GOOD_DELTA, "upserts": {}, "deletes": [1]}),
        _line({**GOOD_DELTA, "upserts": {}, "deletes": ["a", "a"]}),
        _line({**GOOD_DELTA, "upserts": {"a": {}}, "deletes": ["a"]}),
        _line({**GOOD_DELTA, "upserts": {}}),
    ],
)
def test_rejects_malformed(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        Decoder().feed(line)


def test_good_delta_template_is_valid() -> None:
    [msg] = Decoder().feed(_line({**GOOD_DELTA, "upserts": {"a": {}}, "deletes": ["b"]}))
    assert msg == Delta(ServiceName.FORWARDING, "red", 1, {"a": {}}, ("b",))


def test_rejects_long_line_before_newline_arrives() -> None:
    decoder = Decoder(max_line=10)
    decoder.feed(b"x" * 10)
    with pytest.raises(ProtocolError, match="longer"):
        decoder.feed(b"x")


def test_rejects_long_line_in_one_chunk() -> None:
    with pytest.raises(ProtocolError, match="longer"):
        Decoder(max_line=10).feed(b"x" * 11 + b"\n")


def test_line_at_max_size_is_accepted() -> None:
    line = encode(Close("x"))
    assert Decoder(max_line=len(line) - 1).feed(line) == [Close("x")]


def test_good_messages_before_a_bad_line_are_returned_then_decoder_stays_failed() -> None:
    decoder = Decoder()
    assert decoder.feed(encode(Close("a")) + b"junk\n" + encode(Close("b"))) == [Close("a")]
    with pytest.raises(ProtocolError):
        decoder.feed(encode(Close("c")))
    with pytest.raises(ProtocolError):
        decoder.eof()


def test_eof_inside_a_line() -> None:
    decoder = Decoder()
    decoder.feed(encode(Close("a"))[:-1])
    with pytest.raises(ProtocolError, match="ended"):
        decoder.eof()


def test_heartbeat_accepts_integer_now() -> None:
    assert Decoder().feed(b'{"now":5,"type":"heartbeat","version":0}\n') == [Heartbeat(0, 5.0)]
