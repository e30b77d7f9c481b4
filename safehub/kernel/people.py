"""The hub's people: per school its staff, its students' guardians and its outside responders,
with their contact details.

Kept apart from :mod:`safehub.kernel.directory` (tenancy, facilities, client systems,
reviewers) because they change on another clock and have another owner: the roster sync
(OneRoster, a later issue) will own this data and replace the seed, without touching the
directory. :meth:`People.load` reads the ``staff``, ``guardians``, ``responders`` (and
``students``, which the demo seed has none of) of each school of the directory seed file
(``deploy/directory/*.json``) and ignores everything else in it. That seed is where a process
starts; :mod:`safehub.kernel.live_people` follows the live directory's changes on top of it.

Contact details are personal data: they never leave the services that must use them (notify
reaches people with them). Events, spans and logs name people by id only, and a deployable
that needs no people does not load them. Errors name the file and the field, never a value.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field, PrivateAttr, ValidationError, model_validator

from safehub.kernel.errors import ConfigError


class Language(StrEnum):
    """Languages notification templates exist in (BCP 47 primary tag)."""

    EN = "en"
    ES = "es"


class StaffRole(StrEnum):
    """What a staff member does; audiences select by role."""

    TEACHER = "teacher"
    ADMINISTRATOR = "administrator"
    STAFF = "staff"
    NURSE = "nurse"
    COUNSELOR = "counselor"
    SRO = "sro"
    SECURITY = "security"


class Contact(BaseModel):
    """How to reach a person. Personal data: never copied into events, spans or logs."""

    email: str | None = None
    phone: str | None = Field(default=None, pattern=r"^\+[1-9][0-9]{6,14}$", description="E.164")
    push_token: str | None = Field(default=None, description="device token of the staff app")
    language: Language = Language.EN


class StaffMember(BaseModel):
    """A person working at one school (events name them by ``id`` only)."""

    id: str
    name: str
    role: StaffRole
    buildings: list[str] = Field(default_factory=list, description="empty: whole school")
    class_ids: list[str] = Field(default_factory=list, description="sections they teach")
    contact: Contact


class Guardianship(BaseModel):
    """What a guardian may do for a student (custody feed; OneRoster has none of it)."""

    relationship: str
    has_custody: bool
    may_pick_up: bool
    restricted: bool = Field(description="a court order: never release the student to them")

    def permits_release(self) -> bool:
        """Whether reunification may release the student: custody or pickup authority, and
        no court-order restriction."""
        return (self.has_custody or self.may_pick_up) and not self.restricted


def summary_of(guardianships: Iterable[Guardianship]) -> Guardianship | None:
    """One guardianship for every student (what a reader without per-student guardianships
    sees): the first one's relationship, custody or pickup if any says so, restricted if any
    is — the most restrictive answer for release. None without any."""
    found = list(guardianships)
    if not found:
        return None
    return Guardianship(
        relationship=found[0].relationship,
        has_custody=any(g.has_custody for g in found),
        may_pick_up=any(g.may_pick_up for g in found),
        restricted=any(g.restricted for g in found),
    )


class Guardian(BaseModel):
    """A parent or guardian of students at one school (students named by SIS id only).

    ``guardianships`` is what they may do per student (a court order may bar them from one
    child and not another); ``guardianship`` the summary over them (:func:`summary_of`) for
    readers that know one per guardian. Given only ``guardianship`` (a seed file, an event of
    an older writer), it holds for every student of ``student_ids``; given only
    ``guardianships``, the summary is computed.
    """

    id: str
    name: str
    student_ids: list[str] = Field(default_factory=list)
    guardianship: Guardianship | None = None
    guardianships: dict[str, Guardianship] = Field(
        default_factory=dict, description="by student id (each one of student_ids)"
    )
    contact: Contact

    @model_validator(mode="after")
    def _per_student(self) -> Guardian:
        if not set(self.guardianships) <= set(self.student_ids):
            raise ValueError("guardianships names a student that is not in student_ids")
        if not self.guardianships and self.guardianship is not None:
            self.guardianships = dict.fromkeys(self.student_ids, self.guardianship)
        elif self.guardianship is None:
            self.guardianship = summary_of(self.guardianships.values())
        return self

    def for_student(self, student_id: str) -> Guardianship | None:
        """What this guardian may do for one student (None: not theirs, or no custody data)."""
        return self.guardianships.get(student_id)


class Student(BaseModel):
    """A student enrolled at a school (never contacted: no contact details)."""

    id: str
    name: str
    school: str
    grade: str | None = None
    class_ids: list[str] = Field(default_factory=list)


class Responder(BaseModel):
    """Someone outside the school who must be told (district security, SRO supervisor)."""

    id: str
    name: str
    agency: str
    contact: Contact


class SchoolPeople(BaseModel):
    """The people of one school (``id`` is the directory's school id)."""

    id: str
    staff: list[StaffMember] = Field(default_factory=list)
    guardians: list[Guardian] = Field(default_factory=list)
    responders: list[Responder] = Field(default_factory=list)
    students: list[Student] = Field(default_factory=list)


class _SeedDistrict(BaseModel):
    schools: list[SchoolPeople] = Field(default_factory=list)


class _Seed(BaseModel):
    """The people part of a directory seed file (every other key is ignored)."""

    districts: list[_SeedDistrict]


def _problems(exc: ValidationError) -> str:
    """Where and what, never the offending value (it may be a phone number or an address)."""
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or '(root)'}: {error['msg']}"
        for error in exc.errors(include_url=False, include_input=False, include_context=False)
    )


