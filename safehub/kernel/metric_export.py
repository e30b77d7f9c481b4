"""Every deployable's metrics go to a metrics topic, exported the same way as its spans.

Each collection is one OTLP protobuf record (``ExportMetricsServiceRequest``, the collector's
own wire format), keyed by the deployable so one deployable's reports stay in order. Like
the span exporter it has its own plain producer (acks=1, no idempotence, never traced):
metrics are telemetry, and a lost report costs one data point of a cumulative series.

The topic name is a parameter: the metrics topic is not declared in
:mod:`safehub.kernel.topics` yet, so the exporter creates nothing and produces to the
prefixed name as given (tansu creates it on first write; a Kafka without auto-creation
refuses it and the exporter logs one warning).
"""

from __future__ import annotations

from typing import Any

import structlog
from confluent_kafka import KafkaException
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData

from safehub.kernel.settings import KafkaSettings
from safehub.kernel.span_export import telemetry_producer

log = structlog.get_logger(__name__)


class KafkaMetricExporter(MetricExporter):
    """An OpenTelemetry metric exporter writing OTLP protobuf requests to a Kafka topic."""

    def __init__(self, kafka: KafkaSettings, topic: str, *, client_id: str) -> None:
        super().__init__()
        self._topic = topic
        self._key = client_id.encode()
        self._max_bytes = kafka.max_message_bytes
        self._producer = telemetry_producer(kafka, f"{client_id}-metrics")
        self._dropped = 0
        self._failed_deliveries = 0

    def _delivered(self, err: object, _msg: object) -> None:
        if err is not None:
            self._failed_deliveries += 1
            if self._failed_deliveries == 1:  # one line, not one per report, while it lasts
                log.warning("metric export failing", topic=self._topic, error=str(err))

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **_kwargs: Any
    ) -> MetricExportResult:
        """Queue one OTLP request (the producer sends in the background)."""
        payload = encode_metrics(metrics_data).SerializeToString()
        if len(payload) > self._max_bytes:
            self._dropped += 1
            log.warning("metric report over the message size limit dropped", size=len(payload))
            return MetricExportResult.FAILURE
        try:
            self._produce(payload)
        except BufferError:
            self._producer.poll(0.1)  # queue full: let deliveries drain, then try once more
            try:
                self._produce(payload)
            except (BufferError, KafkaException):
                self._dropped += 1
                return MetricExportResult.FAILURE
        except KafkaException:
            self._dropped += 1
            return MetricExportResult.FAILURE
        self._producer.poll(0)
        return MetricExportResult.SUCCESS

    def _produce(self, payload: bytes) -> None:
        self._producer.produce(
            self._topic, key=self._key, value=payload, on_delivery=self._delivered
        )

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Wait until queued reports are written."""
        return self._producer.flush(timeout_millis / 1000) == 0

    def shutdown(self, timeout_millis: float = 30_000, **_kwargs: Any) -> None:
        """Flush what is queued (bounded, so a dead broker cannot hold up a drain)."""
        left = self._producer.flush(min(timeout_millis / 1000, 5.0))
        if left or self._dropped or self._failed_deliveries:
            log.warning(
                "metrics not exported",
                unsent=left,
                dropped=self._dropped,
                failed=self._failed_deliveries,
            )
