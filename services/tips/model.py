"""The tip lifecycle: which status may follow which, and what a disposition closes as.

RECEIVED (``NEW``) → TRIAGED → ASSIGNED → (FOLLOW_UP ↔ ASSIGNED) → closed with a required
disposition; a life-safety tip is also ESCALATED while its call chain runs; a duplicate is
MERGED into its primary (and back to TRIAGED when an analyst splits it). The contract's two
closed statuses say whether the concern was real: UNFOUNDED and HOAX close as
``CLOSED_UNFOUNDED``, every other disposition as ``CLOSED_RESOLVED``.
"""

from __future__ import annotations

from enum import StrEnum

from safehub.kernel.errors import SafeHubError


class Status(StrEnum):
    """Tip statuses (the contract's TipStatus symbols)."""

    NEW = "NEW"
    TRIAGED = "TRIAGED"
    ESCALATED = "ESCALATED"
    ASSIGNED = "ASSIGNED"
    FOLLOW_UP = "FOLLOW_UP"
    MERGED = "MERGED"
    CLOSED_RESOLVED = "CLOSED_RESOLVED"
    CLOSED_UNFOUNDED = "CLOSED_UNFOUNDED"


class Disposition(StrEnum):
    """How a closed tip ended (the contract's TipDisposition symbols)."""

    UNFOUNDED = "UNFOUNDED"
    HANDLED_BY_SCHOOL = "HANDLED_BY_SCHOOL"
    REFERRED_TO_BTAM = "REFERRED_TO_BTAM"
    REFERRED_TO_LAW_ENFORCEMENT = "REFERRED_TO_LAW_ENFORCEMENT"
    REFERRED_TO_MENTAL_HEALTH = "REFERRED_TO_MENTAL_HEALTH"
    DUPLICATE = "DUPLICATE"
    HOAX = "HOAX"


class Category(StrEnum):
    """Tip categories (the contract's TipCategory symbols)."""

    WEAPON = "WEAPON"
    THREAT_OF_VIOLENCE = "THREAT_OF_VIOLENCE"
    SELF_HARM = "SELF_HARM"
    BULLYING = "BULLYING"
    DRUGS = "DRUGS"
    ABUSE = "ABUSE"
    OTHER = "OTHER"


class Channel(StrEnum):
    """How a tip came in (the contract's TipChannel symbols)."""

    APP = "APP"
    WEB = "WEB"
    SMS = "SMS"
    EMAIL = "EMAIL"
    PHONE = "PHONE"
    OTHER = "OTHER"
    MONITORING = "MONITORING"


CLOSED = frozenset({Status.CLOSED_RESOLVED, Status.CLOSED_UNFOUNDED})
OPEN = frozenset(Status) - CLOSED - {Status.MERGED}

#: Status → the statuses an analyst may move it to (closing goes through :func:`closing`).
MOVES: dict[Status, frozenset[Status]] = {
    Status.NEW: frozenset({Status.TRIAGED, Status.ASSIGNED}),
    Status.TRIAGED: frozenset({Status.ASSIGNED}),
    Status.ESCALATED: frozenset({Status.TRIAGED, Status.ASSIGNED}),
    Status.ASSIGNED: frozenset({Status.FOLLOW_UP, Status.ASSIGNED}),
    Status.FOLLOW_UP: frozenset({Status.ASSIGNED}),
    Status.MERGED: frozenset(),
    Status.CLOSED_RESOLVED: frozenset(),
    Status.CLOSED_UNFOUNDED: frozenset(),
}


class TransitionError(SafeHubError):
    """A change the lifecycle does not allow (the message says what would be allowed)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def check_move(current: str, target: str) -> Status:
    """The target status if a tip in ``current`` may move there, else TransitionError."""
    try:
        wanted = Status(target)
    except ValueError:
        raise TransitionError("status", f"status {target!r} is not a tip status") from None
    if wanted in CLOSED or wanted == Status.MERGED:
        raise TransitionError(
            "status", "a tip is closed with a disposition, and folded as a duplicate, not moved"
        )
    allowed = MOVES[Status(current)]
    if wanted not in allowed:
        names = ", ".join(sorted(allowed)) or "nothing (it is closed or folded)"
        raise TransitionError("status", f"a {current} tip may move to {names}, not {wanted}")
    return wanted


def closing(current: str, disposition: str) -> tuple[Status, Disposition]:
    """The closed status a disposition gives a tip in ``current``, else TransitionError."""
    if Status(current) in CLOSED or Status(current) == Status.MERGED:
        raise TransitionError("status", f"the tip is already {current}")
    try:
        chosen = Disposition(disposition)
    except ValueError:
        names = ", ".join(d.value for d in Disposition)
        raise TransitionError("disposition", f"disposition must be one of {names}") from None
    unfounded = chosen in (Disposition.UNFOUNDED, Disposition.HOAX)
    return (Status.CLOSED_UNFOUNDED if unfounded else Status.CLOSED_RESOLVED), chosen
