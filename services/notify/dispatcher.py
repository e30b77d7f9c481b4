"""Fan-out: a NotificationRequested becomes messages per recipient and channel, with proof.

For each recipient the dispatcher plans an ordered list of channels from what the people file
holds (SMS, EMAIL, PUSH, then VOICE; or the request's own list). Life-safety and urgent
messages go out on the first two at once; a ROUTINE one on the first. Then:

* **fallback**: a FAILED delivery (refused by the provider, a failed status callback, or
  transient errors beyond ``max_retries``) queues the next unused channel at once;
* **retries**: transient transport errors are retried on the same delivery after a capped
  exponential backoff;
* **escalation**: a recipient who has not acknowledged ``ack_timeout_s`` after the request
  gets the next channel (VOICE first), then again at doubling, capped intervals, up to
  ``max_escalations``. The schedule is a column in the store, so a restart resumes it;
* **rate limit**: one token bucket per channel (provider) in front of its senders.

Every step is a DeliveryReceipt (QUEUED → SENT → DELIVERED | FAILED with the provider's
reason) written to the store's outbox in the transaction that records it and published
after commit; NotificationAcknowledged is emitted once per (notification, recipient),
because only the first ``claim_ack`` succeeds. Events and log lines name people by id only.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from safehub.contracts.names import EventType
from safehub.kernel.bus import ConsumedEvent, EventProducer
from safehub.kernel.codec import Codec, Event
from safehub.kernel.envelope import new_event, stable_id
from safehub.kernel.errors import HandlerError, SafeHubError
from safehub.kernel.outbox import OutboxItem, OutboxRelay
from services.notify import templates
from services.notify.audiences import ENDPOINT_CHANNELS, AudienceError, Audiences, Target
from services.notify.channels.base import (
    ChannelAdapter,
    ChannelError,
    OutboundMessage,
    SendResult,
)
from services.notify.settings import NotifySection, RateLimit
from services.notify.store import (
    RANK,
    DeliveryRow,
    NotificationRow,
    RecipientRow,
    StatusChange,
    Store,
    StoreError,
)

log = structlog.get_logger(__name__)

SOURCE = "notify"
REQUESTED = EventType.NOTIFICATION_REQUESTED
RECEIPT = EventType.DELIVERY_RECEIPT
#: Person channels in order of preference (VOICE last: the most intrusive, for escalation).
PREFERENCE = ("SMS", "EMAIL", "PUSH", "VOICE")
PRIORITY_ORDER = {"LIFE_SAFETY": 0, "URGENT": 1, "ROUTINE": 2}
#: A repeated SMS "1" within this time of an acknowledgement is answered "already confirmed".
REPLY_WINDOW_S = 24 * 3600.0
_IDS = uuid.UUID("0b6e8a4e-3f0e-4d8e-9a57-5f1c6f1f2c11")
#: Recipients per fan-out transaction: a small first chunk so the first messages leave within
#: milliseconds of the request, then larger ones (the last size repeats).
CHUNKS = (50, 500)


def notify_id(*parts: str) -> str:
    """A deterministic id of notify's (redeliveries produce the same ids)."""
    return stable_id(_IDS, *parts)


def paths(priority: str) -> int:
    """How many channels a first message goes out on at once."""
    return 1 if priority == "ROUTINE" else 2


class TokenBucket:
    """A provider's rate limit: ``rate`` tokens per second, at most ``burst`` saved."""

    def __init__(self, limit: RateLimit) -> None:
        self._rate = limit.rate_per_s
        self._burst = float(limit.burst)
        self._tokens = float(limit.burst)
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self, stop: threading.Event) -> bool:
        """Take one token, waiting as needed; False if stopping."""
        while True:
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
                self._stamp = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return True
                wait = (1 - self._tokens) / self._rate
            if stop.wait(wait):
                return False


