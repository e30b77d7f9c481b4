"""The live directory's people: a :class:`People` snapshot that follows ``safehub.people.v1``.

A process starts from the seed file (``People.load``, as before: a hub with an empty topic
still knows its people), then reads every partition of the people topic from offset 0 with a
:class:`~safehub.kernel.reader.TopicReader` (no group, so every replica sees every change):
first to the end (:meth:`LivePeople.wait_ready`), then following. Each ``PersonChanged`` is
the full person at its version:

* ``UPSERTED`` replaces the person held if its version is newer (seed people are version 0);
* ``DELETED`` removes them, remembering the version, so an older upsert replayed later
  cannot bring them back;
* a version not newer than the one held is ignored: replays and redeliveries change nothing.

Readers call :meth:`LivePeople.current` for every decision: an immutable snapshot, replaced
as a whole (one reference assignment) after each applied poll batch, so a reader never sees
half a change. Records that do not decode or are not a valid person are logged by event id
(never their contents: they carry contact details) and skipped.

:func:`seed_events` / :func:`publish_seed` turn a seed file into ``PersonChanged`` events
(version 1, roster source ``seed``, stable event ids), so the seed is imported into the topic
rather than being the runtime source (``safehub directory seed``, ``safehub up``).
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from confluent_kafka import Message
from pydantic import ValidationError

from safehub.kernel.bus import H_EVENT_ID, EventProducer, Record, header
from safehub.kernel.codec import Codec, Event
from safehub.kernel.directory import Directory
from safehub.kernel.envelope import new_event, stable_id
from safehub.kernel.errors import SafeHubError
from safehub.kernel.lifecycle import Closing
from safehub.kernel.people import (
    Contact,
    Guardian,
    Guardianship,
    People,
    Responder,
    SchoolPeople,
    StaffMember,
    StaffRole,
    Student,
)
from safehub.kernel.reader import TopicReader
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import PEOPLE, TopicCatalog

log = structlog.get_logger(__name__)

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


class InvalidPersonError(SafeHubError):
    """A PersonChanged that is not a valid person (the message names fields, never values)."""


@dataclass(frozen=True)
class _Held:
    """One person as held: kind, version, schools, the model (None: deleted at version)."""

    kind: str
    version: int
    schools: tuple[str, ...]
    person: Person | None


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


class LivePeople(Closing):
    """The people of a seed snapshot, kept current from ``safehub.people.v1``.

    ``start()`` begins following in a background thread; ``wait_ready(timeout)`` until the
    topic was read to its end; ``current()`` the snapshot now; ``on_change(fn)`` is called
    (in the follower thread) with each new snapshot. ``version`` counts the snapshots
    published (0: the seed); ``applied``, ``ignored`` and ``rejected`` count records.
    """

    def __init__(
        self,
        seed: People,
        kafka: KafkaSettings,
        catalog: TopicCatalog,
        codec: Codec,
        *,
        name: str = "live-people",
        fetch_wait_ms: int = 100,
    ) -> None:
        self.name = name
        self._kafka = kafka
        self._catalog = catalog
        self._codec = codec
        self._fetch_wait_ms = fetch_wait_ms
        self._held: dict[str, _Held] = {}
        self._school_order: dict[str, None] = {}
        for school in seed.schools:
            self._school_order[school.id] = None
            for list_name, kind in KIND_OF_LIST.items():
                for person in getattr(school, list_name):
                    held = self._held.get(person.id)
                    schools = (*held.schools, school.id) if held else (school.id,)
                    self._held[person.id] = _Held(kind, 0, schools, person)
        self._snapshot = seed
        self.version = 0
        self.applied = 0
        self.ignored = 0
        self.rejected = 0
        self._listeners: list[Callable[[People], None]] = []
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading -------------------------------------------------------------------------

    def current(self) -> People:
        """The people now: an immutable snapshot (never changed after it is published)."""
        return self._snapshot

    def version_of(self, person_id: str) -> int | None:
        """The version held for a person (0: from the seed file; None: never seen)."""
        held = self._held.get(person_id)
        return held.version if held is not None else None

    def on_change(self, listener: Callable[[People], None]) -> None:
        """Call ``listener(snapshot)`` after each new snapshot (in the follower thread)."""
        self._listeners.append(listener)

    @property
    def ready(self) -> bool:
        """The topic was read to its end once."""
        return self._ready.is_set()

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the topic was read to its end (False if ``timeout`` passed first)."""
        return self._ready.wait(timeout)

    # -- following -----------------------------------------------------------------------

    def start(self) -> LivePeople:
        """Follow the topic in a background thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._follow, name=self.name, daemon=True)
            self._thread.start()
        return self

    def _follow(self) -> None:
        reader: TopicReader | None = None
        try:
            while not self._stop.is_set():
                try:
                    if reader is None:
                        reader = TopicReader(
                            self._kafka,
                            self._catalog,
                            [PEOPLE],
                            name=self.name,
                            fetch_wait_ms=self._fetch_wait_ms,
                        )
                    self.apply_messages(reader.poll(0.2))
                    if not self._ready.is_set() and reader.at_end():
                        self._ready.set()
                        log.info(
                            "people caught up",
                            reader=self.name,
                            applied=self.applied,
                            ignored=self.ignored,
                            rejected=self.rejected,
                        )
                except SafeHubError as exc:  # the broker is away: keep the snapshot, retry
                    log.warning(
                        "people topic unreadable, retrying", reader=self.name, error=str(exc)
                    )
                    self._stop.wait(1.0)
        except Exception:  # a bug, not the broker: the last snapshot keeps serving
            log.exception("people follower failed", reader=self.name)
        finally:
            if reader is not None:  # the polling thread closes it (librdkafka)
                reader.close()

    def apply_messages(self, messages: Iterable[Message]) -> int:
        """Decode and apply records; publish one new snapshot if any changed. Changes applied."""
        events: list[Event] = []
        for message in messages:
            record = Record.of(message)
            event_id = header(record.headers, H_EVENT_ID) or "?"
            try:
                event = self._codec.decode(record.value or b"")
            except SafeHubError as exc:
                self.rejected += 1
                log.warning(
                    "people record skipped: undecodable",
                    event_id=event_id,
                    error_type=type(exc).__name__,
                )
                continue
            events.append(event)
        return self.apply(events)

    def apply(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Apply decoded PersonChanged events; publish one new snapshot if any changed."""
        changed = 0
        for event in events:
            envelope = event.get("envelope") or {}
            event_id = envelope.get("event_id", "?")
            if envelope.get("event_type") != PERSON_CHANGED:
                self.rejected += 1
                log.warning("people record skipped: not a PersonChanged", event_id=event_id)
                continue
            try:
                person_id, version, change, kind, schools, person = person_from_event(event)
            except InvalidPersonError as exc:
                self.rejected += 1
                log.warning("people record skipped: invalid", event_id=event_id, reason=str(exc))
                continue
            held = self._held.get(person_id)
            if held is not None and version <= held.version:
                self.ignored += 1
                continue
            if change == "DELETED":
                schools = held.schools if held is not None else ()
            self._held[person_id] = _Held(kind, version, schools, person)
            for school in schools:
                self._school_order.setdefault(school, None)
            self.applied += 1
            changed += 1
        if changed:
            self._publish(changed)
        return changed

    def _publish(self, changed: int) -> None:
        schools: dict[str, dict[str, list[Any]]] = {
            school: {name: [] for name in LISTS.values()} for school in self._school_order
        }
        for held in self._held.values():
            if held.person is None:
                continue
            for school in held.schools:
                schools[school][LISTS[held.kind]].append(held.person)
        snapshot = People.model_validate(
            {"schools": [SchoolPeople(id=school, **lists) for school, lists in schools.items()]}
        )
        self._snapshot = snapshot  # one assignment: readers see the old or the new, whole
        self.version += 1
        if self._ready.is_set():  # once caught up: one line per applied batch, counts only
            log.info("people changed", reader=self.name, version=self.version, applied=changed)
        for listener in list(self._listeners):
            try:
                listener(snapshot)
            except Exception:
                log.exception("people listener failed", reader=self.name)

    def close(self) -> None:
        """Stop following (idempotent); the snapshot stays readable."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


# -- the seed import -----------------------------------------------------------------------


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


@dataclass(frozen=True)
class SeedReport:
    """What a seed import did."""

    people: int
    published: int
    already: int


def publish_seed(
    producer: EventProducer,
    path: Path,
    *,
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    codec: Codec,
    timeout: float = 60.0,
) -> SeedReport:
    """Publish the seed file's people not on the people topic yet (any version): re-seeding
    publishes nothing, and never brings back someone a roster deleted."""
    events = seed_events(path)
    present: set[str] = set()

    def seen(message: Message) -> None:
        with contextlib.suppress(SafeHubError):  # not ours to judge here; LivePeople logs it
            present.add(str(codec.decode(Record.of(message).value or b"").get("person_id")))

    started = time.monotonic()
    with TopicReader(kafka, catalog, [PEOPLE], name="people-seed") as reader:
        reader.catch_up(seen, timeout)
    missing = [e for e in events if e["person_id"] not in present]
    pending = [producer.publish_nowait(e) for e in missing]
    for future in pending:
        future.result(timeout=max(1.0, timeout - (time.monotonic() - started)))
    log.info(
        "people seeded",
        people=len(events),
        published=len(missing),
        already=len(events) - len(missing),
    )
    return SeedReport(len(events), len(missing), len(events) - len(missing))
