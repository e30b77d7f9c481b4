"""The bus: one producer and one consumer shape for every service and connector.

Producer: idempotent, ``acks=all``; ``publish`` returns only after the broker confirmed the
write (or raises :class:`DeliveryError`); flushed on close. A background thread serves
delivery reports so many threads can publish at once without waiting on each other.

Consumer: at-least-once. Offsets are stored only after the handler returned, and committed
after each batch, on partition revocation and on close. In a fetched batch the partitions
take turns (:func:`fair_order`), so one school's burst never goes ahead of another school's
panic. Poison-message policy:

* bytes that do not decode (corrupt, unknown schema) go to the dead-letter topic at once;
* a handler raising :class:`HandlerError` (permanent) goes to the dead-letter topic at once;
* any other handler exception is retried in place (the partition waits, order is kept) up to
  ``max_attempts`` with backoff, then goes to the dead-letter topic;
* the dead-letter write is confirmed before the offset moves; if it fails the consumer stops
  without committing, so a restart sees the message again;
* a handler failing while the consumer stops is neither retried nor dead-lettered: its offset
  stays uncommitted and the next run gets the message (a shutdown is not a poison message).

Dead-letter records keep the original key, bytes and headers and add ``safehub-dlq-*``
headers (reason, error type, topic, partition, offset, group, time). Reasons come from
SafeHub errors (whose messages carry no payload data) or name only the exception type.
Handlers must be idempotent: after a crash, a message can arrive twice.

Spans and metrics (send/process spans, handler latency, consumed, produced, dead letters,
consumer lag) come from :mod:`safehub.kernel.observe`, shared with the faust side.
"""

from __future__ import annotations

import contextlib
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from opentelemetry.metrics import MeterProvider

from safehub.kernel import observe, tracing
from safehub.kernel.codec import Codec, Event
from safehub.kernel.errors import (
    BusError,
    CodecError,
    DeliveryError,
    HandlerError,
    SafeHubError,
    StopWithoutCommit,
)
from safehub.kernel.lifecycle import Closing
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import TopicCatalog

log = structlog.get_logger(__name__)

H_EVENT_TYPE = "safehub-event-type"
H_SOURCE = "safehub-source"
H_EVENT_ID = "safehub-event-id"
H_CLASSIFICATION = "safehub-classification"
H_TENANT = "safehub-tenant"
H_EXERCISE = "safehub-exercise"
DLQ_PREFIX = "safehub-dlq-"


@dataclass(frozen=True)
class Delivered:
    """Where the broker stored a message."""

    topic: str
    partition: int
    offset: int


#: How often a consumer refreshes its lag snapshot (position vs cached high watermark).
LAG_REFRESH_S = 1.0


