"""The directory store: every person's and every directory entry's versions, the newest ones.

``people`` holds each person at the newest version seen (a deletion stays as a tombstone at
its version, so an older upsert redelivered later cannot bring the person back);
``person_versions`` every version as it came (unique per person and version, and per event
id: a redelivered event is a no-op); ``person_schools`` the current memberships, for the
per-school listing. Records are kept whole (contact details included: this is the
directory's source of truth), but :meth:`DirectoryStore.school_people` and
:meth:`DirectoryStore.versions` return ids, names, roles and versions only.

``entries`` holds each entry of the live directory's places and systems (``DirectoryChanged``:
district, school, client system, reviewer, call tree) at the newest version seen, a deletion
as a tombstone; ``entry_versions`` every version, the entry's JSON as the event carried it
(unique per kind, entry and version, and per event id). :meth:`DirectoryStore.entries` and
:meth:`DirectoryStore.entry_versions` return the entries without a reviewer's token hash.

SQLite (WAL) by default, PostgreSQL by URL; the schema comes from the alembic migrations in
``migrations/`` (applied at open).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Index,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    select,
)

from safehub.kernel import store as kernel_store
from safehub.kernel.lifecycle import Closing
from safehub.kernel.live_directory import FIELDS, InvalidEntryError, entry_from_event
from safehub.kernel.person_events import person_from_event
from safehub.kernel.store import insert_for, make_engine, migrate, upsert, wrap_errors

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

#: Fields of a PersonChanged kept as the record (everything but the envelope).
_NOT_RECORD = {"envelope"}
#: Fields of a directory entry never served (a reviewer's bearer token hash).
_NOT_SERVED = {"token_sha256"}
#: The longest id, district id and ``changed_by`` the entry tables hold.
_MAX_ID = 200


class StoreError(kernel_store.StoreError):
    """The directory store could not be opened, read or written."""

    store = "directory store"


def _now() -> datetime:
    return datetime.now(UTC)


def _district_of(event: Mapping[str, Any], kind: str, body: Mapping[str, Any] | None) -> str | None:
    """The district an entry belongs to (None: state-wide): the body's where it names it, else
    the envelope's (a school's call tree, a deletion), the state code meaning state-wide."""
    if body is not None:
        if kind == "DISTRICT":
            return str(body["id"])
        if kind in ("SCHOOL", "CLIENT", "REVIEWER"):
            return str(body["district_id"]) if body.get("district_id") else None
        if kind == "CALL_TREE" and body.get("scope") == "STATE":
            return None
        if kind == "CALL_TREE" and body.get("scope") == "DISTRICT":
            return str(body["scope_id"])
    tenant = event["envelope"].get("tenant") or {}
    district = tenant.get("district")
    return None if not district or district == tenant.get("state") else str(district)


def _iso(at: datetime) -> str:
    """A stored time in ISO 8601, in UTC (SQLite hands it back naive, in UTC)."""
    return (at.astimezone(UTC) if at.tzinfo is not None else at.replace(tzinfo=UTC)).isoformat()


def _served(entry: str | None) -> dict[str, Any] | None:
    """An entry's JSON as answered: without the fields never served."""
    if entry is None:
        return None
    body: dict[str, Any] = json.loads(entry)
    return {k: v for k, v in body.items() if k not in _NOT_SERVED}


