"""Grants: mint/verify round trip, key rotation, and each rejection."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshpeer.protocol import Grant, GrantError, Rejection, mint, verify
from meshpeer.protocol.grants import covers

KEYS = {"k1": b"1" * 32, "k2": b"2" * 32}
GRANT = Grant("blue", "red", "p-3f9a", "host-1", 1000.0, "k1")
SCOPE = {"target_vpc": "red", "policy_id": "p-3f9a", "host": "host-1"}


def rejected(
    token: str,
    keys: dict[str, bytes] = KEYS,
    now: float = 500.0,
    scope: dict[str, str] | None = None,
) -> Rejection:
    with pytest.raises(GrantError) as info:
        verify(token, keys, now, **{**SCOPE, **(scope or {})})
    return info.value.reason


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_round_trip() -> None:
    token = mint(GRANT, KEYS)
    assert token.startswith("mpg1.k1.")
    assert verify(token, KEYS, 500.0, **SCOPE) == GRANT


names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,30}", fullmatch=True)


@given(
    st.builds(
        Grant,
        names,
        names,
        names,
        names,
        st.floats(min_value=-1e12, max_value=1e12),
        st.sampled_from(["k1", "k2"]),
    )
)
def test_round_trip_property(grant: Grant) -> None:
    token = mint(grant, KEYS)
    scope = {"target_vpc": grant.target_vpc, "policy_id": grant.policy_id, "host": grant.host}
    assert verify(token, KEYS, grant.expires_at - 1.0, **scope) == grant


def test_rotation_old_and_new_key_ids_both_verify() -> None:
    old, new = mint(GRANT, KEYS), mint(replace(GRANT, key_id="k2"), KEYS)
    assert verify(old, KEYS, 0.0, **SCOPE).key_id == "k1"
    assert verify(new, KEYS, 0.0, **SCOPE).key_id == "k2"
    assert rejected(old, keys={"k2": KEYS["k2"]}) == Rejection.UNKNOWN_KEY


def test_expired_at_and_after_expiry() -> None:
    token = mint(GRANT, KEYS)
    assert verify(token, KEYS, 999.999, **SCOPE) == GRANT
    assert rejected(token, now=1000.0) == Rejection.EXPIRED
    assert rejected(token, now=5000.0) == Rejection.EXPIRED


@pytest.mark.parametrize(
    "scope", [{"target_vpc": "green"}, {"policy_id": "p-other"}, {"host": "host-2"}]
)
def test_wrong_scope(scope: dict[str, str]) -> None:
    assert rejected(mint(GRANT, KEYS), scope=scope) == Rejection.WRONG_SCOPE


def test_bad_signature_wrong_key_bytes() -> None:
    token = mint(GRANT, {"k1": b"x" * 32})
    assert rejected(token) == Rejection.BAD_SIGNATURE


def test_bad_signature_tampered_payload() -> None:
    prefix, kid, _payload, sig = mint(GRANT, KEYS).split(".")
    body = {"exp": 1e12, "host": "host-1", "pol": "p-3f9a", "sub": "blue", "tgt": "red"}
    forged = b64(json.dumps(body, separators=(",", ":"), sort_keys=True).encode())
    assert rejected(f"{prefix}.{kid}.{forged}.{sig}") == Rejection.BAD_SIGNATURE


def test_bad_signature_swapped_key_id() -> None:
    _, _, payload, sig = mint(GRANT, KEYS).split(".")
    assert rejected(f"mpg1.k2.{payload}.{sig}") == Rejection.BAD_SIGNATURE


def test_bad_signature_truncated_or_empty() -> None:
    token = mint(GRANT, KEYS)
    assert rejected(token[:-1]) == Rejection.BAD_SIGNATURE
    assert rejected(token.rsplit(".", 1)[0] + ".") == Rejection.BAD_SIGNATURE


def test_unknown_key_id() -> None:
    assert rejected(mint(replace(GRANT, key_id="k9"), {"k9": b"9" * 32})) == Rejection.UNKNOWN_KEY


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b.c",
        "mpg1.k1.abc",
        "mpg2.k1.abc.def",
        "mpg1.k1.abc.def.ghi",
        "mpg1..abc.def",
        "mpg1.k 1.abc.def",
        "mpg1.k1..def",
        "mpg1.k1.a+b.def",
        "mpg1.k1.abc.def" + "x" * 3000,
    ],
)
def test_malformed_shape(token: str) -> None:
    assert rejected(token) == Rejection.MALFORMED


def signed(payload: str, kid: str = "k1") -> str:
    """A correctly signed token over an arbitrary payload (a key holder minting junk)."""
    signing_input = f"mpg1.{kid}.{payload}"
    sig = hmac.new(KEYS[kid], signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"\xff",
        b"[]",
        b'{"exp":1e12}',
        b'{"exp":"1","host":"h","pol":"p","sub":"s","tgt":"t"}',
        b'{"exp":true,"host":"h","pol":"p","sub":"s","tgt":"t"}',
        b'{"exp":1e999,"host":"h","pol":"p","sub":"s","tgt":"t"}',
        b'{"exp":1,"host":"h/x","pol":"p","sub":"s","tgt":"t"}',
        b'{"exp":1,"host":"h","pol":"p","sub":"s","tgt":"t","x":1}',
    ],
)
def test_malformed_payload_even_if_signed(body: bytes) -> None:
    assert rejected(signed(b64(body))) == Rejection.MALFORMED


def test_non_ascii_token_is_malformed_not_a_crash() -> None:
    token = mint(GRANT, KEYS)
    assert rejected(token[:-1] + "é") == Rejection.BAD_SIGNATURE
    assert rejected("mpg1.k1.é.abc") == Rejection.MALFORMED


@pytest.mark.parametrize(
    "grant",
    [
        replace(GRANT, key_id="missing"),
        replace(GRANT, key_id="bad.id"),
        replace(GRANT, host="a b"),
        replace(GRANT, target_vpc=""),
        replace(GRANT, expires_at=float("inf")),
    ],
)
def test_mint_rejects_bad_input(grant: Grant) -> None:
    with pytest.raises(ValueError):
        mint(grant, KEYS)


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="shorter"):
        mint(GRANT, {"k1": b"short"})
    with pytest.raises(ValueError, match="shorter"):
        verify(mint(GRANT, KEYS), {"k1": b"short"}, 0.0, **SCOPE)


# A grant scoped to destinations (an on-demand host's busy pairs, docs/protocol.md).
SCOPED = replace(GRANT, dst=frozenset({"10.2.0.11", "10.2.0.12", "fd00::b"}))


def test_dst_scope_round_trip_and_subset_check() -> None:
    token = mint(SCOPED, KEYS)
    got = verify(token, KEYS, 500.0, **SCOPE)
    assert got == SCOPED
    covers(got, frozenset({"10.2.0.11"}))
    covers(got, SCOPED.dst)
    for outside in ({"10.2.0.13"}, {"10.2.0.11", "10.2.0.99"}, None):  # None: the whole stream
        with pytest.raises(GrantError) as info:
            covers(got, None if outside is None else frozenset(outside))
        assert info.value.reason == Rejection.WRONG_SCOPE


def test_grant_without_dst_keeps_its_meaning() -> None:
    token = mint(GRANT, KEYS)
    assert verify(token, KEYS, 500.0, **SCOPE).dst is None
    covers(GRANT, None)
    covers(GRANT, frozenset({"10.9.9.9"}))
    # the payload of a grant without dst is as before (same bytes: old verifiers accept it)
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[2] + "==="))
    assert set(payload) == {"exp", "host", "pol", "sub", "tgt"}


def test_dst_scope_tampered_is_refused() -> None:
    """Widening the signed dst list (or dropping it) breaks the signature."""
    token = mint(SCOPED, KEYS)
    prefix, kid, payload, sig = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "==="))
    for changed in (
        {**body, "dst": [*body["dst"], "10.2.0.99"]},
        {k: v for k, v in body.items() if k != "dst"},
    ):
        forged = b64(json.dumps(changed, separators=(",", ":"), sort_keys=True).encode())
        assert rejected(f"{prefix}.{kid}.{forged}.{sig}") == Rejection.BAD_SIGNATURE


@pytest.mark.parametrize(
    "dst",
    [
        [],
        ["10.2.0.12", "10.2.0.11"],
        ["10.2.0.11", "10.2.0.11"],
        ["010.2.0.11"],
        ["x"],
        [1],
        "10.2.0.11",
    ],
)
def test_dst_scope_malformed_even_if_signed(dst: object) -> None:
    body = {
        "exp": 1000.0,
        "host": "host-1",
        "pol": "p-3f9a",
        "sub": "blue",
        "tgt": "red",
        "dst": dst,
    }
    payload = b64(json.dumps(body, separators=(",", ":"), sort_keys=True).encode())
    assert rejected(signed(payload)) == Rejection.MALFORMED


def test_mint_refuses_a_bad_dst_scope() -> None:
    for dst in (
        frozenset(),
        frozenset({"nope"}),
        frozenset(f"10.0.{i // 256}.{i % 256}" for i in range(257)),
    ):
        with pytest.raises(ValueError):
            mint(replace(GRANT, dst=dst), KEYS)
