"""The tipster's identity sealed under a key ring: round trip, rotation, tampering, moving."""

from __future__ import annotations

import base64
import os
import pickle
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safehub.kernel.errors import ConfigError, SafeHubError
from services.tips.sealing import IdentitySeal, KeyRingError, SealError, parse_key_ring

IDENTITY = {
    "contact": {"phone": "+15555550123", "email": "tipster@example.org", "name": "Avery Q"},
    "network": {"ip": "203.0.113.7", "user_agent": "Mozilla/5.0 (iPhone)"},
}
K1 = os.urandom(32)
K2 = os.urandom(32)


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_round_trip_binds_the_tip_and_hides_the_content() -> None:
    seal = IdentitySeal({"k1": K1}, "k1")
    blob = seal.seal(IDENTITY, tip_id="tip-1")
    assert seal.open(blob, tip_id="tip-1") == IDENTITY
    assert b"tipster@example.org" not in blob and b"203.0.113.7" not in blob
    # A fresh nonce every time: the same identity never seals to the same bytes.
    assert seal.seal(IDENTITY, tip_id="tip-1") != blob


def test_a_blob_moved_to_another_tip_is_refused() -> None:
    seal = IdentitySeal({"k1": K1}, "k1")
    blob = seal.seal(IDENTITY, tip_id="tip-1")
    with pytest.raises(SealError, match="another tip"):
        seal.open(blob, tip_id="tip-2")


@pytest.mark.parametrize("position", [0, 1, 2, 5, 20, -1])
def test_a_tampered_blob_is_refused(position: int) -> None:
    seal = IdentitySeal({"k1": K1}, "k1")
    blob = bytearray(seal.seal(IDENTITY, tip_id="tip-1"))
    blob[position] ^= 0x01
    with pytest.raises(SealError) as caught:
        seal.open(bytes(blob), tip_id="tip-1")
    assert isinstance(caught.value, SafeHubError)
    assert "example.org" not in str(caught.value)


def test_truncated_blobs_are_refused() -> None:
    seal = IdentitySeal({"k1": K1}, "k1")
    blob = seal.seal(IDENTITY, tip_id="tip-1")
    for cut in (0, 1, 4, 10, len(blob) - 1):
        with pytest.raises(SealError):
            seal.open(blob[:cut], tip_id="tip-1")


def test_the_wrong_key_is_refused_without_naming_content() -> None:
    blob = IdentitySeal({"k1": K1}, "k1").seal(IDENTITY, tip_id="tip-1")
    impostor = IdentitySeal({"k1": os.urandom(32)}, "k1")
    with pytest.raises(SealError, match="does not open") as caught:
        impostor.open(blob, tip_id="tip-1")
    assert "Avery" not in str(caught.value)


def test_a_key_no_longer_in_the_ring_is_named() -> None:
    blob = IdentitySeal({"k1": K1}, "k1").seal(IDENTITY, tip_id="tip-1")
    with pytest.raises(SealError, match=r"'k1'.*not in the key ring"):
        IdentitySeal({"k2": K2}, "k2").open(blob, tip_id="tip-1")


def test_rotation_old_key_still_opens_and_reseal_moves_to_the_current_key() -> None:
    old_blob = IdentitySeal({"k1": K1}, "k1").seal(IDENTITY, tip_id="tip-1")
    rotated = IdentitySeal.from_setting(f"k2:{b64(K2)},k1:{b64(K1)}")
    assert rotated.current_key_id == "k2"
    assert rotated.open(old_blob, tip_id="tip-1") == IDENTITY
    assert rotated.key_id_of(old_blob) == "k1"

    new_blob = rotated.reseal(old_blob, tip_id="tip-1")
    assert rotated.key_id_of(new_blob) == "k2"
    # Once k1 is retired, only the resealed blob still opens.
    retired = IdentitySeal({"k2": K2}, "k2")
    assert retired.open(new_blob, tip_id="tip-1") == IDENTITY
    with pytest.raises(SealError):
        retired.open(old_blob, tip_id="tip-1")


def test_repr_and_pickle_never_show_keys() -> None:
    seal = IdentitySeal({"k2": K2, "k1": K1}, "k2")
    ring = parse_key_ring(f"k2:{b64(K2)},k1:{b64(K1)}")
    for text in (repr(seal), str(seal), repr(ring), str(ring)):
        assert b64(K1) not in text and b64(K2) not in text
        assert repr(K1) not in text and K1.hex() not in text
    assert "k1" in repr(seal) and "k2" in repr(ring)
    with pytest.raises(TypeError):
        pickle.dumps(seal)


def test_non_json_identity_is_refused() -> None:
    seal = IdentitySeal({"k1": K1}, "k1")
    with pytest.raises(SealError, match="JSON"):
        seal.seal({"when": object()}, tip_id="tip-1")
    with pytest.raises(SealError, match="tip id"):
        seal.seal(IDENTITY, tip_id="")


def test_parse_key_ring_first_entry_is_current() -> None:
    ring = parse_key_ring(f" k2:{b64(K2)} , k1:{b64(K1)} ")
    assert ring.current == "k2"
    assert dict(ring.keys) == {"k2": K2, "k1": K1}
    urlsafe = base64.urlsafe_b64encode(K1).decode()
    assert parse_key_ring(f"k1:{urlsafe}").keys["k1"] == K1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty"),
        ("k1", "entry 1: expected KEY_ID:BASE64"),
        (f"k1:{b64(K1)},k1:{b64(K2)}", "entry 2: key id 'k1' appears twice"),
        (f"k1:{b64(K1)},k2:not*base64!", r"entry 2 \('k2'\): key is not valid base64"),
        (f"k1:{b64(K1)[:-4]}", r"entry 1 \('k1'\): key must be 32 bytes \(AES-256\), got"),
        (f"k 1:{b64(K1)}", "entry 1: key id must be"),
    ],
    # The keys are random: ids that do not show them keep every xdist worker's list equal.
    ids=["empty", "no-colon", "twice", "bad-base64", "short-key", "bad-id"],
)
def test_parse_key_ring_names_what_is_wrong_without_the_key(text: str, expected: str) -> None:
    with pytest.raises(KeyRingError, match=expected) as caught:
        parse_key_ring(text)
    assert isinstance(caught.value, ConfigError)
    message = str(caught.value)
    assert b64(K1) not in message and b64(K1)[:-4] not in message and "not*base64" not in message


def test_constructor_refuses_a_current_key_outside_the_ring_and_short_keys() -> None:
    with pytest.raises(KeyRingError, match="current key id"):
        IdentitySeal({"k1": K1}, "k2")
    with pytest.raises(KeyRingError, match="32 bytes"):
        IdentitySeal({"k1": K1[:16]}, "k1")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(
    identity=st.dictionaries(st.text(max_size=12), json_values, max_size=6),
    tip_id=st.text(min_size=1, max_size=40),
)
def test_seal_open_round_trips_any_json_object(identity: dict[str, Any], tip_id: str) -> None:
    seal = IdentitySeal({"k2": K2, "k1": K1}, "k2")
    assert seal.open(seal.seal(identity, tip_id=tip_id), tip_id=tip_id) == identity
