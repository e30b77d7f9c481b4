"""The hub's directory: tenancy (state → district → school → building → room), doors, the
client systems allowed to call the gateway with their scopes, the incident reviewers, and the
call trees (who is called, in order, with on-duty rotations, when something needs a human).

At run time services read it live (:class:`~safehub.kernel.live_directory.LiveDirectory`,
following ``safehub.directory.v1``); this model is its snapshot, and the seed. The seed is
one JSON file (``SAFEHUB_DIRECTORY_FILE`` for every deployable at once, else
``SAFEHUB_<SECTION>__DIRECTORY_FILE``). The gateway uses it to refuse unknown places and to
authorise callers, the incidents service to name places, the timeline to scope reviewers.
A client belongs to one district and may be limited to some schools: a district-A door
vendor can never act for district B.

People (staff, guardians, responders and their contact details) are not here: they are
:mod:`safehub.kernel.people`'s, read from the same seed file by ``People.load`` and owned
by the roster sync later. This model ignores the seed's people keys, so it carries no
contact detail.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, ValidationError, model_validator

from safehub.contracts.names import DataClass
from safehub.kernel.errors import ConfigError, SafeHubError

#: One variable that names the directory file for every deployable at once.
DIRECTORY_FILE_VARIABLE = "SAFEHUB_DIRECTORY_FILE"


def default_directory_file() -> Path:
    """``SAFEHUB_DIRECTORY_FILE`` if set, else the demo directory of a source checkout."""
    named = os.environ.get(DIRECTORY_FILE_VARIABLE)
    if named:
        return Path(named)
    return Path(__file__).resolve().parents[2] / "deploy" / "directory" / "demo.json"


class Scope(StrEnum):
    """What a client system may do at the gateway."""

    PANIC = "panic"
    CAMERA = "camera"
    DOORS = "doors"
    SRP = "srp"
    CONNECTOR = "connector"
    TIPS = "tips"
    MONITORING = "monitoring"  # a social-media monitoring vendor's alerts about a school


class Door(BaseModel):
    """A door under access control."""

    id: str
    name: str = ""
    exterior: bool = False


class Building(BaseModel):
    """A building, numbered as responders know it."""

    id: str
    name: str = ""
    rooms: list[str] = Field(default_factory=list)
    doors: list[Door] = Field(default_factory=list)


class School(BaseModel):
    """A school and where it is."""

    id: str
    name: str
    address: str = ""
    latitude: float | None = None
    longitude: float | None = None
    psap_id: str = Field(description="the 911 centre (PSAP) that serves this school")
    buildings: list[Building] = Field(default_factory=list)

    def building(self, building_id: str) -> Building | None:
        """The building with this id, if any."""
        return next((b for b in self.buildings if b.id == building_id), None)


class District(BaseModel):
    """A school district (a tenant)."""

    id: str
    name: str
    schools: list[School] = Field(default_factory=list)


class Client(BaseModel):
    """A vendor or school system with a client certificate (CN = id)."""

    id: str
    district: str
    schools: list[str] = Field(default_factory=list, description="empty: every school")
    scopes: set[Scope]


class Clearance(StrEnum):
    """Sensitive data classes a reviewer may be cleared to read (values = DataClass symbols)."""

    STUDENT_RECORD = DataClass.STUDENT_RECORD.value
    HEALTH = DataClass.HEALTH.value
    TIPSTER_IDENTITY = DataClass.TIPSTER_IDENTITY.value


class Reviewer(BaseModel):
    """An incident reviewer (after-action team, auditor, court) allowed to read timelines.

    ``district`` None means state-wide. The reviewer authenticates with a bearer token whose
    SHA-256 (hex) is stored here, or over mTLS with a client certificate whose CN is ``id``.
    """

    id: str
    name: str
    district: str | None = None
    clearances: set[Clearance] = Field(default_factory=set)
    token_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


_HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$|^24:00$"


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


class OnDuty(BaseModel):
    """A person on duty on some weekdays between two local times.

    ``weekdays`` are the days a shift *starts* on (0 = Monday); an ``end`` not after
    ``start`` runs past midnight into the next day (a night shift from 18:00 to 07:00).
    """

    person_id: str
    weekdays: list[int] = Field(default_factory=lambda: list(range(7)))
    start: str = Field(default="00:00", pattern=_HHMM)
    end: str = Field(default="24:00", pattern=_HHMM)

    @model_validator(mode="after")
    def _days(self) -> OnDuty:
        if any(day not in range(7) for day in self.weekdays):
            raise ValueError("weekdays must be 0 (Monday) … 6 (Sunday)")
        return self

    def covers(self, local: datetime) -> bool:
        """True if this shift covers the local (zone-aware or naive local) time."""
        start, end = _minutes(self.start), _minutes(self.end)
        now = local.hour * 60 + local.minute
        today = local.weekday()
        if start < end:
            return today in self.weekdays and start <= now < end
        yesterday = (today - 1) % 7
        return (today in self.weekdays and now >= start) or (
            yesterday in self.weekdays and now < end
        )


class CallTreeStep(BaseModel):
    """One step of a call tree: who is called, and how long they have to acknowledge."""

    name: str
    ack_within_seconds: int = Field(default=60, ge=5, le=3600)
    person_ids: list[str] = Field(default_factory=list)
    rotation: list[OnDuty] = Field(default_factory=list)

    @model_validator(mode="after")
    def _someone(self) -> CallTreeStep:
        if not self.person_ids and not self.rotation:
            raise ValueError(f"call tree step {self.name!r} names nobody")
        return self

    def on_duty(self, local: datetime) -> list[str]:
        """Who this step calls at a local time: the first rotation entry covering it, else
        everyone in ``person_ids`` (a rotation with a gap falls back to them, never nobody)."""
        for shift in self.rotation:
            if shift.covers(local):
                return [shift.person_id]
        return list(self.person_ids) or [self.rotation[0].person_id]


class CallTreeScope(StrEnum):
    """Whose call tree it is."""

    SCHOOL = "SCHOOL"
    DISTRICT = "DISTRICT"
    STATE = "STATE"


class CallTree(BaseModel):
    """The ordered steps called when something needs a human now, with on-duty rotations."""

    id: str
    scope: CallTreeScope
    scope_id: str
    timezone: str = "UTC"
    steps: list[CallTreeStep] = Field(min_length=1)

    @model_validator(mode="after")
    def _zone(self) -> CallTree:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone {self.timezone!r} is not an IANA time zone") from None
        return self

    def local(self, at: datetime) -> datetime:
        """``at`` (aware) in the tree's time zone."""
        return at.astimezone(ZoneInfo(self.timezone))


