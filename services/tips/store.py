"""The tips store: tips, their anonymous threads, attachments, escalations and the outbox.

Everything the tips service must not lose lives here (SQLite file by default, PostgreSQL by
URL; alembic migrations in ``migrations/``): each tip with its lifecycle and the passcode's
Argon2id hash, the tipster's identity sealed (AES-GCM, :mod:`services.tips.sealing`; the one
place it exists), the thread's messages, the cleaned attachments (the original only sealed),
each life-safety tip's escalation (the call chain frozen at intake, the step reached, its
deadline, who acknowledged), and the outbox of events written in the same transaction as the
state they report. The escalation's step moves only by a conditional update (``WHERE step =
the step read``), so a restarted or second worker never calls a step twice. Times are epoch
seconds (float) on both backends.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Double,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    and_,
    false,
    func,
    or_,
    select,
)
from sqlalchemy.engine import Connection

from safehub.kernel import store as kernel_store
from safehub.kernel.lifecycle import Closing
from safehub.kernel.outbox import OutboxItem, OutboxTable
from safehub.kernel.store import insert_for, make_engine, migrate, wrap_errors

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class StoreError(kernel_store.StoreError):
    """The tips store could not be opened, read or written."""

    store = "tips store"


@dataclass(frozen=True)
class TipRow:
    """A tip as stored (never its sealed identity: :meth:`TipStore.sealed_identity` reads it)."""

    tip_id: str
    code: str
    passcode_hash: str
    school_id: str
    district_id: str
    channel: str
    category: str
    language: str
    life_safety: bool
    imminent: bool
    anonymous: bool
    status: str
    disposition: str | None
    assigned_to: str | None
    primary_tip_id: str | None
    text: str
    subject_ids: list[str]
    created_at: float
    first_human_at: float | None
    closed_at: float | None
    assign_by: float | None
    overdue_notified: bool


@dataclass(frozen=True)
class MessageRow:
    """One message of a tip's anonymous thread."""

    message_id: str
    tip_id: str
    author: str  # TIPSTER | ANALYST
    analyst_id: str | None
    text: str
    channel: str
    created_at: float


@dataclass(frozen=True)
class EscalationRow:
    """A life-safety tip's escalation: the frozen chain, the step called, its deadline."""

    tip_id: str
    chain: list[dict[str, Any]]
    step: int
    notification_id: str
    deadline_at: float
    acked_by: str | None
    acked_at: float | None
    exhausted: bool


