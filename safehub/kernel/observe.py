"""The telemetry middleware of the bus and the streams: one place for spans and metrics.

The bus (:mod:`safehub.kernel.bus`) and the faust side (:mod:`safehub.kernel.streams`) wrap
every send in :func:`sending` and every consumed record in :func:`processing`, so both make
the same spans (``send <topic>`` / ``process <topic>``, OTel messaging attributes, the
producer's ``traceparent`` as the consumer span's parent) and the same metrics:

* ``safehub.handler.duration`` (histogram, ms; topic, event_type, outcome): one record from
  the start of processing to its end (decode, handler, retries, dead-letter write);
* ``safehub.messages.consumed`` (counter; topic, group, outcome);
* ``safehub.messages.produced`` (counter; topic, event_type; the bus's and the streams' sends
  of events, not raw dead-letter writes);
* ``safehub.messages.dead_lettered`` (counter; topic, group, error_type);
* ``safehub.consumer.lag`` (observable gauge; topic, partition, group): high watermark minus
  position, from snapshots each bus consumer refreshes on its own thread (faust consumers
  have none yet).

The counters are observable counters over plain counts (:class:`Tally`), so a message pays
one SDK call (the histogram's), not three.

Outcomes: ``ok``, ``retried`` (handled after a retry), ``dead_lettered``, ``skipped``
(passed over by header). Attributes are identifiers of bounded cardinality only (topic,
event type, group, partition, exception type): never payload data. Instruments come from the
global meter provider unless one is given (a test's own), and are no-ops until a provider
is installed (:func:`safehub.kernel.tracing.setup_metrics`).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from safehub.kernel import tracing

METER_NAME = "safehub"

OK = "ok"
RETRIED = "retried"
DEAD_LETTERED = "dead_lettered"
SKIPPED = "skipped"

# The bus's H_EVENT_ID (the bus imports this module, not the other way round).
_H_EVENT_ID = "safehub-event-id"

# Handlers on the emergency path take well under a millisecond; the SDK's default buckets
# start at 5 ms and would put all of them in one.
_LATENCY_BUCKETS_MS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 5000, 30000)

# One tracer for the process: trace.get_tracer() builds a new one each call (~50 us); a
# proxy made before the provider is installed resolves to the real tracer once it is.
_TRACER = trace.get_tracer(tracing.TRACER_NAME)


class LagSource(Protocol):
    """A consumer whose lag the gauge reports (the bus consumer)."""

    @property
    def group(self) -> str:
        """The consumer group."""

    def lag(self) -> Mapping[tuple[str, int], int]:
        """The latest lag per (topic, partition) this member holds."""


class Tally:
    """Counts kept in a dict and reported by an observable counter (cumulative).

    A synchronous SDK counter costs about 9 us a call (measured; frozen attribute sets, a
    lock, exemplar checks), and a consumed record would pay it next to the histogram's; a
    dict increment under a lock costs well under 1 us, and the SDK reads the totals only
    when it collects.
    """

    def __init__(self, meter: Meter, name: str, description: str, keys: tuple[str, ...]) -> None:
        self._keys = keys
        self._counts: dict[tuple[str, ...], int] = {}
        self._lock = threading.Lock()
        meter.create_observable_counter(
            name, callbacks=[self._observe], unit="{message}", description=description
        )

    def add(self, *values: str) -> None:
        """Count one, under the attribute values given in the order of ``keys``."""
        with self._lock:
            self._counts[values] = self._counts.get(values, 0) + 1

    def _observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            counts = list(self._counts.items())
        return [Observation(n, dict(zip(self._keys, key, strict=True))) for key, n in counts]


class Instruments:
    """The kernel's metric instruments on one meter."""

    def __init__(self, meter: Meter) -> None:
        self.latency = meter.create_histogram(
            "safehub.handler.duration",
            unit="ms",
            description="time to process one consumed record, by outcome",
            explicit_bucket_boundaries_advisory=_LATENCY_BUCKETS_MS,
        )
        self.consumed = Tally(
            meter, "safehub.messages.consumed", "records consumed", ("topic", "group", "outcome")
        )
        self.produced = Tally(
            meter, "safehub.messages.produced", "events sent", ("topic", "event_type")
        )
        self.dead_letters = Tally(
            meter,
            "safehub.messages.dead_lettered",
            "records written to the dead-letter topic",
            ("topic", "group", "error_type"),
        )
        self._lag_sources: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()
        meter.create_observable_gauge(
            "safehub.consumer.lag",
            callbacks=[self._observe_lag],
            unit="{message}",
            description="high watermark minus the consumer's position, per partition",
        )

    def watch_lag(self, source: LagSource) -> None:
        """Report ``source``'s lag until :meth:`unwatch_lag` (or until it is collected)."""
        with self._lock:
            self._lag_sources.add(source)

    def unwatch_lag(self, source: LagSource) -> None:
        """Stop reporting ``source``'s lag."""
        with self._lock:
            self._lag_sources.discard(source)

    def _observe_lag(self, _options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            sources = list(self._lag_sources)
        # Only snapshots are read here: the reader's thread never calls into a client that
        # another thread is polling or closing.
        return [
            Observation(lag, {"topic": topic, "partition": partition, "group": source.group})
            for source in sources
            for (topic, partition), lag in source.lag().items()
        ]

    def dead_lettered(self, topic: str, group: str, exc: BaseException) -> None:
        """Count one confirmed dead-letter write."""
        self.dead_letters.add(topic, group, type(exc).__name__)


_BY_PROVIDER: weakref.WeakKeyDictionary[MeterProvider, Instruments] = weakref.WeakKeyDictionary()
_CREATE = threading.Lock()


def instruments(provider: MeterProvider | None = None) -> Instruments:
    """The instruments on ``provider`` (default: the global provider), made once each."""
    with _CREATE:
        if provider is None:
            return _global_instruments()
        found = _BY_PROVIDER.get(provider)
        if found is None:
            found = _BY_PROVIDER[provider] = Instruments(provider.get_meter(METER_NAME))
        return found


@functools.cache
def _global_instruments() -> Instruments:
    # A proxy meter until a provider is installed; its instruments then bind to it.
    return Instruments(metrics.get_meter(METER_NAME))


def messaging_attributes(topic: str, operation: str, event_id: str | None) -> dict[str, Any]:
    """The OTel messaging attributes every bus span carries."""
    attributes: dict[str, Any] = {
        "messaging.system": "kafka",
        "messaging.operation.name": operation,
        "messaging.operation.type": operation,
        "messaging.destination.name": topic,
    }
    if event_id:
        attributes["messaging.message.id"] = event_id
    return attributes


@contextlib.contextmanager
def sending(
    meters: Instruments,
    topic: str,
    *,
    event_type: str,
    event_id: str | None,
    size: int,
    headers: tracing.Headers,
) -> Iterator[Span]:
    """The producer span of one event; injects its trace context into ``headers``.

    Counts the event as produced when the block returns (a send that raised is not).
    """
    with _TRACER.start_as_current_span(
        f"send {topic}",
        kind=SpanKind.PRODUCER,
        attributes={
            **messaging_attributes(topic, "send", event_id),
            "safehub.event_type": event_type,
            "messaging.message.body.size": size,
        },
    ) as span:
        tracing.inject(headers)
        yield span
    meters.produced.add(topic, event_type)


class Processing:
    """One record being processed: its span and what became of it (for the metrics)."""

    __slots__ = ("event_type", "outcome", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.event_type = ""
        self.outcome = OK

    def decoded(self, event_type: str) -> None:
        """The record decoded to an ``event_type`` (a span attribute and a metric one)."""
        self.event_type = event_type
        self.span.set_attribute("safehub.event_type", event_type)

    def retrying(self) -> None:
        """The handler failed and will be tried again."""
        self.outcome = RETRIED

    def failed(self, exc: BaseException) -> None:
        """The record goes to the dead-letter topic because of ``exc``."""
        self.span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        self.outcome = DEAD_LETTERED


@contextlib.contextmanager
def processing(
    meters: Instruments,
    topic: str,
    *,
    partition: int,
    offset: int,
    headers: Sequence[tuple[str, bytes]],
    group: str,
) -> Iterator[Processing]:
    """The consumer span of one record, child of the producer's trace context.

    Records the duration and the consumed count when the block returns; a block that raises
    (stopping with the record left for the next run) is in the span, not in the metrics.
    """
    event_id = next((v.decode() for k, v in headers if k == _H_EVENT_ID), None)
    started = time.perf_counter()
    with _TRACER.start_as_current_span(
        f"process {topic}",
        context=tracing.extract(headers),
        kind=SpanKind.CONSUMER,
        attributes={
            **messaging_attributes(topic, "process", event_id),
            "messaging.consumer.group.name": group,
            "messaging.destination.partition.id": str(partition),
            "messaging.kafka.offset": offset,
        },
    ) as span:
        current = Processing(span)
        yield current
        # Before the span ends: ending it may export it (a simple processor), not our time.
        elapsed_ms = (time.perf_counter() - started) * 1000
    meters.latency.record(
        elapsed_ms, {"topic": topic, "event_type": current.event_type, "outcome": current.outcome}
    )
    meters.consumed.add(topic, group, current.outcome)


def passed_over(meters: Instruments, topic: str, group: str, outcome: str) -> None:
    """Count a record settled without a process span (skipped, or dead-lettered by header)."""
    meters.consumed.add(topic, group, outcome)