@dataclass(frozen=True)
class CallStep:
    """One step of a school's whole call chain: whose tree, which step, who is on duty."""

    tree_id: str
    scope: CallTreeScope
    step: int
    name: str
    ack_within_seconds: int
    person_ids: tuple[str, ...]


class UnknownPlaceError(SafeHubError):
    """A school, building or room that is not in the directory."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class Directory(BaseModel):
    """Everything the hub knows about places, client systems and reviewers (no people)."""

    state: str
    districts: list[District]
    clients: list[Client] = Field(default_factory=list)
    reviewers: list[Reviewer] = Field(default_factory=list)
    call_trees: list[CallTree] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_ids(self) -> Directory:
        schools = [s.id for d in self.districts for s in d.schools]
        if len(schools) != len(set(schools)):
            raise ValueError("school ids must be unique across districts")
        known = {d.id for d in self.districts}
        for reviewer in self.reviewers:
            if reviewer.district is not None and reviewer.district not in known:
                raise ValueError(f"reviewer {reviewer.id!r} names unknown district")
        return self

    @classmethod
    def load(cls, path: Path) -> Directory:
        """Read and validate a directory file (ConfigError names the file and the problem)."""
        try:
            return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, ValidationError) as exc:
            raise ConfigError(f"directory file {path} is invalid: {exc}") from exc

    def current(self) -> Directory:
        """This directory: a loaded file is a fixed view of itself, so code written against
        :class:`~safehub.kernel.live_directory.LiveDirectory` (``current()`` per decision)
        also takes a plain ``Directory``."""
        return self

    def call_chain(self, school_id: str, at: datetime) -> list[CallStep]:
        """Everyone called, in order, for something at a school that needs a human now: the
        school's tree, then its district's, then the state centre's, each step with who is
        on duty at ``at`` (aware). UnknownPlaceError for an unknown school."""
        district = self.district_of(school_id)
        chain: list[CallStep] = []
        for scope, scope_id in (
            (CallTreeScope.SCHOOL, school_id),
            (CallTreeScope.DISTRICT, district.id),
            (CallTreeScope.STATE, self.state),
        ):
            for tree in self.call_trees:
                if tree.scope != scope or tree.scope_id != scope_id:
                    continue
                local = tree.local(at)
                for step in tree.steps:
                    chain.append(
                        CallStep(
                            tree.id,
                            scope,
                            len(chain),
                            step.name,
                            step.ack_within_seconds,
                            tuple(step.on_duty(local)),
                        )
                    )
        return chain

    def district_of(self, school_id: str) -> District:
        """The district a school belongs to."""
        for district in self.districts:
            if any(s.id == school_id for s in district.schools):
                return district
        raise UnknownPlaceError("place.school_id", f"unknown school {school_id!r}")

    def school(self, school_id: str) -> School:
        """A school by id (UnknownPlaceError if absent)."""
        district = self.district_of(school_id)
        return next(s for s in district.schools if s.id == school_id)

    def has_school(self, school_id: str) -> bool:
        """True if the directory lists ``school_id``."""
        return any(s.id == school_id for d in self.districts for s in d.schools)

    def reviewer(self, reviewer_id: str) -> Reviewer | None:
        """A reviewer by id (certificate CN)."""
        return next((r for r in self.reviewers if r.id == reviewer_id), None)

    def reviewer_by_token(self, token: str) -> Reviewer | None:
        """The reviewer whose bearer token this is (compared by SHA-256, constant time)."""
        digest = hashlib.sha256(token.encode("utf-8")).hexdigest()
        for reviewer in self.reviewers:
            if reviewer.token_sha256 and hmac.compare_digest(reviewer.token_sha256, digest):
                return reviewer
        return None

    def client(self, client_id: str) -> Client | None:
        """A client system by certificate CN."""
        return next((c for c in self.clients if c.id == client_id), None)

    def may(self, client: Client, scope: Scope, school_id: str) -> bool:
        """True if ``client`` holds ``scope`` for ``school_id`` (same district, allowed school)."""
        if scope not in client.scopes:
            return False
        try:
            district = self.district_of(school_id)
        except UnknownPlaceError:
            return False
        return district.id == client.district and (
            not client.schools or school_id in client.schools
        )

    def doors(self, school_id: str, building: str | None, *, exterior_only: bool) -> list[Door]:
        """Doors of a building (or of the whole school when building is None)."""
        school = self.school(school_id)
        buildings = [b for b in school.buildings if building in (None, b.id)]
        return [d for b in buildings for d in b.doors if d.exterior or not exterior_only]

    def tenant(self, school_id: str) -> dict[str, str | None]:
        """The envelope tenant path of a school."""
        return {
            "state": self.state,
            "district": self.district_of(school_id).id,
            "school": school_id,
        }


class DirectorySource(Protocol):
    """Where a service reads the directory: a
    :class:`~safehub.kernel.live_directory.LiveDirectory` (the live view) or a plain
    :class:`Directory` (a fixed one). Call :meth:`current` once per decision (per request, per
    event) and use that snapshot throughout it; never keep one across decisions."""

    def current(self) -> Directory:
        """The directory now (an immutable snapshot)."""
        ...