class Timer:
    """Runs callbacks at a later time on one thread (retry backoff)."""

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._wake = threading.Condition()

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` after ``delay`` seconds."""
        with self._wake:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), callback))
            self._wake.notify()

    def run(self) -> None:
        """Serve until stop."""
        while not self._stop.is_set():
            with self._wake:
                timeout = 0.2
                if self._heap:
                    timeout = min(timeout, max(0.0, self._heap[0][0] - time.monotonic()))
                self._wake.wait(timeout)
                due = []
                while self._heap and self._heap[0][0] <= time.monotonic():
                    due.append(heapq.heappop(self._heap)[2])
            for callback in due:
                callback()


@dataclass
class Job:
    """One delivery attempt waiting for (or being sent by) a channel worker."""

    delivery_id: str
    notification: NotificationRow
    target: Target
    channel: str
    attempt: int
    reason: str
    retries: int = 0


@dataclass
class Live:
    """What the dispatcher knows of a delivery while it is in flight."""

    notification_id: str
    recipient_id: str
    channel: str
    attempt: int
    status: str
    provider_message_id: str | None = None


@dataclass
class Plan:
    """A recipient's channel order and the attempts made per channel so far."""

    order: list[str]
    attempts: dict[str, int] = field(default_factory=dict)


class Outbox:
    """Notify's side of the kernel outbox (:class:`~safehub.kernel.outbox.OutboxRelay`).

    Status changes from the channel workers are batched: one transaction per batch records
    the statuses and their receipts, so thousands of messages do not cost thousands of
    commits. The relay publishes committed events, forgets them once the broker confirmed
    them and re-publishes what a crash left (:meth:`sweep`).
    """

    def __init__(
        self, store: Store, producer: EventProducer, codec: Codec, stop: threading.Event
    ) -> None:
        self._store = store
        self._stop = stop
        self._relay = OutboxRelay(store.outbox, store.engine, producer, codec)
        self._pending: queue.Queue[tuple[StatusChange, Event]] = queue.Queue()

    def item(self, event: Event) -> OutboxItem:
        """The outbox row of an event."""
        return self._relay.item(event)

    def publish(self, events: Iterable[Event]) -> None:
        """Publish events already in the outbox (committed)."""
        self._relay.publish(events)

    def record(self, change: StatusChange, event: Event) -> None:
        """Queue a status change and its receipt for the next batch."""
        self._pending.put((change, event))

    def run(self) -> None:
        """Write batches until stop; then write what is left (startup swept in ``recover``)."""
        self._relay.run(self._stop, work=self._batch, sweep_at_start=False)

    def _batch(self, wait: float) -> None:
        batch: list[tuple[StatusChange, Event]] = []
        try:
            batch.append(self._pending.get(timeout=wait) if wait else self._pending.get_nowait())
            while len(batch) < 2000:
                batch.append(self._pending.get_nowait())
        except queue.Empty:
            pass
        if not batch:
            return
        changes = [change for change, _ in batch]
        events = [event for _, event in batch]
        delay = 0.1
        while True:
            try:
                self._store.record_statuses(changes, [self.item(e) for e in events])
                break
            except StoreError as exc:
                log.warning("store write failed, retrying", error=str(exc))
                if self._stop.wait(delay):
                    break  # not recorded: the deliveries stay QUEUED and are re-sent
                delay = min(delay * 2, 5.0)
        self.publish(events)

    def sweep(self, older_than_s: float = 0.0) -> int:
        """Re-publish outbox events older than ``older_than_s`` (after a crash or a failure)."""
        return self._relay.sweep(older_than_s)


class Dispatcher:
    """Plans, sends, falls back, retries, escalates and records acknowledgements."""

    def __init__(
        self,
        *,
        config: NotifySection,
        store: Store,
        audiences: Audiences,
        adapters: Mapping[str, ChannelAdapter],
        outbox: Outbox,
        ack_url: Callable[[str], str],
        stop: threading.Event,
        on_notification: Callable[[NotificationRow, Sequence[Target]], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.audiences = audiences
        self.adapters = dict(adapters)
        self.outbox = outbox
        self._ack_url = ack_url
        self._stop = stop
        self._on_notification = on_notification
        self._lock = threading.Lock()
        #: Notified when a provider message id becomes known (callbacks wait on it).
        self._provider_ids = threading.Condition(self._lock)
        self._notifications: dict[str, NotificationRow] = {}
        self._plans: dict[tuple[str, str], Plan] = {}
        self._live: dict[str, Live] = {}
        self._by_provider_id: dict[str, str] = {}
        self._seq = itertools.count()
        self._queues: dict[str, queue.PriorityQueue[tuple[int, int, Job]]] = {
            channel: queue.PriorityQueue() for channel in self.adapters
        }
        self._buckets = {
            channel: TokenBucket(config.rate_limits[channel])
            for channel in self.adapters
            if channel in config.rate_limits
        }
        self.timer = Timer(stop)

    # -- threads -----------------------------------------------------------------------------

    def threads(self) -> list[tuple[str, Callable[[], None]]]:
        """(name, target) of every thread the dispatcher needs."""
        found: list[tuple[str, Callable[[], None]]] = [
            ("notify-outbox", self.outbox.run),
            ("notify-timer", self.timer.run),
            ("notify-escalations", self._escalations),
        ]
        for channel in self.adapters:
            for i in range(max(1, self.config.workers.get(channel, 2))):
                found.append((f"notify-{channel.lower()}-{i}", self._worker(channel)))
        return found

    def recover(self) -> int:
        """After a restart: re-publish outbox leftovers and send deliveries never handed over."""
        self.outbox.sweep()
        rows = self.store.queued()
        for row in rows:
            notification = self._notification(row.notification_id)
            target = self._target(row.recipient_id, notification)
            if notification is None or target is None or row.channel not in self.adapters:
                continue
            self._remember(row)
            self._submit(
                Job(row.delivery_id, notification, target, row.channel, row.attempt, row.reason)
            )
        if rows:
            log.info("queued deliveries resumed after restart", count=len(rows))
        return len(rows)

    # -- requests ----------------------------------------------------------------------------

    def handle(self, consumed: ConsumedEvent) -> None:
        """Consumer handler for the notifications topic."""
        if consumed.event_type == REQUESTED:
            self.handle_request(consumed)
        elif consumed.event_type == RECEIPT and consumed.envelope.get("source") != SOURCE:
            self.handle_foreign_receipt(consumed.event)

    def handle_request(self, consumed: ConsumedEvent) -> None:
        """Resolve, plan, store and queue a notification (once per notification id).

        Recipients are stored and sent in chunks (:data:`CHUNKS`), endpoints (PA, signage)
        first, so the first messages leave while the rest are still being written. Each
        chunk's recipients, deliveries and QUEUED receipts commit together. If the process
        dies between chunks the request is redelivered (its offset moves only after this
        returns) and the recipients not stored yet are added then.
        """
        event = consumed.event
        envelope = consumed.envelope
        notification_id = str(event["notification_id"])
        tenant = envelope["tenant"]
        try:
            if tenant.get("school"):
                self.audiences.school(str(tenant["school"]))
            targets = self.audiences.resolve(
                list(event.get("audiences") or []),
                [(r["recipient_id"], list(r["channels"])) for r in event.get("recipients") or []],
                district=str(tenant["district"]),
            )
        except AudienceError as exc:
            raise HandlerError(f"notification {notification_id}: {exc}") from exc
        # Endpoints first: one PA announcement reaches a whole building.
        everyone = targets = sorted(targets, key=lambda t: t.kind != "endpoint")
        stored = self.store.notification(notification_id)
        if stored is not None:
            known = {r.recipient_id for r in self.store.recipients_of(notification_id)}
            targets = [t for t in targets if t.recipient_id not in known]
            if not targets:
                log.info("notification already handled, skipped", notification_id=notification_id)
                return
            log.warning(
                "fan-out interrupted earlier, resumed",
                notification_id=notification_id,
                remaining=len(targets),
            )
            notification = stored
        else:
            school_id = str(tenant.get("school") or targets[0].school_id)
            notification = self._new_notification(consumed, school_id)
        with self._lock:
            self._notifications[notification_id] = notification
        sizes = itertools.chain(CHUNKS[:-1], itertools.repeat(CHUNKS[-1]))
        create = stored is None
        offset = deliveries = 0
        while create or offset < len(targets):
            size = next(sizes)
            queued = self._fan_out(notification, targets[offset : offset + size], create=create)
            if queued is None:  # stored meanwhile by another consumer (a redelivery race)
                return
            create = False
            offset += size
            deliveries += queued
        log.info(
            "notification fanned out",
            notification_id=notification_id,
            incident_id=notification.incident_id,
            srp_action=notification.srp_action,
            exercise=notification.exercise,
            recipients=len(targets),
            deliveries=deliveries,
        )
        if self._on_notification is not None:  # CAP scope comes from the whole audience
            self._on_notification(notification, everyone)

    @staticmethod
    def _new_notification(consumed: ConsumedEvent, school_id: str) -> NotificationRow:
        event, envelope = consumed.event, consumed.envelope
        tenant = envelope["tenant"]
        return NotificationRow(
            notification_id=str(event["notification_id"]),
            request_event_id=consumed.event_id,
            incident_id=envelope.get("incident_id"),
            tenant={**tenant, "school": tenant.get("school")},
            school_id=school_id,
            building=envelope.get("building"),
            srp_action=event.get("srp_action"),
            priority=str(event["priority"]),
            exercise=bool(envelope.get("exercise")),
            require_ack=bool(event.get("require_ack")),
            headline=str(event["headline"]),
            body=str(event["body"]),
            audiences=list(event.get("audiences") or []),
            cap_identifier=None,
            created_at=time.time(),
        )

    def _fan_out(
        self, notification: NotificationRow, targets: Sequence[Target], *, create: bool
    ) -> int | None:
        """Store one chunk of recipients with their first deliveries, then queue them.

        Returns the number of deliveries queued; None if ``create`` found the notification
        already stored.
        """
        now = time.time()
        notification_id = notification.notification_id
        first_escalation = (
            notification.created_at + self.config.ack_timeout_s
            if notification.require_ack and self.config.max_escalations > 0
            else None
        )
        recipients: list[RecipientRow] = []
        jobs: list[Job] = []
        rows: list[DeliveryRow] = []
        events: list[Event] = []
        plans: dict[tuple[str, str], Plan] = {}
        for target in targets:
            order = self._order(target)
            person = target.kind != "endpoint"
            recipients.append(
                RecipientRow(
                    notification_id,
                    target.recipient_id,
                    target.kind,
                    order,
                    None,
                    None,
                    0,
                    first_escalation if person else None,
                )
            )
            plan = Plan(order)
            channels = order[: paths(notification.priority)] if person else order[:1]
            if not channels:  # nobody to send to on any configured channel: say so
                row = self._row(
                    notification, target.recipient_id, "OTHER", 1, reason="initial", now=now
                )
                rows.append(
                    replace(
                        row,
                        status="FAILED",
                        error="no reachable channel configured for this recipient",
                    )
                )
                events.append(self._receipt(notification, rows[-1], "FAILED", rows[-1].error))
                continue
            for channel in channels:
                plan.attempts[channel] = 1
                row = self._row(
                    notification, target.recipient_id, channel, 1, reason="initial", now=now
                )
                rows.append(row)
                events.append(self._receipt(notification, row, "QUEUED"))
                jobs.append(Job(row.delivery_id, notification, target, channel, 1, "initial"))
            plans[(notification_id, target.recipient_id)] = plan
        outbox = [self.outbox.item(e) for e in events]
        if create:
            if not self.store.create_notification(notification, recipients, rows, outbox):
                return None
        else:
            self.store.add_recipients(recipients, rows, outbox)
        with self._lock:
            self._plans.update(plans)
        for row in rows:
            self._remember(row)
        for job in jobs:
            self._submit(job)
        self.outbox.publish(events)
        return len(jobs)

    def handle_foreign_receipt(self, event: Event) -> None:
        """A receipt from elsewhere (the gateway, for PA/signage command results).

        One for a delivery notify never made is dead-lettered (HandlerError): passing it over
        would hide a PA or sign that reports on an announcement nobody asked for.
        """
        notification_id = str(event["notification_id"])
        if self._notification(notification_id) is None:
            raise HandlerError(
                f"receipt for unknown notification {notification_id[:64]!r}: "
                "no delivery of this notify to update"
            )
        rows = [
            d
            for d in self.store.deliveries_of(notification_id, str(event["recipient_id"]))
            if d.channel == event["channel"]
        ]
        if not rows:
            raise HandlerError(
                f"receipt for notification {notification_id[:64]!r}: no "
                f"{str(event['channel'])[:32]} delivery to {str(event['recipient_id'])[:64]!r}"
            )
        latest = max(rows, key=lambda d: d.attempt)
        self._remember(latest)
        self.transition(
            latest.delivery_id,
            str(event["status"]),
            event.get("provider_message_id"),
            event.get("error"),
            emit=False,
        )

    # -- planning ----------------------------------------------------------------------------

    def _order(self, target: Target) -> list[str]:
        available = [c for c in target.addresses() if c in self.adapters]
        if target.endpoint_channel is not None:
            return available
        if target.requested_channels:
            return [c for c in target.requested_channels if c in available]
        return [c for c in PREFERENCE if c in available]

    def _plan(self, notification: NotificationRow, recipient_id: str) -> Plan:
        key = (notification.notification_id, recipient_id)
        with self._lock:
            plan = self._plans.get(key)
        if plan is not None:
            return plan
        target = self._target(recipient_id, notification)
        stored = next(
            (
                r
                for r in self.store.recipients_of(notification.notification_id)
                if r.recipient_id == recipient_id
            ),
            None,
        )
        order = stored.channels if stored else (self._order(target) if target else [])
        plan = Plan(list(order))
        for row in self.store.deliveries_of(notification.notification_id, recipient_id):
            plan.attempts[row.channel] = max(plan.attempts.get(row.channel, 0), row.attempt)
        with self._lock:
            return self._plans.setdefault(key, plan)

    @staticmethod
    def _row(
        n: NotificationRow,
        recipient_id: str,
        channel: str,
        attempt: int,
        *,
        reason: str,
        now: float,
    ) -> DeliveryRow:
        delivery_id = notify_id(n.notification_id, recipient_id, channel, str(attempt))
        return DeliveryRow(
            delivery_id,
            n.notification_id,
            recipient_id,
            channel,
            attempt,
            "QUEUED",
            None,
            None,
            reason,
            now,
            now,
        )

    def _next_attempt(
        self, n: NotificationRow, target: Target, channel: str, reason: str
    ) -> tuple[DeliveryRow, Event, Job]:
        plan = self._plan(n, target.recipient_id)
        with self._lock:
            attempt = plan.attempts.get(channel, 0) + 1
            plan.attempts[channel] = attempt
        row = self._row(n, target.recipient_id, channel, attempt, reason=reason, now=time.time())
        job = Job(row.delivery_id, n, target, channel, attempt, reason)
        return row, self._receipt(n, row, "QUEUED"), job

    def _fallback(self, job: Job) -> None:
        """The delivery failed: the next channel not tried yet, at once."""
        n, target = job.notification, job.target
        if target.kind == "endpoint":
            return
        plan = self._plan(n, target.recipient_id)
        with self._lock:
            unused = [c for c in plan.order if c not in plan.attempts]
        if not unused:
            log.warning(
                "every channel of a recipient failed",
                notification_id=n.notification_id,
                recipient_id=target.recipient_id,
            )
            return
        row, event, next_job = self._next_attempt(n, target, unused[0], "fallback")
        self.store.add_deliveries([row], [self.outbox.item(event)])
        self._remember(row)
        self._submit(next_job)
        self.outbox.publish([event])
        log.info(
            "fallback channel queued",
            notification_id=n.notification_id,
            recipient_id=target.recipient_id,
            failed=job.channel,
            channel=unused[0],
        )

    # -- escalation --------------------------------------------------------------------------

    def _escalations(self) -> None:
        interval = min(0.25, self.config.ack_timeout_s / 4)
        while not self._stop.wait(interval):
            try:
                due = self.store.due_escalations(time.time())
            except (StoreError, SafeHubError, OSError) as exc:
                log.warning("escalation scan failed", error_type=type(exc).__name__)
                continue
            for row in due:
                self.escalate(row)

    def escalate(self, row: RecipientRow) -> bool:
        """Send the next escalation of an unacknowledged recipient (stored atomically)."""
        n = self._notification(row.notification_id)
        target = self._target(row.recipient_id, n) if n else None
        level = row.escalation_level + 1
        config = self.config
        next_at = None
        if level < config.max_escalations:
            next_at = time.time() + min(config.ack_timeout_s * 2**level, config.escalation_cap_s)
        if n is None or target is None:
            return self.store.escalate(
                row.notification_id,
                row.recipient_id,
                level=level,
                next_at=next_at,
                deliveries=[],
                outbox=[],
            )
        plan = self._plan(n, target.recipient_id)
        channel = _escalation_channel(plan, level)
        if channel is None:
            return self.store.escalate(
                n.notification_id,
                target.recipient_id,
                level=level,
                next_at=next_at,
                deliveries=[],
                outbox=[],
            )
        delivery, event, job = self._next_attempt(n, target, channel, f"escalation-{level}")
        moved = self.store.escalate(
            n.notification_id,
            target.recipient_id,
            level=level,
            next_at=next_at,
            deliveries=[delivery],
            outbox=[self.outbox.item(event)],
        )
        if not moved:
            with self._lock:
                plan.attempts[channel] -= 1
            return False
        self._remember(delivery)
        self._submit(job)
        self.outbox.publish([event])
        log.info(
            "not acknowledged: escalated",
            notification_id=n.notification_id,
            recipient_id=target.recipient_id,
            level=level,
            channel=channel,
        )
        return True

    # -- sending -----------------------------------------------------------------------------

    def _submit(self, job: Job) -> None:
        rank = PRIORITY_ORDER.get(job.notification.priority, 2)
        self._queues[job.channel].put((rank, next(self._seq), job))

    def _worker(self, channel: str) -> Callable[[], None]:
        jobs = self._queues[channel]

        def work() -> None:
            while not self._stop.is_set():
                try:
                    _rank, _seq, job = jobs.get(timeout=0.2)
                except queue.Empty:
                    continue
                try:
                    self._send(job)
                except Exception:  # a bug must not kill the channel's worker
                    log.exception("delivery failed unexpectedly", delivery_id=job.delivery_id)

        return work

    def _send(self, job: Job) -> None:
        n, target = job.notification, job.target
        if job.reason.startswith("escalation") and self._acknowledged(n, target.recipient_id):
            self.transition(job.delivery_id, "EXPIRED", None, "acknowledged before sending")
            return
        bucket = self._buckets.get(job.channel)
        if bucket is not None and not bucket.acquire(self._stop):
            return  # stopping: still QUEUED in the store, sent after the restart
        message = self._message(job)
        adapter = self.adapters[job.channel]
        try:
            result = adapter.send(message)
        except ChannelError as exc:
            if job.retries < self.config.max_retries:
                job.retries += 1
                delay = min(
                    self.config.retry_initial_s * 2 ** (job.retries - 1), self.config.retry_cap_s
                )
                log.warning(
                    "transient channel failure, retrying",
                    delivery_id=job.delivery_id,
                    channel=job.channel,
                    retry=job.retries,
                    delay_s=delay,
                    error=str(exc),
                )
                self.timer.call_later(delay, lambda: self._submit(job))
                return
            result = SendResult(accepted=False, provider_message_id=None, error=str(exc))
        except Exception as exc:
            log.exception("channel adapter failed", delivery_id=job.delivery_id)
            result = SendResult(
                accepted=False,
                provider_message_id=None,
                error=f"adapter error: {type(exc).__name__}",
            )
        if result.accepted:
            if result.provider_message_id:
                with self._provider_ids:
                    self._by_provider_id[result.provider_message_id] = job.delivery_id
                    self._provider_ids.notify_all()
            self.transition(job.delivery_id, "SENT", result.provider_message_id, None)
            if result.delivered:
                self.transition(job.delivery_id, "DELIVERED", result.provider_message_id, None)
        else:
            self.transition(job.delivery_id, "FAILED", None, result.error or "refused")

    def _message(self, job: Job) -> OutboundMessage:
        n, target = job.notification, job.target
        person = target.kind != "endpoint"
        ack_url = (
            self._ack_url(job.delivery_id)
            if n.require_ack and person and job.channel in ("EMAIL", "PUSH")
            else None
        )
        school = self.audiences.school(target.school_id)
        if person:
            rendered = templates.render(
                srp_action=n.srp_action,
                headline=n.headline,
                body=n.body,
                school_name=school.name,
                language=target.language,
                channel=job.channel,
                exercise=n.exercise,
                ack_url=ack_url,
                require_ack=n.require_ack and person,
                for_family=target.kind == "guardian",
            )
            subject, text, language = rendered.subject, rendered.text, target.language
        else:
            text = templates.announcement(
                srp_action=n.srp_action,
                body=n.body,
                school_name=school.name,
                exercise=n.exercise,
            )
            subject, language = n.headline, "en-US"
        return OutboundMessage(
            delivery_id=job.delivery_id,
            notification_id=n.notification_id,
            recipient_id=target.recipient_id,
            address=target.addresses().get(job.channel, ""),
            subject=subject,
            text=text,
            language=language,
            ack_url=ack_url,
            exercise=n.exercise,
        )

    # -- statuses ----------------------------------------------------------------------------

    def _remember(self, row: DeliveryRow) -> None:
        with self._lock:
            self._live.setdefault(
                row.delivery_id,
                Live(
                    row.notification_id,
                    row.recipient_id,
                    row.channel,
                    row.attempt,
                    row.status,
                    row.provider_message_id,
                ),
            )

    def _live_delivery(self, delivery_id: str) -> Live | None:
        with self._lock:
            live = self._live.get(delivery_id)
        if live is not None:
            return live
        row = self.store.delivery(delivery_id)
        if row is None:
            return None
        self._remember(row)
        with self._lock:
            return self._live.get(delivery_id)

    def transition(
        self,
        delivery_id: str,
        status: str,
        provider_message_id: str | None,
        error: str | None,
        *,
        emit: bool = True,
    ) -> bool:
        """Move a delivery forward (never back); record it and its receipt; fall back on FAILED.

        ``emit`` False: the receipt is someone else's (the gateway's); only record it.
        """
        live = self._live_delivery(delivery_id)
        if live is None:
            return False
        with self._lock:
            if RANK.get(status, 0) <= RANK.get(live.status, 0):
                return False
            live.status = status
            live.provider_message_id = provider_message_id or live.provider_message_id
        n = self._notification(live.notification_id)
        if n is None:
            return False
        change = StatusChange(delivery_id, status, live.provider_message_id, error)
        row = DeliveryRow(
            delivery_id,
            live.notification_id,
            live.recipient_id,
            live.channel,
            live.attempt,
            status,
            live.provider_message_id,
            error,
            "",
            0,
            0,
        )
        if emit:
            self.outbox.record(change, self._receipt(n, row, status, error))
        else:
            self.store.record_statuses([change], [])
        if status == "FAILED":
            target = self._target(live.recipient_id, n)
            if target is not None:
                self._fallback(Job(delivery_id, n, target, live.channel, live.attempt, "failed"))
        if status in ("DELIVERED", "FAILED", "EXPIRED"):
            with self._lock:  # final: keep memory bounded
                self._live.pop(delivery_id, None)
                if live.provider_message_id:
                    self._by_provider_id.pop(live.provider_message_id, None)
        return True

    def provider_status(
        self, provider_message_id: str, status: str, error: str | None, *, wait_s: float = 5.0
    ) -> bool:
        """A provider's status callback; False if no delivery has that provider id."""
        delivery_id = self._delivery_of(provider_message_id, wait_s)
        if delivery_id is None:
            return False
        return self.transition(delivery_id, status, provider_message_id, error) or True

    def _delivery_of(self, provider_message_id: str, wait_s: float) -> str | None:
        def known() -> str | None:
            return self._by_provider_id.get(provider_message_id)

        deadline = time.monotonic() + wait_s
        timeout = 0.0
        while True:
            with self._provider_ids:
                # The callback can overtake the send call's own answer: wait for it in memory.
                delivery_id = self._provider_ids.wait_for(known, timeout)
            if delivery_id is not None:
                return delivery_id
            row = self.store.delivery_by_provider_id(provider_message_id)  # final or older
            if row is not None:
                return row.delivery_id
            timeout = min(0.25, deadline - time.monotonic())
            if timeout <= 0 or self._stop.is_set():
                return None

    # -- acknowledgements --------------------------------------------------------------------

    def _acknowledged(self, n: NotificationRow, recipient_id: str) -> bool:
        return any(
            r.acked_at is not None
            for r in self.store.recipients_of(n.notification_id)
            if r.recipient_id == recipient_id
        )

    def acknowledge_delivery(self, delivery_id: str, channel: str | None = None) -> bool | None:
        """Acknowledge through a delivery (link, button, keypress); None if unknown."""
        row = self.store.delivery(delivery_id)
        if row is None:
            return None
        return self.acknowledge(row.notification_id, row.recipient_id, channel or row.channel)

    def acknowledge_reply(self, phone: str, body: str) -> bool | None:
        """An SMS reply "1": acknowledges the newest open notification of that number.

        None if the number has nothing awaiting acknowledgement (False: already done).
        """
        if body.strip() != "1":
            return None
        ids = self.audiences.ids_by_phone(phone)
        open_acks = self.store.open_acks_for(ids)
        if not open_acks:
            # A second "1" after the first was taken: say so rather than "nothing to confirm".
            return False if self.store.acked_since(ids, time.time() - REPLY_WINDOW_S) else None
        notification_id, recipient_id = open_acks[0]
        return self.acknowledge(notification_id, recipient_id, "SMS")

    def acknowledge(
        self,
        notification_id: str,
        recipient_id: str,
        channel: str,
        response: str = "ACKNOWLEDGED",
    ) -> bool:
        """Record an acknowledgement; True only for the first one (the event is emitted once)."""
        n = self._notification(notification_id)
        if n is None:
            return False
        event = new_event(
            EventType.NOTIFICATION_ACKNOWLEDGED,
            source=SOURCE,
            tenant=n.tenant,
            building=n.building,
            incident_id=n.incident_id,
            causation_id=n.request_event_id,
            exercise=n.exercise,
            event_id=notify_id("ack", notification_id, recipient_id),
            payload={
                "notification_id": notification_id,
                "recipient_id": recipient_id,
                "channel": channel,
                "response": response,
                "message": None,
            },
        )
        first = self.store.claim_ack(
            notification_id,
            recipient_id,
            channel=channel,
            response=response,
            outbox=[self.outbox.item(event)],
        )
        if first:
            self.outbox.publish([event])
            log.info(
                "acknowledged",
                notification_id=notification_id,
                recipient_id=recipient_id,
                channel=channel,
            )
        return first

    # -- lookups -----------------------------------------------------------------------------

    def _notification(self, notification_id: str) -> NotificationRow | None:
        with self._lock:
            found = self._notifications.get(notification_id)
        if found is not None:
            return found
        row = self.store.notification(notification_id)
        if row is not None:
            with self._lock:
                self._notifications[notification_id] = row
        return row

    def _target(self, recipient_id: str, n: NotificationRow | None) -> Target | None:
        person = self.audiences.person(recipient_id)
        if person is not None:
            return person
        kind, _, school = recipient_id.partition(":")
        if kind in ENDPOINT_CHANNELS and school:
            return Target(
                recipient_id, "endpoint", school, endpoint_channel=ENDPOINT_CHANNELS[kind]
            )
        return None

    def context(self, notification_id: str) -> NotificationRow:
        """A notification (for channel adapters that need its envelope)."""
        n = self._notification(notification_id)
        if n is None:
            raise SafeHubError(f"unknown notification {notification_id}")
        return n

    def _receipt(
        self, n: NotificationRow, row: DeliveryRow, status: str, error: str | None = None
    ) -> Event:
        return new_event(
            EventType.DELIVERY_RECEIPT,
            source=SOURCE,
            tenant=n.tenant,
            building=n.building,
            incident_id=n.incident_id,
            causation_id=n.request_event_id,
            exercise=n.exercise,
            event_id=notify_id("receipt", row.delivery_id, status),
            payload={
                "notification_id": n.notification_id,
                "recipient_id": row.recipient_id,
                "channel": row.channel,
                "status": status,
                "attempt": row.attempt,
                "provider_message_id": row.provider_message_id,
                "error": error,
            },
        )

    # -- status report -----------------------------------------------------------------------

    def status(self, notification_id: str) -> dict[str, Any] | None:
        """Per-recipient status of a notification: channels, statuses, acknowledgement."""
        n = self.store.notification(notification_id)
        if n is None:
            return None
        deliveries: dict[str, list[DeliveryRow]] = {}
        for row in self.store.deliveries_of(notification_id):
            deliveries.setdefault(row.recipient_id, []).append(row)
        recipients = []
        for r in sorted(self.store.recipients_of(notification_id), key=lambda r: r.recipient_id):
            rows = deliveries.get(r.recipient_id, [])
            recipients.append(
                {
                    "recipient_id": r.recipient_id,
                    "kind": r.kind,
                    "acknowledged": r.acked_at is not None,
                    "acknowledged_at": r.acked_at,
                    "ack_channel": r.ack_channel,
                    "escalation_level": r.escalation_level,
                    "next_escalation_at": r.next_escalation_at,
                    "reached": any(d.status in ("SENT", "DELIVERED") for d in rows),
                    "deliveries": [
                        {
                            "delivery_id": d.delivery_id,
                            "channel": d.channel,
                            "attempt": d.attempt,
                            "reason": d.reason,
                            "status": d.status,
                            "error": d.error,
                            "updated_at": d.updated_at,
                        }
                        for d in rows
                    ],
                }
            )
        people = [r for r in recipients if r["kind"] != "endpoint"]
        return {
            "notification_id": n.notification_id,
            "incident_id": n.incident_id,
            "school_id": n.school_id,
            "srp_action": n.srp_action,
            "exercise": n.exercise,
            "require_ack": n.require_ack,
            "created_at": n.created_at,
            "recipients": recipients,
            "totals": {
                "recipients": len(people),
                "reached": sum(1 for r in people if r["reached"]),
                "acknowledged": sum(1 for r in people if r["acknowledged"]),
            },
            "not_acknowledged": [r["recipient_id"] for r in people if not r["acknowledged"]],
            "never_reached": [r["recipient_id"] for r in people if not r["reached"]],
        }


def _escalation_channel(plan: Plan, level: int) -> str | None:
    """VOICE first if not tried, then any untried channel, then cycle (VOICE when possible)."""
    if not plan.order:
        return None
    unused = sorted((c for c in plan.order if c not in plan.attempts), key=lambda c: c != "VOICE")
    if unused:
        return unused[0]
    if "VOICE" in plan.order:
        return "VOICE"
    return plan.order[(level - 1) % len(plan.order)]
