"""Delivering queued EIDOs to CAD: one lane per PSAP, the newest version of each incident.

The incidents consumer only decides and queues (:meth:`.Ledger.queue_dispatch`, durable before
its offset moves); delivery happens here, so a slow or failing CAD never holds the consumer and
one PSAP's CAD never delays another PSAP's dispatch. Each PSAP has one lane (a thread) with one
request in flight at a time: CAD gets an incident's versions in order and, after a crash, only
the request that was in flight is sent again (CAD dedupes it by Idempotency-Key). In a lane the
incident due soonest goes first: one whose delivery fails waits out its backoff while the
others go ahead, and an incident with a newer version goes behind those already waiting. When
several versions of an incident have waited, only the newest is sent (the outbox keeps only
that one; the EIDO is a full-state document). A real dispatch is never given up: it is retried
until CAD takes it or the connector stops (the outbox row then waits for the next run).
"""

from __future__ import annotations

import enum
import itertools
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from opentelemetry.trace import SpanKind, Status, StatusCode
from sqlalchemy.exc import SQLAlchemyError

from connectors.psap_cad.cad_client import CadAccepted, CadClient, DispatchInterrupted
from connectors.psap_cad.eido import (
    EIDO_MAX_BYTES,
    BuiltEido,
    EidoBuilder,
    ExerciseDispatchError,
)
from connectors.psap_cad.ledger import Decision, Ledger, LedgerError, PendingDispatch
from connectors.psap_cad.settings import PsapCadConfig
from connectors.psap_cad.signals import SignalFacts
from safehub.contracts.names import DataClass, EventType
from safehub.kernel import tracing
from safehub.kernel.bus import EventProducer
from safehub.kernel.envelope import event_id_for, new_event
from safehub.kernel.errors import BusError
from safehub.standards.eido import EidoValidator

log = structlog.get_logger(__name__)

NAME = "psap_cad"
#: Both dispatch-topic events may carry the EIDO (student and health data in notes).
DISPATCH_CLASSIFICATION = tuple(
    c.value for c in (DataClass.INTERNAL, DataClass.STUDENT_RECORD, DataClass.HEALTH)
)
#: How long an outbox row stays this process's without renewal; a dead process's rows are
#: taken over after at most this long.
LEASE = timedelta(seconds=10)
SWEEP_S = 2.0
#: Longest a lane sleeps before looking at the stop signal again.
IDLE_S = 0.2
#: While the first dispatch waits for its alert's facts: how often to look again.
FACTS_POLL_S = 0.005


class Outcome(enum.Enum):
    """What one attempt at an incident came to."""

    DELIVERED = "delivered"
    GONE = "gone"  # nothing (left) to send for it here
    RETRY = "retry"
    WAIT_FACTS = "wait-facts"


@dataclass
class _Slot:
    """One incident waiting in a lane."""

    incident_id: str
    next_at: float
    seq: int
    since: float
    delay: float
    facts_until: float
    attempts: int = 0
    #: A newer version was queued while this one was being attempted.
    rearm: bool = False


