"""The live directory's people: a :class:`People` snapshot that follows ``safehub.people.v1``.

Following, snapshots and replay safety are :class:`~safehub.kernel.live.LiveView`'s. Each
``PersonChanged`` is the full person at its version:

* ``UPSERTED`` replaces the person held if its version is newer (seed people are version 0);
* ``DELETED`` removes them, remembering the version, so an older upsert replayed later
  cannot bring them back;
* a version not newer than the one held is ignored.

A guardian's custody and pickup authority are per student (``student_guardianships``; an
event of an older writer has only the single ``guardianship``, which then holds for each of
their students): ``current().may_release_to(guardian_id, student_id)`` answers for one student.

:func:`publish_seed` imports a seed file's people into the topic (``safehub directory seed``,
``safehub up``); re-seeding publishes nothing and never brings back someone a roster deleted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from safehub.kernel.bus import EventProducer
from safehub.kernel.codec import Codec
from safehub.kernel.live import LiveView, publish_missing
from safehub.kernel.people import People, SchoolPeople
from safehub.kernel.person_events import (
    KIND_OF_LIST,
    LISTS,
    PERSON_CHANGED,
    Person,
    person_from_event,
    seed_events,
)
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import PEOPLE, TopicCatalog

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class _Held:
    """One person as held: kind, version, schools, the model (None: deleted at version)."""

    kind: str
    version: int
    schools: tuple[str, ...]
    person: Person | None


class LivePeople(LiveView[People]):
    """The people of a seed snapshot, kept current from ``safehub.people.v1``."""

    event_type = PERSON_CHANGED
    topic = PEOPLE
    noun = "people"

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
        super().__init__(seed, kafka, catalog, codec, name=name, fetch_wait_ms=fetch_wait_ms)
        self._held: dict[str, _Held] = {}
        self._school_order: dict[str, None] = {}
        for school in seed.schools:
            self._school_order[school.id] = None
            for list_name, kind in KIND_OF_LIST.items():
                for person in getattr(school, list_name):
                    held = self._held.get(person.id)
                    schools = (*held.schools, school.id) if held else (school.id,)
                    self._held[person.id] = _Held(kind, 0, schools, person)

    def version_of(self, person_id: str) -> int | None:
        """The version held for a person (0: from the seed file; None: never seen)."""
        held = self._held.get(person_id)
        return held.version if held is not None else None

    def _accept(self, event: Mapping[str, Any]) -> bool:
        person_id, version, change, kind, schools, person = person_from_event(event)
        held = self._held.get(person_id)
        if held is not None and version <= held.version:
            return False
        if change == "DELETED":
            schools = held.schools if held is not None else ()
        self._held[person_id] = _Held(kind, version, schools, person)
        for school in schools:
            self._school_order.setdefault(school, None)
        return True

    def _build(self) -> People:
        schools: dict[str, dict[str, list[Any]]] = {
            school: {name: [] for name in LISTS.values()} for school in self._school_order
        }
        for held in self._held.values():
            if held.person is None:
                continue
            for school in held.schools:
                schools[school][LISTS[held.kind]].append(held.person)
        return People.model_validate(
            {"schools": [SchoolPeople(id=school, **lists) for school, lists in schools.items()]}
        )


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
    published = publish_missing(
        producer,
        events,
        key=lambda e: str(e.get("person_id")),
        topic=PEOPLE,
        kafka=kafka,
        catalog=catalog,
        codec=codec,
        name="people-seed",
        timeout=timeout,
    )
    log.info(
        "people seeded",
        people=len(events),
        published=published,
        already=len(events) - published,
    )
    return SeedReport(len(events), published, len(events) - published)
