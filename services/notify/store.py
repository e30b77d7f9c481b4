"""The delivery store: notifications, recipients, deliveries, acks, escalations, CAP, outbox.

Everything notify must not lose across a restart lives here (SQLite file by default, WAL;
PostgreSQL by URL): each notification and its recipients, every delivery attempt and its
status, acknowledgements (recorded once: the first ``claim_ack`` wins), the escalation
schedule (``next_escalation_at`` per recipient, so a restart resumes it), the SRP action last
notified per incident, the CAP documents, and the outbox (:mod:`safehub.kernel.outbox`) of
encoded events written in the same transaction as the state they report (published after
commit, re-published after a crash).

The schema comes from the alembic migrations in ``migrations/`` (applied at open).
No contact details are stored: recipients are ids; addresses come from the people file.
Times are epoch seconds (float), the same on both backends.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Double,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    func,
    select,
)
from sqlalchemy.engine import Connection

from safehub.kernel import store as kernel_store
from safehub.kernel.lifecycle import Closing
from safehub.kernel.outbox import OutboxItem, OutboxTable
from safehub.kernel.store import (
    insert_for,
    insert_or_ignore,
    make_engine,
    migrate,
    upsert,
    wrap_errors,
)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

#: The one order of a delivery's statuses (the dispatcher's in-memory check and this store's
#: ``rank`` column both use it): a delivery only ever moves to a higher rank, so a late,
#: repeated or reordered callback never takes it back (a SENT after DELIVERED changes nothing).
#: DELIVERED outranks every failure because it is the proof an operator and a reviewer ask for
#: ("was this person told?"): a FAILED arriving after it (a bounce for a mail the server had
#: accepted, a duplicated or out-of-order carrier callback) must neither erase that proof nor
#: start a fallback to another channel for someone who has the message, while a DELIVERED
#: arriving after a FAILED (a late carrier receipt) is news worth recording, even though the
#: fallback the failure started has already gone out. The failures rank alike: the first
#: recorded stays.
RANK = {"QUEUED": 0, "SENT": 1, "FAILED": 2, "REJECTED": 2, "EXPIRED": 2, "DELIVERED": 3}


class StoreError(kernel_store.StoreError):
    """The notify store could not be opened, read or written."""

    store = "notify store"


@dataclass(frozen=True)
class NotificationRow:
    """A notification as stored (what the dispatcher needs to send and re-send it)."""

    notification_id: str
    request_event_id: str
    incident_id: str | None
    tenant: dict[str, str | None]
    school_id: str
    building: str | None
    srp_action: str | None
    priority: str
    exercise: bool
    require_ack: bool
    headline: str
    body: str
    audiences: list[str]
    cap_identifier: str | None
    created_at: float


@dataclass(frozen=True)
class RecipientRow:
    """One recipient of a notification and its acknowledgement/escalation state."""

    notification_id: str
    recipient_id: str
    kind: str
    channels: list[str]
    acked_at: float | None
    ack_channel: str | None
    escalation_level: int
    next_escalation_at: float | None


@dataclass(frozen=True)
class DeliveryRow:
    """One delivery attempt on one channel."""

    delivery_id: str
    notification_id: str
    recipient_id: str
    channel: str
    attempt: int
    status: str
    provider_message_id: str | None
    error: str | None
    reason: str
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class StatusChange:
    """A delivery status to record (with the encoded receipt event for the outbox)."""

    delivery_id: str
    status: str
    provider_message_id: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class HeldRow:
    """A family/public message waiting for (or past) an administrator's decision.

    ``status``: held | approved | rejected | superseded (a newer message of the same
    incident replaced it before anyone decided). ``released_*`` is the text that went out.
    """

    notification_id: str
    incident_id: str | None
    tenant: dict[str, str | None]
    school_id: str
    srp_action: str | None
    priority: str
    headline: str
    body: str
    audiences: list[str]
    causation_id: str | None
    created_at: float
    status: str = "held"
    decided_by: str | None = None
    decided_at: float | None = None
    decision_event_id: str | None = None
    note: str | None = None
    released_headline: str | None = None
    released_body: str | None = None


class Store(Closing):
    """The store's tables behind one SQLAlchemy engine (thread-safe: a connection per call)."""

    def __init__(self, url: str, *, table_prefix: str = "notify_") -> None:
        self._engine: Engine = make_engine(url, name="notify", pool_size=10)
        self._insert = insert_for(self._engine)
        metadata = MetaData()
        p = table_prefix
        self.notifications = Table(
            f"{p}notifications",
            metadata,
            Column("notification_id", String(200), primary_key=True),
            Column("request_event_id", String(100), nullable=False),
            Column("incident_id", String(200), index=True),
            Column("tenant", Text, nullable=False),
            Column("school_id", String(200), nullable=False),
            Column("building", String(100)),
            Column("srp_action", String(40)),
            Column("priority", String(40), nullable=False),
            Column("exercise", Boolean, nullable=False),
            Column("require_ack", Boolean, nullable=False),
            Column("headline", Text, nullable=False),
            Column("body", Text, nullable=False),
            Column("audiences", Text, nullable=False),
            Column("cap_identifier", String(300)),
            Column("created_at", Double, nullable=False),
        )
        self.recipients = Table(
            f"{p}recipients",
            metadata,
            Column("notification_id", String(200), primary_key=True),
            Column("recipient_id", String(200), primary_key=True),
            Column("kind", String(20), nullable=False),
            Column("channels", Text, nullable=False),
            Column("acked_at", Double),
            Column("ack_channel", String(40)),
            Column("ack_response", String(40)),
            Column("escalation_level", Integer, nullable=False, default=0),
            Column("next_escalation_at", Double),
            Index(f"{p}recipients_due", "next_escalation_at"),
        )
        self.deliveries = Table(
            f"{p}deliveries",
            metadata,
            Column("delivery_id", String(100), primary_key=True),
            Column("notification_id", String(200), nullable=False),
            Column("recipient_id", String(200), nullable=False),
            Column("channel", String(40), nullable=False),
            Column("attempt", Integer, nullable=False),
            Column("status", String(20), nullable=False),
            Column("rank", Integer, nullable=False),
            Column("provider_message_id", String(200), index=True),
            Column("error", Text),
            Column("reason", String(40), nullable=False),
            Column("created_at", Double, nullable=False),
            Column("updated_at", Double, nullable=False),
            Index(f"{p}deliveries_by_recipient", "notification_id", "recipient_id"),
            Index(f"{p}deliveries_by_status", "status"),
        )
        self.incident_marks = Table(
            f"{p}incident_marks",
            metadata,
            Column("incident_id", String(200), primary_key=True),
            Column("srp_action", String(40), nullable=False),
            Column("version", Integer, nullable=False),
            Column("notification_id", String(200), nullable=False),
            Column("audiences", Text, nullable=False),
        )
        self.held = Table(
            f"{p}held",
            metadata,
            Column("notification_id", String(200), primary_key=True),
            Column("incident_id", String(200), index=True),
            Column("tenant", Text, nullable=False),
            Column("school_id", String(200), nullable=False, index=True),
            Column("srp_action", String(40)),
            Column("priority", String(40), nullable=False),
            Column("headline", Text, nullable=False),
            Column("body", Text, nullable=False),
            Column("audiences", Text, nullable=False),
            Column("causation_id", String(100)),
            Column("created_at", Double, nullable=False),
            Column("status", String(20), nullable=False),
            Column("decided_by", String(200)),
            Column("decided_at", Double),
            Column("decision_event_id", String(100)),
            Column("note", Text),
            Column("released_headline", Text),
            Column("released_body", Text),
        )
        self.cap_alerts = Table(
            f"{p}cap_alerts",
            metadata,
            Column("identifier", String(300), primary_key=True),
            Column("notification_id", String(200), nullable=False, index=True),
            Column("school_id", String(200), nullable=False),
            Column("msg_type", String(20), nullable=False),
            Column("scope", String(20), nullable=False),
            Column("headline", Text, nullable=False),
            Column("xml", Text, nullable=False),
            Column("sent_at", Double, nullable=False, index=True),
            Column("posted", Boolean, nullable=False, default=False),
        )
        #: Events written with the state they report (the kernel's transactional outbox).
        self.outbox = OutboxTable(metadata, prefix=p, error=StoreError)
        # The schema is the migrations' (``migrations/versions``); the tables above mirror it.
        # A file made by ``create_all`` before the store had migrations is adopted as 0001.
        migrate(self._engine, MIGRATIONS, error=StoreError, table_prefix=p, adopt=metadata.tables)

    # -- helpers ---------------------------------------------------------------------------

    def _begin(self) -> Any:
        return self._engine.begin()

    # -- notifications -----------------------------------------------------------------------

    def create_notification(
        self,
        notification: NotificationRow,
        recipients: Sequence[RecipientRow],
        deliveries: Sequence[DeliveryRow],
        outbox: Sequence[OutboxItem],
    ) -> bool:
        """Store a new notification with its recipients and first deliveries (one transaction).

        False if it already exists (a redelivered request): nothing is changed.
        """
        n = notification
        with wrap_errors(StoreError, "cannot store notification"), self._begin() as conn:
            inserted = conn.execute(
                self._insert(self.notifications)
                .values(
                    notification_id=n.notification_id,
                    request_event_id=n.request_event_id,
                    incident_id=n.incident_id,
                    tenant=json.dumps(n.tenant),
                    school_id=n.school_id,
                    building=n.building,
                    srp_action=n.srp_action,
                    priority=n.priority,
                    exercise=n.exercise,
                    require_ack=n.require_ack,
                    headline=n.headline,
                    body=n.body,
                    audiences=json.dumps(n.audiences),
                    cap_identifier=n.cap_identifier,
                    created_at=n.created_at,
                )
                .on_conflict_do_nothing(index_elements=["notification_id"])
                # rowcount of INSERT … ON CONFLICT is -1 on psycopg: ask for the row.
                .returning(self.notifications.c.notification_id)
            )
            if inserted.first() is None:
                return False
            self._add_recipients(conn, recipients)
            self._add_deliveries(conn, deliveries)
            self.outbox.add(conn, outbox)
        return True

    def add_recipients(
        self,
        recipients: Sequence[RecipientRow],
        deliveries: Sequence[DeliveryRow],
        outbox: Sequence[OutboxItem],
    ) -> None:
        """More recipients of a stored notification and their first deliveries, atomically.

        Recipients already stored are left as they are.
        """
        with wrap_errors(StoreError, "cannot store recipients"), self._begin() as conn:
            self._add_recipients(conn, recipients)
            self._add_deliveries(conn, deliveries)
            self.outbox.add(conn, outbox)

    def _add_recipients(self, conn: Connection, recipients: Sequence[RecipientRow]) -> None:
        if recipients:
            conn.execute(
                insert_or_ignore(conn, self.recipients, keys=["notification_id", "recipient_id"]),
                [
                    {
                        "notification_id": r.notification_id,
                        "recipient_id": r.recipient_id,
                        "kind": r.kind,
                        "channels": json.dumps(r.channels),
                        "acked_at": None,
                        "ack_channel": None,
                        "ack_response": None,
                        "escalation_level": r.escalation_level,
                        "next_escalation_at": r.next_escalation_at,
                    }
                    for r in recipients
                ],
            )

    def notification(self, notification_id: str) -> NotificationRow | None:
        """A notification by id."""
        query = select(self.notifications).where(
            self.notifications.c.notification_id == notification_id
        )
        with self._engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else _notification(row)

    def list_notifications(self, *, incident_id: str | None = None) -> list[NotificationRow]:
        """Notifications, oldest first (of one incident when given)."""
        query = select(self.notifications).order_by(self.notifications.c.created_at)
        if incident_id is not None:
            query = query.where(self.notifications.c.incident_id == incident_id)
        with self._engine.connect() as conn:
            return [_notification(r) for r in conn.execute(query).mappings()]

    def recipients_of(self, notification_id: str) -> list[RecipientRow]:
        """The recipients of a notification."""
        query = select(self.recipients).where(self.recipients.c.notification_id == notification_id)
        with self._engine.connect() as conn:
            return [_recipient(r) for r in conn.execute(query).mappings()]

    # -- deliveries --------------------------------------------------------------------------

    def _add_deliveries(self, conn: Connection, deliveries: Sequence[DeliveryRow]) -> None:
        if deliveries:
            conn.execute(
                insert_or_ignore(conn, self.deliveries, keys=["delivery_id"]),
                [
                    {
                        "delivery_id": d.delivery_id,
                        "notification_id": d.notification_id,
                        "recipient_id": d.recipient_id,
                        "channel": d.channel,
                        "attempt": d.attempt,
                        "status": d.status,
                        "rank": RANK.get(d.status, 0),
                        "provider_message_id": d.provider_message_id,
                        "error": d.error,
                        "reason": d.reason,
                        "created_at": d.created_at,
                        "updated_at": d.updated_at,
                    }
                    for d in deliveries
                ],
            )

    def add_deliveries(
        self, deliveries: Sequence[DeliveryRow], outbox: Sequence[OutboxItem]
    ) -> None:
        """New delivery attempts (fallbacks) and their QUEUED receipts."""
        with self._begin() as conn:
            self._add_deliveries(conn, deliveries)
            self.outbox.add(conn, outbox)

    def escalate(
        self,
        notification_id: str,
        recipient_id: str,
        *,
        level: int,
        next_at: float | None,
        deliveries: Sequence[DeliveryRow],
        outbox: Sequence[OutboxItem],
    ) -> bool:
        """Move a recipient to escalation ``level`` with its new deliveries, atomically.

        False if the recipient acknowledged or another worker escalated first.
        """
        recipients = self.recipients
        with self._begin() as conn:
            moved = conn.execute(
                recipients.update()
                .where(
                    recipients.c.notification_id == notification_id,
                    recipients.c.recipient_id == recipient_id,
                    recipients.c.acked_at.is_(None),
                    recipients.c.escalation_level == level - 1,
                )
                .values(escalation_level=level, next_escalation_at=next_at)
            )
            if not moved.rowcount:
                return False
            self._add_deliveries(conn, deliveries)
            self.outbox.add(conn, outbox)
        return True

    def record_statuses(
        self, changes: Sequence[StatusChange], outbox: Sequence[OutboxItem]
    ) -> None:
        """Apply status changes (never backwards) and queue their receipts, one transaction."""
        if not changes and not outbox:
            return
        table = self.deliveries
        now = time.time()
        statement = (
            table.update()
            .where(table.c.delivery_id == bindparam("d_id"), table.c.rank < bindparam("d_rank"))
            .values(
                status=bindparam("d_status"),
                rank=bindparam("d_rank"),
                # Keep a known provider id when a later change (a callback) has none.
                provider_message_id=func.coalesce(bindparam("d_pid"), table.c.provider_message_id),
                error=bindparam("d_error"),
                updated_at=bindparam("d_now"),
            )
        )
        rows = [
            {
                "d_id": c.delivery_id,
                "d_rank": RANK.get(c.status, 0),
                "d_status": c.status,
                "d_pid": c.provider_message_id,
                "d_error": c.error,
                "d_now": now,
            }
            for c in changes
        ]
        with wrap_errors(StoreError, "cannot record delivery statuses"), self._begin() as conn:
            if rows:
                conn.execute(statement, rows)
            self.outbox.add(conn, outbox)

    def delivery(self, delivery_id: str) -> DeliveryRow | None:
        """A delivery by id."""
        query = select(self.deliveries).where(self.deliveries.c.delivery_id == delivery_id)
        with self._engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else _delivery(row)

    def delivery_by_provider_id(self, provider_message_id: str) -> DeliveryRow | None:
        """The delivery the provider knows as ``provider_message_id``."""
        query = select(self.deliveries).where(
            self.deliveries.c.provider_message_id == provider_message_id
        )
        with self._engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else _delivery(row)

    def deliveries_of(
        self, notification_id: str, recipient_id: str | None = None
    ) -> list[DeliveryRow]:
        """Deliveries of a notification (of one recipient), in creation order."""
        table = self.deliveries
        query = (
            select(table)
            .where(table.c.notification_id == notification_id)
            .order_by(table.c.created_at, table.c.channel)
        )
        if recipient_id is not None:
            query = query.where(table.c.recipient_id == recipient_id)
        with self._engine.connect() as conn:
            return [_delivery(r) for r in conn.execute(query).mappings()]

    def queued(self) -> list[DeliveryRow]:
        """Deliveries never handed to a channel (to send after a restart)."""
        query = select(self.deliveries).where(self.deliveries.c.status == "QUEUED")
        with self._engine.connect() as conn:
            return [_delivery(r) for r in conn.execute(query).mappings()]

    # -- acknowledgements and escalation -----------------------------------------------------

    def claim_ack(
        self,
        notification_id: str,
        recipient_id: str,
        *,
        channel: str,
        response: str,
        outbox: Sequence[OutboxItem],
    ) -> bool:
        """Record the first acknowledgement of a recipient; False if already acknowledged."""
        table = self.recipients
        with self._begin() as conn:
            claimed = conn.execute(
                table.update()
                .where(
                    table.c.notification_id == notification_id,
                    table.c.recipient_id == recipient_id,
                    table.c.acked_at.is_(None),
                )
                .values(
                    acked_at=time.time(),
                    ack_channel=channel,
                    ack_response=response,
                    next_escalation_at=None,
                )
            )
            if not claimed.rowcount:
                return False
            self.outbox.add(conn, outbox)
        return True

    def due_escalations(self, now: float, limit: int = 500) -> list[RecipientRow]:
        """Unacknowledged recipients whose escalation time has come."""
        table = self.recipients
        query = (
            select(table)
            .where(
                table.c.next_escalation_at.is_not(None),
                table.c.next_escalation_at <= now,
                table.c.acked_at.is_(None),
            )
            .order_by(table.c.next_escalation_at)
            .limit(limit)
        )
        with self._engine.connect() as conn:
            return [_recipient(r) for r in conn.execute(query).mappings()]

    def open_acks_for(self, recipient_ids: Iterable[str]) -> list[tuple[str, str]]:
        """(notification id, recipient id) awaiting acknowledgement, newest first."""
        ids = list(recipient_ids)
        if not ids:
            return []
        r, n = self.recipients, self.notifications
        query = (
            select(r.c.notification_id, r.c.recipient_id)
            .join(n, n.c.notification_id == r.c.notification_id)
            .where(r.c.recipient_id.in_(ids), r.c.acked_at.is_(None), n.c.require_ack.is_(True))
            .order_by(n.c.created_at.desc())
        )
        with self._engine.connect() as conn:
            return [(str(a), str(b)) for a, b in conn.execute(query)]

    def acked_since(self, recipient_ids: Iterable[str], since: float) -> bool:
        """Whether any of these recipients acknowledged something since ``since``."""
        ids = list(recipient_ids)
        if not ids:
            return False
        r = self.recipients
        query = select(r.c.recipient_id).where(r.c.recipient_id.in_(ids), r.c.acked_at >= since)
        with self._engine.connect() as conn:
            return conn.execute(query.limit(1)).first() is not None

    # -- incidents ---------------------------------------------------------------------------

    def incident_mark(self, incident_id: str) -> tuple[str, int, str, list[str]] | None:
        """(SRP action, version, notification id, audiences) last notified for an incident."""
        table = self.incident_marks
        with self._engine.connect() as conn:
            row = (
                conn.execute(select(table).where(table.c.incident_id == incident_id))
                .mappings()
                .first()
            )
        if row is None:
            return None
        return (
            str(row["srp_action"]),
            int(row["version"]),
            str(row["notification_id"]),
            list(json.loads(row["audiences"])),
        )

    def mark_incident(
        self,
        incident_id: str,
        srp_action: str,
        version: int,
        notification_id: str,
        audiences: Sequence[str],
    ) -> None:
        """Remember the SRP action notified for an incident (a newer version only)."""
        values = {
            "srp_action": srp_action,
            "version": version,
            "notification_id": notification_id,
            "audiences": json.dumps(list(audiences)),
        }
        table = self.incident_marks
        with self._begin() as conn:
            conn.execute(
                upsert(
                    conn,
                    table,
                    {"incident_id": incident_id, **values},
                    keys=["incident_id"],
                    where=table.c.version < version,
                )
            )

    # -- held family/public messages ---------------------------------------------------------

    def hold(self, row: HeldRow) -> bool:
        """Store a message for approval; older undecided ones of its incident are superseded.

        False if it is already stored (a redelivered incident event): nothing changes.
        """
        table = self.held
        with wrap_errors(StoreError, "cannot hold notification"), self._begin() as conn:
            inserted = conn.execute(
                self._insert(table)
                .values(
                    notification_id=row.notification_id,
                    incident_id=row.incident_id,
                    tenant=json.dumps(row.tenant),
                    school_id=row.school_id,
                    srp_action=row.srp_action,
                    priority=row.priority,
                    headline=row.headline,
                    body=row.body,
                    audiences=json.dumps(row.audiences),
                    causation_id=row.causation_id,
                    created_at=row.created_at,
                    status="held",
                )
                .on_conflict_do_nothing(index_elements=["notification_id"])
                .returning(table.c.notification_id)
            )
            if inserted.first() is None:
                return False
            if row.incident_id is not None:
                # Parents must never get an older action's message after a newer one.
                conn.execute(
                    table.update()
                    .where(
                        table.c.incident_id == row.incident_id,
                        table.c.notification_id != row.notification_id,
                        table.c.status == "held",
                    )
                    .values(status="superseded")
                )
        return True

    def held_message(self, notification_id: str) -> HeldRow | None:
        """A held (or decided) family/public message by id."""
        table = self.held
        with self._engine.connect() as conn:
            row = (
                conn.execute(select(table).where(table.c.notification_id == notification_id))
                .mappings()
                .first()
            )
        return None if row is None else _held(row)

    def held_messages(self, school_id: str, status: str | None = "held") -> list[HeldRow]:
        """A school's family/public messages in ``status`` (None: all), oldest first."""
        table = self.held
        query = select(table).where(table.c.school_id == school_id).order_by(table.c.created_at)
        if status is not None:
            query = query.where(table.c.status == status)
        with self._engine.connect() as conn:
            return [_held(r) for r in conn.execute(query).mappings()]

    def decide(
        self,
        notification_id: str,
        *,
        status: str,
        decided_by: str,
        decision_event_id: str,
        note: str | None,
        released_headline: str | None,
        released_body: str | None,
        outbox: Sequence[OutboxItem],
    ) -> bool:
        """Record the decision on a held message with its release (outbox), atomically.

        Only a message still held can be decided: False for a second or redelivered decision.
        """
        table = self.held
        with wrap_errors(StoreError, "cannot record the decision"), self._begin() as conn:
            moved = conn.execute(
                table.update()
                .where(table.c.notification_id == notification_id, table.c.status == "held")
                .values(
                    status=status,
                    decided_by=decided_by,
                    decided_at=time.time(),
                    decision_event_id=decision_event_id,
                    note=note,
                    released_headline=released_headline,
                    released_body=released_body,
                )
            )
            if not moved.rowcount:
                return False
            self.outbox.add(conn, outbox)
        return True

    # -- CAP ---------------------------------------------------------------------------------

    def put_cap(
        self,
        identifier: str,
        *,
        notification_id: str,
        school_id: str,
        msg_type: str,
        scope: str,
        headline: str,
        xml: str,
        sent_at: float,
    ) -> None:
        """Store a CAP document (once per identifier)."""
        with self._begin() as conn:
            conn.execute(
                self._insert(self.cap_alerts)
                .values(
                    identifier=identifier,
                    notification_id=notification_id,
                    school_id=school_id,
                    msg_type=msg_type,
                    scope=scope,
                    headline=headline,
                    xml=xml,
                    sent_at=sent_at,
                    posted=False,
                )
                .on_conflict_do_nothing(index_elements=["identifier"])
            )

    def cap(self, identifier: str) -> tuple[str, str] | None:
        """(XML, scope) of a CAP alert."""
        table = self.cap_alerts
        with self._engine.connect() as conn:
            row = conn.execute(
                select(table.c.xml, table.c.scope).where(table.c.identifier == identifier)
            ).first()
        return None if row is None else (str(row[0]), str(row[1]))

    def cap_document(self, identifier: str) -> tuple[str, str, str] | None:
        """(XML, scope, school id) of a CAP alert: whom to show a Restricted one to."""
        table = self.cap_alerts
        with self._engine.connect() as conn:
            row = conn.execute(
                select(table.c.xml, table.c.scope, table.c.school_id).where(
                    table.c.identifier == identifier
                )
            ).first()
        return None if row is None else (str(row[0]), str(row[1]), str(row[2]))

    def cap_of_incident(self, incident_id: str, scope: str) -> list[tuple[str, float]]:
        """(identifier, sent time) of the CAP alerts of ``scope`` already issued for an incident.

        Staff and public alerts are separate threads: a public Update references public alerts.
        """
        c, n = self.cap_alerts, self.notifications
        query = (
            select(c.c.identifier, c.c.sent_at)
            .join(n, n.c.notification_id == c.c.notification_id)
            .where(n.c.incident_id == incident_id, c.c.scope == scope)
            .order_by(c.c.sent_at)
        )
        with self._engine.connect() as conn:
            return [(str(a), float(b)) for a, b in conn.execute(query)]

    def cap_recent(self, limit: int = 100) -> list[dict[str, Any]]:
        """Newest CAP alerts first (identifier, headline, msg type, scope, sent time)."""
        table = self.cap_alerts
        query = (
            select(
                table.c.identifier,
                table.c.notification_id,
                table.c.school_id,
                table.c.msg_type,
                table.c.scope,
                table.c.headline,
                table.c.sent_at,
            )
            .order_by(table.c.sent_at.desc())
            .limit(limit)
        )
        with self._engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def cap_unposted(self) -> list[tuple[str, str]]:
        """(identifier, xml) of alerts not yet accepted by the CAP endpoint."""
        table = self.cap_alerts
        query = select(table.c.identifier, table.c.xml).where(table.c.posted.is_(False))
        with self._engine.connect() as conn:
            return [(str(a), str(b)) for a, b in conn.execute(query)]

    def cap_posted(self, identifier: str) -> None:
        """The CAP endpoint accepted the alert."""
        table = self.cap_alerts
        with self._begin() as conn:
            conn.execute(table.update().where(table.c.identifier == identifier).values(posted=True))

    # -- outbox ------------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The store's engine (the outbox relay reads and clears the outbox through it)."""
        return self._engine

    def outbox_pending(self, older_than_s: float = 0.0, limit: int = 1000) -> list[OutboxItem]:
        """Events written but not yet confirmed by the broker."""
        return self.outbox.pending(self._engine, older_than_s, limit)

    def outbox_done(self, event_ids: Sequence[str]) -> None:
        """Forget events the broker confirmed."""
        self.outbox.done(self._engine, event_ids)

    def close(self) -> None:
        """Release the connection pool."""
        self._engine.dispose()