class EventProducer(Closing):
    """Publishes events (and raw dead-letter records) with confirmed delivery."""

    def __init__(
        self,
        kafka: KafkaSettings,
        codec: Codec,
        catalog: TopicCatalog,
        *,
        client_id: str = "safehub",
        extra_config: dict[str, Any] | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self._kafka = kafka
        self._codec = codec
        self._catalog = catalog
        self._meters = observe.instruments(meter_provider)
        config = {
            **kafka.client_config(),
            "client.id": client_id,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": kafka.linger_ms,
            "message.timeout.ms": int(kafka.delivery_timeout_s * 1000),
            "allow.auto.create.topics": False,
            **(extra_config or {}),
        }
        try:
            self._producer = Producer(config)
        except KafkaException as exc:
            raise BusError(f"cannot create producer: {exc}") from exc
        self._closed = threading.Event()
        self._poller = threading.Thread(
            target=self._serve_reports, name="producer-poll", daemon=True
        )
        self._poller.start()

    def _serve_reports(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.05)

    def publish(self, event: Event, *, timeout: float | None = None) -> Delivered:
        """Encode, send and wait for the broker's confirmation of ``event``."""
        return self._wait(self.publish_nowait(event), timeout)

    def publish_nowait(self, event: Event) -> Future[Delivered]:
        """Send ``event``; the future resolves when the broker confirmed it."""
        envelope = event.get("envelope") or {}
        event_type = str(envelope.get("event_type"))
        topic = self._catalog.topic_for(event_type)
        value = self._codec.encode(event)
        headers = event_headers(event)
        with observe.sending(
            self._meters,
            topic,
            event_type=event_type,
            event_id=envelope.get("event_id"),
            size=len(value),
            headers=headers,
        ):
            return self._send(topic, self._catalog.key_for(event), value, headers)

    def publish_raw(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: tracing.Headers,
        *,
        timeout: float | None = None,
    ) -> Delivered:
        """Send bytes as they are (dead-letter records, replays) and wait for confirmation."""
        return self._wait(self._send(topic, key, value, headers), timeout)

    def _send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: tracing.Headers
    ) -> Future[Delivered]:
        if value is not None and len(value) > self._kafka.max_message_bytes:
            # The hub enforces the size limit itself: tansu does not (BROKER.md).
            raise BusError(
                f"message for {topic} is {len(value)} bytes, over the "
                f"{self._kafka.max_message_bytes}-byte limit"
            )
        future: Future[Delivered] = Future()

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                future.set_exception(DeliveryError(f"delivery to {topic} failed: {err.str()}"))
            else:
                future.set_result(
                    Delivered(str(msg.topic()), msg.partition() or 0, msg.offset() or 0)
                )

        while True:
            try:
                self._producer.produce(
                    topic,
                    value=value,
                    key=key,
                    headers=list[tuple[str, str | bytes | None]](headers),
                    on_delivery=on_delivery,
                )
                return future
            except BufferError:
                # Local queue full: let the poll thread drain reports, then try again.
                time.sleep(0.005)
            except KafkaException as exc:
                raise BusError(f"cannot produce to {topic}: {exc}") from exc

    def _wait(self, future: Future[Delivered], timeout: float | None) -> Delivered:
        try:
            return future.result(timeout=timeout or self._kafka.delivery_timeout_s + 1.0)
        except FutureTimeout as exc:
            raise DeliveryError("broker did not confirm the message in time") from exc

    def flush(self, timeout: float = 10.0) -> int:
        """Wait for outstanding messages; returns how many are still unconfirmed."""
        remaining: int = self._producer.flush(timeout)
        return remaining

    def close(self, timeout: float = 10.0) -> None:
        """Flush, then stop the delivery-report thread (idempotent)."""
        if self._closed.is_set():
            return
        remaining = self.flush(timeout)
        self._closed.set()
        self._poller.join(timeout=2.0)
        if remaining:
            log.error("producer closed with unconfirmed messages", unconfirmed=remaining)


@dataclass(frozen=True)
class Record:
    """A fetched Kafka record with the optional parts of librdkafka's Message resolved."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    @classmethod
    def of(cls, message: Message) -> Record:
        raw_headers = message.headers() or []
        pairs = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
        key, value = message.key(), message.value()
        return cls(
            topic=str(message.topic()),
            partition=message.partition() or 0,
            offset=message.offset() or 0,
            key=key.encode() if isinstance(key, str) else key,
            value=value.encode() if isinstance(value, str) else value,
            headers=[
                (name, val.encode() if isinstance(val, str) else val)
                for name, val in pairs
                if val is not None
            ],
        )


@dataclass(frozen=True)
class ConsumedEvent:
    """A decoded event with its Kafka coordinates."""

    event: Event
    topic: str
    partition: int
    offset: int
    key: bytes | None
    headers: Sequence[tuple[str, bytes]]

    @property
    def envelope(self) -> dict[str, Any]:
        """The event's envelope."""
        envelope: dict[str, Any] = self.event["envelope"]
        return envelope

    @property
    def event_type(self) -> str:
        """Fullname of the event record."""
        return str(self.envelope["event_type"])

    @property
    def event_id(self) -> str:
        """The event's unique id (the deduplication key)."""
        return str(self.envelope["event_id"])


Handler = Callable[[ConsumedEvent], None]


@dataclass(frozen=True)
class PoisonPolicy:
    """How often a failing handler is retried before its message is dead-lettered."""

    max_attempts: int = 3
    backoff_s: float = 0.2
    backoff_max_s: float = 5.0