class TipStore(Closing):
    """The tables behind one SQLAlchemy engine (thread-safe: a connection per call)."""

    def __init__(self, url: str, *, table_prefix: str = "tips_") -> None:
        self._engine: Engine = make_engine(url, name="tips", pool_size=10)
        self._insert = insert_for(self._engine)
        metadata = MetaData()
        p = table_prefix
        self.tips = Table(
            f"{p}tips",
            metadata,
            Column("tip_id", String(64), primary_key=True),
            Column("code", String(32), nullable=False, unique=True),
            Column("passcode_hash", String(300), nullable=False),
            Column("client_key", String(300), unique=True),
            Column("school_id", String(200), nullable=False, index=True),
            Column("district_id", String(200), nullable=False, index=True),
            Column("channel", String(20), nullable=False),
            Column("category", String(40), nullable=False),
            Column("language", String(10), nullable=False),
            Column("life_safety", Boolean, nullable=False),
            Column("imminent", Boolean, nullable=False),
            Column("anonymous", Boolean, nullable=False),
            Column("status", String(30), nullable=False),
            Column("disposition", String(40)),
            Column("assigned_to", String(200)),
            Column("primary_tip_id", String(64), index=True),
            Column("text", Text, nullable=False),
            Column("subject_ids", Text, nullable=False),
            Column("sealed_identity", LargeBinary),
            Column("contact_key", String(100), index=True),
            Column("source_key", String(100), index=True),
            Column("created_at", Double, nullable=False),
            Column("updated_at", Double, nullable=False),
            Column("first_human_at", Double),
            Column("closed_at", Double),
            Column("assign_by", Double),
            Column("overdue_notified", Boolean, nullable=False),
            Column("close_overdue_notified", Boolean, nullable=False, server_default=false()),
        )
        self.messages = Table(
            f"{p}messages",
            metadata,
            Column("message_id", String(64), primary_key=True),
            Column("tip_id", String(64), nullable=False, index=True),
            Column("author", String(10), nullable=False),
            Column("analyst_id", String(200)),
            Column("text", Text, nullable=False),
            Column("channel", String(20), nullable=False),
            Column("created_at", Double, nullable=False),
        )
        self.attachments = Table(
            f"{p}attachments",
            metadata,
            Column("attachment_id", String(64), primary_key=True),
            Column("tip_id", String(64), nullable=False, index=True),
            Column("mime", String(40), nullable=False),
            Column("width", Integer, nullable=False),
            Column("height", Integer, nullable=False),
            Column("data", LargeBinary, nullable=False),
            Column("original_sealed", LargeBinary, nullable=False),
            Column("created_at", Double, nullable=False),
        )
        self.escalations = Table(
            f"{p}escalations",
            metadata,
            Column("tip_id", String(64), primary_key=True),
            Column("chain", Text, nullable=False),
            Column("step", Integer, nullable=False),
            Column("notification_id", String(200), nullable=False),
            Column("deadline_at", Double, nullable=False, index=True),
            Column("acked_by", String(200)),
            Column("acked_at", Double),
            Column("exhausted", Boolean, nullable=False),
        )
        self.outbox = OutboxTable(metadata, prefix=p, error=StoreError)
        self.metadata = metadata
        migrate(self._engine, MIGRATIONS, error=StoreError, table_prefix=p)

    @property
    def engine(self) -> Engine:
        """The engine (the outbox relay deletes confirmed rows through it)."""
        return self._engine

    @contextmanager
    def transaction(self, doing: str) -> Iterator[Connection]:
        """One transaction; SQLAlchemy errors become :class:`StoreError` naming ``doing``."""
        with wrap_errors(StoreError, doing), self._engine.begin() as conn:
            yield conn

    # -- tips ----------------------------------------------------------------------------

    def insert_tip(
        self,
        conn: Connection,
        row: TipRow,
        *,
        client_key: str | None,
        sealed: bytes | None,
        contact_key: str | None,
        outbox: Sequence[OutboxItem],
        source_key: str | None = None,
    ) -> bool:
        """Insert a new tip with its events; False if ``client_key`` was taken (a retry).
        ``contact_key``: who replies continue it; ``source_key``: where it came from (both
        HMACs, never the contact or the address)."""
        values = {
            **{k: v for k, v in row.__dict__.items() if k != "subject_ids"},
            "subject_ids": json.dumps(row.subject_ids),
            "client_key": client_key,
            "sealed_identity": sealed,
            "contact_key": contact_key,
            "source_key": source_key,
            "updated_at": row.created_at,
        }
        statement = self._insert(self.tips).values(**values)
        if client_key is not None:
            statement = statement.on_conflict_do_nothing(index_elements=["client_key"])
        if conn.execute(statement).rowcount == 0:
            return False
        self.outbox.add(conn, outbox)
        return True

    def _tip(self, values: Any) -> TipRow:
        data = dict(values._mapping)
        fields = {k: data[k] for k in TipRow.__dataclass_fields__ if k != "subject_ids"}
        return TipRow(**fields, subject_ids=json.loads(data["subject_ids"]))

    def tip(self, tip_id: str, conn: Connection | None = None) -> TipRow | None:
        """A tip by id."""
        return self._one(self.tips.c.tip_id == tip_id, conn)

    def tip_by_code(self, code: str) -> TipRow | None:
        """A tip by its code (normalised)."""
        return self._one(self.tips.c.code == code, None)

    def tip_by_client_key(self, client_key: str) -> TipRow | None:
        """The tip an earlier submission with this client key created."""
        return self._one(self.tips.c.client_key == client_key, None)

    def open_tip_by_contact(self, contact_key: str) -> TipRow | None:
        """The newest open tip from a contact (an SMS or e-mail reply continues its thread)."""
        query = (
            select(self.tips)
            .where(self.tips.c.contact_key == contact_key, self.tips.c.closed_at.is_(None))
            .order_by(self.tips.c.created_at.desc())
            .limit(1)
        )
        with wrap_errors(StoreError, "cannot read a tip"), self._engine.connect() as conn:
            found = conn.execute(query).first()
        return self._tip(found) if found is not None else None

    def _one(self, where: Any, conn: Connection | None) -> TipRow | None:
        query = select(self.tips).where(where)
        if conn is not None:
            found = conn.execute(query).first()
        else:
            with wrap_errors(StoreError, "cannot read a tip"), self._engine.connect() as c:
                found = c.execute(query).first()
        return self._tip(found) if found is not None else None

    def tips_of(self, school_ids: Sequence[str] | None = None, limit: int = 500) -> list[TipRow]:
        """Tips, newest first (of some schools, or all)."""
        query = select(self.tips).order_by(self.tips.c.created_at.desc()).limit(limit)
        if school_ids is not None:
            query = query.where(self.tips.c.school_id.in_(list(school_ids)))
        with wrap_errors(StoreError, "cannot list tips"), self._engine.connect() as conn:
            return [self._tip(r) for r in conn.execute(query)]

    def open_primaries(self, school_id: str, since: float) -> list[TipRow]:
        """A school's open tips since a time that are not folded into another: what a new
        tip may repeat (folded ones are left out, so a burst of copies stays cheap)."""
        t = self.tips.c
        query = (
            select(self.tips)
            .where(
                t.school_id == school_id,
                t.created_at >= since,
                t.primary_tip_id.is_(None),
                t.closed_at.is_(None),
            )
            .order_by(t.created_at)
        )
        with wrap_errors(StoreError, "cannot list tips"), self._engine.connect() as conn:
            return [self._tip(r) for r in conn.execute(query)]

    def count_from_source(self, source_key: str, since: float) -> int:
        """How many tips one source sent since a time (the per-source limit)."""
        t = self.tips.c
        query = select(func.count()).where(t.source_key == source_key, t.created_at >= since)
        with wrap_errors(StoreError, "cannot count tips"), self._engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def sources_folded_into(self, primary_tip_id: str) -> int:
        """How many distinct sources sent a primary tip and the duplicates folded into it."""
        t = self.tips.c
        query = select(func.count(func.distinct(t.source_key))).where(
            (t.primary_tip_id == primary_tip_id) | (t.tip_id == primary_tip_id)
        )
        with wrap_errors(StoreError, "cannot count tips"), self._engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def update_tip(
        self, conn: Connection, tip_id: str, outbox: Sequence[OutboxItem], **values: Any
    ) -> None:
        """Change a tip's columns and queue the events that report it, in ``conn``."""
        conn.execute(self.tips.update().where(self.tips.c.tip_id == tip_id).values(**values))
        self.outbox.add(conn, outbox)

    def sealed_identity(self, tip_id: str) -> bytes | None:
        """The tipster's sealed identity (opened only inside the tips service)."""
        query = select(self.tips.c.sealed_identity).where(self.tips.c.tip_id == tip_id)
        with wrap_errors(StoreError, "cannot read a tip"), self._engine.connect() as conn:
            found = conn.execute(query).scalar()
        return bytes(found) if found is not None else None

    def overdue(self, now: float, limit: int = 100) -> list[TipRow]:
        """Open tips past their assignment deadline not yet escalated as overdue."""
        t = self.tips.c
        query = (
            select(self.tips)
            .where(
                t.assign_by.is_not(None),
                t.assign_by <= now,
                t.overdue_notified.is_(False),
                t.assigned_to.is_(None),
                t.closed_at.is_(None),
            )
            .limit(limit)
        )
        with wrap_errors(StoreError, "cannot list tips"), self._engine.connect() as conn:
            return [self._tip(r) for r in conn.execute(query)]

    def not_closed_in_time(
        self, now: float, deadlines_s: Mapping[str, float], limit: int = 100
    ) -> list[TipRow]:
        """Open primary tips older than their category's closing deadline, not yet escalated
        for it."""
        t = self.tips.c
        late = or_(
            *(
                and_(t.category == category, t.created_at <= now - seconds)
                for category, seconds in deadlines_s.items()
            )
        )
        query = (
            select(self.tips)
            .where(
                late,
                t.closed_at.is_(None),
                t.primary_tip_id.is_(None),
                t.close_overdue_notified.is_(False),
            )
            .limit(limit)
        )
        with wrap_errors(StoreError, "cannot list tips"), self._engine.connect() as conn:
            return [self._tip(r) for r in conn.execute(query)]

    # -- threads and attachments ----------------------------------------------------------

    def add_message(self, conn: Connection, row: MessageRow) -> None:
        """Record a thread message in ``conn``."""
        conn.execute(self.messages.insert().values(**row.__dict__))

    def thread(self, tip_id: str) -> list[MessageRow]:
        """A tip's thread, oldest first."""
        query = (
            select(self.messages)
            .where(self.messages.c.tip_id == tip_id)
            .order_by(self.messages.c.created_at, self.messages.c.message_id)
        )
        with wrap_errors(StoreError, "cannot read a thread"), self._engine.connect() as conn:
            return [MessageRow(**dict(r._mapping)) for r in conn.execute(query)]

    def add_attachment(self, conn: Connection, values: dict[str, Any]) -> None:
        """Record a cleaned attachment (and its sealed original) in ``conn``."""
        conn.execute(self.attachments.insert().values(**values))

    def attachment(self, attachment_id: str) -> tuple[str, str, bytes] | None:
        """``(tip_id, mime, cleaned bytes)`` of an attachment."""
        a = self.attachments.c
        query = select(a.tip_id, a.mime, a.data).where(a.attachment_id == attachment_id)
        with wrap_errors(StoreError, "cannot read an attachment"), self._engine.connect() as c:
            found = c.execute(query).first()
        return (str(found[0]), str(found[1]), bytes(found[2])) if found is not None else None

    def attachment_ids(self, tip_id: str) -> list[str]:
        """A tip's attachment ids, in arrival order."""
        a = self.attachments.c
        query = select(a.attachment_id).where(a.tip_id == tip_id).order_by(a.created_at)
        with wrap_errors(StoreError, "cannot read attachments"), self._engine.connect() as c:
            return [str(r[0]) for r in c.execute(query)]

    # -- escalations ----------------------------------------------------------------------

    def start_escalation(self, conn: Connection, row: EscalationRow) -> None:
        """Record a new escalation at step 0 in ``conn`` (a second start is ignored)."""
        values = {**row.__dict__, "chain": json.dumps(row.chain)}
        statement = self._insert(self.escalations).values(**values)
        conn.execute(statement.on_conflict_do_nothing(index_elements=["tip_id"]))

    def _escalation(self, values: Any) -> EscalationRow:
        data = dict(values._mapping)
        return EscalationRow(**{**data, "chain": json.loads(data["chain"])})

    def escalation(self, tip_id: str) -> EscalationRow | None:
        """A tip's escalation, if it has one."""
        query = select(self.escalations).where(self.escalations.c.tip_id == tip_id)
        with wrap_errors(StoreError, "cannot read an escalation"), self._engine.connect() as c:
            found = c.execute(query).first()
        return self._escalation(found) if found is not None else None

    def due_escalations(self, now: float, limit: int = 100) -> list[EscalationRow]:
        """Unacknowledged escalations whose step's deadline has passed, oldest first."""
        e = self.escalations.c
        query = (
            select(self.escalations)
            .where(e.acked_at.is_(None), e.deadline_at <= now)
            .order_by(e.deadline_at)
            .limit(limit)
        )
        with wrap_errors(StoreError, "cannot list escalations"), self._engine.connect() as c:
            return [self._escalation(r) for r in c.execute(query)]

    def advance(
        self,
        conn: Connection,
        tip_id: str,
        *,
        from_step: int,
        to_step: int,
        notification_id: str,
        deadline_at: float,
        exhausted: bool,
    ) -> bool:
        """Move an unacknowledged escalation from ``from_step`` on; False if another worker
        (or an acknowledgement) got there first."""
        e = self.escalations.c
        result = conn.execute(
            self.escalations.update()
            .where(e.tip_id == tip_id, e.step == from_step, e.acked_at.is_(None))
            .values(
                step=to_step,
                notification_id=notification_id,
                deadline_at=deadline_at,
                exhausted=exhausted,
            )
        )
        return bool(result.rowcount)

    def acknowledge(self, conn: Connection, tip_id: str, person_id: str, at: float) -> bool:
        """Record the first acknowledgement; False if one was recorded before or the tip has
        no escalation."""
        e = self.escalations.c
        result = conn.execute(
            self.escalations.update()
            .where(e.tip_id == tip_id, e.acked_at.is_(None))
            .values(acked_by=person_id, acked_at=at)
        )
        return bool(result.rowcount)

    def close(self) -> None:
        """Release the connections."""
        self._engine.dispose()
