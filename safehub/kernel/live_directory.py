"""The live directory's places and systems: a :class:`Directory` that follows
``safehub.directory.v1``.

Following, snapshots and replay safety are :class:`~safehub.kernel.live.LiveView`'s. Each
``DirectoryChanged`` is one entry (district, school with its buildings, rooms and doors,
client system, reviewer, call tree) in full at its version: newer versions replace, older or
equal ones are ignored, ``DELETED`` removes the entry and is remembered. A school whose
district is not known (yet, or any more) is left out of the snapshot until it is, so a
reader never sees a school without its tenant.

Every service reads places through ``current()`` per decision (a plain :class:`Directory`
answers ``current()`` with itself, so tests and tools may pass a loaded file).
:func:`directory_seed_events` / :func:`publish_directory_seed` import a seed file's entries
(version 1, ``changed_by`` = ``seed``, stable event ids), only those the topic lacks.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError

from safehub.contracts.names import EventType
from safehub.kernel.bus import EventProducer
from safehub.kernel.codec import Codec, Event
from safehub.kernel.directory import (
    CallTree,
    Client,
    Directory,
    District,
    Reviewer,
    School,
)
from safehub.kernel.envelope import new_event, stable_id
from safehub.kernel.errors import SafeHubError
from safehub.kernel.live import InvalidRecordError, LiveView, publish_missing
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import DIRECTORY, TopicCatalog

log = structlog.get_logger(__name__)

DIRECTORY_CHANGED = EventType.DIRECTORY_CHANGED.value
#: Namespace of the seed import's event ids (never change it: ids already on topics).
SEED_NAMESPACE = uuid.UUID("0b8e4a1c-7d2f-5c3e-8a9b-1e2f3a4b5c6d")
SEED_SOURCE = "seed"

#: Entry kind → the contract field that carries it.
FIELDS = {
    "DISTRICT": "district",
    "SCHOOL": "school",
    "CLIENT": "client",
    "REVIEWER": "reviewer",
    "CALL_TREE": "call_tree",
}

Entry = District | School | Client | Reviewer | CallTree


class InvalidEntryError(InvalidRecordError):
    """A DirectoryChanged that is not a valid entry (names fields, never values)."""


@dataclass(frozen=True)
class _Held:
    """One entry as held: its version and model (None: deleted at that version), and for a
    school the district it belongs to."""

    version: int
    entry: Entry | None
    district_id: str | None = None


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or '(root)'}: {error['msg']}"
        for error in exc.errors(include_url=False, include_input=False, include_context=False)
    )


def _entry_of(kind: str, body: Mapping[str, Any]) -> tuple[Entry, str | None]:
    """The model of one entry body and, for a school, its district id."""
    if kind == "DISTRICT":
        return District(id=body["id"], name=body["name"]), None
    if kind == "SCHOOL":
        district_id = str(body.get("district_id") or "")
        if not district_id:
            raise InvalidEntryError("school.district_id is empty")
        fields = {k: v for k, v in body.items() if k != "district_id"}
        return School.model_validate(fields), district_id
    if kind == "CLIENT":
        client = Client(
            id=body["id"],
            district=body["district_id"],
            schools=list(body.get("school_ids") or ()),
            scopes=set(body.get("scopes") or ()),
        )
        return client, None
    if kind == "REVIEWER":
        reviewer = Reviewer(
            id=body["id"],
            name=body["name"],
            district=body.get("district_id"),
            clearances=set(body.get("clearances") or ()),
            token_sha256=body.get("token_sha256"),
        )
        return reviewer, None
    return CallTree.model_validate(body), None


def entry_from_event(
    event: Mapping[str, Any],
) -> tuple[str, str, int, str, Entry | None, str | None]:
    """``(kind, entry_id, version, change, entry, district_id)`` of a DirectoryChanged (entry
    None for a deletion); :class:`InvalidEntryError` naming the field otherwise."""
    kind = str(event.get("entry_kind"))
    entry_id = str(event.get("entry_id") or "")
    change = str(event.get("change"))
    version = event.get("version")
    if kind not in FIELDS:
        raise InvalidEntryError(f"entry_kind {kind} is not one of {', '.join(FIELDS)}")
    if not entry_id:
        raise InvalidEntryError("entry_id is empty")
    if not isinstance(version, int) or version < 1:
        raise InvalidEntryError("version is not a positive integer")
    if change not in ("UPSERTED", "DELETED"):
        raise InvalidEntryError(f"change {change} is not UPSERTED or DELETED")
    if change == "DELETED":
        return kind, entry_id, version, change, None, None
    body = event.get(FIELDS[kind])
    if not isinstance(body, Mapping):
        raise InvalidEntryError(f"{FIELDS[kind]} is missing for a {kind} upsert")
    if str(body.get("id")) != entry_id:
        raise InvalidEntryError(f"{FIELDS[kind]}.id differs from entry_id")
    try:
        entry, district_id = _entry_of(kind, body)
    except ValidationError as exc:
        raise InvalidEntryError(f"{FIELDS[kind]}: {_problems(exc)}") from None
    except KeyError as exc:
        raise InvalidEntryError(f"{FIELDS[kind]}.{exc.args[0]} is missing") from None
    return kind, entry_id, version, change, entry, district_id


def entry_fields(
    kind: str,
    entry: Entry,
    *,
    version: int,
    changed_by: str,
    district_id: str | None = None,
    change: str = "UPSERTED",
) -> dict[str, Any]:
    """A ``DirectoryChanged`` payload for one entry (``district_id`` for a school)."""
    body: dict[str, Any]
    if isinstance(entry, District):
        body = {"id": entry.id, "name": entry.name}
    elif isinstance(entry, School):
        if district_id is None:
            raise SafeHubError("a school entry needs its district_id")
        body = {"district_id": district_id, **entry.model_dump(mode="json")}
    elif isinstance(entry, Client):
        body = {
            "id": entry.id,
            "district_id": entry.district,
            "school_ids": entry.schools,
            "scopes": sorted(scope.value for scope in entry.scopes),
        }
    elif isinstance(entry, Reviewer):
        body = {
            "id": entry.id,
            "name": entry.name,
            "district_id": entry.district,
            "clearances": sorted(c.value for c in entry.clearances),
            "token_sha256": entry.token_sha256,
        }
    else:
        body = entry.model_dump(mode="json")
    payload: dict[str, Any] = {
        "entry_kind": kind,
        "entry_id": entry.id,
        "version": version,
        "change": change,
        "changed_by": changed_by,
        **dict.fromkeys(FIELDS.values()),
    }
    if change == "UPSERTED":
        payload[FIELDS[kind]] = body
    return payload


def entries_of(directory: Directory) -> list[tuple[str, Entry, str | None]]:
    """Every entry of a directory as ``(kind, entry, district_id)``, districts first."""
    entries: list[tuple[str, Entry, str | None]] = []
    for district in directory.districts:
        entries.append(("DISTRICT", District(id=district.id, name=district.name), None))
    for district in directory.districts:
        for school in district.schools:
            entries.append(("SCHOOL", school, district.id))
    entries += [("CLIENT", client, None) for client in directory.clients]
    entries += [("REVIEWER", reviewer, None) for reviewer in directory.reviewers]
    entries += [("CALL_TREE", tree, None) for tree in directory.call_trees]
    return entries


def _district_of(directory: Directory, kind: str, entry: Entry, district_id: str | None) -> str:
    """The envelope district of an entry (the state code for a state-wide one)."""
    if district_id:
        return district_id
    if isinstance(entry, District):
        return entry.id
    if isinstance(entry, Client):
        return entry.district
    if isinstance(entry, Reviewer):
        return entry.district or directory.state
    if isinstance(entry, CallTree) and entry.scope.value != "STATE":
        if entry.scope.value == "DISTRICT":
            return entry.scope_id
        return directory.district_of(entry.scope_id).id
    return directory.state


def change_event(
    directory: Directory,
    kind: str,
    entry: Entry,
    *,
    version: int,
    changed_by: str,
    district_id: str | None = None,
    change: str = "UPSERTED",
    event_id: str | None = None,
) -> Event:
    """A whole ``DirectoryChanged`` event for one entry of ``directory``'s state."""
    district = _district_of(directory, kind, entry, district_id)
    school = entry.id if isinstance(entry, School) else None
    return new_event(
        "DirectoryChanged",
        source=changed_by,
        tenant={"state": directory.state, "district": district, "school": school},
        classification=("INTERNAL",),
        event_id=event_id,
        payload=entry_fields(
            kind,
            entry,
            version=version,
            changed_by=changed_by,
            district_id=district_id,
            change=change,
        ),
    )


