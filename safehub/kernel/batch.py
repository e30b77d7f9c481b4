"""Batch consumption: each poll batch decoded record by record, written in one go, committed.

For consumers whose writes cost per call rather than per record (one database transaction
per batch). :class:`BatchConsumer` reads topics in a consumer group, at least once:

* each record is decoded on its own (``decode(value, headers) -> items``); a record that
  does not decode, or whose header or decoded items name an event type its topic does not
  declare, goes to the dead-letter topic at once (confirmed, with the reason);
* the items of the whole batch go to ``write`` in one call, and only then are the batch's
  offsets stored and committed: a crash in between redelivers the batch, so ``write`` must
  be idempotent;
* ``write`` failing with one of the ``transient`` errors (the target is down, the items are
  fine) is retried with backoff until it succeeds or the consumer stops, never
  dead-lettered; stopping then leaves the batch uncommitted for the next run;
* ``write`` failing otherwise: the batch is written again record by record to find the
  culprit; a record whose items fail goes to the dead-letter topic (:class:`HandlerError`
  at once, others after ``policy.max_attempts``) and the rest is written;
* :class:`StopWithoutCommit` from ``write`` (or from a retry cut short by stopping) leaves
  the batch uncommitted and makes :meth:`BatchConsumer.run` return; close the consumer then.

Dead-letter records are the bus's (:func:`safehub.kernel.bus.dead_letter_headers`). No
spans are made: a batch has no one parent, and a consumer of the spans topic would feed
itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import structlog
from confluent_kafka import TopicPartition
from opentelemetry.metrics import MeterProvider

from safehub.kernel.bus import (
    H_EVENT_TYPE,
    EventProducer,
    GroupConsumer,
    Headers,
    PoisonPolicy,
    Record,
    header,
)
from safehub.kernel.errors import HandlerError, StopWithoutCommit
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import TopicCatalog

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: Dead-letter records of a batch consumer count one attempt (nothing is retried in place).
DECODE_ATTEMPTS = 1


class BatchConsumer(GroupConsumer, Generic[T]):
    """Decode a poll batch record by record, ``write`` it in one go, then commit its offsets.

    ``event_type`` gives an item's event type (fullname) when the items are events, so that
    one its topic does not declare is dead-lettered; ``transient`` are the errors of the
    write target itself (retried, never dead-lettered). ``stats.handled`` counts records
    written.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        catalog: TopicCatalog,
        *,
        group_id: str,
        topics: Sequence[str],
        decode: Callable[[bytes, Headers], list[T]],
        write: Callable[[list[T]], Any],
        dead_letter: EventProducer,
        event_type: Callable[[T], str | None] | None = None,
        transient: tuple[type[BaseException], ...] = (),
        policy: PoisonPolicy | None = None,
        stop: threading.Event | None = None,
        client_id: str = "safehub",
        batch_size: int = 500,
        fetch_wait_max_ms: int | None = None,
        extra_config: dict[str, Any] | None = None,
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
        self._decode = decode
        self._write = write
        self._event_type = event_type
        self._transient = transient
        self._policy = policy or PoisonPolicy()
        if stop is not None:
            self._stop = stop

    def run(self, poll_timeout: float = 0.2) -> None:
        """Consume until stopped, or until a batch is left for the next run."""
        try:
            while not self._stop.is_set():
                self.poll_once(poll_timeout)
        except StopWithoutCommit as exc:
            log.info(
                "stopped with a batch left for the next run", group=self._group_id, why=str(exc)
            )

    def poll_once(self, timeout: float = 0.2) -> int:
        """One batch: decode, dead-letter the unusable, write, commit. Returns its size.

        Waits up to ``timeout`` for the first record, then takes what is already fetched.
        """
        messages = self._fetch(timeout)
        decoded: list[tuple[Record, list[T]]] = []
        done: dict[tuple[str, int], TopicPartition] = {}
        for message in messages:
            record = Record.of(message)
            items = self._decoded(record)
            if items:
                decoded.append((record, items))
            done[record.topic, record.partition] = TopicPartition(
                record.topic, record.partition, record.offset + 1
            )
        if decoded:
            self._write_batch(decoded)
        if done:
            self._consumer.store_offsets(offsets=list(done.values()))
            self._commit(asynchronous=True)
        return len(messages) if done else 0

    def _decoded(self, record: Record) -> list[T]:
        """The record's items, or [] once it is dead-lettered."""
        declared = self._declared.get(record.topic) or frozenset()
        claimed = header(record.headers, H_EVENT_TYPE)
        try:
            if declared and claimed is not None and claimed not in declared:
                raise HandlerError(f"{claimed} is not declared for topic {record.topic}")
            items = self._decode(record.value or b"", record.headers)
            if declared and self._event_type is not None:
                for item in items:
                    kind = self._event_type(item)
                    if kind is not None and kind not in declared:
                        raise HandlerError(f"{kind} is not declared for topic {record.topic}")
        except StopWithoutCommit:
            raise
        except Exception as exc:
            # Whatever decoding raises is the record's fault; the reason names no payload.
            self._send_to_dead_letter(record, exc, attempts=DECODE_ATTEMPTS)
            return []
        return items

    def _write_batch(self, decoded: list[tuple[Record, list[T]]]) -> None:
        try:
            self._write_until_done([item for _record, items in decoded for item in items])
        except StopWithoutCommit:
            raise
        except Exception as exc:
            # Not the target's trouble but some record's: find it by writing one at a time.
            log.warning(
                "batch write failed, writing record by record",
                group=self._group_id,
                records=len(decoded),
                error_type=type(exc).__name__,
            )
            for record, items in decoded:
                self._write_record(record, items)
        else:
            self.stats.handled += len(decoded)

    def _write_until_done(self, items: list[T]) -> None:
        """``write``, retrying the ``transient`` errors until it succeeds or we stop."""
        delay = self._policy.backoff_s
        while True:
            try:
                self._write(items)
                return
            except StopWithoutCommit:
                raise
            except self._transient as exc:
                # The items are fine, the target is not (yet): never dead-letter them.
                log.warning(
                    "write failed, retrying", group=self._group_id, error_type=type(exc).__name__
                )
                if self._stop.wait(delay):
                    raise StopWithoutCommit("stopping with a batch not written") from exc
            delay = min(delay * 2, self._policy.backoff_max_s)

    def _write_record(self, record: Record, items: list[T]) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                self._write_until_done(items)
                self.stats.handled += 1
                return
            except StopWithoutCommit:
                raise
            except HandlerError as exc:
                self._send_to_dead_letter(record, exc, attempts=attempt)
                return
            except Exception as exc:
                if attempt >= self._policy.max_attempts:
                    self._send_to_dead_letter(record, exc, attempts=attempt)
                    return
                self.stats.retried += 1
                log.warning(
                    "write failed, retrying the record",
                    group=self._group_id,
                    topic=record.topic,
                    offset=record.offset,
                    attempt=attempt,
                    error_type=type(exc).__name__,
                )
                delay = self._policy.backoff_s * 2 ** (attempt - 1)
                # Stopping mid-retry: a shutdown is not a poison message.
                if self._stop.wait(min(delay, self._policy.backoff_max_s)):
                    raise StopWithoutCommit(
                        f"stopping while {type(exc).__name__} was being retried"
                    ) from exc
