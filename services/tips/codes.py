"""Tip codes and passcodes of the anonymous two-way thread, and the throttle on guessing them.

A tipster gets a tip code (which tip) and a passcode (proof it is theirs), both typeable on a
phone. Only an Argon2id hash of the passcode is kept. Whether a code exists must not show:
the caller answers "code or passcode wrong" either way, throttles by code and by source, and
verifies unknown codes against :data:`DUMMY_HASH` so the answer takes as long.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from safehub.kernel.errors import ConfigError, SafeHubError

__all__ = [
    "CODE_ALPHABET",
    "DUMMY_HASH",
    "AttemptThrottle",
    "PasscodeHasher",
    "ThrottleVerdict",
    "TipCodeError",
    "new_passcode",
    "new_tip_code",
    "normalise_code",
    "normalise_passcode",
]

#: No 0/O, 1/I/L: each pair is misread when a code is read aloud or copied from paper.
CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
CODE_LENGTH = 10  # 31**10: about 49.5 bits, and every guess is throttled
CODE_GROUPS = (4, 4, 2)
#: Lower case: quickest to type on a phone keyboard; same confusables left out.
PASSCODE_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"
PASSCODE_LENGTH = 12  # about 59.5 bits
MAX_PASSCODE_CHARS = 256  # Argon2 hashes anything; this only bounds what a request can carry

_SEPARATORS = re.compile(r"[\s\-\u2010-\u2015\u2212_.]+")


class TipCodeError(SafeHubError):
    """A tip code or passcode that is not well formed (the message never repeats it)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field} {message}")
        self.field = field


def _group(chars: str, groups: tuple[int, ...]) -> str:
    parts, start = [], 0
    for size in groups:
        parts.append(chars[start : start + size])
        start += size
    return "-".join(parts)


def new_tip_code() -> str:
    """A fresh random tip code, e.g. ``K7QM-3XTR-9P``."""
    chars = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
    return _group(chars, CODE_GROUPS)


def normalise_code(text: str, *, field: str = "tip_code") -> str:
    """The canonical form of a typed tip code (any case, blanks or dashes anywhere, or none)."""
    # NFKC: full-width characters from East Asian phone keyboards become ASCII.
    chars = _SEPARATORS.sub("", unicodedata.normalize("NFKC", text)).upper()
    if len(chars) != CODE_LENGTH:
        raise TipCodeError(field, f"must have {CODE_LENGTH} letters and digits")
    if any(ch not in CODE_ALPHABET for ch in chars):
        raise TipCodeError(field, "contains characters that are never in a tip code")
    return _group(chars, CODE_GROUPS)


def new_passcode() -> str:
    """A fresh random passcode, e.g. ``k7qm-3xtr-9pva``."""
    chars = "".join(secrets.choice(PASSCODE_ALPHABET) for _ in range(PASSCODE_LENGTH))
    return _group(chars, (4, 4, 4))


def normalise_passcode(passcode: str) -> str:
    """What is hashed: case, blanks and dashes do not matter to a tipster typing it back."""
    return _SEPARATORS.sub("", unicodedata.normalize("NFKC", passcode)).casefold()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


_ENCODED = re.compile(
    r"\$argon2id\$v=19\$m=(?P<m>\d{1,8}),t=(?P<t>\d{1,3}),p=(?P<p>\d{1,3})"
    r"\$(?P<salt>[A-Za-z0-9+/]{16,88})\$(?P<hash>[A-Za-z0-9+/]{16,88})"
)


