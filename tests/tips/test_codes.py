"""Tip codes, passcodes (Argon2id) and the throttle on guessing them."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.tips import codes
from services.tips.codes import (
    CODE_ALPHABET,
    DUMMY_HASH,
    AttemptThrottle,
    PasscodeHasher,
    TipCodeError,
    new_passcode,
    new_tip_code,
    normalise_code,
)

# The parameters a service would use are the defaults; tests that count work use cheaper ones.
FAST = {"memory_cost": 1024, "iterations": 1, "lanes": 1}


def test_new_tip_code_shape_and_alphabet() -> None:
    seen = {new_tip_code() for _ in range(200)}
    assert len(seen) == 200
    for code in seen:
        assert re.fullmatch(r"[2-9A-HJKMNP-Z]{4}-[2-9A-HJKMNP-Z]{4}-[2-9A-HJKMNP-Z]{2}", code)
        assert not set(code) & set("0O1IL")


@settings(max_examples=200)
@given(
    chars=st.text(alphabet=CODE_ALPHABET, min_size=10, max_size=10),
    cuts=st.lists(st.sampled_from([" ", "-", "  ", "\u2013", "\t"]), min_size=11, max_size=11),
    lower=st.lists(st.booleans(), min_size=10, max_size=10),
)
def test_normalise_code_round_trips_however_it_is_typed(
    chars: str, cuts: list[str], lower: list[bool]
) -> None:
    canonical = f"{chars[:4]}-{chars[4:8]}-{chars[8:]}"
    typed = "".join(
        cut + (ch.lower() if low else ch) for cut, ch, low in zip(cuts, chars, lower, strict=False)
    )
    typed += cuts[-1]
    assert normalise_code(typed) == canonical
    assert normalise_code(canonical) == canonical


def test_normalise_code_accepts_full_width_and_no_dashes() -> None:
    assert normalise_code("k7qm3xtr9p") == "K7QM-3XTR-9P"
    full_width = "".join(chr(ord(ch) + 0xFEE0) for ch in "k7qm3xtr9p")
    assert normalise_code(full_width) == "K7QM-3XTR-9P"


@pytest.mark.parametrize(
    ("typed", "expected"),
    [("K7QM-3XTR", "must have 10"), ("K7QM-3XTR-9PP", "must have 10"), ("K0QM-3XTR-9P", "never")],
)
def test_normalise_code_refuses_without_echoing(typed: str, expected: str) -> None:
    with pytest.raises(TipCodeError, match=expected) as caught:
        normalise_code(typed)
    assert caught.value.field == "tip_code"
    assert typed not in str(caught.value) and "K7QM" not in str(caught.value)


def test_new_passcode_is_random_and_typeable() -> None:
    seen = {new_passcode() for _ in range(100)}
    assert len(seen) == 100
    for passcode in seen:
        assert re.fullmatch(r"[2-9a-hjkmnp-z]{4}-[2-9a-hjkmnp-z]{4}-[2-9a-hjkmnp-z]{4}", passcode)


def test_hash_is_self_describing_salted_and_verifies() -> None:
    hasher = PasscodeHasher()
    passcode = new_passcode()
    encoded = hasher.hash(passcode)
    assert re.fullmatch(
        r"\$argon2id\$v=19\$m=19456,t=2,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}", encoded
    )
    assert passcode not in encoded
    assert hasher.hash(passcode) != encoded  # a fresh salt each time
    assert hasher.verify(passcode, encoded)
    # Typed back with other case, blanks, no dashes: the same passcode.
    assert hasher.verify(passcode.upper().replace("-", " "), encoded)
    assert not hasher.verify(passcode[:-1] + ("2" if passcode[-1] != "2" else "3"), encoded)
    assert not hasher.verify("", encoded)


def test_hash_interoperates_with_the_phc_verifier_of_cryptography() -> None:
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

    encoded = PasscodeHasher(**FAST).hash("abcd-efgh-jkmn")
    Argon2id.verify_phc_encoded(b"abcdefghjkmn", encoded)  # raises if not the same hash


def test_verify_uses_the_parameters_stored_in_the_hash() -> None:
    old = PasscodeHasher(**FAST).hash("abcd-efgh-jkmn")
    current = PasscodeHasher()
    assert current.verify("abcd-efgh-jkmn", old)
    assert current.needs_rehash(old)
    assert not current.needs_rehash(current.hash("abcd-efgh-jkmn"))


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "plain",
        "$argon2i$v=19$m=19456,t=2,p=1$7kfTUSzrc80ZD9dllDaCyQ$xXJf/gKy3yv4JEBF5raFIKhBqXoX9Q+UyRs534gI2p4",
        "$argon2id$v=19$m=99999999,t=2,p=1$7kfTUSzrc80ZD9dllDaCyQ$xXJf/gKy3yv4JEBF5raFIKhBqXoX9Q+UyRs534gI2p4",
        "$argon2id$v=19$m=19456,t=2,p=1$7kfTUSzrc80ZD9dllDaCyQa$xXJf/gKy3yv4JEBF5raFIKhBqXoX9Q+UyRs534gI2p4",
    ],
)
def test_malformed_or_hostile_hashes_never_verify(encoded: str) -> None:
    assert not PasscodeHasher().verify("anything", encoded)


def test_over_long_passcodes_are_refused_when_hashing_and_false_when_verifying() -> None:
    hasher = PasscodeHasher(**FAST)
    with pytest.raises(TipCodeError, match="at most 256"):
        hasher.hash("a" * 257)
    assert not hasher.verify("a" * 257, hasher.hash("a" * 256))


def test_dummy_hash_is_a_real_default_cost_hash_that_never_verifies() -> None:
    hasher = PasscodeHasher()
    assert hasher.dummy_hash == DUMMY_HASH
    assert not hasher.needs_rehash(DUMMY_HASH)  # same parameters, so the same cost
    assert not hasher.verify("", DUMMY_HASH)
    assert not hasher.verify_or_dummy(new_passcode(), None)


def test_unknown_code_costs_one_derivation_with_the_same_parameters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Existence of a code must not show in timing: both paths run one identical Argon2id."""
    calls: list[tuple[int, int, int]] = []
    real = codes.Argon2id  # type: ignore[attr-defined]

    def counting(**kwargs: int | bytes) -> object:
        calls.append((kwargs["memory_cost"], kwargs["iterations"], kwargs["lanes"]))  # type: ignore[arg-type]
        return real(**kwargs)  # type: ignore[arg-type]

    hasher = PasscodeHasher(**FAST)
    known = hasher.hash("abcd-efgh-jkmn")
    _ = hasher.dummy_hash
    monkeypatch.setattr(codes, "Argon2id", counting)
    assert not hasher.verify_or_dummy("wxyz-wxyz-wxyz", known)
    assert not hasher.verify_or_dummy("wxyz-wxyz-wxyz", None)
    assert hasher.verify_or_dummy("abcd-efgh-jkmn", known)
    assert calls == [(1024, 1, 1)] * 3