class LiveDirectory(LiveView[Directory]):
    """The places and systems of a seed directory, kept current from ``safehub.directory.v1``."""

    event_type = DIRECTORY_CHANGED
    topic = DIRECTORY
    noun = "directory"

    def __init__(
        self,
        seed: Directory,
        kafka: KafkaSettings,
        catalog: TopicCatalog,
        codec: Codec,
        *,
        name: str = "live-directory",
        fetch_wait_ms: int = 100,
    ) -> None:
        super().__init__(seed, kafka, catalog, codec, name=name, fetch_wait_ms=fetch_wait_ms)
        self._state = seed.state
        self._held: dict[tuple[str, str], _Held] = {
            (kind, entry.id): _Held(0, entry, district_id)
            for kind, entry, district_id in entries_of(seed)
        }

    def version_of(self, kind: str, entry_id: str) -> int | None:
        """The version held for an entry (0: from the seed file; None: never seen)."""
        held = self._held.get((kind, entry_id))
        return held.version if held is not None else None

    def _accept(self, event: Mapping[str, Any]) -> bool:
        kind, entry_id, version, _change, entry, district_id = entry_from_event(event)
        held = self._held.get((kind, entry_id))
        if held is not None and version <= held.version:
            return False
        self._held[(kind, entry_id)] = _Held(version, entry, district_id)
        return True

    def _build(self) -> Directory:
        def live(kind: str) -> list[_Held]:
            return [
                held for (k, _), held in self._held.items() if k == kind and held.entry is not None
            ]

        districts: dict[str, District] = {}
        for held in live("DISTRICT"):
            assert isinstance(held.entry, District)
            districts[held.entry.id] = held.entry.model_copy(update={"schools": []})
        for held in live("SCHOOL"):
            assert isinstance(held.entry, School)
            home = districts.get(held.district_id or "")
            if home is None:  # its district is not known yet: not served without a tenant
                continue
            home.schools.append(held.entry)
        schools = {s.id for d in districts.values() for s in d.schools}
        try:
            return Directory(
                state=self._state,
                districts=list(districts.values()),
                clients=[h.entry for h in live("CLIENT") if isinstance(h.entry, Client)],
                reviewers=[
                    h.entry
                    for h in live("REVIEWER")
                    if isinstance(h.entry, Reviewer)
                    and (h.entry.district is None or h.entry.district in districts)
                ],
                call_trees=[
                    h.entry
                    for h in live("CALL_TREE")
                    if isinstance(h.entry, CallTree)
                    and (
                        h.entry.scope.value == "STATE"
                        or h.entry.scope_id
                        in (schools if h.entry.scope.value == "SCHOOL" else districts)
                    )
                ],
            )
        except ValidationError as exc:  # e.g. one school id moved districts half-way
            log.warning("directory snapshot not built, keeping the last", reason=_problems(exc))
            return self.current()