class PasscodeHasher:
    """Argon2id passcode hashes in the PHC string format.

    ``$argon2id$v=19$m=<KiB>,t=<iterations>,p=<lanes>$<salt>$<hash>`` (unpadded base64): the
    format of the reference implementation and of argon2-cffi, so stored hashes carry their own
    parameters and stay verifiable after the defaults change (:meth:`needs_rehash`).
    """

    SALT_BYTES = 16
    HASH_BYTES = 32
    #: Bounds on parameters read from a stored hash: a corrupted row must not cost gigabytes.
    MAX_MEMORY_KIB = 1024 * 1024
    MAX_ITERATIONS = 64

    def __init__(
        self, *, memory_cost: int = 19 * 1024, iterations: int = 2, lanes: int = 1
    ) -> None:
        # OWASP's minimum for Argon2id is m=19 MiB, t=2, p=1: memory-hard, ~50 ms here.
        if not 8 * lanes <= memory_cost <= self.MAX_MEMORY_KIB:
            raise ConfigError("memory_cost must be from 8 x lanes to 1 GiB (in KiB)")
        if not 1 <= iterations <= self.MAX_ITERATIONS or not 1 <= lanes <= 64:
            raise ConfigError("iterations must be 1-64 and lanes 1-64")
        self.memory_cost = memory_cost
        self.iterations = iterations
        self.lanes = lanes
        self._dummy: str | None = DUMMY_HASH if self._is_default() else None

    def _is_default(self) -> bool:
        return (self.memory_cost, self.iterations, self.lanes) == (19 * 1024, 2, 1)

    def _kdf(self, salt: bytes, memory_cost: int, iterations: int, lanes: int) -> Argon2id:
        return Argon2id(
            salt=salt,
            length=self.HASH_BYTES,
            iterations=iterations,
            lanes=lanes,
            memory_cost=memory_cost,
        )

    def hash(self, passcode: str) -> str:
        """A fresh salted hash of ``passcode`` (normalised first)."""
        if len(passcode) > MAX_PASSCODE_CHARS:
            raise TipCodeError("passcode", f"must be at most {MAX_PASSCODE_CHARS} characters")
        salt = os.urandom(self.SALT_BYTES)
        kdf = self._kdf(salt, self.memory_cost, self.iterations, self.lanes)
        digest = kdf.derive(normalise_passcode(passcode).encode())
        return (
            f"$argon2id$v=19$m={self.memory_cost},t={self.iterations},p={self.lanes}"
            f"${_b64(salt)}${_b64(digest)}"
        )

    def verify(self, passcode: str, encoded: str) -> bool:
        """Whether ``passcode`` matches ``encoded`` (a constant-time comparison)."""
        parsed = _ENCODED.fullmatch(encoded)
        if parsed is None:
            return False
        memory, iterations, lanes = (int(parsed[name]) for name in ("m", "t", "p"))
        if not (
            1 <= lanes <= 64
            and 8 * lanes <= memory <= self.MAX_MEMORY_KIB
            and 1 <= iterations <= self.MAX_ITERATIONS
        ):
            return False
        try:
            salt, expected = _unb64(parsed["salt"]), _unb64(parsed["hash"])
        except ValueError:  # binascii.Error: a length no base64 text has
            return False
        # Over-long input still costs one derivation, so its answer takes as long as any other.
        material = normalise_passcode(passcode[: MAX_PASSCODE_CHARS + 1]).encode()
        kdf = Argon2id(
            salt=salt, length=len(expected), iterations=iterations, lanes=lanes,
            memory_cost=memory,
        )  # fmt: skip
        try:
            kdf.verify(material, expected)  # compares in constant time
        except InvalidKey:
            return False
        return len(passcode) <= MAX_PASSCODE_CHARS

    @property
    def dummy_hash(self) -> str:
        """A hash of a random secret nobody knows, with this hasher's parameters."""
        if self._dummy is None:
            self._dummy = self.hash(secrets.token_urlsafe(16))
        return self._dummy

    def verify_or_dummy(self, passcode: str, encoded: str | None) -> bool:
        """:meth:`verify`, or, for an unknown code (``None``), the same work and ``False``."""
        if encoded is None:
            self.verify(passcode, self.dummy_hash)
            return False
        return self.verify(passcode, encoded)

    def needs_rehash(self, encoded: str) -> bool:
        """Whether ``encoded`` was made with other parameters (rehash at the next login)."""
        parsed = _ENCODED.fullmatch(encoded)
        current = (str(self.memory_cost), str(self.iterations), str(self.lanes))
        return parsed is None or parsed.group("m", "t", "p") != current