@dataclass
class ConsumerStats:
    """Counters a service can expose or a test can assert on."""

    handled: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    retried: int = 0
    assigned: set[tuple[str, int]] = field(default_factory=set)


class GroupConsumer(Closing):
    """What every consumer of a group shares, whatever it does with records.

    The librdkafka consumer (manual offset store: only records handled or dead-lettered move
    forward), the partitions held, commits, the dead letter, lag for the metrics, stop and
    close. :class:`EventConsumer` handles record by record, :class:`~safehub.kernel.batch.
    BatchConsumer` a poll batch at a time; they differ only in :meth:`poll_once`.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        catalog: TopicCatalog,
        *,
        group_id: str,
        topics: Iterable[str],
        dead_letter: EventProducer,
        client_id: str,
        batch_size: int,
        fetch_wait_max_ms: int | None,
        extra_config: dict[str, Any] | None,
        meter_provider: MeterProvider | None,
    ) -> None:
        topics = list(topics)
        self._catalog = catalog
        self._dead_letter = dead_letter
        self._group_id = group_id
        self._batch_size = batch_size
        self._topics = [catalog.name(base) for base in topics]
        # What each topic may carry: anything else is nobody's to handle, so it is
        # dead-lettered (with this group's name) instead of passed over in silence.
        self._declared = {
            catalog.name(base): frozenset(catalog.specs[base].events) for base in topics
        }
        self.stats = ConsumerStats()
        self._meters = observe.instruments(meter_provider)
        # Lag per partition, refreshed on the polling thread and only read by the gauge.
        self._lag: dict[tuple[str, int], int] = {}
        self._lag_due = 0.0
        self._stop = threading.Event()
        config = {
            **kafka.client_config(),
            "client.id": client_id,
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": kafka.session_timeout_ms,
            "heartbeat.interval.ms": kafka.heartbeat_interval_ms,
            "fetch.wait.max.ms": fetch_wait_max_ms or kafka.fetch_wait_max_ms,
            "allow.auto.create.topics": False,
            **(extra_config or {}),
        }
        try:
            self._consumer = Consumer(config)
            self._consumer.subscribe(
                self._topics, on_assign=self._on_assign, on_revoke=self._on_revoke
            )
        except KafkaException as exc:
            raise BusError(f"cannot create consumer for group {group_id}: {exc}") from exc
        self._closed = False
        self._meters.watch_lag(self)

    @property
    def group(self) -> str:
        """The consumer group id."""
        return self._group_id

    def lag(self) -> dict[tuple[str, int], int]:
        """Messages behind the high watermark per assigned partition (latest snapshot)."""
        return self._lag

    def _refresh_lag(self) -> None:
        now = time.monotonic()
        if now < self._lag_due:
            return
        self._lag_due = now + LAG_REFRESH_S
        assigned = [TopicPartition(topic, partition) for topic, partition in self.stats.assigned]
        lag: dict[tuple[str, int], int] = {}
        try:
            for tp in self._consumer.position(assigned) if assigned else ():
                if tp.offset < 0:  # nothing consumed there yet: no position to measure from
                    continue
                # The watermark of the last fetch response: tansu's ListOffsets is wrong.
                _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if high >= 0:
                    lag[tp.topic, tp.partition] = max(0, high - tp.offset)
        except (KafkaException, RuntimeError):
            return  # keep the last snapshot; the next refresh tries again
        self._lag = lag

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.stats.assigned.update((tp.topic, tp.partition) for tp in partitions)
        log.info("partitions assigned", group=self._group_id, count=len(partitions))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._commit(asynchronous=False)
        self.stats.assigned.difference_update((tp.topic, tp.partition) for tp in partitions)
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._lag = {tp: n for tp, n in self._lag.items() if tp not in gone}

    def _commit(self, *, asynchronous: bool) -> None:
        # Commits the stored offsets: only records handled (or dead-lettered) are stored.
        try:
            if asynchronous:
                self._consumer.commit(asynchronous=True)
            else:
                self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("offset commit failed", group=self._group_id, error=str(exc))

    def _fetch(self, timeout: float) -> list[Message]:
        """Up to ``timeout`` for the first record, then what is already fetched (no errors).

        (``consume(n, timeout)`` would wait for ``n`` records or the whole timeout: fatal for
        latency, so it is only used with 0.)
        """
        self._refresh_lag()
        try:
            first = self._consumer.poll(timeout)
            if first is None:
                return []
            messages = [first, *self._consumer.consume(self._batch_size - 1, 0)]
        except KafkaException as exc:
            raise BusError(f"consume failed for group {self._group_id}: {exc}") from exc
        good = []
        for message in messages:
            error = message.error()
            if error is None:
                good.append(message)
            elif error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error", group=self._group_id, error=error.str())
        return good

    @abstractmethod
    def poll_once(self, timeout: float = 0.1) -> int:
        """Handle what one poll brings; returns how many records."""

    def wait_for_assignment(self, timeout: float = 30.0) -> None:
        """Poll until this member holds partitions (joins take ~session.timeout/2 on tansu)."""
        deadline = time.monotonic() + timeout
        while not self.stats.assigned:
            if time.monotonic() > deadline:
                raise BusError(f"group {self._group_id} got no partitions within {timeout} s")
            self.poll_once(0.1)

    def stop(self) -> None:
        """Ask ``run`` to return after the current record or batch (safe from any thread)."""
        self._stop.set()

    def _send_to_dead_letter(self, record: Record, exc: BaseException, *, attempts: int) -> None:
        reason, headers = dead_letter_of(record, exc, attempts=attempts, group=self._group_id)
        # Confirmed before the offset moves; a failure here propagates and nothing is committed.
        self._dead_letter.publish_raw(self._catalog.dead_letter, record.key, record.value, headers)
        self.stats.dead_lettered += 1
        dead_lettered(record, exc, reason=reason, group=self._group_id, meters=self._meters)

    def close(self) -> None:
        """Commit what was handled and leave the group (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._meters.unwatch_lag(self)
        self._lag = {}
        with contextlib.suppress(KafkaException, RuntimeError):
            self._commit(asynchronous=False)
        with contextlib.suppress(KafkaException, RuntimeError):
            self._consumer.close()


class EventConsumer(GroupConsumer):
    """Consumes declared topics in a consumer group, at least once, with a dead-letter topic."""

    def __init__(
        self,
        kafka: KafkaSettings,
        codec: Codec,
        catalog: TopicCatalog,
        *,
        group_id: str,
        topics: Iterable[str],
        handler: Handler,
        dead_letter: EventProducer,
        policy: PoisonPolicy | None = None,
        client_id: str = "safehub",
        fetch_wait_max_ms: int | None = None,
        batch_size: int = 500,
        extra_config: dict[str, Any] | None = None,
        accept: Callable[[Headers], bool] | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        super().__init__(
            kafka,
            catalog,
            group_id=group_id,
            topics=topics,
            dead_letter=dead_letter,
            client_id=client_id,
            batch_size=batch_size,
            fetch_wait_max_ms=fetch_wait_max_ms,
            extra_config=extra_config,
            meter_provider=meter_provider,
        )
        self._codec = codec
        # Decides from the headers alone whether a record is for this consumer: a topic may
        # carry far more of other kinds, and passing them over costs no decode and no span.
        self._accept = accept
        self._handler = handler
        self._policy = policy or PoisonPolicy()
        self._external_stop: threading.Event | None = None

    def run(self, stop: threading.Event | None = None) -> None:
        """Consume until :meth:`stop` is called or ``stop`` is set.

        A handler failing while we stop is neither retried nor dead-lettered: its offset is
        not committed, so the next run (after the restart) gets the message again.
        """
        self._external_stop = stop
        try:
            while not self._stopping():
                self.poll_once(0.1)
        except StopWithoutCommit as exc:
            log.info(
                "stopped with a message left for the next run", group=self._group_id, why=str(exc)
            )

    def _stopping(self) -> bool:
        return self._stop.is_set() or bool(self._external_stop and self._external_stop.is_set())

    def poll_once(self, timeout: float = 0.1) -> int:
        """Wait up to ``timeout`` for a message, handle it and whatever else is already fetched.

        Returns the number of messages processed.
        """
        messages = self._fetch(timeout)
        if not messages:
            return 0
        messages = fair_order(messages)
        done: dict[tuple[str, int], TopicPartition] = {}
        try:
            for message in messages:
                self._process(message)
                topic, partition = str(message.topic()), message.partition() or 0
                done[topic, partition] = TopicPartition(
                    topic, partition, (message.offset() or 0) + 1
                )
        finally:
            # Only what was handled (or dead-lettered) moves forward, even if we stop mid-batch.
            if done:
                self._consumer.store_offsets(offsets=list(done.values()))
        if done:
            self._commit(asynchronous=True)
        return len(done) and len(messages)

    def _process(self, message: Message) -> None:
        record = Record.of(message)
        declared = self._declared.get(record.topic) or frozenset()
        claimed = header(record.headers, H_EVENT_TYPE)
        if declared and claimed is not None and claimed not in declared:
            self._send_to_dead_letter(record, _undeclared(claimed, record.topic), attempts=0)
            observe.passed_over(self._meters, record.topic, self._group_id, observe.DEAD_LETTERED)
            return
        if self._accept is not None and not self._accept(record.headers):
            self.stats.skipped += 1  # the offset still moves on with the batch
            observe.passed_over(self._meters, record.topic, self._group_id, observe.SKIPPED)
            return
        with observe.processing(
            self._meters,
            record.topic,
            partition=record.partition,
            offset=record.offset,
            headers=record.headers,
            group=self._group_id,
        ) as processing:
            try:
                event = self._codec.decode(record.value or b"")
            except CodecError as exc:
                processing.failed(exc)
                self._send_to_dead_letter(record, exc, attempts=0)
                return
            consumed = ConsumedEvent(
                event, record.topic, record.partition, record.offset, record.key, record.headers
            )
            processing.decoded(consumed.event_type)
            misfit: HandlerError | None = None
            if declared and consumed.event_type not in declared:
                misfit = _undeclared(consumed.event_type, record.topic)
            elif claimed is not None and claimed != consumed.event_type:
                misfit = HandlerError(
                    f"header {H_EVENT_TYPE} says {claimed} but the record is {consumed.event_type}"
                )
            if misfit is not None:
                processing.failed(misfit)
                self._send_to_dead_letter(record, misfit, attempts=0)
                return
            self._handle(consumed, record, processing)

    def _handle(
        self, consumed: ConsumedEvent, record: Record, processing: observe.Processing
    ) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                self._handler(consumed)
                self.stats.handled += 1
                return
            except StopWithoutCommit:
                raise
            except HandlerError as exc:
                processing.failed(exc)
                self._send_to_dead_letter(record, exc, attempts=attempt)
                return
            except Exception as exc:
                if self._stopping():
                    # Shutting down: a transient failure must not become a dead letter.
                    raise StopWithoutCommit(
                        f"stopping while {type(exc).__name__} was being retried"
                    ) from exc
                if attempt >= self._policy.max_attempts:
                    processing.failed(exc)
                    self._send_to_dead_letter(record, exc, attempts=attempt)
                    return
                self.stats.retried += 1
                processing.retrying()
                log.warning(
                    "handler failed, retrying",
                    group=self._group_id,
                    topic=record.topic,
                    offset=record.offset,
                    attempt=attempt,
                    error_type=type(exc).__name__,
                )
                delay = self._policy.backoff_s * 2 ** (attempt - 1)
                time.sleep(min(delay, self._policy.backoff_max_s))


def _undeclared(event_type: str, topic: str) -> HandlerError:
    return HandlerError(
        f"{event_type} is not declared for topic {topic} (safehub.kernel.topics): "
        "nothing on this topic handles it"
    )


def fair_order(messages: list[Message]) -> list[Message]:
    """The batch with its partitions taken in turn, each partition's messages in order.

    Partitions are schools: a burst of one school's alerts (480 camera alerts) fetched ahead
    of another school's panic must not be handled before it. Order within a partition, the
    only order Kafka (and the handlers) rely on, is kept.
    """
    lanes: dict[tuple[str | None, int | None], list[Message]] = {}
    for message in messages:
        lanes.setdefault((message.topic(), message.partition()), []).append(message)
    if len(lanes) < 2:
        return messages
    queues = [iter(lane) for lane in lanes.values()]
    ordered: list[Message] = []
    while queues:
        still: list[Iterator[Message]] = []
        for queue in queues:
            item = next(queue, None)
            if item is not None:
                ordered.append(item)
                still.append(queue)
        queues = still
    return ordered


def dead_letter_reason(exc: BaseException, attempts: int) -> str:
    """A reason safe to store: SafeHub error messages carry no payload; others give the type."""
    detail = str(exc) if isinstance(exc, SafeHubError) else f"unexpected {type(exc).__name__}"
    if attempts > 1:
        detail = f"handler failed after {attempts} attempts: {detail}"
    return detail[:1000]


Headers = Sequence[tuple[str, bytes]]


def header(headers: Headers, name: str) -> str | None:
    """The value of header ``name`` as text (None if absent)."""
    return next((value.decode() for key, value in headers if key == name), None)


def event_headers(event: Event) -> tracing.Headers:
    """The ``safehub-*`` headers every published event carries (trace context is added later)."""
    envelope = event.get("envelope") or {}
    tenant = envelope.get("tenant") or {}
    return [
        (H_EVENT_TYPE, str(envelope.get("event_type")).encode()),
        (H_EVENT_ID, str(envelope.get("event_id")).encode()),
        (H_SOURCE, str(envelope.get("source") or "").encode()),
        (H_CLASSIFICATION, ",".join(envelope.get("classification") or ()).encode()),
        (
            H_TENANT,
            "/".join(
                str(tenant.get(part) or "") for part in ("state", "district", "school")
            ).encode(),
        ),
        (H_EXERCISE, b"1" if envelope.get("exercise") else b"0"),
    ]


class RecordLike(Protocol):
    """Where a consumed record came from (the bus's :class:`Record`, faust's StreamRecord)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def headers(self) -> list[tuple[str, bytes]]: ...


def dead_letter_of(
    record: RecordLike, exc: BaseException, *, attempts: int, group: str
) -> tuple[str, tracing.Headers]:
    """The reason and the headers of ``record``'s copy on the dead-letter topic."""
    reason = dead_letter_reason(exc, attempts)
    headers = dead_letter_headers(
        record.headers,
        exc,
        reason=reason,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        group=group,
        attempts=attempts,
    )
    return reason, headers


def dead_lettered(
    record: RecordLike,
    exc: BaseException,
    *,
    reason: str,
    group: str,
    meters: observe.Instruments,
) -> None:
    """Count and log a record whose copy the dead-letter topic confirmed."""
    meters.dead_lettered(record.topic, group, exc)
    log.error(
        "message dead-lettered",
        group=group,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        reason=reason,
    )


def dead_letter_headers(
    headers: Iterable[tuple[str, bytes]],
    exc: BaseException,
    *,
    reason: str,
    topic: str,
    partition: int,
    offset: int,
    group: str,
    attempts: int,
) -> tracing.Headers:
    """The original headers (minus stale ``safehub-dlq-*``) plus this failure's ``safehub-dlq-*``.

    Shared by the bus consumer and the stream (faust) agents, so every dead-letter record
    reads the same whoever wrote it.
    """
    kept: tracing.Headers = [(k, v) for k, v in headers if not k.startswith(DLQ_PREFIX)]
    return [
        *kept,
        (DLQ_PREFIX + "reason", reason.encode()),
        (DLQ_PREFIX + "error-type", type(exc).__name__.encode()),
        (DLQ_PREFIX + "topic", topic.encode()),
        (DLQ_PREFIX + "partition", str(partition).encode()),
        (DLQ_PREFIX + "offset", str(offset).encode()),
        (DLQ_PREFIX + "group", group.encode()),
        (DLQ_PREFIX + "attempts", str(attempts).encode()),
        (DLQ_PREFIX + "at", datetime.now(UTC).isoformat().encode()),
    ]
