"""Request validation: every offending field is collected, then refused in one answer.

Descriptions say what is wrong with a field without repeating its value, except for hub
identifiers (school, building, room, door) that the caller needs to see to fix a request.
"""

from __future__ import annotations

import math
import unicodedata
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from google.protobuf.timestamp_pb2 import Timestamp

from safehub.gen.safehub.common.v1 import place_pb2
from safehub.kernel.directory import Building, Directory, Door, School, UnknownPlaceError
from services.gateway.rpc import RejectionError, Violation

MAX_ID = 128
MAX_PLACE_ID = 64
MAX_TEXT = 1000
MAX_URL = 2048

#: Earliest occurred_at taken: the Unix epoch (a device whose clock was reset reports 1970;
#: anything earlier is not a clock reading). Windows and correlation use hub time anyway.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
#: Latest occurred_at taken where no skew limit applies (a life-safety report is accepted
#: whatever its clock says, as long as it is a date at all).
LATEST = datetime(2100, 1, 1, tzinfo=UTC)

#: Unicode categories never allowed in an identifier: controls, format characters (zero-width
#: and bidi controls), unassigned, private use, surrogates, line and paragraph separators.
#: Each would let two ids look the same to a person while differing for the hub.
_ID_REFUSED = frozenset({"Cc", "Cf", "Cn", "Co", "Cs", "Zl", "Zp"})
#: Bidi embeddings, overrides, isolates and marks: in free text they reorder what a reviewer or
#: a dispatcher reads ("Trojan Source"); other format characters (emoji joiners) are fine.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_TEXT_ALLOWED_CONTROLS = frozenset("\n\t\r")


def _ident_problem(value: str) -> str | None:
    """Why ``value`` cannot be an identifier (naming the code point, never the value)."""
    if value != value.strip():
        return "must not have surrounding blanks"
    for position, ch in enumerate(value):
        if unicodedata.category(ch) in _ID_REFUSED:
            return (
                f"must not contain control, format or invisible characters "
                f"(U+{ord(ch):04X} at position {position})"
            )
    if not unicodedata.is_normalized("NFC", value):
        return "must be in Unicode normalization form NFC"
    return None


def _text_problem(value: str) -> str | None:
    """Why ``value`` cannot be free text (naming the code point, never the text)."""
    for position, ch in enumerate(value):
        category = unicodedata.category(ch)
        if (category == "Cc" and ch not in _TEXT_ALLOWED_CONTROLS) or category == "Cs":
            return f"must not contain control characters (U+{ord(ch):04X} at position {position})"
        if ch in _BIDI:
            return (
                f"must not contain bidirectional override or isolate characters "
                f"(U+{ord(ch):04X} at position {position})"
            )
    return None


