"""The sync state: what each source last applied, so an import is idempotent and resumable.

Per source it keeps each entity's last applied version and content digest (a row whose
digest is unchanged publishes nothing), each person's assembled record with the version and
digest last published as ``PersonChanged``, the progress of the import in hand (package
fingerprint → last file and line applied, or the REST cursor; the report so far) and, per
REST source, the high-water ``dateLastModified`` of the last finished sync. A checkpoint
writes all of it in one transaction, after the events it accounts for were confirmed by the
broker: a crash repeats at most the rows since the last checkpoint, under the same event ids.

SQLite file by default, PostgreSQL by URL; schema from ``migrations/`` (applied at open).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    MetaData,
    String,
    Table,
    Text,
    select,
)

from safehub.kernel.lifecycle import Closing
from safehub.kernel.store import (
    StoreError,
    insert_for,
    make_engine,
    migrate,
    upsert,
    wrap_errors,
)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class StateError(StoreError):
    """The sync state could not be opened, read or written."""

    store = "sis_roster state"


@dataclass(slots=True)
class Applied:
    """What was last applied of one entity: its version and content digest, the last bulk
    package that listed it (``seen``), whose person it is a piece of, whether it is gone."""

    version: int
    digest: str
    seen: str | None = None
    person_id: str | None = None
    deleted: bool = False


@dataclass
class PersonRow:
    """A person's assembled record and what was last published of it."""

    state: dict[str, Any]
    published_version: int = 0
    published_digest: str | None = None


@dataclass
class Progress:
    """An unfinished (or finished) import of one package or REST sync."""

    position: dict[str, Any]
    report: dict[str, Any]
    done: bool


