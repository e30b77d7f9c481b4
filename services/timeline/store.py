"""The timeline store: hash-chained entries per incident/case, the subject index, spans.

SQLAlchemy 2 Core over SQLite (WAL, the embedded default) or PostgreSQL (by URL); the schema
comes from the alembic migrations in ``migrations/`` (applied at open). Appends are
idempotent: an entry is unique per (subject, event id), so a redelivered event, even one
whose batch was written but whose offsets were not committed before a crash, is a no-op.
One transaction per batch; the subject row is locked while its chain grows, so two writers
never take the same seq.

Signals that arrive before their incident (the panic that opens it) wait in ``pending``;
an incident naming them in ``correlated_event_ids`` takes them (and leaves a ``claim`` for
ids not seen yet, so a late signal still lands in the right timeline).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    DateTime,
    Engine,
    Index,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    and_,
    func,
    or_,
    select,
    type_coerce,
)
from sqlalchemy.engine import Connection, Row, RowMapping

from safehub.kernel import chain
from safehub.kernel import store as kernel_store
from safehub.kernel.lifecycle import Closing
from safehub.kernel.store import insert_for, make_engine

log = structlog.get_logger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class StoreError(kernel_store.StoreError):
    """The timeline store could not be opened, read or written."""

    store = "timeline store"


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on both back ends (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

entries = Table(
    "entries",
    metadata,
    Column("subject_id", String(200), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("subject_kind", String(16), nullable=False),
    Column("event_id", String(100), nullable=False),
    Column("event_type", String(200), nullable=False),
    Column("occurred_at", UtcDateTime, nullable=False),
    Column("recorded_at", UtcDateTime, nullable=False),
    Column("state", String(100), nullable=False),
    Column("district", String(200), nullable=False),
    Column("school", String(200)),
    Column("building", String(200)),
    Column("room", String(200)),
    Column("exercise", Boolean, nullable=False),
    Column("source", String(200), nullable=False),
    Column("actor", String(200)),
    Column("lane", String(40), nullable=False),
    Column("summary", Text, nullable=False),
    Column("classification", Text, nullable=False),
    Column("trace_id", String(32)),
    Column("span_id", String(16)),
    Column("payload", Text, nullable=False),
    Column("payload_sha256", String(64), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    UniqueConstraint("subject_id", "event_id", name="uq_entries_subject_event"),
    Index("ix_entries_trace", "trace_id"),
    Index("ix_entries_subject_type", "subject_id", "event_type"),
)

subjects = Table(
    "subjects",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("state", String(100), nullable=False),
    Column("district", String(200), nullable=False),
    Column("school", String(200)),
    Column("building", String(200)),
    Column("room", String(200)),
    Column("type", String(100)),
    Column("status", String(20), nullable=False),
    Column("incident_state", String(40)),
    Column("srp_action", String(40)),
    Column("cad_status", String(40)),
    Column("summary", Text),
    Column("exercise", Boolean, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("opened_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("entry_count", BigInteger, nullable=False),
    Column("head_hash", String(64), nullable=False),
    Index("ix_subjects_opened", "opened_at", "id"),
    Index("ix_subjects_district_opened", "district", "opened_at", "id"),
)

pending = Table(
    "pending",
    metadata,
    Column("event_id", String(100), primary_key=True),
    Column("draft", Text, nullable=False),
    Column("received_at", UtcDateTime, nullable=False),
    Index("ix_pending_received", "received_at"),
)

claims = Table(
    "claims",
    metadata,
    Column("event_id", String(100), primary_key=True),
    Column("subject_id", String(200), primary_key=True),
    Column("subject_kind", String(16), nullable=False),
    Column("claimed_at", UtcDateTime, nullable=False),
    Index("ix_claims_claimed", "claimed_at"),
)

spans = Table(
    "spans",
    metadata,
    Column("trace_id", String(32), primary_key=True),
    Column("span_id", String(16), primary_key=True),
    Column("parent_span_id", String(16)),
    Column("name", String(300), nullable=False),
    Column("service", String(200), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("start_ns", BigInteger, nullable=False),
    Column("end_ns", BigInteger, nullable=False),
    Column("status", String(20), nullable=False),
    Column("attributes", Text, nullable=False),
)


@dataclass
class Draft:
    """An event ready to be appended: everything an entry holds except its place in a chain."""

    event_id: str
    event_type: str
    occurred_at: datetime
    recorded_at: datetime
    tenant: dict[str, str | None]
    building: str | None
    room: str | None
    exercise: bool
    source: str
    actor: str | None
    lane: str
    summary: str
    classification: list[str]
    trace_id: str | None
    span_id: str | None
    payload: dict[str, Any]
    incident_id: str | None = None
    case_id: str | None = None
    correlated_event_ids: list[str] = field(default_factory=list)
    #: Whether the event may wait in ``pending`` for an incident that names it.
    signal: bool = False
    #: Subject index values this event sets (status, type, versions …).
    subject_update: dict[str, Any] = field(default_factory=dict)

    def targets(self) -> list[tuple[str, str]]:
        """(subject id, kind) this event names itself."""
        out = []
        if self.incident_id:
            out.append((self.incident_id, "incident"))
        if self.case_id:
            out.append((self.case_id, "case"))
        return out

    def to_json(self) -> str:
        """Serialised for the pending table."""
        return chain.canonical_json(asdict(self)).decode("utf-8")

    @classmethod
    def from_json(cls, text: str) -> Draft:
        """Inverse of :meth:`to_json`."""
        data = json.loads(text)
        for name in ("occurred_at", "recorded_at"):
            data[name] = datetime.fromisoformat(data[name])
        return cls(**data)


@dataclass(frozen=True)
class SpanRow:
    """One finished span."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    service: str
    kind: str
    start_ns: int
    end_ns: int
    status: str
    attributes: dict[str, Any]


