"""PersonChanged events as a roster sync would publish them, the seed's contact details, and
the read API's token in these tests."""

from __future__ import annotations

import uuid
from typing import Any

from safehub.kernel.directory import Directory, default_directory_file
from safehub.kernel.envelope import new_event
from safehub.kernel.people import People

LINCOLN = "sch-lincoln-hs"
WASHINGTON = "sch-washington-ms"
SEED = default_directory_file()
#: The bearer token of the directory service's read API in these tests.
TOKEN = "test-directory-token"


def person_changed(
    person_id: str,
    *,
    version: int,
    kind: str = "GUARDIAN",
    change: str = "UPSERTED",
    schools: tuple[str, ...] = (LINCOLN,),
    name: str | None = "Test Person",
    email: str | None = None,
    phone: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A PersonChanged from a SIS roster sync (``fields`` override payload fields)."""
    payload: dict[str, Any] = {
        "person_id": person_id,
        "version": version,
        "change": change,
        "kind": kind,
        "roster_source": "sis-north",
        "school_ids": list(schools),
        "name": name,
        "staff_role": "teacher" if kind == "STAFF" else None,
        "buildings": [],
        "agency": "District Police" if kind == "RESPONDER" else None,
        "grade": "09" if kind == "STUDENT" else None,
        "class_ids": [],
        "student_ids": [],
        "guardianship": None,
        "contact": (
            None
            if kind == "STUDENT"
            else {"email": email, "phone": phone, "push_token": None, "language": "en"}
        ),
    } | fields
    return new_event(
        "PersonChanged",
        source="sis_roster",
        tenant=Directory.load(SEED).tenant(schools[0]),
        classification=("INTERNAL", "STUDENT_RECORD"),
        event_id=str(uuid.uuid4()),
        payload=payload,
    )


def seed_contacts() -> set[str]:
    """Every e-mail, phone and push token of the seed's people."""
    found: set[str] = set()
    for school in People.load(SEED).schools:
        for person in [*school.staff, *school.guardians, *school.responders]:
            c = person.contact
            found |= {v for v in (c.email, c.phone, c.push_token) if v}
    return found
