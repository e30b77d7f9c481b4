"""The delivery ledger: what was sent to CAD, per incident and version, surviving restarts.

The bus delivers at least once, so after a crash an incident event can come back. The ledger
makes the connector idempotent by (incident id, version): each version gets one decision
(queued then sent or superseded, unchanged, exercise, …); a version already decided, or older
than one already handled, is skipped. For each incident bound for CAD it keeps the CAD incident
id, the newest snapshot CAD has or is about to get (to tell whether a new version changes
anything CAD cares about, and to build the final update on IncidentCleared), the last version
delivered and the status CAD last reported. It also keeps the facts of recent alerts and the
ids of the status updates that came from CAD (to recognise incident changes caused by CAD,
which must not echo back).

The outbox holds, per incident, the newest version still to be delivered: the consumer writes
it (in the same transaction as the decision) before its offset moves, so a dispatch survives
a crash; a newer version replaces an older one still waiting (the EIDO is a full-state
document). Each row is claimed by one connector process for a short lease, renewed while it
works, so one incident is sent by one process at a time and a dead process's rows are taken
over when its lease runs out.

SQLite file by default (WAL: a committed write survives a kill -9), PostgreSQL by URL; the
schema comes from the alembic migrations in ``migrations/`` (applied at open).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    MetaData,
    String,
    Table,
    Text,
    case,
    func,
    select,
)
from sqlalchemy.engine import Connection

from connectors.psap_cad.eido import IncidentSnapshot
from connectors.psap_cad.signals import SignalFacts
from safehub.kernel.lifecycle import Closing
from safehub.kernel.store import StoreError, insert_for, make_engine, migrate, upsert

log = structlog.get_logger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class LedgerError(StoreError):
    """The ledger could not be opened, read or written."""

    store = "psap_cad ledger"


class Decision:
    """What the connector decided for one incident version."""

    QUEUED = "queued"
    SENT = "sent"
    SUPERSEDED = "superseded"
    UNCHANGED = "unchanged"
    CAD_ORIGINATED = "cad-originated"
    EXERCISE = "exercise"
    NOT_DISPATCHABLE = "not-dispatchable"
    NOT_DISPATCHED = "not-dispatched"


@dataclass(frozen=True)
class DispatchedIncident:
    """The ledger's record of an incident that reached CAD."""

    incident_id: str
    psap_id: str
    cad_incident_id: str | None
    last_version: int
    sent_version: int
    fingerprint: str
    snapshot: IncidentSnapshot
    status: str
    cad_status: str | None


@dataclass(frozen=True)
class PendingDispatch:
    """The newest version of an incident still to be delivered to CAD (an outbox row)."""

    incident_id: str
    version: int
    psap_id: str
    snapshot: IncidentSnapshot
    causation_id: str | None
    #: W3C trace context of the incident event, so the delivery joins its trace.
    trace: list[tuple[str, bytes]]


@dataclass(frozen=True)
class DecisionRecord:
    """One row of the decision history."""

    incident_id: str
    version: int
    decision: str
    eido_id: str | None
    cad_incident_id: str | None


def _now() -> datetime:
    return datetime.now(UTC)