class DirectoryStore(Closing):
    """The directory tables behind one engine (thread-safe: a connection per call)."""

    def __init__(self, url: str, *, table_prefix: str = "directory_") -> None:
        self._engine: Engine = make_engine(url, name="directory store")
        self._insert = insert_for(self._engine)
        p = table_prefix
        metadata = MetaData()
        self.people = Table(
            f"{p}people",
            metadata,
            Column("person_id", String(200), primary_key=True),
            Column("kind", String(20), nullable=False),
            Column("version", BigInteger, nullable=False),
            Column("deleted", Boolean, nullable=False),
            Column("event_id", String(100), nullable=False),
            Column("roster_source", String(200), nullable=False),
            Column("name", Text),
            Column("staff_role", String(40)),
            Column("record", Text, nullable=False),
            Column("updated_at", DateTime(timezone=True), nullable=False),
        )
        self.versions_table = Table(
            f"{p}person_versions",
            metadata,
            Column("person_id", String(200), primary_key=True),
            Column("version", BigInteger, primary_key=True, autoincrement=False),
            Column("event_id", String(100), nullable=False),
            Column("change", String(20), nullable=False),
            Column("kind", String(20), nullable=False),
            Column("roster_source", String(200), nullable=False),
            Column("school_ids", Text, nullable=False),
            Column("record", Text, nullable=False),
            Column("recorded_at", DateTime(timezone=True), nullable=False),
            UniqueConstraint("event_id", name=f"uq_{p}person_versions_event"),
        )
        self.schools = Table(
            f"{p}person_schools",
            metadata,
            Column("school_id", String(200), primary_key=True),
            Column("person_id", String(200), primary_key=True),
            Index(f"ix_{p}person_schools_person", "person_id"),
        )

        def entry_columns() -> list[Column[Any]]:
            return [
                Column("change", String(20), nullable=False),
                Column("district_id", String(200)),
                Column("entry", Text),
                Column("changed_by", String(200), nullable=False),
                Column("event_id", String(100), nullable=False),
                Column("recorded_at", DateTime(timezone=True), nullable=False),
            ]

        self.entries_table = Table(
            f"{p}entries",
            metadata,
            Column("kind", String(20), primary_key=True),
            Column("entry_id", String(200), primary_key=True),
            Column("version", BigInteger, nullable=False),
            *entry_columns(),
            Index(f"ix_{p}entries_kind_district", "kind", "district_id"),
        )
        self.entry_versions_table = Table(
            f"{p}entry_versions",
            metadata,
            Column("kind", String(20), primary_key=True),
            Column("entry_id", String(200), primary_key=True),
            Column("version", BigInteger, primary_key=True, autoincrement=False),
            *entry_columns(),
            UniqueConstraint("event_id", name=f"uq_{p}entry_versions_event"),
        )
        migrate(self._engine, MIGRATIONS, error=StoreError, table_prefix=p)

    def apply(self, event: Mapping[str, Any]) -> bool:
        """Record one PersonChanged; True if it became the person's current version.

        Idempotent: a version (or event id) already stored changes nothing; an older version
        is kept in the history but does not replace the current one. Raises
        :class:`~safehub.kernel.person_events.InvalidPersonError` for an invalid record.
        """
        person_id, version, change, kind, schools, _ = person_from_event(event)
        event_id = str(event["envelope"]["event_id"])
        record = json.dumps(
            {k: v for k, v in event.items() if k not in _NOT_RECORD}, sort_keys=True, default=str
        )
        source = str(event.get("roster_source") or "")
        now = _now()
        with wrap_errors(StoreError, "cannot record a person"), self._engine.begin() as conn:
            added = conn.execute(
                self._insert(self.versions_table)
                .values(
                    person_id=person_id,
                    version=version,
                    event_id=event_id,
                    change=change,
                    kind=kind,
                    roster_source=source,
                    school_ids=json.dumps(list(schools)),
                    record=record,
                    recorded_at=now,
                )
                .on_conflict_do_nothing()
                .returning(self.versions_table.c.version)  # rowcount is -1 on psycopg
            ).first()
            if added is None:
                return False
            conn.execute(
                upsert(
                    conn,
                    self.people,
                    {
                        "person_id": person_id,
                        "kind": kind,
                        "version": version,
                        "deleted": change == "DELETED",
                        "event_id": event_id,
                        "roster_source": source,
                        "name": None if change == "DELETED" else event.get("name"),
                        "staff_role": None if change == "DELETED" else event.get("staff_role"),
                        "record": record,
                        "updated_at": now,
                    },
                    keys=["person_id"],
                    where=self.people.c.version < version,
                )
            )
            current = conn.execute(
                select(self.people.c.event_id).where(self.people.c.person_id == person_id)
            ).scalar_one()
            if current != event_id:  # a newer version is already current
                return False
            conn.execute(delete(self.schools).where(self.schools.c.person_id == person_id))
            if change != "DELETED" and schools:
                conn.execute(
                    self._insert(self.schools).on_conflict_do_nothing(),
                    [{"school_id": s, "person_id": person_id} for s in schools],
                )
            return True

    def school_people(self, school_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        """The current people of a school (of one kind): ids, kinds, names, roles, versions."""
        p = self.people.c
        query = (
            select(p.person_id, p.kind, p.name, p.staff_role, p.version, p.roster_source)
            .join(self.schools, self.schools.c.person_id == p.person_id)
            .where(self.schools.c.school_id == school_id, p.deleted.is_(False))
            .order_by(p.kind, p.person_id)
        )
        if kind is not None:
            query = query.where(p.kind == kind)
        with wrap_errors(StoreError, "cannot read people"), self._engine.connect() as conn:
            return [
                {
                    "id": row.person_id,
                    "kind": row.kind,
                    "name": row.name,
                    "role": row.staff_role,
                    "version": row.version,
                    "roster_source": row.roster_source,
                }
                for row in conn.execute(query)
            ]

    def versions(self, person_id: str) -> list[dict[str, Any]]:
        """Every version of a person, oldest first (what changed when; never the record)."""
        v = self.versions_table.c
        query = (
            select(
                v.version,
                v.change,
                v.kind,
                v.event_id,
                v.roster_source,
                v.school_ids,
                v.recorded_at,
            )
            .where(v.person_id == person_id)
            .order_by(v.version)
        )
        with wrap_errors(StoreError, "cannot read versions"), self._engine.connect() as conn:
            return [
                {
                    "version": row.version,
                    "change": row.change,
                    "kind": row.kind,
                    "event_id": row.event_id,
                    "roster_source": row.roster_source,
                    "school_ids": json.loads(row.school_ids),
                    "recorded_at": row.recorded_at.isoformat(),
                }
                for row in conn.execute(query)
            ]

    def apply_entry(self, event: Mapping[str, Any]) -> bool:
        """Record one DirectoryChanged; True if it became the entry's newest version.

        Idempotent: a version (or event id) already stored changes nothing; an older version
        is kept in the history but does not replace the newest; a deletion stays as a
        tombstone. Raises :class:`~safehub.kernel.live_directory.InvalidEntryError` (naming
        the field, never its value) for an invalid entry.
        """
        kind, entry_id, version, change, _, _ = entry_from_event(event)
        body = event.get(FIELDS[kind]) if change == "UPSERTED" else None
        district = _district_of(event, kind, body)
        changed_by = str(event.get("changed_by") or "")
        for field, value in (("entry_id", entry_id), ("changed_by", changed_by)):
            if len(value) > _MAX_ID:
                raise InvalidEntryError(f"{field} is longer than {_MAX_ID} characters")
        if district is not None and len(district) > _MAX_ID:
            raise InvalidEntryError(f"the district id is longer than {_MAX_ID} characters")
        row = {
            "kind": kind,
            "entry_id": entry_id,
            "version": version,
            "change": change,
            "district_id": district,
            "entry": None if body is None else json.dumps(body, sort_keys=True, default=str),
            "changed_by": changed_by,
            "event_id": str(event["envelope"]["event_id"]),
            "recorded_at": _now(),
        }
        v = self.entry_versions_table
        with wrap_errors(StoreError, "cannot record an entry"), self._engine.begin() as conn:
            added = conn.execute(  # either unique key: a redelivery or a version already held
                self._insert(v).values(**row).on_conflict_do_nothing().returning(v.c.version)
            ).first()
            if added is None:
                return False
            e = self.entries_table
            newest = conn.execute(
                upsert(
                    conn, e, row, keys=["kind", "entry_id"], where=e.c.version < version
                ).returning(e.c.version)
            ).first()
            return newest is not None

    def entries(
        self, kind: str | None = None, district: str | None = None, *, include_deleted: bool = False
    ) -> list[dict[str, Any]]:
        """The newest version of every entry (of a kind, of a district), tombstones only when
        asked; the entry as its event carried it, without a reviewer's token hash."""
        e = self.entries_table.c
        query = select(self.entries_table).order_by(e.kind, e.entry_id)
        if kind is not None:
            query = query.where(e.kind == kind)
        if district is not None:
            query = query.where(e.district_id == district)
        if not include_deleted:
            query = query.where(e.change != "DELETED")
        with wrap_errors(StoreError, "cannot read entries"), self._engine.connect() as conn:
            return [
                {
                    "kind": row.kind,
                    "id": row.entry_id,
                    "version": row.version,
                    "change": row.change,
                    "district_id": row.district_id,
                    "changed_by": row.changed_by,
                    "recorded_at": _iso(row.recorded_at),
                    "entry": _served(row.entry),
                }
                for row in conn.execute(query)
            ]

    def entry_versions(self, kind: str, entry_id: str) -> list[dict[str, Any]]:
        """Every version of an entry, oldest first, with the entry at that version (without a
        reviewer's token hash); empty for an entry never seen."""
        v = self.entry_versions_table.c
        query = (
            select(self.entry_versions_table)
            .where(v.kind == kind, v.entry_id == entry_id)
            .order_by(v.version)
        )
        with wrap_errors(StoreError, "cannot read versions"), self._engine.connect() as conn:
            return [
                {
                    "version": row.version,
                    "change": row.change,
                    "district_id": row.district_id,
                    "changed_by": row.changed_by,
                    "event_id": row.event_id,
                    "recorded_at": _iso(row.recorded_at),
                    "entry": _served(row.entry),
                }
                for row in conn.execute(query)
            ]

    def close(self) -> None:
        """Release the connections (idempotent)."""
        self._engine.dispose()