def _notification(row: Any) -> NotificationRow:
    return NotificationRow(
        notification_id=str(row["notification_id"]),
        request_event_id=str(row["request_event_id"]),
        incident_id=row["incident_id"],
        tenant=json.loads(row["tenant"]),
        school_id=str(row["school_id"]),
        building=row["building"],
        srp_action=row["srp_action"],
        priority=str(row["priority"]),
        exercise=bool(row["exercise"]),
        require_ack=bool(row["require_ack"]),
        headline=str(row["headline"]),
        body=str(row["body"]),
        audiences=list(json.loads(row["audiences"])),
        cap_identifier=row["cap_identifier"],
        created_at=float(row["created_at"]),
    )


def _held(row: Any) -> HeldRow:
    return HeldRow(
        notification_id=str(row["notification_id"]),
        incident_id=row["incident_id"],
        tenant=json.loads(row["tenant"]),
        school_id=str(row["school_id"]),
        srp_action=row["srp_action"],
        priority=str(row["priority"]),
        headline=str(row["headline"]),
        body=str(row["body"]),
        audiences=list(json.loads(row["audiences"])),
        causation_id=row["causation_id"],
        created_at=float(row["created_at"]),
        status=str(row["status"]),
        decided_by=row["decided_by"],
        decided_at=row["decided_at"],
        decision_event_id=row["decision_event_id"],
        note=row["note"],
        released_headline=row["released_headline"],
        released_body=row["released_body"],
    )


def _recipient(row: Any) -> RecipientRow:
    return RecipientRow(
        notification_id=str(row["notification_id"]),
        recipient_id=str(row["recipient_id"]),
        kind=str(row["kind"]),
        channels=list(json.loads(row["channels"])),
        acked_at=row["acked_at"],
        ack_channel=row["ack_channel"],
        escalation_level=int(row["escalation_level"]),
        next_escalation_at=row["next_escalation_at"],
    )


def _delivery(row: Any) -> DeliveryRow:
    return DeliveryRow(
        delivery_id=str(row["delivery_id"]),
        notification_id=str(row["notification_id"]),
        recipient_id=str(row["recipient_id"]),
        channel=str(row["channel"]),
        attempt=int(row["attempt"]),
        status=str(row["status"]),
        provider_message_id=row["provider_message_id"],
        error=row["error"],
        reason=str(row["reason"]),
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
    )
