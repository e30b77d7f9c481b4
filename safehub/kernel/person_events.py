"""``PersonChanged``: the people of the live directory as events, both ways.

:func:`person_from_event` reads one into a :mod:`safehub.kernel.people` model (naming the
invalid field, never a value); :func:`person_fields` builds a payload with the contract's
empty values; a guardian's ``student_guardianships`` (what they may do per student) fall back,
when an older writer sent none, to the single ``guardianship`` for each of their students;
:func:`seed_events` turns a seed file's people into events (version 1, roster
source ``seed``, stable event ids), so the seed is imported into the topic rather than being
the runtime source.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from safehub.kernel.codec import Event
from safehub.kernel.directory import Directory
from safehub.kernel.envelope import new_event, stable_id
from safehub.kernel.live import InvalidRecordError
from safehub.kernel.people import (
    Contact,
    Guardian,
    Guardianship,
    People,
    Responder,
    StaffMember,
    StaffRole,
    Student,
)

PERSON_CHANGED = "safehub.events.PersonChanged"
#: Namespace of the seed import's event ids (never change it: ids already on topics).
SEED_NAMESPACE = uuid.UUID("6f0d2c3e-4b7a-5e2f-9a61-0c5d7e8f9a10")
SEED_SOURCE = "seed"

Person = StaffMember | Guardian | Responder | Student
#: PersonChanged kind → the People list it goes to.
LISTS = {
    "STAFF": "staff",
    "GUARDIAN": "guardians",
    "RESPONDER": "responders",
    "STUDENT": "students",
}
KIND_OF_LIST = {v: k for k, v in LISTS.items()}


class InvalidPersonError(InvalidRecordError):
    """A PersonChanged that is not a valid person (the message names fields, never values)."""


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or '(root)'}: {error['msg']}"
        for error in exc.errors(include_url=False, include_input=False, include_context=False)
    )


def person_from_event(
    event: Mapping[str, Any],
) -> tuple[str, int, str, str, tuple[str, ...], Person | None]:
    """``(person_id, version, change, kind, schools, person)`` of a PersonChanged (person is
    None for a deletion); :class:`InvalidPersonError` naming the field otherwise."""
    person_id = str(event.get("person_id") or "")
    change = str(event.get("change"))
    kind = str(event.get("kind"))
    version = event.get("version")
    if not person_id:
        raise InvalidPersonError("person_id is empty")
    if not isinstance(version, int) or version < 1:
        raise InvalidPersonError("version is not a positive integer")
    if change not in ("UPSERTED", "DELETED"):
        raise InvalidPersonError(f"change {change} is not UPSERTED or DELETED")
    if kind not in LISTS:
        raise InvalidPersonError(f"kind {kind} is not one of {', '.join(LISTS)}")
    schools = tuple(dict.fromkeys(str(s) for s in event.get("school_ids") or ()))
    if change == "DELETED":
        return person_id, version, change, kind, schools, None
    if not schools:
        school = ((event.get("envelope") or {}).get("tenant") or {}).get("school")
        if not school:
            raise InvalidPersonError("school_ids is empty and the envelope names no school")
        schools = (str(school),)
    name = str(event.get("name") or "")
    raw_contact = event.get("contact")
    try:
        contact = Contact.model_validate(raw_contact) if raw_contact else Contact()
        person: Person
        if kind == "STAFF":
            role = event.get("staff_role")
            # An unknown role still gets every school-wide staff message.
            known = role if role in {r.value for r in StaffRole} else StaffRole.STAFF.value
            person = StaffMember(
                id=person_id,
                name=name,
                role=StaffRole(known),
                buildings=list(event.get("buildings") or ()),
                class_ids=list(event.get("class_ids") or ()),
                contact=contact,
            )
        elif kind == "GUARDIAN":
            raw = event.get("guardianship")
            person = Guardian(
                id=person_id,
                name=name,
                student_ids=list(event.get("student_ids") or ()),
                guardianship=Guardianship.model_validate(raw) if raw else None,
                guardianships=_per_student(event.get("student_guardianships") or ()),
                contact=contact,
            )
        elif kind == "RESPONDER":
            person = Responder(
                id=person_id, name=name, agency=str(event.get("agency") or ""), contact=contact
            )
        else:
            person = Student(
                id=person_id,
                name=name,
                school=schools[0],
                grade=event.get("grade"),
                class_ids=list(event.get("class_ids") or ()),
            )
    except ValidationError as exc:
        raise InvalidPersonError(f"{kind.lower()}: {_problems(exc)}") from None
    return person_id, version, change, kind, schools, person


def _per_student(raw: Any) -> dict[str, Guardianship]:
    """``student_guardianships`` by student (empty, as from an older writer: the guardian's
    single ``guardianship`` then holds for every student, see :class:`Guardian`)."""
    found: dict[str, Guardianship] = {}
    for position, entry in enumerate(raw):
        student_id = str((entry or {}).get("student_id") or "")
        if not student_id:
            raise InvalidPersonError(
                f"guardian: student_guardianships.{position}.student_id is empty"
            )
        if student_id in found:
            raise InvalidPersonError(
                f"guardian: student_guardianships.{position}: a second entry for one student"
            )
        found[student_id] = Guardianship.model_validate(
            {k: v for k, v in entry.items() if k != "student_id"}
        )
    return found


def student_guardianships(guardian: Guardian) -> list[dict[str, Any]]:
    """A guardian's ``student_guardianships`` payload (by student id, in order)."""
    return [
        {"student_id": student_id, **guardian.guardianships[student_id].model_dump()}
        for student_id in sorted(guardian.guardianships)
    ]


