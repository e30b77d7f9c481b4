"""OneRoster entities as typed frozen records, defects, and their RosterChange fields.

A record's typed fields are named after its CSV columns in snake case (``givenName`` →
``given_name``); every other non-empty column of the row is kept in ``attributes`` by its
column name. Password columns are never kept: a credential has no place in a roster event.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from safehub.contracts.errors import SafeHubError


class OneRosterPackageError(SafeHubError):
    """The package as a whole is unusable (manifest or a header): nothing is read from it.

    The message names the file and the columns or properties at fault, never row data.
    """


class Mode(StrEnum):
    """How the manifest says a file is delivered."""

    BULK = "bulk"
    DELTA = "delta"
    ABSENT = "absent"


class Status(StrEnum):
    """OneRoster ``status``."""

    ACTIVE = "active"
    TOBEDELETED = "tobedeleted"


class Severity(StrEnum):
    """``error``: the row was rejected; ``warning``: the row was accepted as it is."""

    ERROR = "error"
    WARNING = "warning"


class RosterEntity(StrEnum):
    """The ``RosterEntity`` symbols of ``schemas/events/RosterChange.avsc``."""

    ORG = "ORG"
    ACADEMIC_SESSION = "ACADEMIC_SESSION"
    COURSE = "COURSE"
    CLASS = "CLASS"
    USER = "USER"
    ENROLLMENT = "ENROLLMENT"
    DEMOGRAPHICS = "DEMOGRAPHICS"
    OTHER = "OTHER"


class RosterChangeKind(StrEnum):
    """The ``RosterChangeKind`` symbols of ``schemas/events/RosterChange.avsc``."""

    UPSERTED = "UPSERTED"
    DELETED = "DELETED"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True, slots=True)
class Defect:
    """One problem found in a package.

    ``line`` is the physical line in the file where the row starts (the header is line 1),
    or ``None`` for the whole file; ``column`` is ``None`` when the problem is the row's.
    The reason names the column and the rule, never personal data.
    """

    file: str
    line: int | None
    column: str | None
    reason: str
    severity: Severity

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        if self.column:
            where += f" [{self.column}]"
        return f"{self.severity}: {where}: {self.reason}"


@dataclass(frozen=True, kw_only=True, slots=True)
class Record:
    """Fields common to every OneRoster entity."""

    sourced_id: str
    status: Status | None = None
    date_last_modified: datetime | None = None
    #: Physical line of the row in its file (header is line 1).
    line: int = 0
    #: Every other non-empty column, by column name, as written in the file.
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True, slots=True)
class Org(Record):
    """A row of ``orgs.csv``."""

    name: str = ""
    type: str = ""
    identifier: str | None = None
    parent_sourced_id: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class AcademicSession(Record):
    """A row of ``academicSessions.csv``."""

    title: str = ""
    type: str = ""
    start_date: date | None = None
    end_date: date | None = None
    parent_sourced_id: str | None = None
    school_year: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Course(Record):
    """A row of ``courses.csv``."""

    title: str = ""
    school_year_sourced_id: str | None = None
    course_code: str | None = None
    grades: tuple[str, ...] = ()
    org_sourced_id: str = ""
    subjects: tuple[str, ...] = ()
    subject_codes: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class Class(Record):
    """A row of ``classes.csv``."""

    title: str = ""
    grades: tuple[str, ...] = ()
    course_sourced_id: str = ""
    class_code: str | None = None
    class_type: str = ""
    location: str | None = None
    school_sourced_id: str = ""
    term_sourced_ids: tuple[str, ...] = ()
    subjects: tuple[str, ...] = ()
    subject_codes: tuple[str, ...] = ()
    periods: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class User(Record):
    """A row of ``users.csv`` (``role`` and ``org_sourced_ids`` are 1.1 columns;
    1.2 moved them to ``roles.csv`` and added ``primary_org_sourced_id``)."""

    enabled_user: bool = True
    username: str = ""
    user_ids: tuple[str, ...] = ()
    given_name: str = ""
    family_name: str = ""
    middle_name: str | None = None
    preferred_given_name: str | None = None
    preferred_family_name: str | None = None
    identifier: str | None = None
    email: str | None = None
    sms: str | None = None
    phone: str | None = None
    role: str | None = None
    org_sourced_ids: tuple[str, ...] = ()
    primary_org_sourced_id: str | None = None
    agent_sourced_ids: tuple[str, ...] = ()
    grades: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class Enrollment(Record):
    """A row of ``enrollments.csv``."""

    class_sourced_id: str = ""
    school_sourced_id: str = ""
    user_sourced_id: str = ""
    role: str = ""
    primary: bool | None = None
    begin_date: date | None = None
    end_date: date | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Demographics(Record):
    """A row of ``demographics.csv`` (``sourced_id`` is the user's)."""

    birth_date: date | None = None
    sex: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Role(Record):
    """A row of ``roles.csv`` (OneRoster 1.2)."""

    user_sourced_id: str = ""
    role_type: str = ""
    role: str = ""
    begin_date: date | None = None
    end_date: date | None = None
    org_sourced_id: str = ""
    user_profile_sourced_id: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class UserProfile(Record):
    """A row of ``userProfiles.csv`` (OneRoster 1.2)."""

    user_sourced_id: str = ""
    profile_type: str = ""
    vendor_id: str = ""
    application_id: str | None = None
    description: str | None = None
    credential_type: str = ""
    username: str = ""


#: File name → record class, in the order a package is read (referenced files first).
ENTITY_FILES: dict[str, type[Record]] = {
    "orgs.csv": Org,
    "academicSessions.csv": AcademicSession,
    "courses.csv": Course,
    "classes.csv": Class,
    "users.csv": User,
    "userProfiles.csv": UserProfile,
    "roles.csv": Role,
    "enrollments.csv": Enrollment,
    "demographics.csv": Demographics,
}

_ROSTER_ENTITY: dict[type[Record], RosterEntity] = {
    Org: RosterEntity.ORG,
    AcademicSession: RosterEntity.ACADEMIC_SESSION,
    Course: RosterEntity.COURSE,
    Class: RosterEntity.CLASS,
    User: RosterEntity.USER,
    Enrollment: RosterEntity.ENROLLMENT,
    Demographics: RosterEntity.DEMOGRAPHICS,
}

# Carried by RosterChange's own fields, or bookkeeping rather than OneRoster data.
_NOT_ATTRIBUTES = frozenset({"sourced_id", "status", "date_last_modified", "line", "attributes"})


def column_name(field_name: str) -> str:
    """The CSV column of a record field: ``given_name`` → ``givenName``."""
    head, *rest = field_name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, date | datetime):
        return value.isoformat()
    return str(value)