class Check:
    """Collects violations of one request (or stream item)."""

    def __init__(self) -> None:
        self.violations: list[Violation] = []

    def add(self, field: str, description: str, *, not_found: bool = False) -> None:
        """Record a violation."""
        self.violations.append(Violation(field, description, not_found))

    def raise_if_any(self) -> None:
        """Refuse the request if anything was recorded."""
        if self.violations:
            raise RejectionError.invalid(self.violations)

    def ident(
        self, field: str, value: str, *, required: bool = True, max_len: int = MAX_ID
    ) -> str | None:
        """An identifier: bounded, NFC, no control, format or invisible characters, no
        surrounding blanks."""
        if not value:
            if required:
                self.add(field, "is required")
            return None
        if len(value) > max_len:
            self.add(field, f"must be at most {max_len} characters")
        elif (problem := _ident_problem(value)) is not None:
            self.add(field, problem)
        else:
            return value
        return None

    def text(
        self, field: str, value: str, *, required: bool = False, max_len: int = MAX_TEXT
    ) -> str | None:
        """Free text (possibly personal data: never echoed)."""
        if not value.strip():
            if required:
                self.add(field, "is required")
            return None
        if len(value) > max_len:
            self.add(field, f"must be at most {max_len} characters")
        elif (problem := _text_problem(value)) is not None:
            self.add(field, problem)
        else:
            return value
        return None

    def url(self, field: str, value: str) -> str | None:
        """An optional http(s) URL."""
        if not value:
            return None
        if len(value) > MAX_URL:
            self.add(field, f"must be at most {MAX_URL} characters")
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            self.add(field, "must be an http or https URL")
            return None
        return value

    def event_uuid(self, field: str, value: str) -> str | None:
        """A hub event id (canonical UUID text)."""
        try:
            return str(uuid.UUID(value)) if len(value) <= 64 else None
        except ValueError:
            pass
        self.add(field, "must be an event_id returned by the hub (a UUID)")
        return None

    def enum(
        self, field: str, value: int, table: Mapping[int, str], *, required: bool = True
    ) -> str | None:
        """An enum value mapped through ``table`` (UNSPECIFIED refused when required)."""
        if value == 0 and required:
            self.add(field, "must be set (the UNSPECIFIED value is not allowed)")
            return None
        symbol = table.get(value)
        if symbol is None:
            self.add(field, f"unknown value {value}")
        return symbol

    def unit_interval(self, field: str, value: float) -> float | None:
        """A number from 0.0 to 1.0."""
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            self.add(field, "must be between 0.0 and 1.0")
            return None
        return value

    def timestamp(
        self,
        field: str,
        message: Timestamp,
        present: bool,
        *,
        required: bool,
        max_skew: timedelta | None,
        now: datetime | None = None,
    ) -> datetime | None:
        """A google.protobuf.Timestamp from 1970 on, not further in the future than
        ``max_skew`` (``None``: any date before :data:`LATEST`, for life-safety reports)."""
        if not present:
            if required:
                self.add(field, "is required")
            return None
        try:
            when: datetime = message.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError):
            self.add(field, "is not a valid timestamp")
            return None
        if when < EARLIEST:
            self.add(field, "is before 1970-01-01T00:00:00Z: not a clock reading")
            return None
        if max_skew is None:
            if when >= LATEST:
                self.add(field, f"is after {LATEST:%Y-%m-%d}: not a clock reading")
                return None
        elif when > (now or datetime.now(UTC)) + max_skew:
            self.add(field, f"is more than {int(max_skew.total_seconds())} s in the future")
            return None
        return when

    def place(
        self,
        field: str,
        place: place_pb2.Place,
        present: bool,
        *,
        building_required: bool,
        room_allowed: bool = True,
    ) -> tuple[str, str | None, str | None] | None:
        """(school_id, building, room) with their syntax checked (existence comes later)."""
        if not present:
            self.add(field, "is required")
            return None
        school = self.ident(f"{field}.school_id", place.school_id, max_len=MAX_PLACE_ID)
        building = self.ident(
            f"{field}.building", place.building, required=building_required, max_len=MAX_PLACE_ID
        )
        room = self.ident(f"{field}.room", place.room, required=False, max_len=MAX_PLACE_ID)
        if place.room and not room_allowed:
            self.add(f"{field}.room", "is not used here; leave it empty")
            return None
        if place.room and not place.building:
            self.add(f"{field}.building", "is required when room is set")
            return None
        if school is None or (place.building and building is None) or (place.room and not room):
            return None
        return school, building, room


def known_place(
    directory: Directory, school_id: str, building: str | None, room: str | None
) -> tuple[School, Building | None]:
    """The school and building of a place the caller may use; RejectionError if unknown there."""
    try:
        school = directory.school(school_id)
    except UnknownPlaceError as exc:
        # Only reached after authorisation, which refuses unknown schools the same way as
        # schools of other districts; this is a safety net.
        raise RejectionError.invalid(
            [Violation("place.school_id", f"unknown school {school_id!r}", not_found=True)]
        ) from exc
    if building is None:
        return school, None
    found = school.building(building)
    if found is None:
        raise RejectionError.invalid(
            [
                Violation(
                    "place.building",
                    f"unknown building {building!r} of {school_id}",
                    not_found=True,
                )
            ]
        )
    if room and found.rooms and room not in found.rooms:
        raise RejectionError.invalid(
            [
                Violation(
                    "place.room",
                    f"unknown room {room!r} in building {building!r} of {school_id}",
                    not_found=True,
                )
            ]
        )
    return school, found


def known_door(school: School, building: Building, door_id: str) -> Door:
    """A door of ``building`` (RejectionError naming door_id if the directory does not list it)."""
    door = next((d for d in building.doors if d.id == door_id), None)
    if door is None:
        raise RejectionError.invalid(
            [
                Violation(
                    "door_id",
                    f"unknown door {door_id!r} in building {building.id!r} of {school.id}",
                    not_found=True,
                )
            ]
        )
    return door