class Dispatcher:
    """The lanes of one connector process, and the sweeper that resumes and renews claims."""

    def __init__(
        self,
        *,
        config: PsapCadConfig,
        ledger: Ledger,
        builder: EidoBuilder,
        validator: EidoValidator,
        producer: EventProducer,
        stop: threading.Event,
        spawn: Callable[..., threading.Thread],
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.builder = builder
        self.validator = validator
        self.producer = producer
        self.stop = stop
        self._spawn = spawn
        #: Who holds an outbox row: unique per process, so a restart never mistakes a dead
        #: process's claims for its own (they lapse after LEASE, or at once on a clean stop).
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lanes: dict[str, _Lane] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        """Resume what the outbox holds (a previous run's, or a dead process's) and keep at it."""
        self._resume()
        self._spawn(self._sweep, name="psap-cad-sweeper")

    def submit(self, psap_id: str, incident_id: str, *, resumed: bool = False) -> None:
        """An incident has a version to send (``resumed``: found in the outbox, maybe known)."""
        with self._lock:
            lane = self._lanes.get(psap_id)
            if lane is None:
                if self.stop.is_set():
                    return
                lane = self._lanes[psap_id] = _Lane(self, psap_id)
                self._threads.append(self._spawn(lane.run, name=f"cad-lane-{psap_id}"))
        lane.wake(incident_id, resumed=resumed)

    def waiting(self) -> int:
        """How many incidents wait in the lanes (in flight included)."""
        with self._lock:
            lanes = list(self._lanes.values())
        return sum(lane.size() for lane in lanes)

    def _resume(self) -> None:
        try:
            pending = self.ledger.claim_pending(self.owner, LEASE, self.config.psaps)
        except (LedgerError, SQLAlchemyError) as exc:
            log.warning("outbox not readable, tried again shortly", error_type=type(exc).__name__)
            return
        for row in pending:
            self.submit(row.psap_id, row.incident_id, resumed=True)

    def _sweep(self) -> None:
        while not self.stop.wait(SWEEP_S):
            self._resume()
        # Stopping: once no lane can start a request, let another process take over at once.
        for thread in list(self._threads):
            thread.join(timeout=self.config.request_timeout_s + self.config.connect_timeout_s)
        try:
            self.ledger.release(self.owner)
        except (LedgerError, SQLAlchemyError) as exc:
            log.warning("outbox claims not released", error_type=type(exc).__name__)


class _Lane:
    """One PSAP's deliveries, one request at a time."""

    def __init__(self, dispatcher: Dispatcher, psap_id: str) -> None:
        self.d = dispatcher
        self.psap_id = psap_id
        self.cad = CadClient(dispatcher.config)
        self._cond = threading.Condition()
        self._slots: dict[str, _Slot] = {}
        self._seq = itertools.count()

    def size(self) -> int:
        with self._cond:
            return len(self._slots)

    def wake(self, incident_id: str, *, resumed: bool) -> None:
        now = time.monotonic()
        config = self.d.config
        with self._cond:
            slot = self._slots.get(incident_id)
            if slot is None:
                self._slots[incident_id] = _Slot(
                    incident_id,
                    next_at=now,
                    seq=next(self._seq),
                    since=now,
                    delay=config.retry_initial_s,
                    facts_until=now + config.signal_wait_ms / 1000,
                )
            elif not resumed:
                # New content may be what CAD accepts: try it now rather than after backoff.
                slot.rearm = True
                slot.next_at = min(slot.next_at, now)
            self._cond.notify()

    def run(self) -> None:
        """Deliver until the connector stops."""
        try:
            while (slot := self._next()) is not None:
                outcome = self._attempt(slot)
                self._after(slot, outcome)
        except DispatchInterrupted as exc:
            # Delivered but not recorded: the outbox row is sent again next run (same key).
            log.warning("stopped mid-dispatch; it is resent on restart", why=str(exc))
        finally:
            self.cad.close()

    def _next(self) -> _Slot | None:
        with self._cond:
            while not self.d.stop.is_set():
                wait = IDLE_S
                if self._slots:
                    slot = min(self._slots.values(), key=lambda s: (s.next_at, s.seq))
                    wait = slot.next_at - time.monotonic()
                    if wait <= 0:
                        slot.rearm = False
                        return slot
                self._cond.wait(min(wait, IDLE_S))
            return None

    def _after(self, slot: _Slot, outcome: Outcome) -> None:
        config = self.d.config
        with self._cond:
            now = time.monotonic()
            if outcome is Outcome.RETRY:
                slot.next_at = now if slot.rearm else now + slot.delay
                slot.delay = min(slot.delay * 2, config.retry_cap_s)
            elif outcome is Outcome.WAIT_FACTS:
                slot.next_at = now + FACTS_POLL_S
            elif outcome is Outcome.DELIVERED or slot.rearm:
                # Look again for a newer version, behind the incidents already waiting.
                slot.next_at, slot.seq, slot.since = now, next(self._seq), now
                slot.delay, slot.attempts = config.retry_initial_s, 0
            else:
                del self._slots[slot.incident_id]

    def _attempt(self, slot: _Slot) -> Outcome:
        d = self.d
        bound = log.bind(incident_id=slot.incident_id, psap_id=self.psap_id)
        try:
            pending = d.ledger.pending(slot.incident_id, d.owner)
            if pending is None:
                return Outcome.GONE
            record = d.ledger.dispatched(slot.incident_id)
            ids = list(pending.snapshot.correlated_event_ids)
            signals = d.ledger.signals_for(ids)
        except (LedgerError, SQLAlchemyError) as exc:
            bound.warning("ledger unavailable, dispatch retried", error_type=type(exc).__name__)
            return Outcome.RETRY
        first = record is None or record.sent_version == 0
        # The alert and the incident travel on different topics: on a first dispatch give the
        # alert's facts a moment (without holding the other incidents of this lane).
        if not signals and ids and first and time.monotonic() < slot.facts_until:
            return Outcome.WAIT_FACTS
        slot.facts_until = 0.0
        built = self._build(pending, signals, bound)
        if built is None:
            return Outcome.GONE if pending.snapshot.exercise else Outcome.RETRY
        body = built.body()
        if len(body) > EIDO_MAX_BYTES:
            bound.error("EIDO over its byte budget, sent all the same", size=len(body))
        slot.attempts += 1
        url = d.config.endpoint_for(built.psap_id)
        with tracing.tracer().start_as_current_span(
            "psap_cad dispatch",
            context=tracing.extract(pending.trace),
            kind=SpanKind.INTERNAL,
            attributes={
                "safehub.incident_id": pending.incident_id,
                "safehub.incident_version": pending.version,
                "safehub.psap_id": built.psap_id,
                "safehub.apco_code": built.apco_code,
                "safehub.eido_status": built.status,
                "safehub.eido_bytes": len(body),
            },
        ) as span:
            accepted = self.cad.attempt(
                url,
                body,
                incident_id=pending.incident_id,
                version=pending.version,
                attempt=slot.attempts,
            )
            if not isinstance(accepted, CadAccepted):
                span.set_status(Status(StatusCode.ERROR, accepted))
                bound.warning(
                    "CAD delivery failed, retrying",
                    version=pending.version,
                    attempt=slot.attempts,
                    reason=accepted,
                    retry_in_s=round(slot.delay, 3),
                )
                return Outcome.RETRY
            cad_id = accepted.cad_incident_id or (record.cad_incident_id if record else None)
            self._until_done(lambda: self._publish(pending, built), "publish CadDispatch")
            self._until_done(
                lambda: d.ledger.record_delivery(
                    pending.snapshot,
                    psap_id=built.psap_id,
                    cad_incident_id=cad_id,
                    eido_id=built.eido_id,
                ),
                "record delivery",
            )
        bound.info(
            "dispatched to CAD",
            version=pending.version,
            cad_incident_id=cad_id,
            apco_code=built.apco_code,
            status=built.status,
            http_status=accepted.status_code,
            attempts=accepted.attempts,
            eido_bytes=len(body),
            took_ms=round((time.monotonic() - slot.since) * 1000, 1),
        )
        return Outcome.DELIVERED

    def _build(
        self, pending: PendingDispatch, signals: list[SignalFacts], bound: Any
    ) -> BuiltEido | None:
        d = self.d
        snapshot = pending.snapshot
        try:
            built = d.builder.build(snapshot, signals)
        except ExerciseDispatchError:
            bound.error("exercise reached the EIDO builder: refused")
            self._until_done(
                lambda: d.ledger.record_decision(
                    snapshot.incident_id, snapshot.version, Decision.EXERCISE
                ),
                "record exercise",
            )
            self._until_done(
                lambda: d.ledger.drop_pending(snapshot.incident_id, snapshot.version),
                "drop exercise",
            )
            return None
        except Exception as exc:
            # A fact the builder cannot use must not stop the dispatch: send it without them.
            bound.error("EIDO not built with the alert facts", error_type=type(exc).__name__)
            try:
                built = d.builder.build(snapshot, [])
            except Exception as again:
                bound.error("EIDO not built, retried", error_type=type(again).__name__)
                return None
        problems = d.validator.problems(built.document)
        if problems:
            # Sent all the same: a CAD may still use a flawed EIDO; nothing is worse than none.
            bound.error("built EIDO does not validate", problems=problems)
        return built

    def _publish(self, pending: PendingDispatch, built: BuiltEido) -> None:
        snapshot = pending.snapshot
        event = new_event(
            EventType.CAD_DISPATCH,
            source=NAME,
            tenant=snapshot.tenant,
            building=snapshot.building,
            room=snapshot.room,
            incident_id=snapshot.incident_id,
            causation_id=pending.causation_id,
            classification=DISPATCH_CLASSIFICATION,
            # Same id on a re-send after a crash: downstream can deduplicate.
            event_id=event_id_for(NAME, f"dispatch:{snapshot.incident_id}:{snapshot.version}"),
            payload={
                "incident_id": snapshot.incident_id,
                "incident_version": snapshot.version,
                "psap_id": built.psap_id,
                "apco_incident_type": built.apco_code,
                "status": built.status,
                "cancel": built.status == "Cancelled",
                "eido_id": built.eido_id,
                "eido": built.body().decode(),
            },
        )
        self.d.producer.publish(event)

    def _until_done(self, action: Callable[[], Any], what: str) -> None:
        """Retry a step on transient failures; only the stop signal ends it."""
        config = self.d.config
        delay = config.retry_initial_s
        while True:
            try:
                action()
                return
            except (BusError, LedgerError, SQLAlchemyError) as exc:
                log.warning("step failed, retrying", step=what, error_type=type(exc).__name__)
            if self.d.stop.wait(delay):
                raise DispatchInterrupted(f"stopping before {what}")
            delay = min(delay * 2, config.retry_cap_s)
