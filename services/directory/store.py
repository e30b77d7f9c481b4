"""The directory store: every person's versions, the current one, and their schools.

``people`` holds each person at the newest version seen (a deletion stays as a tombstone at
its version, so an older upsert redelivered later cannot bring the person back);
``person_versions`` every version as it came (unique per person and version, and per event
id: a redelivered event is a no-op); ``person_schools`` the current memberships, for the
per-school listing. Records are kept whole (contact details included: this is the
directory's source of truth), but :meth:`DirectoryStore.school_people` and
:meth:`DirectoryStore.versions` return ids, names, roles and versions only.

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
from safehub.kernel.person_events import person_from_event
from safehub.kernel.store import insert_for, make_engine, migrate, upsert, wrap_errors

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

#: Fields of a PersonChanged kept as the record (everything but the envelope).
_NOT_RECORD = {"envelope"}


class StoreError(kernel_store.StoreError):
    """The directory store could not be opened, read or written."""

    store = "directory store"


def _now() -> datetime:
    return datetime.now(UTC)


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

    def close(self) -> None:
        """Release the connections (idempotent)."""
        self._engine.dispose()