@dataclass(frozen=True, slots=True)
class RosterChangeFields:
    """What a ``RosterChange`` event needs from one record (the envelope and the
    ``roster_source`` are the connector's). ``date_last_modified`` is ``None`` for a bulk
    row without one: the connector decides which time stands in."""

    entity: RosterEntity
    sourced_id: str
    change: RosterChangeKind
    date_last_modified: datetime | None
    role: str | None
    attributes: dict[str, str]


def roster_change(record: Record) -> RosterChangeFields:
    """Map a record to the fields of a ``RosterChange``: ``tobedeleted`` → DELETED, any
    other status (or none, as in bulk files) → UPSERTED; the typed fields other than
    sourcedId/status/dateLastModified go to ``attributes`` by column name, beside the
    record's own attributes. Roles and user profiles map to ``OTHER``."""
    role = getattr(record, "role", None) or None
    attributes: dict[str, str] = {}
    for f in dataclasses.fields(record):
        if f.name in _NOT_ATTRIBUTES or f.name == "role":
            continue
        value = getattr(record, f.name)
        if value is None or value in ((), ""):
            continue
        attributes[column_name(f.name)] = _text(value)
    attributes.update(record.attributes)
    return RosterChangeFields(
        entity=_ROSTER_ENTITY.get(type(record), RosterEntity.OTHER),
        sourced_id=record.sourced_id,
        change=(
            RosterChangeKind.DELETED
            if record.status is Status.TOBEDELETED
            else RosterChangeKind.UPSERTED
        ),
        date_last_modified=record.date_last_modified,
        role=role,
        attributes=attributes,
    )
