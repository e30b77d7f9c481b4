"""Roster records become events: one ``RosterChange`` per changed entity, one
``PersonChanged`` per changed person, bad rows dead-lettered, all of it resumable.

One :class:`Importer` per source. :meth:`Importer.import_package` reads a OneRoster CSV
package, :meth:`Importer.sync_rest` a REST provider (bulk the first time, then only what
changed since the last sync's high-water ``dateLastModified``), :meth:`Importer.import_custody`
the emergency-contact / custody feed. Each is a *run* over rows:

1. a row whose content digest equals what the state holds for it is unchanged: nothing is
   published (re-importing a package publishes nothing new);
2. a changed row publishes a ``RosterChange`` on the roster topic (contact and credential
   columns dropped: the timeline reads that topic), event id
   ``stable_id(source, entity, sourcedId, version)``, version = dateLastModified in µs or
   the previous version + 1; its person's pieces are updated (:mod:`.people`);
3. a rejected row is reported and dead-lettered: file, line, column and reason, never the
   row's values;
4. every ``checkpoint_rows`` rows, once the broker confirmed what was published, one state
   transaction records the rows' digests, the people's pieces and the position (file and
   line, or the REST cursor) with the report so far; a restarted run of the same package
   (same fingerprint) skips every row up to that position;
5. a bulk file lists everything: what an earlier package delivered and a complete bulk file
   of this one no longer lists is removed (a DELETED ``RosterChange``; the user deleted, the
   enrolment withdrawn) — unless the file had a rejected row or was cut short, since what it
   failed to deliver cannot be told from what it left out;
6. at the end each person whose ``PersonChanged`` body differs from the one last published
   is published at a new version (never below its dateLastModified) and checkpointed.

Logs carry counts, files and lines only.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from connectors.sis_roster import custody as custody_feed
from connectors.sis_roster.lease import SourceLease
from connectors.sis_roster.people import (
    apply_custody,
    apply_record,
    digest,
    micros,
    person_fields,
    person_of,
)
from connectors.sis_roster.rest_client import CollectionReader, Cursor, OneRosterRestClient
from connectors.sis_roster.rest_records import COLLECTIONS, to_record
from connectors.sis_roster.settings import RosterSource, SisRosterConfig
from connectors.sis_roster.state import Applied, PersonRow, RosterState
from safehub.contracts.names import EventType
from safehub.kernel.bus import (
    H_SOURCE,
    H_TENANT,
    Delivered,
    EventProducer,
    dead_letter_headers,
)
from safehub.kernel.envelope import new_event, stable_id
from safehub.kernel.errors import SafeHubError
from safehub.kernel.topics import ROSTER, TopicCatalog
from safehub.standards.oneroster import (
    ENTITY_FILES,
    Class,
    Course,
    Defect,
    Enrollment,
    Mode,
    OneRosterPackage,
    Org,
    Record,
    Role,
    Severity,
    User,
    roster_change,
)

log = structlog.get_logger(__name__)

NAME = "sis_roster"
#: Namespace of the connector's event ids (never change: ids already on the topics).
_IDS = uuid.UUID("2b7f0c1e-51a4-4d0e-8f3a-6c1d9e4b7a22")
#: Columns that never reach the roster topic: contact details and credentials.
DROPPED = frozenset({"email", "phone", "sms", "username", "password"})
CLASSIFICATION = ("INTERNAL", "STUDENT_RECORD")
#: At most this many defects are kept in a report (all are counted).
MAX_DEFECTS = 1000
#: How long a checkpoint waits for the broker to confirm what it accounts for.
CONFIRM_TIMEOUT_S = 120.0
#: The RosterEntity of a file (CSV name or REST collection), for rejected rows.
ENTITY_OF = {
    "orgs": "ORG",
    "academicSessions": "ACADEMIC_SESSION",
    "courses": "COURSE",
    "classes": "CLASS",
    "users": "USER",
    "enrollments": "ENROLLMENT",
    "demographics": "DEMOGRAPHICS",
}

Progress = Callable[[int, int | None], None]


class RowRejectedError(SafeHubError):
    """A roster row was refused (the dead letter's error type)."""


@dataclass
class Counts:
    """What one entity's rows did."""

    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    rejected: int = 0


@dataclass
class SyncReport:
    """The summary of one import or sync (counts by entity, the defects; never values)."""

    source: str
    what: str
    fingerprint: str = ""
    entities: dict[str, Counts] = field(default_factory=dict)
    people: dict[str, int] = field(default_factory=lambda: {"published": 0, "deleted": 0})
    defects: list[dict[str, Any]] = field(default_factory=list)
    defect_count: int = 0
    dead_lettered: int = 0
    rows: int = 0
    resumed: bool = False
    already_applied: bool = False
    seconds: float = 0.0

    def counts(self, entity: str) -> Counts:
        """The counts of ``entity``, created on first use."""
        return self.entities.setdefault(entity, Counts())

    def add_defect(self, defect: Defect) -> None:
        """Count and keep (up to :data:`MAX_DEFECTS`) one defect."""
        self.defect_count += 1
        if len(self.defects) < MAX_DEFECTS:
            self.defects.append(
                {
                    "file": defect.file,
                    "line": defect.line,
                    "column": defect.column,
                    "severity": defect.severity.value,
                    "reason": defect.reason,
                }
            )

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data (the CLI's ``--json``)."""
        return {
            "source": self.source,
            "what": self.what,
            "fingerprint": self.fingerprint,
            "entities": {k: vars(v) for k, v in sorted(self.entities.items())},
            "people": dict(self.people),
            "rows": self.rows,
            "defect_count": self.defect_count,
            "dead_lettered": self.dead_lettered,
            "defects": list(self.defects),
            "resumed": self.resumed,
            "already_applied": self.already_applied,
            "seconds": round(self.seconds, 3),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SyncReport:
        """Back from :meth:`to_json` (a resumed run goes on counting)."""
        report = cls(source=data["source"], what=data["what"], fingerprint=data["fingerprint"])
        report.entities = {k: Counts(**v) for k, v in data.get("entities", {}).items()}
        report.people = dict(data.get("people", report.people))
        report.defects = list(data.get("defects", []))
        report.defect_count = int(data.get("defect_count", 0))
        report.dead_lettered = int(data.get("dead_lettered", 0))
        report.rows = int(data.get("rows", 0))
        return report


def package_fingerprint(path: Path) -> str:
    """``csv:`` + SHA-256 over the package's files (names and bytes), zip or folder."""
    h = hashlib.sha256()
    if path.is_dir():
        for item in sorted(p for p in path.iterdir() if p.is_file()):
            h.update(item.name.encode() + b"\0")
            with item.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    h.update(block)
    else:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                h.update(block)
    return "csv:" + h.hexdigest()[:64]


def count_rows(path: Path) -> int | None:
    """Data rows in a package folder (newlines less headers), for a progress bar; None for
    a zip (counting would mean decompressing it twice)."""
    if not path.is_dir():
        return None
    total = 0
    for name in ENTITY_FILES:
        item = path / name
        if item.is_file():
            with item.open("rb") as handle:
                total += max(
                    0,
                    sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))
                    - 1,
                )
    return total


class Importer:
    """Imports of one source into events, through one producer and the state database."""

    def __init__(
        self,
        config: SisRosterConfig,
        source: RosterSource,
        producer: EventProducer,
        catalog: TopicCatalog,
        state: RosterState,
        *,
        on_progress: Progress | None = None,
        lease: SourceLease | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.producer = producer
        self.catalog = catalog
        self.state = state
        self.on_progress = on_progress
        #: The source's run lease (:mod:`.lease`): checked every row, renewed by checkpoints.
        self.lease = lease

    # -- entry points ----------------------------------------------------------------------

    def import_package(self, path: Path) -> SyncReport:
        """Import a OneRoster CSV package (zip or folder; bulk or delta per its manifest).

        Raises :class:`~safehub.standards.oneroster.OneRosterPackageError` for a package
        whose manifest or headers are wrong (nothing is published then).
        """
        package = OneRosterPackage(path)  # refuses a bad manifest or header first
        fingerprint = package_fingerprint(path)
        run = _Run(self, "package", fingerprint, total=count_rows(path))
        position = run.position
        skip_file = int(position.get("file_index", -1))
        skip_line = int(position.get("line", 0))
        for defect in package.defects:  # package-level, from opening: once per package
            if not run.resumed:
                run.defect(defect)
        run.bulk = {n.removesuffix(".csv") for n in package.files if package.modes[n] is Mode.BULK}
        complete = set(run.bulk)
        for index, name in enumerate(package.files):
            for item in package.read(name):
                if isinstance(item, Defect) and item.severity is Severity.ERROR:
                    # A lost rest of file or a rejected row: what the file no longer lists
                    # cannot be told from what it failed to deliver, so nothing is removed.
                    complete.discard(name.removesuffix(".csv"))
                if index < skip_file or (index == skip_file and _line(item) <= skip_line):
                    continue
                if isinstance(item, Defect):
                    run.defect(item)
                    if item.severity is Severity.ERROR and item.line is not None:
                        run.row_done({"file_index": index, "line": item.line})
                else:
                    run.record(name, item)
                    run.row_done({"file_index": index, "line": item.line})
        if position.get("phase") != "people":
            for defect in package.check_references():
                run.defect(defect)
        run.absent(complete)
        run.finish()
        return run.report

    def import_custody(self, path: Path) -> SyncReport:
        """Import an emergency-contact / custody feed (columns: :mod:`.custody`)."""
        fingerprint = "custody:" + package_fingerprint(path)[4:]
        run = _Run(self, "custody", fingerprint, total=None)
        skip_line = int(run.position.get("line", 0))
        for item in custody_feed.read_feed(path):
            if item.line is not None and item.line <= skip_line:
                continue
            if isinstance(item, Defect):
                run.defect(item, entity="CUSTODY")
                if item.line is not None:
                    run.row_done({"line": item.line})
                continue
            person = run.person(item.guardian_id)
            before = digest(person.state.get("custody"))
            had = person.state.get("custody") is not None
            apply_custody(person.state, item, fingerprint)
            counts = run.report.counts("CUSTODY")
            if digest(person.state.get("custody")) == before:
                counts.unchanged += 1
            elif had:
                counts.changed += 1
            else:
                counts.added += 1
            run.row_done({"line": item.line})
        run.finish()
        return run.report

    def sync_rest(self, client: OneRosterRestClient, *, full: bool = False) -> SyncReport:
        """One sync from the provider: full (bulk) the first time or when ``full`` is asked,
        else the changes since the high-water ``dateLastModified`` of the last finished sync;
        an interrupted sync is resumed (an interrupted delta is dropped when a full sync is
        asked: the full one reads everything it would have).

        A full sync is a complete listing: what an earlier import of this source delivered and
        a collection no longer lists is removed (:meth:`_Run.absent`), but only from the
        collections read to their end with every object accepted. A page that fails (after
        the client's retries) raises :class:`OneRosterRestError` before anything is removed;
        the sync is resumed from its cursor next time and removes then, if it completes.
        """
        name = self.source.name
        fingerprint, new_since = self._rest_fingerprint(full)
        run = _Run(self, "rest", fingerprint, total=None)
        position = run.position
        since_text = position.get("since") or new_since
        since = None if since_text == "bulk" else datetime.fromisoformat(since_text)
        high = position.get("high_water")
        run.high_water = None if high is None else datetime.fromisoformat(high)
        if since is None:  # a full listing: every collection lists everything
            run.bulk = set(COLLECTIONS)
        #: Collections whose listing cannot be trusted to be whole (a rejected object, fewer
        #: objects than the provider's X-Total-Count); kept in the position across a resume.
        incomplete: set[str] = set(position.get("incomplete") or ())
        done_index = int(position.get("collection_index", -1))
        for index, collection in enumerate(COLLECTIONS):
            if index < done_index:
                continue
            resume = None
            if index == done_index and position.get("cursor"):
                resume = Cursor.from_json(position["cursor"])
            reader = client.iter_collection(
                collection, since=None if resume else since, resume=resume
            )
            base = {"since": since_text, "collection_index": index}
            if not self._rest_collection(run, reader, collection, base, incomplete):
                incomplete.add(collection)
            run.position = {
                "since": since_text,
                "incomplete": sorted(incomplete),
                "collection_index": index + 1,
            }
        if since is None:
            if incomplete:
                log.warning(
                    "full sync incomplete: nothing removed from these collections",
                    source=name,
                    collections=sorted(incomplete),
                )
            run.absent(run.bulk - incomplete)
        if run.high_water is None:
            run.high_water = since  # nothing changed: the next delta starts where this one did
        run.finish()
        return run.report

    def _rest_fingerprint(self, full: bool) -> tuple[str, str]:
        """The sync to run — the interrupted one (unless it is a delta and ``full`` is asked),
        else a new one — and, for a new one, what it reads: ``bulk`` or changes since when."""
        name = self.source.name
        fingerprint = self.state.open_sync(name)
        if fingerprint is not None and full:
            previous = self.state.progress_of(name, fingerprint)
            if previous is not None and previous.position.get("since", "bulk") != "bulk":
                self.state.abandon(name, fingerprint)
                fingerprint = None
        if fingerprint is not None:
            return fingerprint, "bulk"  # the position says what it reads
        since = None if full else self.state.high_water(name)
        return f"rest:{datetime.now(UTC).isoformat()}", since.isoformat() if since else "bulk"

    def _rest_collection(
        self,
        run: _Run,
        reader: CollectionReader,
        collection: str,
        base: dict[str, Any],
        incomplete: set[str],
    ) -> bool:
        """Apply one collection's objects; False if its listing was not whole (an object
        rejected, or fewer objects than the provider's own count)."""
        whole = collection not in incomplete
        file = _file_of(collection)
        for obj in reader:
            item = to_record(collection, obj, reader.cursor.offset)
            if isinstance(item, Defect):
                run.defect(item)
                if item.severity is Severity.ERROR:
                    whole = False
                    incomplete.add(collection)
            else:
                run.record(file, item)
                dlm = item.date_last_modified
                if dlm is not None and (run.high_water is None or dlm > run.high_water):
                    run.high_water = dlm
            run.row_done(
                {**base, "incomplete": sorted(incomplete), "cursor": reader.cursor.to_json()}
            )
        return whole and (reader.total is None or reader.cursor.offset >= reader.total)


def _line(item: Record | Defect) -> int:
    return (item.line or 0) if isinstance(item, Defect) else item.line


def _file_of(collection: str) -> str:
    return {"orgs": "orgs.csv", "academicSessions": "academicSessions.csv"}.get(
        collection, f"{collection}.csv"
    )


def _school_of(record: Record) -> str | None:
    if isinstance(record, Org):
        return record.sourced_id
    if isinstance(record, Class | Enrollment):
        return record.school_sourced_id or None
    if isinstance(record, User):
        return record.primary_org_sourced_id or next(iter(record.org_sourced_ids), None)
    if isinstance(record, Course | Role):
        return record.org_sourced_id or None
    return None


class _Run:
    """One import or sync: counts, pending publications, checkpoints, the people phase."""

    def __init__(self, importer: Importer, what: str, fingerprint: str, *, total: int | None):
        self.importer = importer
        self.config = importer.config
        self.source = importer.source
        self.name = importer.source.name
        self.state = importer.state
        self.fingerprint = fingerprint
        self.total = total
        self.started = datetime.now(UTC)
        previous = self.state.progress_of(self.name, fingerprint)
        self.records = self.state.load_records(self.name)
        self.people = self.state.load_people(self.name)
        self.dirty_records: set[tuple[str, str]] = set()
        self.dirty_people: set[str] = set()
        self.pending: list[Future[Delivered]] = []
        self.rows_since_checkpoint = 0
        self.rows_this_run = 0
        self.high_water: datetime | None = None
        #: Entities (file stems) this package delivers in bulk: a full list of them.
        self.bulk: set[str] = set()
        if previous is None:
            self.report = SyncReport(self.name, what, fingerprint)
            self.position: dict[str, Any] = {}
        else:
            self.report = SyncReport.from_json(previous.report)
            self.position = dict(previous.position)
            if previous.done:
                # The same package again: nothing is new, but it is read and reported.
                self.report = SyncReport(self.name, what, fingerprint, already_applied=True)
                self.position = {}
            else:
                self.report.resumed = True
                log.info(
                    "roster import resumed",
                    source=self.name,
                    what=what,
                    rows_done=self.report.rows,
                )
        self.resumed = self.report.resumed
        self.already = self.report.already_applied

    # -- rows ------------------------------------------------------------------------------

    def person(self, person_id: str) -> PersonRow:
        row = self.people.get(person_id)
        if row is None:
            row = self.people[person_id] = PersonRow(state={})
        self.dirty_people.add(person_id)
        return row

    def record(self, file: str, record: Record) -> None:
        fields = roster_change(record)
        entity = fields.entity.value
        key = (file.removesuffix(".csv"), record.sourced_id)
        attributes = {k: v for k, v in fields.attributes.items() if k not in DROPPED}
        dlm = fields.date_last_modified
        content = digest([fields.change.value, fields.role, attributes, dlm])
        previous = self.records.get(key)
        counts = self.report.counts(entity)
        seen = self.fingerprint if key[0] in self.bulk else None
        if previous is not None and previous.digest == content:
            counts.unchanged += 1
            if seen is not None and previous.seen != seen:
                previous.seen = seen  # listed by this bulk package: not absent
                self.dirty_records.add(key)
            return
        version = micros(record) or (previous.version + 1 if previous else 1)
        if previous is not None and version <= previous.version:
            version = previous.version + 1
        deleted = fields.change.value == "DELETED"
        if deleted:
            counts.removed += 1
        elif previous is None:
            counts.added += 1
        else:
            counts.changed += 1
        self._publish_change(
            entity,
            key,
            version,
            change=fields.change.value,
            school=_school_of(record),
            dlm=dlm,
            role=fields.role,
            attributes=attributes,
        )
        person_id = person_of(record)
        self.records[key] = Applied(
            version,
            content,
            seen or (previous.seen if previous else None),
            person_id,
            deleted,
        )
        self.dirty_records.add(key)
        if person_id:
            apply_record(self.person(person_id).state, record)

    def _publish_change(
        self,
        entity: str,
        key: tuple[str, str],
        version: int,
        *,
        change: str,
        school: str | None,
        dlm: datetime | None,
        role: str | None,
        attributes: dict[str, str],
    ) -> None:
        event = new_event(
            EventType.ROSTER_CHANGE,
            source=NAME,
            tenant=self._tenant(school),
            classification=CLASSIFICATION,
            occurred_at=dlm,
            event_id=stable_id(_IDS, self.name, key[0], key[1], version),
            payload={
                "roster_source": self.name,
                "entity": entity,
                "sourced_id": key[1],
                "change": change,
                "date_last_modified": dlm or self.started,
                "role": role,
                "attributes": attributes,
            },
        )
        self.pending.append(self.importer.producer.publish_nowait(event))

    def absent(self, complete: set[str]) -> None:
        """Bulk files list everything: an entity a complete bulk file no longer lists is
        gone (a DELETED RosterChange; a user deleted, an enrolment or role withdrawn)."""
        for key, applied in self.records.items():
            stem, sourced_id = key
            if stem not in complete or applied.deleted or applied.seen == self.fingerprint:
                continue
            entity = ENTITY_OF.get(stem, "OTHER")
            applied.version += 1
            applied.digest = digest(["ABSENT", sourced_id])
            applied.deleted = True
            self._publish_change(
                entity,
                key,
                applied.version,
                change="DELETED",
                school=None,
                dlm=None,
                role=None,
                attributes={},
            )
            self.report.counts(entity).removed += 1
            self.dirty_records.add(key)
            if applied.person_id:
                pieces = self.person(applied.person_id).state
                if stem == "users":
                    pieces.setdefault("user", {})["deleted"] = True
                elif stem == "enrollments" and sourced_id in pieces.get("enrollments", {}):
                    pieces["enrollments"][sourced_id][2] = False
                elif stem == "roles" and sourced_id in pieces.get("roles", {}):
                    pieces["roles"][sourced_id][3] = False

    def defect(self, defect: Defect, *, entity: str | None = None) -> None:
        self.report.add_defect(defect)
        if defect.severity is not Severity.ERROR:
            return
        if entity is None:
            entity = ENTITY_OF.get(defect.file.removesuffix(".csv"), "OTHER")
        if defect.line is not None:
            self.report.counts(entity).rejected += 1
        if self.already:
            return  # dead-lettered when the package was first imported
        self._dead_letter(defect)

    def _dead_letter(self, defect: Defect) -> None:
        producer = self.importer.producer
        catalog = self.importer.catalog
        tenant = f"{self.source.state}/{self.source.district}/".encode()
        headers = dead_letter_headers(
            [(H_SOURCE, NAME.encode()), (H_TENANT, tenant)],
            RowRejectedError(defect.reason),
            reason=str(defect),
            topic=catalog.name(ROSTER),
            partition=-1,
            offset=defect.line or 0,
            group=NAME,
            attempts=1,
        )
        headers += [
            ("safehub-dlq-roster-source", self.name.encode()),
            ("safehub-dlq-file", defect.file.encode()),
            ("safehub-dlq-line", str(defect.line or "").encode()),
            ("safehub-dlq-column", (defect.column or "").encode()),
        ]
        body = {
            "roster_source": self.name,
            "file": defect.file,
            "line": defect.line,
            "column": defect.column,
            "reason": defect.reason,
        }
        producer.publish_raw(
            catalog.dead_letter,
            self.source.district.encode(),
            json.dumps(body, sort_keys=True).encode(),
            headers,
        )
        self.report.dead_lettered += 1

    def row_done(self, position: dict[str, Any]) -> None:
        lease = self.importer.lease
        if lease is not None:
            lease.check()
        self.report.rows += 1
        self.rows_this_run += 1
        self.rows_since_checkpoint += 1
        self.position = position
        if self.importer.on_progress is not None:
            self.importer.on_progress(self.report.rows, self.total)
        if self.report.rows % self.config.progress_every == 0:
            log.info(
                "roster import progress",
                source=self.name,
                rows=self.report.rows,
                total=self.total,
                defects=self.report.defect_count,
            )
        if self.rows_since_checkpoint >= self.config.checkpoint_rows:
            self.checkpoint()
            crash = self.config.crash_after_rows
            if crash is not None and self.rows_this_run >= crash:
                log.warning("crash_after_rows reached: exiting as a crash would", rows=crash)
                os._exit(70)

    # -- checkpoints and the people phase --------------------------------------------------

    def _confirm(self) -> None:
        pending, self.pending = self.pending, []
        for future in pending:
            future.result(timeout=CONFIRM_TIMEOUT_S)

    def checkpoint(self, *, done: bool = False) -> None:
        self._confirm()
        lease = self.importer.lease
        self.state.checkpoint(
            self.name,
            self.fingerprint,
            records=[(e, s, self.records[(e, s)]) for e, s in self.dirty_records],
            people=[(p, self.people[p]) for p in self.dirty_people],
            position={**self.position, "high_water": _iso(self.high_water)},
            report=self.report.to_json(),
            done=done,
            high_water=self.high_water,
            full=self.report.what == "rest" and self.position.get("since") == "bulk",
            lease=None if lease is None else (lease.holder, lease.ttl),
        )
        self.dirty_records.clear()
        self.dirty_people.clear()
        self.rows_since_checkpoint = 0

    def finish(self) -> None:
        self.position = {**self.position, "phase": "people"}
        self.checkpoint()
        views = {pid: row.state for pid, row in self.people.items()}
        published = 0
        for person_id, row in self.people.items():
            fields = person_fields(person_id, row.state, views, self.source.schools)
            if fields is None:
                continue
            content = digest(fields)
            if content == row.published_digest:
                continue
            version = max(row.published_version + 1, int(row.state.get("dlm", 0)))
            self._publish_person(person_id, fields, version)
            row.published_version = version
            row.published_digest = content
            self.dirty_people.add(person_id)
            published += 1
            self.report.people["published"] += 1
            if fields["change"] == "DELETED":
                self.report.people["deleted"] += 1
            if len(self.dirty_people) >= self.config.checkpoint_rows:
                self.checkpoint()
        self.report.seconds += (datetime.now(UTC) - self.started).total_seconds()
        self.checkpoint(done=True)
        log.info(
            "roster import finished",
            source=self.name,
            what=self.report.what,
            rows=self.report.rows,
            people_published=published,
            defects=self.report.defect_count,
            dead_lettered=self.report.dead_lettered,
            resumed=self.report.resumed,
        )

    def _publish_person(self, person_id: str, fields: dict[str, Any], version: int) -> None:
        schools = fields["school_ids"]
        dlm = int(self.people[person_id].state.get("dlm", 0))
        event = new_event(
            EventType.PERSON_CHANGED,
            source=NAME,
            tenant=self._tenant(schools[0] if schools else None, mapped=True),
            classification=CLASSIFICATION,
            occurred_at=datetime.fromtimestamp(dlm / 1e6, UTC) if dlm else None,
            event_id=stable_id(_IDS, self.name, "person", person_id, version),
            payload={**fields, "version": version, "roster_source": self.name},
        )
        self.pending.append(self.importer.producer.publish_nowait(event))

    def _tenant(self, school: str | None, *, mapped: bool = False) -> dict[str, str | None]:
        if school is not None and not mapped:
            school = self.source.schools.get(school, school)
        # Topics are keyed by school: district-wide records are keyed by the district.
        return {
            "state": self.source.state,
            "district": self.source.district,
            "school": school or self.source.district,
        }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