# -- the seed import -----------------------------------------------------------------------


def seed_event_id(kind: str, entry_id: str, version: int = 1) -> str:
    """The stable event id of an entry's seed import (re-seeding gives the same id)."""
    return stable_id(SEED_NAMESPACE, f"{kind}:{entry_id}", version)


def directory_seed_events(path: Path) -> list[Event]:
    """One DirectoryChanged (UPSERTED, version 1, ``changed_by`` seed) per entry of a seed."""
    directory = Directory.load(path)
    return [
        change_event(
            directory,
            kind,
            entry,
            version=1,
            changed_by=SEED_SOURCE,
            district_id=district_id,
            event_id=seed_event_id(kind, entry.id),
        )
        for kind, entry, district_id in entries_of(directory)
    ]


@dataclass(frozen=True)
class DirectorySeedReport:
    """What a directory seed import did."""

    entries: int
    published: int
    already: int


def publish_directory_seed(
    producer: EventProducer,
    path: Path,
    *,
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    codec: Codec,
    timeout: float = 60.0,
) -> DirectorySeedReport:
    """Publish the seed file's entries not on the directory topic yet (any version):
    re-seeding publishes nothing and never brings back an entry an operator removed."""
    events = directory_seed_events(path)
    published = publish_missing(
        producer,
        events,
        key=lambda e: (str(e.get("entry_kind")), str(e.get("entry_id"))),
        topic=DIRECTORY,
        kafka=kafka,
        catalog=catalog,
        codec=codec,
        name="directory-seed",
        timeout=timeout,
    )
    log.info(
        "directory seeded",
        entries=len(events),
        published=published,
        already=len(events) - published,
    )
    return DirectorySeedReport(len(events), published, len(events) - published)