#: Argon2id (m=19456, t=2, p=1) of 32 random bytes that were thrown away: verifying anything
#: against it costs a real verification and always fails.
DUMMY_HASH = (
    "$argon2id$v=19$m=19456,t=2,p=1$7kfTUSzrc80ZD9dllDaCyQ"
    "$xXJf/gKy3yv4JEBF5raFIKhBqXoX9Q+UyRs534gI2p4"
)


@dataclass(frozen=True)
class ThrottleVerdict:
    """Whether an attempt may go ahead, and if not, in how many seconds it may."""

    allowed: bool
    retry_after: float = 0.0


@dataclass
class _State:
    failures: list[float]
    blocked_until: float = 0.0
    lockouts: int = 0
    last_seen: float = 0.0


class AttemptThrottle:
    """Per key (a tip code, a hashed source address): ``max_failures`` failures per ``window``
    seconds, then refused for ``backoff`` seconds, doubled at each further lockout up to
    ``max_backoff``. Times are seconds on one clock (``time.monotonic()``).

    Memory is bounded: keys quiet for longer than ``forget_after`` are dropped, and beyond
    ``max_keys`` the least recently seen key goes (which forgives it: size ``max_keys`` above
    the number of keys an attacker can rotate through within a backoff).
    """

    def __init__(
        self,
        *,
        max_failures: int = 5,
        window: float = 15 * 60,
        backoff: float = 60,
        max_backoff: float = 24 * 3600,
        forget_after: float = 24 * 3600,
        max_keys: int = 100_000,
    ) -> None:
        if max_failures < 1 or window <= 0 or backoff <= 0 or max_backoff < backoff:
            raise ConfigError("need max_failures >= 1, window > 0, 0 < backoff <= max_backoff")
        self.max_failures = max_failures
        self.window = window
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.forget_after = max(forget_after, window)
        self.max_keys = max_keys
        self._states: OrderedDict[str, _State] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._states)

    def check(self, key: str, now: float) -> ThrottleVerdict:
        """May an attempt for ``key`` go ahead now?"""
        with self._lock:
            self._sweep(now)
            state = self._states.get(key)
            if state is not None and now < state.blocked_until:
                return ThrottleVerdict(False, state.blocked_until - now)
            return ThrottleVerdict(True)

    def failed(self, key: str, now: float) -> ThrottleVerdict:
        """Record a failed attempt; the verdict for the next one."""
        with self._lock:
            self._sweep(now)
            state = self._states.pop(key, None) or _State(failures=[])
            self._states[key] = state  # most recently seen last
            state.last_seen = now
            while len(self._states) > self.max_keys:
                self._states.popitem(last=False)
            if now < state.blocked_until:
                # An attempt that should not have been made: nothing more to count.
                return ThrottleVerdict(False, state.blocked_until - now)
            state.failures = [t for t in state.failures if t > now - self.window] + [now]
            if len(state.failures) < self.max_failures:
                return ThrottleVerdict(True)
            delay = min(self.backoff * 2**state.lockouts, self.max_backoff)
            state.blocked_until = now + delay
            state.lockouts += 1
            state.failures = []
            return ThrottleVerdict(False, delay)

    def succeeded(self, key: str) -> None:
        """Forget ``key``'s failures and lockouts (the right passcode was given)."""
        with self._lock:
            self._states.pop(key, None)

    def _sweep(self, now: float) -> None:
        # Oldest seen first: stop at the first key still remembered.
        while self._states:
            key, state = next(iter(self._states.items()))
            if now - state.last_seen <= self.forget_after or now < state.blocked_until:
                break
            del self._states[key]