class People(BaseModel):
    """Everyone the hub may have to reach, school by school."""

    schools: list[SchoolPeople] = Field(default_factory=list)

    _by_school: dict[str, SchoolPeople] = PrivateAttr(default_factory=dict)
    _school_of: dict[str, str] = PrivateAttr(default_factory=dict)
    _guardians: dict[str, list[Guardian]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _index(self) -> People:
        by_school: dict[str, SchoolPeople] = {}
        school_of: dict[str, str] = {}
        guardians: dict[str, list[Guardian]] = {}
        kind_of: dict[str, str] = {}
        for school in self.schools:
            if school.id in by_school:
                raise ValueError(f"school {school.id!r} is listed twice")
            by_school[school.id] = school
            for guardian in school.guardians:
                guardians.setdefault(guardian.id, []).append(guardian)
            ids = {
                "staff": [m.id for m in school.staff],
                "guardians": [g.id for g in school.guardians],
                "responders": [r.id for r in school.responders],
                "students": [s.id for s in school.students],
            }
            seen: set[str] = set()
            for kind, person_ids in ids.items():
                for position, person_id in enumerate(person_ids):
                    # One person may belong to several schools (a guardian of students at
                    # two), always as the same kind and once per school.
                    if person_id in seen or kind_of.get(person_id, kind) != kind:
                        raise ValueError(
                            f"school {school.id!r} {kind}.{position}.id: person id "
                            f"{person_id!r} is not unique (staff, guardians, responders and "
                            "students of every school share one id space)"
                        )
                    seen.add(person_id)
                    kind_of[person_id] = kind
                    school_of.setdefault(person_id, school.id)
        self._by_school = by_school
        self._school_of = school_of
        self._guardians = guardians
        return self

    @classmethod
    def load(cls, path: Path) -> People:
        """Read the people of a directory seed file (ConfigError names the file and the field)."""
        try:
            seed = _Seed.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except OSError as exc:
            raise ConfigError(f"people file {path} cannot be read: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"people file {path} is not JSON (line {exc.lineno}, column {exc.colno})"
            ) from None
        except ValidationError as exc:
            raise ConfigError(f"people file {path} is invalid: {_problems(exc)}") from None
        try:
            return cls(
                schools=[school for district in seed.districts for school in district.schools]
            )
        except ValidationError as exc:
            raise ConfigError(f"people file {path} is invalid: {_problems(exc)}") from None

    # -- lookups ---------------------------------------------------------------------------

    def school(self, school_id: str) -> SchoolPeople:
        """The people of a school (none listed: an empty roster, not an error; whether the
        school exists is the directory's question)."""
        found = self._by_school.get(school_id)
        return found if found is not None else SchoolPeople(id=school_id)

    def school_of(self, person_id: str) -> str | None:
        """The (first) school a staff member, guardian, responder or student belongs to."""
        return self._school_of.get(person_id)

    def staff_member(self, school_id: str, staff_id: str) -> StaffMember | None:
        """A staff member of a school by id (None if the school or the person is unknown)."""
        return next((m for m in self.school(school_id).staff if m.id == staff_id), None)

    def staff(
        self, school_id: str, *, role: StaffRole | None = None, building: str | None = None
    ) -> list[StaffMember]:
        """Staff of a school, of one role and/or working in one building (whole-school staff
        work in every building)."""
        return [
            m
            for m in self.school(school_id).staff
            if (role is None or m.role is role)
            and (building is None or not m.buildings or building in m.buildings)
        ]

    def administrators(self, school_id: str) -> list[StaffMember]:
        """The administrators of a school (who release family messages, use notify's API)."""
        return self.staff(school_id, role=StaffRole.ADMINISTRATOR)

    def guardians(self, school_id: str) -> list[Guardian]:
        """The guardians of a school's students."""
        return list(self.school(school_id).guardians)

    def guardians_of(self, student_id: str) -> list[Guardian]:
        """The guardians of one student (by SIS id), whatever their school (each once)."""
        found: dict[str, Guardian] = {}
        for school in self.schools:
            for g in school.guardians:
                if student_id in g.student_ids:
                    found.setdefault(g.id, g)
        return list(found.values())

    def guardian(self, guardian_id: str) -> Guardian | None:
        """A guardian by id, whatever their school (the first school's record)."""
        found = self._guardians.get(guardian_id)
        return found[0] if found else None

    def guardianship(self, guardian_id: str, student_id: str) -> Guardianship | None:
        """What a guardian may do for one student (None: not that student's guardian, or no
        custody data for them)."""
        for guardian in self._guardians.get(guardian_id, ()):
            found = guardian.for_student(student_id)
            if found is not None:
                return found
        return None

    def may_release_to(self, guardian_id: str, student_id: str) -> bool:
        """Whether reunification may release this student to this guardian: custody or pickup
        authority for that student and no court-order restriction for that student (a
        restriction for another of their students does not count; no custody data: no)."""
        found = self.guardianship(guardian_id, student_id)
        return found is not None and found.permits_release()

    def students(self, school_id: str) -> list[Student]:
        """The students of a school."""
        return list(self.school(school_id).students)

    def responders(self, school_id: str) -> list[Responder]:
        """The outside responders of a school."""
        return list(self.school(school_id).responders)