class Ledger(Closing):
    """The ledger tables behind one SQLAlchemy engine (thread-safe: a connection per call)."""

    def __init__(self, url: str, *, table_prefix: str = "psap_cad_") -> None:
        # Consumer threads and the inbound server share the pool.
        self._engine: Engine = make_engine(url, name="psap_cad ledger")
        self._insert = insert_for(self._engine)
        metadata = MetaData()
        self.incidents = Table(
            f"{table_prefix}incidents",
            metadata,
            Column("incident_id", String(200), primary_key=True),
            Column("psap_id", String(200), nullable=False),
            Column("cad_incident_id", String(200)),
            Column("last_version", BigInteger, nullable=False),
            Column("sent_version", BigInteger, nullable=False),
            Column("fingerprint", String(64), nullable=False),
            Column("snapshot", Text, nullable=False),
            Column("status", String(40), nullable=False),
            Column("cad_status", String(40)),
            Column("updated_at", DateTime(timezone=True), nullable=False),
        )
        self.decisions = Table(
            f"{table_prefix}decisions",
            metadata,
            Column("incident_id", String(200), primary_key=True),
            Column("version", BigInteger, primary_key=True),
            Column("decision", String(40), nullable=False),
            Column("eido_id", String(300)),
            Column("cad_incident_id", String(200)),
            Column("decided_at", DateTime(timezone=True), nullable=False),
        )
        self.signals = Table(
            f"{table_prefix}signals",
            metadata,
            Column("event_id", String(100), primary_key=True),
            Column("facts", Text, nullable=False),
            Column("recorded_at", DateTime(timezone=True), nullable=False),
        )
        self.inbound = Table(
            f"{table_prefix}inbound",
            metadata,
            Column("event_id", String(100), primary_key=True),
            Column("incident_id", String(200), nullable=False),
            Column("cad_incident_id", String(200), nullable=False),
            Column("status", String(40), nullable=False),
            Column("received_at", DateTime(timezone=True), nullable=False),
        )
        self.outbox = Table(
            f"{table_prefix}outbox",
            metadata,
            Column("incident_id", String(200), primary_key=True),
            Column("version", BigInteger, nullable=False),
            Column("psap_id", String(200), nullable=False),
            Column("snapshot", Text, nullable=False),
            Column("causation_id", String(100)),
            Column("trace", Text),
            Column("queued_at", DateTime(timezone=True), nullable=False),
            Column("claimed_by", String(200), nullable=False),
            Column("claimed_until", DateTime(timezone=True), nullable=False),
        )
        # The schema is the migrations' (``migrations/versions``); the tables above mirror it.
        # A file made by ``create_all`` before the ledger had migrations is adopted as 0001.
        migrate(
            self._engine,
            MIGRATIONS,
            error=LedgerError,
            table_prefix=table_prefix,
            adopt=metadata.tables,
        )

    # -- helpers ---------------------------------------------------------------------------

    def _decide(
        self,
        conn: Connection,
        incident_id: str,
        version: int,
        decision: str,
        *,
        eido_id: str | None = None,
        cad_incident_id: str | None = None,
    ) -> None:
        conn.execute(
            self._insert(self.decisions)
            .values(
                incident_id=incident_id,
                version=version,
                decision=decision,
                eido_id=eido_id,
                cad_incident_id=cad_incident_id,
                decided_at=_now(),
            )
            .on_conflict_do_nothing(index_elements=["incident_id", "version"])
        )

    # -- incidents ---------------------------------------------------------------------------

    def decision(self, incident_id: str, version: int) -> str | None:
        """The decision already taken for this incident version, if any."""
        query = select(self.decisions.c.decision).where(
            self.decisions.c.incident_id == incident_id, self.decisions.c.version == version
        )
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else str(row[0])

    def dispatched(self, incident_id: str) -> DispatchedIncident | None:
        """The incident's dispatch record, if it ever reached CAD."""
        query = select(self.incidents).where(self.incidents.c.incident_id == incident_id)
        with self._engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else _dispatched(row)

    def dispatched_by_cad_id(self, cad_incident_id: str) -> DispatchedIncident | None:
        """The incident CAD knows as ``cad_incident_id``."""
        query = select(self.incidents).where(self.incidents.c.cad_incident_id == cad_incident_id)
        with self._engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else _dispatched(row)

    def record_decision(self, incident_id: str, version: int, decision: str) -> None:
        """A version that was not sent (exercise, not dispatchable, unchanged …)."""
        with self._engine.begin() as conn:
            self._decide(conn, incident_id, version, decision)
            conn.execute(
                self.incidents.update()
                .where(
                    self.incidents.c.incident_id == incident_id,
                    self.incidents.c.last_version < version,
                )
                .values(last_version=version, updated_at=_now())
            )

    def record_baseline(self, incident_id: str, snapshot: IncidentSnapshot, decision: str) -> None:
        """CAD already knows this content (it caused it): make it the comparison baseline."""
        with self._engine.begin() as conn:
            self._decide(conn, incident_id, snapshot.version, decision)
            conn.execute(
                self.incidents.update()
                .where(
                    self.incidents.c.incident_id == incident_id,
                    self.incidents.c.last_version < snapshot.version,
                )
                .values(
                    last_version=snapshot.version,
                    fingerprint=snapshot.fingerprint(),
                    snapshot=json.dumps(snapshot.to_json()),
                    updated_at=_now(),
                )
            )

    def queue_dispatch(
        self,
        snapshot: IncidentSnapshot,
        *,
        psap_id: str,
        causation_id: str | None,
        trace: Sequence[tuple[str, bytes]],
        owner: str,
        lease: timedelta,
    ) -> int | None:
        """``snapshot`` is due at CAD: decision, incident row and outbox in one transaction.

        It becomes the comparison baseline at once. Returns the version it supersedes (one
        still waiting in the outbox), if any. A row another live process holds stays its own.
        """
        now = _now()
        incidents, outbox = self.incidents, self.outbox
        with self._engine.begin() as conn:
            self._decide(conn, snapshot.incident_id, snapshot.version, Decision.QUEUED)
            baseline = {
                "psap_id": psap_id,
                "last_version": snapshot.version,
                "fingerprint": snapshot.fingerprint(),
                "snapshot": json.dumps(snapshot.to_json()),
                "status": snapshot.status,
                "updated_at": now,
            }
            conn.execute(
                upsert(
                    conn,
                    incidents,
                    {"incident_id": snapshot.incident_id, "sent_version": 0, **baseline},
                    keys=["incident_id"],
                    update=baseline,
                    where=incidents.c.last_version < snapshot.version,
                )
            )
            waiting = conn.execute(
                select(outbox.c.version).where(outbox.c.incident_id == snapshot.incident_id)
            ).scalar()
            row = {
                "version": snapshot.version,
                "psap_id": psap_id,
                "snapshot": baseline["snapshot"],
                "causation_id": causation_id,
                "trace": json.dumps([[k, v.decode("latin-1")] for k, v in trace]),
                "queued_at": now,
            }
            claimable = (outbox.c.claimed_by == owner) | (outbox.c.claimed_until < now)
            conn.execute(
                upsert(
                    conn,
                    outbox,
                    {
                        "incident_id": snapshot.incident_id,
                        "claimed_by": owner,
                        "claimed_until": now + lease,
                        **row,
                    },
                    keys=["incident_id"],
                    update={
                        **row,
                        "claimed_by": case((claimable, owner), else_=outbox.c.claimed_by),
                        "claimed_until": case(
                            (claimable, now + lease), else_=outbox.c.claimed_until
                        ),
                    },
                    where=outbox.c.version < snapshot.version,
                )
            )
            if waiting is None or int(waiting) >= snapshot.version:
                return None
            conn.execute(
                self.decisions.update()
                .where(
                    self.decisions.c.incident_id == snapshot.incident_id,
                    self.decisions.c.version == int(waiting),
                    self.decisions.c.decision == Decision.QUEUED,
                )
                .values(decision=Decision.SUPERSEDED, decided_at=now)
            )
            return int(waiting)

    def pending(self, incident_id: str, owner: str) -> PendingDispatch | None:
        """The incident's outbox row if this process holds it."""
        query = select(self.outbox).where(
            self.outbox.c.incident_id == incident_id, self.outbox.c.claimed_by == owner
        )
        with self._engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else _pending(row)

    def claim_pending(
        self, owner: str, lease: timedelta, psaps: Sequence[str] = ()
    ) -> list[PendingDispatch]:
        """Renew this process's claims, take over lapsed ones; every row it now holds."""
        now = _now()
        outbox = self.outbox
        claimable = (outbox.c.claimed_by == owner) | (outbox.c.claimed_until < now)
        if psaps:
            claimable = claimable & outbox.c.psap_id.in_(list(psaps))
        with self._engine.begin() as conn:
            conn.execute(
                outbox.update().where(claimable).values(claimed_by=owner, claimed_until=now + lease)
            )
            rows = conn.execute(
                select(outbox).where(outbox.c.claimed_by == owner).order_by(outbox.c.queued_at)
            ).mappings()
            return [_pending(row) for row in rows]

    def release(self, owner: str) -> None:
        """Let another process take this one's rows at once (a clean stop)."""
        with self._engine.begin() as conn:
            conn.execute(
                self.outbox.update()
                .where(self.outbox.c.claimed_by == owner)
                .values(claimed_until=_now() - timedelta(seconds=1))
            )

    def drop_pending(self, incident_id: str, version: int) -> None:
        """Forget an outbox row that must never be sent (an exercise caught late)."""
        with self._engine.begin() as conn:
            conn.execute(
                self.outbox.delete().where(
                    self.outbox.c.incident_id == incident_id, self.outbox.c.version <= version
                )
            )

    def record_delivery(
        self,
        snapshot: IncidentSnapshot,
        *,
        psap_id: str,
        cad_incident_id: str | None,
        eido_id: str,
    ) -> None:
        """``snapshot`` reached CAD: decision, incident row and outbox in one transaction.

        A newer version queued meanwhile stays the baseline and stays in the outbox.
        """
        incidents = self.incidents
        values = {
            "psap_id": psap_id,
            "cad_incident_id": cad_incident_id,
            "last_version": snapshot.version,
            "sent_version": snapshot.version,
            "fingerprint": snapshot.fingerprint(),
            "snapshot": json.dumps(snapshot.to_json()),
            "status": snapshot.status,
            "updated_at": _now(),
        }
        with self._engine.begin() as conn:
            conn.execute(
                self._insert(self.decisions)
                .values(
                    incident_id=snapshot.incident_id,
                    version=snapshot.version,
                    decision=Decision.SENT,
                    eido_id=eido_id,
                    cad_incident_id=cad_incident_id,
                    decided_at=_now(),
                )
                .on_conflict_do_update(
                    index_elements=["incident_id", "version"],
                    set_={
                        "decision": Decision.SENT,
                        "eido_id": eido_id,
                        "cad_incident_id": cad_incident_id,
                    },
                )
            )
            insert = self._insert(incidents).values(incident_id=snapshot.incident_id, **values)
            excluded = insert.excluded
            newest = incidents.c.last_version <= excluded.last_version

            def if_newest(name: str) -> Any:
                return case((newest, excluded[name]), else_=incidents.c[name])

            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=["incident_id"],
                    set_={
                        "psap_id": excluded.psap_id,
                        "cad_incident_id": func.coalesce(
                            excluded.cad_incident_id, incidents.c.cad_incident_id
                        ),
                        "sent_version": case(
                            (
                                excluded.sent_version > incidents.c.sent_version,
                                excluded.sent_version,
                            ),
                            else_=incidents.c.sent_version,
                        ),
                        **{
                            name: if_newest(name)
                            for name in ("last_version", "fingerprint", "snapshot", "status")
                        },
                        "updated_at": excluded.updated_at,
                    },
                )
            )
            conn.execute(
                self.outbox.delete().where(
                    self.outbox.c.incident_id == snapshot.incident_id,
                    self.outbox.c.version <= snapshot.version,
                )
            )

    def history(self, incident_id: str | None = None) -> list[DecisionRecord]:
        """Decisions in (incident, version) order, for one incident or all."""
        query = select(self.decisions).order_by(
            self.decisions.c.incident_id, self.decisions.c.version
        )
        if incident_id is not None:
            query = query.where(self.decisions.c.incident_id == incident_id)
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            DecisionRecord(
                str(r["incident_id"]),
                int(r["version"]),
                str(r["decision"]),
                r["eido_id"],
                r["cad_incident_id"],
            )
            for r in rows
        ]

    # -- signals -----------------------------------------------------------------------------

    def put_signal(self, facts: SignalFacts) -> None:
        """Remember an alert's facts (a repeat of the same event changes nothing)."""
        with self._engine.begin() as conn:
            conn.execute(
                self._insert(self.signals)
                .values(
                    event_id=facts.event_id,
                    facts=json.dumps(facts.to_json()),
                    recorded_at=_now(),
                )
                .on_conflict_do_nothing(index_elements=["event_id"])
            )

    def signals_for(self, event_ids: Sequence[str]) -> list[SignalFacts]:
        """The known facts among ``event_ids``, in the order given."""
        if not event_ids:
            return []
        found: dict[str, str] = {}
        ids = list(event_ids)
        with self._engine.connect() as conn:
            # In chunks: one noisy incident can name thousands of signals (SQLite's limit on
            # bound parameters is 32766, older builds 999).
            for start in range(0, len(ids), 500):
                query = select(self.signals.c.event_id, self.signals.c.facts).where(
                    self.signals.c.event_id.in_(ids[start : start + 500])
                )
                found.update((str(r[0]), str(r[1])) for r in conn.execute(query))
        return [
            SignalFacts.from_json(json.loads(found[event_id]))
            for event_id in event_ids
            if event_id in found
        ]

    def prune_signals(self, before: datetime) -> int:
        """Forget alert facts recorded before ``before``; returns how many."""
        with self._engine.begin() as conn:
            result = conn.execute(self.signals.delete().where(self.signals.c.recorded_at < before))
        return int(result.rowcount or 0)

    # -- inbound -----------------------------------------------------------------------------

    def record_inbound(
        self, event_id: str, incident_id: str, cad_incident_id: str, status: str
    ) -> None:
        """A status update from CAD, published as ``event_id``; CAD's status is remembered."""
        with self._engine.begin() as conn:
            conn.execute(
                self._insert(self.inbound)
                .values(
                    event_id=event_id,
                    incident_id=incident_id,
                    cad_incident_id=cad_incident_id,
                    status=status,
                    received_at=_now(),
                )
                .on_conflict_do_nothing(index_elements=["event_id"])
            )
            conn.execute(
                self.incidents.update()
                .where(self.incidents.c.incident_id == incident_id)
                .values(cad_status=status, updated_at=_now())
            )

    def inbound_ids(self, event_ids: Iterable[str]) -> set[str]:
        """Which of ``event_ids`` are status updates that came from CAD."""
        ids = [e for e in event_ids if e]
        if not ids:
            return set()
        query = select(self.inbound.c.event_id).where(self.inbound.c.event_id.in_(ids))
        with self._engine.connect() as conn:
            return {str(r[0]) for r in conn.execute(query)}

    def close(self) -> None:
        """Release the connection pool."""
        self._engine.dispose()


def _dispatched(row: Any) -> DispatchedIncident:
    return DispatchedIncident(
        incident_id=str(row["incident_id"]),
        psap_id=str(row["psap_id"]),
        cad_incident_id=row["cad_incident_id"],
        last_version=int(row["last_version"]),
        sent_version=int(row["sent_version"]),
        fingerprint=str(row["fingerprint"]),
        snapshot=IncidentSnapshot.from_json(json.loads(row["snapshot"])),
        status=str(row["status"]),
        cad_status=row["cad_status"],
    )


def _pending(row: Any) -> PendingDispatch:
    trace = json.loads(row["trace"]) if row["trace"] else []
    return PendingDispatch(
        incident_id=str(row["incident_id"]),
        version=int(row["version"]),
        psap_id=str(row["psap_id"]),
        snapshot=IncidentSnapshot.from_json(json.loads(row["snapshot"])),
        causation_id=row["causation_id"],
        trace=[(str(k), str(v).encode("latin-1")) for k, v in trace],
    )
