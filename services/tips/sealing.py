"""The tipster's identity (contact, network metadata) sealed with AES-256-GCM under a key ring.

A sealed blob is ``version (1 byte) | key id length (1 byte) | key id (ASCII) | nonce (12 bytes)
| ciphertext + tag``. The associated data binds the format version, the key id and the tip id,
so a blob copied onto another tip, or a header edited, does not open. Any key of the ring
opens; new blobs use the current key, so rotation is: add the new key first in the setting,
keep the old ones until every blob was resealed.

Errors name the key id or the position in the setting, never a key or a sealed value.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from safehub.kernel.errors import ConfigError, SafeHubError

__all__ = ["IdentitySeal", "KeyRing", "KeyRingError", "SealError", "parse_key_ring"]

VERSION = 1
KEY_BYTES = 32
NONCE_BYTES = 12
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,32}")
_AD_PREFIX = b"safehub.tips.identity\x00"


class SealError(SafeHubError):
    """A sealed identity could not be sealed or opened (the message names no content)."""


class KeyRingError(ConfigError):
    """The key ring setting is malformed (the message names the entry, never the key)."""


@dataclass(frozen=True)
class KeyRing:
    """Keys by id and the id of the current key (the one new blobs are sealed with)."""

    keys: Mapping[str, bytes] = field(repr=False)
    current: str

    def __repr__(self) -> str:
        return f"KeyRing(current={self.current!r}, key_ids={sorted(self.keys)!r})"


def _decode_key(text: str) -> bytes:
    # Both alphabets: operators paste keys from `openssl rand -base64` and from urlsafe tools.
    # Padding optional: generated secrets (``secrets.token_urlsafe``) come without it.
    padded = text + "=" * (-len(text) % 4)
    return base64.b64decode(padded.translate(str.maketrans("-_", "+/")), validate=True)


def parse_key_ring(text: str) -> KeyRing:
    """Parse ``"k2:BASE64,k1:BASE64"``: comma-separated ``id:base64`` entries, first is current."""
    keys: dict[str, bytes] = {}
    entries = [entry.strip() for entry in text.split(",")]
    if not any(entries):
        raise KeyRingError("key ring is empty: expected KEY_ID:BASE64[,KEY_ID:BASE64...]")
    for position, entry in enumerate(entries, start=1):
        key_id, sep, encoded = entry.partition(":")
        key_id = key_id.strip()
        if not sep:
            raise KeyRingError(f"key ring entry {position}: expected KEY_ID:BASE64")
        if not _KEY_ID.fullmatch(key_id):
            raise KeyRingError(
                f"key ring entry {position}: key id must be 1-32 characters of A-Z a-z 0-9 . _ -"
            )
        if key_id in keys:
            raise KeyRingError(f"key ring entry {position}: key id {key_id!r} appears twice")
        try:
            key = _decode_key(encoded.strip())
        except (binascii.Error, ValueError):
            raise KeyRingError(
                f"key ring entry {position} ({key_id!r}): key is not valid base64"
            ) from None  # the decoder's message may quote the key
        if len(key) != KEY_BYTES:
            raise KeyRingError(
                f"key ring entry {position} ({key_id!r}): key must be {KEY_BYTES} bytes "
                f"(AES-256), got {len(key)}"
            )
        keys[key_id] = key
    return KeyRing(keys=keys, current=entries[0].partition(":")[0].strip())


def _associated_data(key_id: str, tip_id: str) -> bytes:
    return b"%s%d\x00%s\x00%s" % (_AD_PREFIX, VERSION, key_id.encode(), tip_id.encode())


class IdentitySeal:
    """Seals and opens a tipster's identity (a JSON object) for one tip."""

    __slots__ = ("_ciphers", "_current")

    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        if current not in keys:
            raise KeyRingError(f"current key id {current!r} is not in the key ring")
        for key_id, key in keys.items():
            if not _KEY_ID.fullmatch(key_id):
                raise KeyRingError("key ids must be 1-32 characters of A-Z a-z 0-9 . _ -")
            if len(key) != KEY_BYTES:
                raise KeyRingError(f"key {key_id!r} must be {KEY_BYTES} bytes (AES-256)")
        # Only the cipher objects are kept: nothing here holds or prints the raw keys.
        self._ciphers = {key_id: AESGCM(bytes(key)) for key_id, key in keys.items()}
        self._current = current

    @classmethod
    def from_ring(cls, ring: KeyRing) -> IdentitySeal:
        """A seal over a parsed key ring."""
        return cls(ring.keys, ring.current)

    @classmethod
    def from_setting(cls, text: str) -> IdentitySeal:
        """A seal over a key ring setting (see :func:`parse_key_ring`)."""
        return cls.from_ring(parse_key_ring(text))

    @property
    def current_key_id(self) -> str:
        """The id of the key new blobs are sealed with."""
        return self._current

    def __repr__(self) -> str:
        return f"IdentitySeal(current={self._current!r}, key_ids={sorted(self._ciphers)!r})"

    def __reduce__(self) -> Any:
        # Pickling would write the keys wherever the pickle goes.
        raise TypeError("IdentitySeal cannot be pickled")

    def seal(self, identity: Mapping[str, Any], *, tip_id: str) -> bytes:
        """Seal ``identity`` (JSON-serialisable) for ``tip_id`` under the current key."""
        if not tip_id:
            raise SealError("a sealed identity needs the tip id it belongs to")
        try:
            plain = json.dumps(
                dict(identity), ensure_ascii=False, separators=(",", ":"), sort_keys=True
            ).encode()
        except (TypeError, ValueError):
            raise SealError("identity is not a JSON-serialisable object") from None
        key_id = self._current
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[key_id].encrypt(nonce, plain, _associated_data(key_id, tip_id))
        header = bytes([VERSION, len(key_id)]) + key_id.encode()
        return header + nonce + sealed

    def key_id_of(self, blob: bytes) -> str:
        """The id of the key ``blob`` was sealed with (a rotation job skips current ones)."""
        return self._parse(blob)[0]

    def open(self, blob: bytes, *, tip_id: str) -> dict[str, Any]:
        """The identity sealed in ``blob`` for ``tip_id``; any key of the ring opens it."""
        key_id, nonce, sealed = self._parse(blob)
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise SealError(f"sealed with key {key_id!r}, which is not in the key ring")
        try:
            plain = cipher.decrypt(nonce, sealed, _associated_data(key_id, tip_id))
        except InvalidTag:
            raise SealError(
                "sealed identity does not open: wrong key, altered, or sealed for another tip"
            ) from None
        try:
            identity = json.loads(plain)
        except ValueError:
            raise SealError("sealed identity is not a JSON object") from None
        if not isinstance(identity, dict):
            raise SealError("sealed identity is not a JSON object")
        return identity

    def reseal(self, blob: bytes, *, tip_id: str) -> bytes:
        """``blob`` sealed again under the current key (with a fresh nonce)."""
        return self.seal(self.open(blob, tip_id=tip_id), tip_id=tip_id)

    @staticmethod
    def _parse(blob: bytes) -> tuple[str, bytes, bytes]:
        if len(blob) < 2:
            raise SealError("sealed identity is truncated")
        if blob[0] != VERSION:
            raise SealError(f"sealed identity has unknown format version {blob[0]}")
        end = 2 + blob[1]
        # 16 bytes: the GCM tag, present even for an empty plaintext.
        if blob[1] == 0 or len(blob) < end + NONCE_BYTES + 16:
            raise SealError("sealed identity is truncated")
        try:
            key_id = blob[2:end].decode("ascii")
        except UnicodeDecodeError:
            raise SealError("sealed identity has a malformed key id") from None
        if not _KEY_ID.fullmatch(key_id):
            raise SealError("sealed identity has a malformed key id")
        return key_id, blob[end : end + NONCE_BYTES], blob[end + NONCE_BYTES :]