@dataclass(frozen=True)
class SubjectFilter:
    """Filters of the subject list (None: any)."""

    kind: str | None = None
    district: str | None = None
    school: str | None = None
    opened_from: datetime | None = None
    opened_to: datetime | None = None
    type: str | None = None
    status: str | None = None
    exercise: bool | None = None


@dataclass
class ApplyStats:
    """What one batch did."""

    appended: int = 0
    duplicates: int = 0
    pending: int = 0
    ignored: int = 0


@functools.lru_cache(maxsize=256)
def _classes(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


def entry_chain_fields(row: Mapping[Any, Any], *, parse_payload: bool = True) -> dict[str, Any]:
    """An entries row as the mapping :mod:`safehub.kernel.chain` hashes (plus payload).

    With ``parse_payload=False`` the payload stays the stored canonical JSON text.
    """
    return {
        "seq": int(row["seq"]),
        "subject_id": row["subject_id"],
        "subject_kind": row["subject_kind"],
        "event_id": row["event_id"],
        "event_type": row["event_type"],
        "occurred_at": chain.iso(row["occurred_at"]),
        "recorded_at": chain.iso(row["recorded_at"]),
        "tenant": {"state": row["state"], "district": row["district"], "school": row["school"]},
        "building": row["building"],
        "room": row["room"],
        "exercise": bool(row["exercise"]),
        "source": row["source"],
        "actor": row["actor"],
        "lane": row["lane"],
        "summary": row["summary"],
        "classification": classes_of(row["classification"]),
        "trace_id": row["trace_id"],
        "span_id": row["span_id"],
        "payload_sha256": row["payload_sha256"],
        "payload": json.loads(row["payload"]) if parse_payload else row["payload"],
        "prev_hash": row["prev_hash"],
        "hash": row["hash"],
    }


#: The entries columns a timeline page shows (times as ISO text, see Store.timeline_page).
PAGE_COLUMNS = (
    "seq",
    "event_id",
    "event_type",
    "lane",
    "occurred_at",
    "recorded_at",
    "source",
    "actor",
    "summary",
    "trace_id",
    "span_id",
    "exercise",
    "classification",
    "building",
    "room",
    "payload",
    "payload_sha256",
    "hash",
    "prev_hash",
)


def classes_of(text: str) -> list[str]:
    """An entry's stored classification list."""
    return list(_classes(text))


def _now() -> datetime:
    return datetime.now(UTC)


class Store(Closing):
    """The timeline tables behind one database URL (thread-safe: a connection per call)."""

    def __init__(self, url: str, *, migrate: bool = True, pool_size: int = 8) -> None:
        self.engine: Engine = make_engine(url, name="timeline", pool_size=pool_size)
        self.dialect = self.engine.dialect.name
        self._writer: Engine = self.engine
        if self.dialect == "sqlite":
            # Writers take the database lock at BEGIN: a read-then-write batch never meets
            # SQLITE_BUSY_SNAPSHOT halfway (readers use the other engine and never block).
            self._writer = make_engine(url, name="timeline", pool_size=2, begin_immediate=True)
        self._insert = insert_for(self.engine)
        self._page_columns = [
            _iso_text(self.dialect, c) if c.name in ("occurred_at", "recorded_at") else c
            for c in (entries.c[name] for name in PAGE_COLUMNS)
        ]
        if migrate:
            self.migrate()

    def migrate(self) -> None:
        """Apply the alembic migrations (``upgrade head``)."""
        kernel_store.migrate(self._writer, MIGRATIONS, error=StoreError)

    def close(self) -> None:
        """Release the connection pools."""
        self.engine.dispose()
        self._writer.dispose()

    # -- writing -----------------------------------------------------------------------------

    def apply(self, drafts: Sequence[Draft]) -> ApplyStats:
        """Append a batch of events in one transaction (idempotent per subject and event)."""
        stats = ApplyStats()
        with self._writer.begin() as conn:
            for draft in drafts:
                self._apply_one(conn, draft, stats)
        return stats

    def _apply_one(self, conn: Connection, draft: Draft, stats: ApplyStats) -> None:
        targets = draft.targets()
        if draft.incident_id and draft.correlated_event_ids:
            self._take_correlated(conn, draft.incident_id, draft.correlated_event_ids, stats)
        if not targets:
            rows = conn.execute(
                select(claims.c.subject_id, claims.c.subject_kind).where(
                    claims.c.event_id == draft.event_id
                )
            ).all()
            targets = [(str(r[0]), str(r[1])) for r in rows]
        if not targets:
            if draft.signal:
                conn.execute(
                    self._insert(pending)
                    .values(event_id=draft.event_id, draft=draft.to_json(), received_at=_now())
                    .on_conflict_do_nothing(index_elements=["event_id"])
                )
                stats.pending += 1
            else:
                stats.ignored += 1
            return
        for subject_id, kind in targets:
            self._append(conn, subject_id, kind, draft, stats)

    def _take_correlated(
        self, conn: Connection, incident_id: str, event_ids: Sequence[str], stats: ApplyStats
    ) -> None:
        waiting = {
            str(r[0]): str(r[1])
            for r in conn.execute(
                select(pending.c.event_id, pending.c.draft).where(
                    pending.c.event_id.in_(list(event_ids))
                )
            )
        }
        for event_id in event_ids:
            text = waiting.get(event_id)
            if text is not None:
                self._append(conn, incident_id, "incident", Draft.from_json(text), stats)
            conn.execute(
                self._insert(claims)
                .values(
                    event_id=event_id,
                    subject_id=incident_id,
                    subject_kind="incident",
                    claimed_at=_now(),
                )
                .on_conflict_do_nothing(index_elements=["event_id", "subject_id"])
            )
        if waiting:
            conn.execute(pending.delete().where(pending.c.event_id.in_(list(waiting))))

    def _lock_subject(
        self, conn: Connection, subject_id: str, kind: str, draft: Draft
    ) -> RowMapping:
        query = select(subjects).where(subjects.c.id == subject_id)
        if self.dialect == "postgresql":
            query = query.with_for_update()
        row = conn.execute(query).mappings().first()
        if row is not None:
            return row
        conn.execute(
            self._insert(subjects)
            .values(
                id=subject_id,
                kind=kind,
                state=draft.tenant.get("state") or "",
                district=draft.tenant.get("district") or "",
                school=draft.tenant.get("school"),
                building=draft.building,
                room=draft.room,
                type=None,
                status="open",
                exercise=draft.exercise,
                version=0,
                opened_at=draft.occurred_at,
                updated_at=draft.occurred_at,
                entry_count=0,
                head_hash=chain.GENESIS,
            )
            .on_conflict_do_nothing(index_elements=["id"])
        )
        locked = conn.execute(query).mappings().first()
        if locked is None:  # pragma: no cover - inserted just above in this transaction
            raise StoreError(f"subject {subject_id} vanished")
        return locked

    def _append(
        self, conn: Connection, subject_id: str, kind: str, draft: Draft, stats: ApplyStats
    ) -> None:
        subject = self._lock_subject(conn, subject_id, kind, draft)
        exists = conn.execute(
            select(entries.c.seq).where(
                entries.c.subject_id == subject_id, entries.c.event_id == draft.event_id
            )
        ).first()
        if exists is not None:
            stats.duplicates += 1
            return
        seq = int(subject["entry_count"]) + 1
        prev = str(subject["head_hash"])
        tenant = {
            "state": draft.tenant.get("state"),
            "district": draft.tenant.get("district"),
            "school": draft.tenant.get("school"),
        }
        record: dict[str, Any] = {
            "seq": seq,
            "subject_id": subject_id,
            "subject_kind": kind,
            "event_id": draft.event_id,
            "event_type": draft.event_type,
            "occurred_at": chain.iso(draft.occurred_at),
            "recorded_at": chain.iso(draft.recorded_at),
            "tenant": tenant,
            "building": draft.building,
            "room": draft.room,
            "exercise": draft.exercise,
            "source": draft.source,
            "actor": draft.actor,
            "lane": draft.lane,
            "summary": draft.summary,
            "classification": list(draft.classification),
            "trace_id": draft.trace_id,
            "span_id": draft.span_id,
            "payload_sha256": chain.payload_digest(draft.payload),
        }
        digest = chain.entry_hash(prev, record)
        conn.execute(
            entries.insert().values(
                subject_id=subject_id,
                seq=seq,
                subject_kind=kind,
                event_id=draft.event_id,
                event_type=draft.event_type,
                occurred_at=draft.occurred_at,
                recorded_at=draft.recorded_at,
                state=tenant["state"] or "",
                district=tenant["district"] or "",
                school=tenant["school"],
                building=draft.building,
                room=draft.room,
                exercise=draft.exercise,
                source=draft.source,
                actor=draft.actor,
                lane=draft.lane,
                summary=draft.summary,
                classification=json.dumps(list(draft.classification)),
                trace_id=draft.trace_id,
                span_id=draft.span_id,
                payload=chain.canonical_json(draft.payload).decode("utf-8"),
                payload_sha256=record["payload_sha256"],
                prev_hash=prev,
                hash=digest,
            )
        )
        values: dict[str, Any] = {
            "entry_count": seq,
            "head_hash": digest,
            "updated_at": max(subject["updated_at"], draft.occurred_at),
            "opened_at": min(subject["opened_at"], draft.occurred_at),
        }
        update = {
            key.rstrip("?"): value
            for key, value in draft.subject_update.items()
            if not key.endswith("?") or subject[key.rstrip("?")] is None
        }
        version = update.pop("version", None)
        if update and (version is None or int(version) >= int(subject["version"])):
            values.update(update)
            if version is not None:
                values["version"] = int(version)
        conn.execute(subjects.update().where(subjects.c.id == subject_id).values(**values))
        stats.appended += 1

    def add_spans(self, rows: Sequence[SpanRow]) -> int:
        """Store finished spans (a span already stored is left as it is); returns rows given."""
        if not rows:
            return 0
        values = [
            {**asdict(r), "attributes": json.dumps(r.attributes, sort_keys=True)} for r in rows
        ]
        with self._writer.begin() as conn:
            conn.execute(
                self._insert(spans).on_conflict_do_nothing(index_elements=["trace_id", "span_id"]),
                values,
            )
        return len(rows)

    def prune(self, before: datetime) -> int:
        """Forget pending signals and claims older than ``before``; returns rows removed."""
        with self._writer.begin() as conn:
            removed = conn.execute(pending.delete().where(pending.c.received_at < before))
            claimed = conn.execute(claims.delete().where(claims.c.claimed_at < before))
        return int(removed.rowcount or 0) + int(claimed.rowcount or 0)

    # -- reading -----------------------------------------------------------------------------

    def subject(self, subject_id: str) -> RowMapping | None:
        """One subject's index row."""
        with self.engine.connect() as conn:
            return (
                conn.execute(select(subjects).where(subjects.c.id == subject_id)).mappings().first()
            )

    def list_subjects(
        self,
        where: SubjectFilter,
        *,
        limit: int,
        after: tuple[datetime, str] | None = None,
    ) -> list[RowMapping]:
        """Subjects newest first (opened_at, id), after the keyset cursor ``after``."""
        query = select(subjects)
        for column, value in (
            (subjects.c.kind, where.kind),
            (subjects.c.district, where.district),
            (subjects.c.school, where.school),
            (subjects.c.type, where.type),
            (subjects.c.status, where.status),
            (subjects.c.exercise, where.exercise),
        ):
            if value is not None:
                query = query.where(column == value)
        if where.opened_from is not None:
            query = query.where(subjects.c.opened_at >= where.opened_from)
        if where.opened_to is not None:
            query = query.where(subjects.c.opened_at < where.opened_to)
        if after is not None:
            opened, ident = after
            query = query.where(
                or_(
                    subjects.c.opened_at < opened,
                    and_(subjects.c.opened_at == opened, subjects.c.id < ident),
                )
            )
        query = query.order_by(subjects.c.opened_at.desc(), subjects.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return list(conn.execute(query).mappings().all())

    def entries(self, subject_id: str, *, after_seq: int, upto_seq: int) -> list[RowMapping]:
        """A subject's entries with ``after_seq < seq <= upto_seq``, in chain order.

        Pages are seq ranges, not ``LIMIT`` alone: seq is gapless per subject, and with both
        bounds PostgreSQL walks the (subject_id, seq) key even without statistics for a new
        incident (otherwise it may fetch and sort all of the subject's entries per page).
        """
        query = (
            select(entries)
            .where(
                entries.c.subject_id == subject_id,
                entries.c.seq > after_seq,
                entries.c.seq <= upto_seq,
            )
            .order_by(entries.c.seq)
        )
        with self.engine.connect() as conn:
            return list(conn.execute(query).mappings().all())

    def timeline_page(
        self, subject_id: str, *, after_seq: int, upto_seq: int
    ) -> tuple[RowMapping | None, list[Row[Any]]]:
        """A subject's index row and its entries ``after_seq < seq <= upto_seq`` (a seq range,
        see :meth:`entries`) as :data:`PAGE_COLUMNS`, on one connection. The entries are read
        first: the index row, written in the same transaction as its entries, is then at
        least as new as they are. The times come as the chain's ISO-8601 text, formatted by
        the database: parsing them into datetimes only to print them again was a third of a
        page's cost.
        """
        query = (
            select(*self._page_columns)
            .where(
                entries.c.subject_id == subject_id,
                entries.c.seq > after_seq,
                entries.c.seq <= upto_seq,
            )
            .order_by(entries.c.seq)
        )
        with self.engine.connect() as conn:
            rows = list(conn.execute(query).all())
            subject = (
                conn.execute(select(subjects).where(subjects.c.id == subject_id)).mappings().first()
            )
        return subject, rows if subject is not None else []

    def iter_entries(
        self, subject_id: str, *, upto_seq: int, page: int = 2000
    ) -> Iterator[RowMapping]:
        """Every entry of a subject up to ``upto_seq``, a seq range at a time."""
        for after in range(0, upto_seq, page):
            yield from self.entries(
                subject_id, after_seq=after, upto_seq=min(after + page, upto_seq)
            )

    def entries_of_types(self, subject_id: str, event_types: Sequence[str]) -> list[RowMapping]:
        """A subject's entries of some event types, in chain order."""
        query = (
            select(entries)
            .where(entries.c.subject_id == subject_id, entries.c.event_type.in_(list(event_types)))
            .order_by(entries.c.seq)
        )
        with self.engine.connect() as conn:
            return list(conn.execute(query).mappings().all())

    def trace_subjects(self, trace_id: str) -> list[RowMapping]:
        """Subjects with an entry carrying ``trace_id``."""
        ids = select(entries.c.subject_id).where(entries.c.trace_id == trace_id).distinct()
        with self.engine.connect() as conn:
            return list(
                conn.execute(select(subjects).where(subjects.c.id.in_(ids))).mappings().all()
            )

    def trace_ids(self, subject_id: str) -> list[str]:
        """The trace ids a subject's entries carry."""
        query = (
            select(entries.c.trace_id)
            .where(entries.c.subject_id == subject_id, entries.c.trace_id.is_not(None))
            .distinct()
        )
        with self.engine.connect() as conn:
            return sorted(str(r[0]) for r in conn.execute(query))

    def spans(self, trace_ids: Sequence[str]) -> list[RowMapping]:
        """Spans of some traces, by start time."""
        if not trace_ids:
            return []
        query = (
            select(spans)
            .where(spans.c.trace_id.in_(list(trace_ids)))
            .order_by(spans.c.start_ns, spans.c.span_id)
        )
        with self.engine.connect() as conn:
            return list(conn.execute(query).mappings().all())


def _iso_text(dialect: str, column: Any) -> ColumnElement[str]:
    """SQL for :func:`safehub.kernel.chain.iso` of a UTC timestamp column (same text)."""
    if dialect == "sqlite":
        # SQLAlchemy stores "YYYY-MM-DD HH:MM:SS.ffffff" (always six fraction digits), UTC.
        stored = type_coerce(column, Text)
        return (func.replace(stored, " ", "T", type_=Text) + "Z").label(column.name)
    utc = func.timezone("UTC", column)
    return func.to_char(utc, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"', type_=Text).label(column.name)
