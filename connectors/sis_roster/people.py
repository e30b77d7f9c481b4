"""A person assembled from the roster's records, and the ``PersonChanged`` fields it gives.

A person's record is spread over several files (users, 1.2 roles, enrollments, the custody
feed), so the connector keeps each person's pieces in the state database and publishes the
whole person whenever what it would publish changed. The pieces are plain JSON (``state``):

- ``user``: name, OneRoster role, orgs, grade, agents, SIS contact, deleted (tobedeleted);
- ``roles``: 1.2 role rows by sourcedId: role, org, roleType, active;
- ``enrollments``: by sourcedId: class, school, active (not tobedeleted), role;
- ``custody``: the custody feed's students, each (student, guardian) pair's guardianship
  (``pairs``), the summary over them, name and contact;
- ``dlm``: the newest dateLastModified (µs) of any piece, which the version never goes below.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from connectors.sis_roster.custody import CustodyRow, e164
from safehub.standards.oneroster import Enrollment, Record, Role, Status, User

#: OneRoster roles of staff → the directory's staff role.
STAFF_ROLES = {
    "teacher": "teacher",
    "administrator": "administrator",
    "districtAdministrator": "administrator",
    "principal": "administrator",
    "siteAdministrator": "administrator",
    "systemAdministrator": "administrator",
    "aide": "staff",
    "proctor": "staff",
    "counselor": "counselor",
}
GUARDIAN_ROLES = frozenset({"parent", "guardian", "relativeOf"})
STUDENT_ROLE = "student"


def micros(record: Record) -> int:
    """``dateLastModified`` in microseconds since the epoch (0 without one)."""
    dlm = record.date_last_modified
    return 0 if dlm is None else int(dlm.timestamp() * 1_000_000)


def person_of(record: Record) -> str | None:
    """The person a record is a piece of (None: it is no person's)."""
    if isinstance(record, User):
        return record.sourced_id
    if isinstance(record, Role | Enrollment):
        return record.user_sourced_id or None
    return None


def apply_record(state: dict[str, Any], record: Record) -> None:
    """Fold one roster record into a person's pieces."""
    active = record.status is not Status.TOBEDELETED
    if isinstance(record, User):
        orgs = list(record.org_sourced_ids)
        if record.primary_org_sourced_id and record.primary_org_sourced_id not in orgs:
            orgs.insert(0, record.primary_org_sourced_id)
        name = " ".join(p for p in (record.given_name, record.family_name) if p) or None
        state["user"] = {
            "name": name,
            "role": record.role,
            "orgs": orgs,
            "grade": record.grades[0] if record.grades else None,
            "agents": list(record.agent_sourced_ids),
            "email": record.email,
            "phone": e164(record.sms) or e164(record.phone),
            "deleted": not active,
        }
    elif isinstance(record, Role):
        state.setdefault("roles", {})[record.sourced_id] = [
            record.role,
            record.org_sourced_id,
            record.role_type,
            active,
        ]
    elif isinstance(record, Enrollment):
        state.setdefault("enrollments", {})[record.sourced_id] = [
            record.class_sourced_id,
            record.school_sourced_id,
            active,
            record.role,
        ]
    state["dlm"] = max(int(state.get("dlm", 0)), micros(record))


_FLAGS = ("has_custody", "may_pick_up", "restricted")


def _pairs(custody: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The custody pieces by student: ``{student: {relationship, has_custody, may_pick_up,
    restricted}}`` (pieces kept before guardianships were per student: the guardian's one
    guardianship for each of its students)."""
    pairs = custody.get("pairs")
    if pairs is not None:
        return {student: dict(pair) for student, pair in pairs.items()}
    one = {"relationship": custody["relationship"], **{f: custody[f] for f in _FLAGS}}
    return {student: dict(one) for student in custody.get("students", [])}


def apply_custody(state: dict[str, Any], row: CustodyRow, feed: str) -> None:
    """Fold one custody-feed row into the guardian's pieces: the row is one (student,
    guardian) pair and sets that pair's guardianship only (a restriction for one student
    never restricts the guardian's other students). Two rows of one feed for the same pair
    merge (custody and pickup if either says so, restricted if either is: a restriction is
    never lifted by another row). A new feed replaces what an earlier feed said."""
    previous = state.get("custody")
    if previous is None or previous.get("feed") != feed:
        previous = {"feed": feed, "students": [], "relationship": row.relationship, "pairs": {}}
        previous.update(has_custody=False, may_pick_up=False, restricted=False)
    pairs = _pairs(previous)
    pair = pairs.get(row.student_id)
    if pair is None:
        pair = {"relationship": row.relationship, **dict.fromkeys(_FLAGS, False)}
    pairs[row.student_id] = {
        "relationship": pair["relationship"],
        "has_custody": pair["has_custody"] or row.has_custody,
        "may_pick_up": pair["may_pick_up"] or row.may_pick_up,
        "restricted": pair["restricted"] or row.restricted,
    }
    state["custody"] = {
        **previous,
        "students": sorted({*previous["students"], row.student_id}),
        "pairs": pairs,
        # The summary for readers of the single guardianship, as before: custody and pickup
        # if any row says so, restricted if any row is.
        **{flag: any(p[flag] for p in pairs.values()) for flag in _FLAGS},
        "name": row.name or previous.get("name"),
        "email": row.email or previous.get("email"),
        "phone": row.phone or previous.get("phone"),
        "language": row.language,
    }


def _role(state: Mapping[str, Any]) -> str | None:
    user = state.get("user") or {}
    if user.get("role"):
        return str(user["role"])
    roles = [r for r in (state.get("roles") or {}).values() if r[3]]
    roles.sort(key=lambda r: r[2] != "primary")
    return str(roles[0][0]) if roles else None


def _orgs(state: Mapping[str, Any]) -> list[str]:
    user = state.get("user") or {}
    orgs = list(user.get("orgs") or [])
    for role in (state.get("roles") or {}).values():
        if role[3] and role[1] and role[1] not in orgs:
            orgs.append(role[1])
    return orgs


def kind_of(state: Mapping[str, Any]) -> str | None:
    """STAFF, STUDENT, GUARDIAN, or None for a person the directory does not list."""
    role = _role(state)
    if role in STAFF_ROLES:
        return "STAFF"
    if role == STUDENT_ROLE:
        return "STUDENT"
    if role in GUARDIAN_ROLES or (role is None and state.get("custody")):
        return "GUARDIAN"
    return None


def person_fields(
    person_id: str,
    state: Mapping[str, Any],
    people: Mapping[str, Mapping[str, Any]],
    schools: Mapping[str, str],
) -> dict[str, Any] | None:
    """The ``PersonChanged`` body of a person now (no envelope, version or source), or None.

    ``people`` gives the students' pieces (a guardian's schools are its students'),
    ``schools`` maps OneRoster org ids to directory school ids.
    """
    kind = kind_of(state)
    if kind is None:
        return None
    user = state.get("user") or {}
    custody = state.get("custody")
    enrollments = list((state.get("enrollments") or {}).values())
    active = [e for e in enrollments if e[2]]
    school_ids = [schools.get(o, o) for o in _orgs(state)]
    deleted = bool(user.get("deleted"))
    fields: dict[str, Any] = {
        "person_id": person_id,
        "kind": kind,
        "name": user.get("name") or (custody or {}).get("name"),
        "staff_role": None,
        "buildings": [],
        "agency": None,
        "grade": None,
        "class_ids": [],
        "student_ids": [],
        "guardianship": None,
        "student_guardianships": [],
        "contact": None,
    }
    if kind == "STUDENT":
        fields["grade"] = user.get("grade")
        fields["class_ids"] = sorted({e[0] for e in active if e[0]})
        # Withdrawn from every class of every school: the student left.
        deleted = deleted or (bool(enrollments) and not active)
    elif kind == "STAFF":
        fields["staff_role"] = STAFF_ROLES[_role(state) or ""]
        fields["class_ids"] = sorted({e[0] for e in active if e[0]})
        fields["contact"] = _contact(user.get("email"), user.get("phone"), "en")
    else:
        students = sorted({*user.get("agents", []), *(custody or {}).get("students", [])})
        fields["student_ids"] = students
        found: list[str] = []
        for student in students:
            pieces = people.get(student) or {}
            for org in _orgs(pieces):
                school = schools.get(org, org)
                if school not in found:
                    found.append(school)
        school_ids = found or school_ids
        if custody is not None:
            fields["guardianship"] = {
                "relationship": custody["relationship"],
                **{flag: bool(custody[flag]) for flag in _FLAGS},
            }
            fields["student_guardianships"] = [
                {
                    "student_id": student,
                    "relationship": pair["relationship"],
                    **{flag: bool(pair[flag]) for flag in _FLAGS},
                }
                for student, pair in sorted(_pairs(custody).items())
            ]
        fields["contact"] = _contact(
            (custody or {}).get("email") or user.get("email"),
            (custody or {}).get("phone") or user.get("phone"),
            (custody or {}).get("language") or "en",
        )
    fields["school_ids"] = school_ids
    fields["change"] = "DELETED" if deleted else "UPSERTED"
    return fields


def _contact(email: str | None, phone: str | None, language: str) -> dict[str, Any] | None:
    if not email and not phone:
        return None
    return {"email": email, "phone": phone, "push_token": None, "language": language}


def digest(value: Any) -> str:
    """A short content digest (what was published, to tell whether anything changed)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()
