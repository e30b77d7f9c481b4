"""Every deployable's finished spans go to the spans topic, for the timeline.

The timeline keeps the spans of each incident action beside its events, so a reviewer sees
what each system did and how long it took even where no OTLP collector runs. Spans are
written as OTLP protobuf (``ExportTraceServiceRequest``, the collector's own wire format), one
record per trace and batch, keyed by the trace id so one trace's spans stay in order.

The exporter has its own plain producer: the bus producer makes spans of its own, and
exporting through it would trace the exporter. Spans are telemetry, not records of
decisions: acks=1 and no idempotence keep them cheap; a lost span batch costs detail in a
waterfall, never an event on the timeline.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import structlog
from confluent_kafka import KafkaException, Producer
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from safehub.kernel.settings import KafkaSettings

log = structlog.get_logger(__name__)


def telemetry_producer(kafka: KafkaSettings, client_id: str) -> Producer:
    """A plain producer for telemetry (spans, metrics): cheap, not idempotent, never traced."""
    return Producer(
        {
            **kafka.client_config(),
            "client.id": client_id,
            "acks": 1,
            "enable.idempotence": False,
            "linger.ms": 50,
            "compression.type": "lz4",
            "message.timeout.ms": 30_000,
        }
    )


class KafkaSpanExporter(SpanExporter):
    """An OpenTelemetry exporter writing OTLP protobuf batches to a Kafka topic."""

    def __init__(self, kafka: KafkaSettings, topic: str, *, client_id: str) -> None:
        self._topic = topic
        self._max_bytes = kafka.max_message_bytes
        self._producer = telemetry_producer(kafka, f"{client_id}-spans")
        self._dropped = 0
        self._failed_deliveries = 0

    def _delivered(self, err: object, _msg: object) -> None:
        if err is not None:
            self._failed_deliveries += 1
            if self._failed_deliveries == 1:  # one line, not one per batch, while it lasts
                log.warning("span export failing", topic=self._topic, error=str(err))

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Queue one OTLP request per trace (the producer sends in the background)."""
        by_trace: dict[int, list[ReadableSpan]] = defaultdict(list)
        for span in spans:
            if span.context is not None:
                by_trace[span.context.trace_id].append(span)
        for trace_id, group in by_trace.items():
            payload = encode_spans(group).SerializeToString()
            if len(payload) > self._max_bytes:
                self._dropped += len(group)
                log.warning("span batch over the message size limit dropped", spans=len(group))
                continue
            try:
                self._produce(trace_id, payload)
            except BufferError:
                self._producer.poll(0.1)  # queue full: let deliveries drain, then try once more
                try:
                    self._produce(trace_id, payload)
                except (BufferError, KafkaException):
                    self._dropped += len(group)
                    return SpanExportResult.FAILURE
            except KafkaException:
                self._dropped += len(group)
                return SpanExportResult.FAILURE
        self._producer.poll(0)
        return SpanExportResult.SUCCESS

    def _produce(self, trace_id: int, payload: bytes) -> None:
        self._producer.produce(
            self._topic,
            key=format(trace_id, "032x").encode(),
            value=payload,
            on_delivery=self._delivered,
        )

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Wait until queued span batches are written."""
        return self._producer.flush(timeout_millis / 1000) == 0

    def shutdown(self) -> None:
        """Flush what is queued (bounded, so a dead broker cannot hold up a drain)."""
        left = self._producer.flush(5)
        if left or self._dropped or self._failed_deliveries:
            log.warning(
                "spans not exported",
                unsent=left,
                dropped=self._dropped,
                failed=self._failed_deliveries,
            )