def test_throttle_refuses_after_n_failures_then_allows_after_a_doubling_backoff() -> None:
    throttle = AttemptThrottle(max_failures=3, window=600, backoff=60, max_backoff=3600)
    key = "K7QM-3XTR-9P"
    for t in (0.0, 1.0):
        assert throttle.check(key, t).allowed
        assert throttle.failed(key, t).allowed
    assert throttle.check(key, 2.0).allowed
    verdict = throttle.failed(key, 2.0)  # the third failure locks
    assert not verdict.allowed and verdict.retry_after == 60
    refused = throttle.check(key, 30.0)  # the 4th attempt is refused
    assert not refused.allowed and refused.retry_after == pytest.approx(32.0)
    assert throttle.check(key, 62.0).allowed  # after the backoff
    for t in (62.0, 63.0, 64.0):
        throttle.failed(key, t)
    assert not throttle.check(key, 64.0 + 119).allowed  # doubled: 120 s
    assert throttle.check(key, 64.0 + 120).allowed
    assert throttle.check("another-key", 70.0).allowed  # keys are independent


def test_throttle_counts_failures_within_the_window_only() -> None:
    throttle = AttemptThrottle(max_failures=3, window=100, backoff=60)
    throttle.failed("k", 0)
    throttle.failed("k", 50)
    assert throttle.failed("k", 120).allowed  # the first fell out of the window
    assert not throttle.failed("k", 130).allowed  # 50, 120, 130: three within 100 s


def test_success_forgives_and_backoff_is_capped() -> None:
    throttle = AttemptThrottle(max_failures=1, window=100, backoff=60, max_backoff=100)
    assert throttle.failed("k", 0).retry_after == 60
    assert throttle.failed("k", 60).retry_after == 100  # 120 capped at 100
    throttle.succeeded("k")
    assert throttle.check("k", 61).allowed
    assert throttle.failed("k", 61).retry_after == 60  # lockouts forgotten


def test_throttle_memory_is_bounded() -> None:
    throttle = AttemptThrottle(max_failures=5, window=10, forget_after=100, max_keys=50)
    for i in range(200):
        throttle.failed(f"source-{i}", 0.0)
        assert len(throttle) <= 50
    # Quiet keys are dropped once forget_after has passed.
    throttle.check("x", 101.0)
    assert len(throttle) == 0
    # A locked key is kept while its backoff runs, however quiet.
    locked = AttemptThrottle(max_failures=1, window=10, backoff=500, forget_after=100)
    locked.failed("k", 0.0)
    assert not locked.check("k", 400.0).allowed