def _contact(contact: Contact) -> dict[str, Any]:
    return {
        "email": contact.email,
        "phone": contact.phone,
        "push_token": contact.push_token,
        "language": contact.language.value,
    }


def seed_event_id(person_id: str, version: int = 1) -> str:
    """The stable event id of a person's seed import (re-seeding gives the same id)."""
    return stable_id(SEED_NAMESPACE, person_id, version)


def person_fields(
    person_id: str,
    *,
    kind: str,
    version: int,
    roster_source: str,
    school_ids: list[str],
    change: str = "UPSERTED",
    **fields: Any,
) -> dict[str, Any]:
    """A ``PersonChanged`` payload: what is given, the contract's empty value for the rest."""
    return {
        "person_id": person_id,
        "version": version,
        "change": change,
        "kind": kind,
        "roster_source": roster_source,
        "school_ids": school_ids,
        "name": None,
        "staff_role": None,
        "buildings": [],
        "agency": None,
        "grade": None,
        "class_ids": [],
        "student_ids": [],
        "guardianship": None,
        "student_guardianships": [],
        "contact": None,
        **fields,
    }


def seed_events(path: Path) -> list[Event]:
    """One PersonChanged (UPSERTED, version 1, roster source ``seed``) per person of a seed
    file; a person of several schools is one event naming them all."""
    directory = Directory.load(path)
    people = People.load(path)
    merged: dict[str, tuple[str, list[str], Person]] = {}
    for school in people.schools:
        for list_name, kind in KIND_OF_LIST.items():
            for person in getattr(school, list_name):
                found = merged.setdefault(person.id, (kind, [], person))
                found[1].append(school.id)
    events: list[Event] = []
    for person_id, (kind, schools, person) in merged.items():
        payload = person_fields(
            person_id,
            kind=kind,
            version=1,
            roster_source=SEED_SOURCE,
            school_ids=schools,
            name=person.name,
        )
        if isinstance(person, StaffMember):
            payload |= {
                "staff_role": person.role.value,
                "buildings": person.buildings,
                "class_ids": person.class_ids,
                "contact": _contact(person.contact),
            }
        elif isinstance(person, Guardian):
            payload |= {
                "student_ids": person.student_ids,
                "guardianship": person.guardianship.model_dump() if person.guardianship else None,
                "student_guardianships": student_guardianships(person),
                "contact": _contact(person.contact),
            }
        elif isinstance(person, Responder):
            payload |= {"agency": person.agency, "contact": _contact(person.contact)}
        else:
            payload |= {"grade": person.grade, "class_ids": person.class_ids}
        events.append(
            new_event(
                "PersonChanged",
                source=SEED_SOURCE,
                tenant=directory.tenant(schools[0]),
                classification=("INTERNAL", "STUDENT_RECORD"),
                event_id=seed_event_id(person_id),
                payload=payload,
            )
        )
    return events