class RosterState(Closing):
    """The state tables behind one engine."""

    def __init__(self, url: str, *, table_prefix: str = "sis_roster_") -> None:
        self._engine: Engine = make_engine(url, name="sis_roster state")
        metadata = MetaData()
        p = table_prefix
        self.records = Table(
            f"{p}records",
            metadata,
            Column("source", String(64), primary_key=True),
            Column("entity", String(40), primary_key=True),
            Column("sourced_id", String(255), primary_key=True),
            Column("version", BigInteger, nullable=False),
            Column("digest", String(40), nullable=False),
            Column("seen", String(80)),
            Column("person_id", String(255)),
            Column("deleted", Boolean, nullable=False, default=False),
        )
        self.people = Table(
            f"{p}people",
            metadata,
            Column("source", String(64), primary_key=True),
            Column("person_id", String(255), primary_key=True),
            Column("state", Text, nullable=False),
            Column("published_version", BigInteger, nullable=False),
            Column("published_digest", String(40)),
        )
        self.progress = Table(
            f"{p}progress",
            metadata,
            Column("source", String(64), primary_key=True),
            Column("fingerprint", String(80), primary_key=True),
            Column("position", Text, nullable=False),
            Column("report", Text, nullable=False),
            Column("done", Boolean, nullable=False),
            Column("updated_at", DateTime(timezone=True), nullable=False),
        )
        self.syncs = Table(
            f"{p}syncs",
            metadata,
            Column("source", String(64), primary_key=True),
            Column("high_water", DateTime(timezone=True)),
            Column("finished_at", DateTime(timezone=True), nullable=False),
        )
        migrate(self._engine, MIGRATIONS, error=StateError, table_prefix=table_prefix)

    def close(self) -> None:
        """Release the connection pool."""
        self._engine.dispose()

    # -- reading ---------------------------------------------------------------------------

    def load_records(self, source: str) -> dict[tuple[str, str], Applied]:
        """(entity, sourcedId) → what ``source`` last applied of it."""
        t = self.records
        with wrap_errors(StateError, "cannot read records"), self._engine.connect() as conn:
            rows = conn.execute(select(t).where(t.c.source == source))
            return {
                (r.entity, r.sourced_id): Applied(
                    r.version, r.digest, r.seen, r.person_id, bool(r.deleted)
                )
                for r in rows
            }

    def load_people(self, source: str) -> dict[str, PersonRow]:
        """Person id → assembled record of ``source``."""
        t = self.people
        with wrap_errors(StateError, "cannot read people"), self._engine.connect() as conn:
            rows = conn.execute(select(t).where(t.c.source == source))
            return {
                r.person_id: PersonRow(json.loads(r.state), r.published_version, r.published_digest)
                for r in rows
            }

    def progress_of(self, source: str, fingerprint: str) -> Progress | None:
        """The progress of this package (or sync) of ``source``, if it was started."""
        t = self.progress
        with wrap_errors(StateError, "cannot read progress"), self._engine.connect() as conn:
            row = conn.execute(
                select(t).where(t.c.source == source, t.c.fingerprint == fingerprint)
            ).first()
        if row is None:
            return None
        return Progress(json.loads(row.position), json.loads(row.report), bool(row.done))

    def open_sync(self, source: str) -> str | None:
        """The fingerprint of ``source``'s unfinished REST sync, if one was interrupted."""
        t = self.progress
        with wrap_errors(StateError, "cannot read progress"), self._engine.connect() as conn:
            row = conn.execute(
                select(t.c.fingerprint).where(
                    t.c.source == source, t.c.done.is_(False), t.c.fingerprint.like("rest:%")
                )
            ).first()
        return None if row is None else str(row.fingerprint)

    def high_water(self, source: str) -> datetime | None:
        """The newest ``dateLastModified`` the last finished sync of ``source`` saw."""
        t = self.syncs
        with wrap_errors(StateError, "cannot read syncs"), self._engine.connect() as conn:
            value = conn.execute(select(t.c.high_water).where(t.c.source == source)).scalar()
        if not isinstance(value, datetime):
            return None
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    # -- writing ---------------------------------------------------------------------------

    def checkpoint(
        self,
        source: str,
        fingerprint: str,
        *,
        records: Iterable[tuple[str, str, Applied]],
        people: Iterable[tuple[str, PersonRow]],
        position: dict[str, Any],
        report: dict[str, Any],
        done: bool = False,
        high_water: datetime | None = None,
    ) -> None:
        """One transaction: changed records and people, the position reached, the report."""
        now = datetime.now(UTC)
        record_rows = [
            {
                "source": source,
                "entity": e,
                "sourced_id": s,
                "version": a.version,
                "digest": a.digest,
                "seen": a.seen,
                "person_id": a.person_id,
                "deleted": a.deleted,
            }
            for e, s, a in records
        ]
        people_rows = [
            {
                "source": source,
                "person_id": pid,
                "state": json.dumps(row.state, sort_keys=True),
                "published_version": row.published_version,
                "published_digest": row.published_digest,
            }
            for pid, row in people
        ]
        with wrap_errors(StateError, "cannot write a checkpoint"), self._engine.begin() as conn:
            for chunk in _chunks(record_rows):
                conn.execute(
                    _bulk_upsert(conn, self.records, ("source", "entity", "sourced_id")), chunk
                )
            for chunk in _chunks(people_rows):
                conn.execute(_bulk_upsert(conn, self.people, ("source", "person_id")), chunk)
            values = {
                "source": source,
                "fingerprint": fingerprint,
                "position": json.dumps(position, sort_keys=True),
                "report": json.dumps(report, sort_keys=True),
                "done": done,
                "updated_at": now,
            }
            conn.execute(upsert(conn, self.progress, values, keys=("source", "fingerprint")))
            if done and fingerprint.startswith("rest:"):
                sync = {"source": source, "high_water": high_water, "finished_at": now}
                conn.execute(upsert(conn, self.syncs, sync, keys=("source",)))


def _chunks(rows: list[dict[str, Any]], size: int = 500) -> Iterable[list[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _bulk_upsert(conn: Any, table: Table, keys: tuple[str, ...]) -> Any:
    """``INSERT … ON CONFLICT (keys) DO UPDATE`` every other column, for executemany."""
    statement = insert_for(conn)(table)
    others = {c.name: statement.excluded[c.name] for c in table.columns if c.name not in keys}
    return statement.on_conflict_do_update(index_elements=list(keys), set_=others)
