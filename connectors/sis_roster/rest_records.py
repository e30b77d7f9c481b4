"""OneRoster REST JSON objects as the codec's typed records (the CSV and REST paths share
one importer). A bad object is a :class:`Defect` naming the collection, its position in the
read (1-based, as ``line``) and the field, never the value."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from safehub.standards.oneroster import (
    AcademicSession,
    Class,
    Course,
    Defect,
    Enrollment,
    Org,
    Record,
    Severity,
    Status,
    User,
)

#: The collections a sync reads, in the order references need (orgs before classes …).
COLLECTIONS = ("orgs", "academicSessions", "courses", "classes", "users", "enrollments")


class _BadFieldError(Exception):
    def __init__(self, column: str, reason: str) -> None:
        super().__init__(reason)
        self.column = column
        self.reason = reason


def _ref(obj: dict[str, Any], key: str) -> str:
    ref = obj.get(key)
    if isinstance(ref, dict) and isinstance(ref.get("sourcedId"), str):
        return str(ref["sourcedId"])
    return ""


def _refs(obj: dict[str, Any], key: str) -> tuple[str, ...]:
    items = obj.get(key) or []
    if not isinstance(items, list):
        raise _BadFieldError(key, "not a list")
    return tuple(str(i["sourcedId"]) for i in items if isinstance(i, dict) and i.get("sourcedId"))


def _strings(obj: dict[str, Any], key: str) -> tuple[str, ...]:
    items = obj.get(key) or []
    if isinstance(items, str):
        items = items.split(",")
    if not isinstance(items, list):
        raise _BadFieldError(key, "not a list")
    return tuple(str(i).strip() for i in items if str(i).strip())


def _text(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return None if value in (None, "") else str(value)


def _day(obj: dict[str, Any], key: str) -> date | None:
    value = _text(obj, key)
    if value is None:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        raise _BadFieldError(key, "not a date (YYYY-MM-DD)") from None


def _instant(obj: dict[str, Any]) -> datetime | None:
    value = _text(obj, "dateLastModified")
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _BadFieldError("dateLastModified", "not a date-time (ISO 8601)") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _common(obj: dict[str, Any]) -> dict[str, Any]:
    sourced_id = _text(obj, "sourcedId")
    if sourced_id is None:
        raise _BadFieldError("sourcedId", "required but empty")
    status_text = (_text(obj, "status") or "active").lower()
    try:
        status = Status(status_text)
    except ValueError:
        raise _BadFieldError("status", "not a permitted value (active, tobedeleted)") from None
    return {"sourced_id": sourced_id, "status": status, "date_last_modified": _instant(obj)}


def _user(obj: dict[str, Any], base: dict[str, Any]) -> User:
    role = _text(obj, "role")
    orgs = list(_refs(obj, "orgs"))
    roles = obj.get("roles") or []
    if isinstance(roles, list) and roles:  # 1.2: roles carry the role and its org
        ordered = sorted(
            (r for r in roles if isinstance(r, dict)), key=lambda r: r.get("roleType") != "primary"
        )
        role = role or _text(ordered[0], "role") if ordered else role
        for r in ordered:
            org = _ref(r, "org")
            if org and org not in orgs:
                orgs.append(org)
    user_ids = tuple(
        f"{{{i.get('type', '')}:{i.get('identifier', '')}}}"
        for i in obj.get("userIds") or []
        if isinstance(i, dict)
    )
    return User(
        **base,
        enabled_user=str(obj.get("enabledUser", "true")).lower() != "false",
        username=_text(obj, "username") or "",
        user_ids=user_ids,
        given_name=_text(obj, "givenName") or "",
        family_name=_text(obj, "familyName") or "",
        middle_name=_text(obj, "middleName"),
        identifier=_text(obj, "identifier"),
        email=_text(obj, "email"),
        sms=_text(obj, "sms"),
        phone=_text(obj, "phone"),
        role=role,
        org_sourced_ids=tuple(orgs),
        primary_org_sourced_id=_ref(obj, "primaryOrg") or None,
        agent_sourced_ids=_refs(obj, "agents"),
        grades=_strings(obj, "grades"),
    )


def to_record(collection: str, obj: dict[str, Any], position: int) -> Record | Defect:
    """One JSON object of ``collection`` as a record, or the defect that rejects it."""
    try:
        base = {**_common(obj), "line": position}
        if collection == "orgs":
            return Org(
                **base,
                name=_text(obj, "name") or "",
                type=_text(obj, "type") or "",
                identifier=_text(obj, "identifier"),
                parent_sourced_id=_ref(obj, "parent") or None,
            )
        if collection == "academicSessions":
            year = _text(obj, "schoolYear")
            return AcademicSession(
                **base,
                title=_text(obj, "title") or "",
                type=_text(obj, "type") or "",
                start_date=_day(obj, "startDate"),
                end_date=_day(obj, "endDate"),
                parent_sourced_id=_ref(obj, "parent") or None,
                school_year=int(year) if year and year.isdigit() else None,
            )
        if collection == "courses":
            return Course(
                **base,
                title=_text(obj, "title") or "",
                school_year_sourced_id=_ref(obj, "schoolYear") or None,
                course_code=_text(obj, "courseCode"),
                grades=_strings(obj, "grades"),
                org_sourced_id=_ref(obj, "org"),
                subjects=_strings(obj, "subjects"),
                subject_codes=_strings(obj, "subjectCodes"),
            )
        if collection == "classes":
            return Class(
                **base,
                title=_text(obj, "title") or "",
                grades=_strings(obj, "grades"),
                course_sourced_id=_ref(obj, "course"),
                class_code=_text(obj, "classCode"),
                class_type=_text(obj, "classType") or "",
                location=_text(obj, "location"),
                school_sourced_id=_ref(obj, "school"),
                term_sourced_ids=_refs(obj, "terms"),
                subjects=_strings(obj, "subjects"),
                subject_codes=_strings(obj, "subjectCodes"),
                periods=_strings(obj, "periods"),
            )
        if collection == "users":
            return _user(obj, base)
        if collection == "enrollments":
            primary = _text(obj, "primary")
            return Enrollment(
                **base,
                class_sourced_id=_ref(obj, "class"),
                school_sourced_id=_ref(obj, "school"),
                user_sourced_id=_ref(obj, "user"),
                role=_text(obj, "role") or "",
                primary=None if primary is None else primary.lower() == "true",
                begin_date=_day(obj, "beginDate"),
                end_date=_day(obj, "endDate"),
            )
    except _BadFieldError as bad:
        return Defect(collection, position, bad.column, bad.reason, Severity.ERROR)
    raise ValueError(f"collection {collection!r} is not synced")
