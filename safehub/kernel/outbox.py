"""Transactional outbox: a service writes its state and the events reporting it atomically.

A service declares an :class:`OutboxTable` on its store's metadata (the table comes from the
store's own migrations, like every other) and, in the transaction that changes its state,
:meth:`OutboxTable.add` the encoded events: either both commit or neither does. After the
commit it hands the events to an :class:`OutboxRelay`, which publishes them and deletes each
row once the broker confirmed it. Rows left by a crash, a failed publish or a relay that died
before confirming are published again by the sweep (at start and periodically), so delivery
is at least once with the same event id: consumers dedupe by event id.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import structlog
from sqlalchemy import Column, Double, Engine, LargeBinary, MetaData, String, Table, select
from sqlalchemy.engine import Connection

from safehub.kernel.bus import Delivered, EventProducer
from safehub.kernel.codec import Codec, Event
from safehub.kernel.errors import BusError
from safehub.kernel.store import StoreError, insert_or_ignore, wrap_errors

log = structlog.get_logger(__name__)

#: Rows a sweep reads (and publishes) at once.
SWEEP_LIMIT = 1000


@dataclass(frozen=True)
class OutboxItem:
    """An encoded event waiting for the broker's confirmation."""

    event_id: str
    body: bytes


class OutboxTable:
    """The ``<prefix>outbox`` table of a store: event id, encoded event, time written.

    The columns are fixed (a store's migrations create the same ones). Reads and deletes
    wrap SQLAlchemy errors as ``error`` (the store's :class:`StoreError` subclass).
    """

    def __init__(
        self, metadata: MetaData, *, prefix: str = "", error: type[StoreError] = StoreError
    ) -> None:
        self.error = error
        self.table = Table(
            f"{prefix}outbox",
            metadata,
            Column("event_id", String(100), primary_key=True),
            Column("body", LargeBinary, nullable=False),
            Column("created_at", Double, nullable=False),
        )

    def add(self, conn: Connection, items: Sequence[OutboxItem]) -> None:
        """Queue events inside the caller's transaction (an event already queued is kept).

        Not wrapped here: the caller owns the transaction, and its ``wrap_errors`` names what
        failed (the state write, the outbox insert or the commit are one operation).
        """
        if items:
            now = time.time()
            conn.execute(
                insert_or_ignore(conn, self.table, keys=["event_id"]),
                [{"event_id": i.event_id, "body": i.body, "created_at": now} for i in items],
            )

    def pending(
        self, engine: Engine, older_than_s: float = 0.0, limit: int = SWEEP_LIMIT
    ) -> list[OutboxItem]:
        """Events written at least ``older_than_s`` ago and not yet confirmed, oldest first."""
        table = self.table
        query = (
            select(table.c.event_id, table.c.body)
            .where(table.c.created_at <= time.time() - older_than_s)
            .order_by(table.c.created_at)
            .limit(limit)
        )
        with wrap_errors(self.error, "cannot read the outbox"), engine.connect() as conn:
            return [OutboxItem(str(a), bytes(b)) for a, b in conn.execute(query)]

    def done(self, engine: Engine, event_ids: Sequence[str]) -> None:
        """Forget events the broker confirmed."""
        if event_ids:
            table = self.table
            with wrap_errors(self.error, "cannot clear the outbox"), engine.begin() as conn:
                conn.execute(table.delete().where(table.c.event_id.in_(list(event_ids))))


class OutboxRelay:
    """Publishes committed outbox events and deletes their rows once the broker confirmed.

    Thread-safe: any thread may :meth:`publish`; one thread runs :meth:`run`, which deletes
    confirmed rows, sweeps rows older than ``older_than_s`` every ``sweep_every_s`` and, on
    stop, waits up to ``drain_s`` for the confirmations still outstanding.
    """

    def __init__(
        self,
        table: OutboxTable,
        engine: Engine,
        producer: EventProducer,
        codec: Codec,
        *,
        older_than_s: float = 10.0,
        sweep_every_s: float = 10.0,
        drain_s: float = 5.0,
    ) -> None:
        self._table = table
        self._engine = engine
        self._producer = producer
        self._codec = codec
        self.older_than_s = older_than_s
        self.sweep_every_s = sweep_every_s
        self.drain_s = drain_s
        self._confirmed: queue.Queue[str] = queue.Queue()
        self._unconfirmed: list[str] = []  # confirmed, but their delete failed: retried
        self._in_flight = 0
        self._settled = threading.Condition()

    def item(self, event: Event) -> OutboxItem:
        """The outbox row of an event (for :meth:`OutboxTable.add`)."""
        return OutboxItem(str(event["envelope"]["event_id"]), self._codec.encode(event))

    def publish(self, events: Iterable[Event]) -> None:
        """Publish events whose outbox rows are committed (never before the commit).

        :class:`BusError` (the event cannot be produced at all) reaches the caller; its row
        stays and the sweep tries again.
        """
        for event in events:
            event_id = str(event["envelope"]["event_id"])
            with self._settled:
                self._in_flight += 1
            try:
                future = self._producer.publish_nowait(event)
            except BusError:
                self._settle()
                raise
            future.add_done_callback(self._on_delivery(event_id))

    def _on_delivery(self, event_id: str) -> Callable[[Future[Delivered]], None]:
        def done(future: Future[Delivered]) -> None:
            if future.exception() is None:
                self._confirmed.put(event_id)
            else:  # stays in the outbox; the sweep publishes it again
                log.warning("outbox event not confirmed by the broker", event_id=event_id)
            self._settle()

        return done

    def _settle(self) -> None:
        with self._settled:
            self._in_flight -= 1
            self._settled.notify_all()

    def confirm(self, wait: float = 0.0) -> int:
        """Delete the rows of confirmed events (waiting up to ``wait`` for the first one).

        A failed delete is logged and retried next time (meanwhile the sweep may publish the
        event again: at least once). Returns how many rows were deleted.
        """
        confirmed, self._unconfirmed = self._unconfirmed, []
        try:
            if wait and not confirmed:
                confirmed.append(self._confirmed.get(timeout=wait))
            while True:
                confirmed.append(self._confirmed.get_nowait())
        except queue.Empty:
            pass
        if not confirmed:
            return 0
        try:
            self._table.done(self._engine, confirmed)
        except StoreError as exc:
            log.warning("outbox rows not cleared, retrying", error=str(exc), count=len(confirmed))
            self._unconfirmed = confirmed
            return 0
        return len(confirmed)

    def sweep(self, older_than_s: float = 0.0) -> int:
        """Publish again the events older than ``older_than_s`` still in the outbox.

        An event that cannot be produced (:class:`BusError`) is logged and left for the next
        sweep, so one bad row never holds back the others. Returns how many were sent.
        """
        sent = 0
        for item in self._table.pending(self._engine, older_than_s):
            try:
                self.publish([self._codec.decode(item.body)])
            except BusError as exc:
                log.warning("outbox event not published", event_id=item.event_id, error=str(exc))
                continue
            sent += 1
        return sent

    def _sweep_quietly(self) -> None:
        try:
            if swept := self.sweep(self.older_than_s):
                log.info("outbox events published again", count=swept)
        except StoreError as exc:  # the next sweep tries again
            log.warning("outbox sweep failed", error=str(exc))

    def run(
        self,
        stop: threading.Event,
        *,
        work: Callable[[float], object] | None = None,
        sweep_at_start: bool = True,
        interval_s: float = 0.05,
    ) -> None:
        """Relay until ``stop``, then drain.

        ``work(wait)``: the service's own step, run each round before the confirmations
        (blocking up to ``wait``; called with 0 once more on stop), e.g. writing a batch of
        state changes and publishing their events. ``sweep_at_start`` False: the caller swept
        already (before accepting work).
        """
        if sweep_at_start:
            self._sweep_quietly()
        last_sweep = time.monotonic()
        while not stop.is_set():
            if work is None:
                self.confirm(interval_s)
            else:
                work(interval_s)
                self.confirm()
            if time.monotonic() - last_sweep > self.sweep_every_s:
                last_sweep = time.monotonic()
                self._sweep_quietly()
        if work is not None:
            work(0)
        self.drain()

    def drain(self, timeout: float | None = None) -> int:
        """Wait (up to ``timeout``, default ``drain_s``) for outstanding confirmations and
        delete their rows; returns how many events are still unconfirmed (the next start's
        sweep publishes them)."""
        deadline = time.monotonic() + (self.drain_s if timeout is None else timeout)
        with self._settled:
            while self._in_flight > 0 and (left := deadline - time.monotonic()) > 0:
                self._settled.wait(left)
            unconfirmed = self._in_flight
        self.confirm()
        if unconfirmed:
            log.warning("outbox events unconfirmed at stop", count=unconfirmed)
        return unconfirmed
