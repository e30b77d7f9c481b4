"""OpenTelemetry set-up (traces and metrics) and W3C trace context in Kafka headers.

The standard ``OTEL_*`` variables are honoured (service name, resource attributes, sampler,
``OTEL_SDK_DISABLED``, ``OTEL_METRIC_EXPORT_INTERVAL``, and OTLP export when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set). The bus
injects ``traceparent``/``tracestate`` into every message and the consumer extracts them, so
producer and consumer spans are parent and child in one trace (the confluent-kafka
instrumentation only links them). Span attributes carry identifiers, never payload data.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import structlog
from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from safehub.kernel.settings import HubSettings

Headers = list[tuple[str, bytes]]

TRACER_NAME = "safehub"

log = structlog.get_logger(__name__)


class _HeaderGetter(Getter[Sequence[tuple[str, bytes | str | None]]]):
    def get(self, carrier: Sequence[tuple[str, bytes | str | None]], key: str) -> list[str] | None:
        values = [
            value.decode("latin-1") if isinstance(value, bytes) else value
            for name, value in carrier
            if name.lower() == key and value is not None
        ]
        return values or None

    def keys(self, carrier: Sequence[tuple[str, bytes | str | None]]) -> list[str]:
        return [name for name, _ in carrier]


class _HeaderSetter(Setter[Headers]):
    def set(self, carrier: Headers, key: str, value: str) -> None:
        carrier[:] = [(name, val) for name, val in carrier if name != key]
        carrier.append((key, value.encode("latin-1")))


HEADER_GETTER = _HeaderGetter()
HEADER_SETTER = _HeaderSetter()


def inject(headers: Headers, context: Context | None = None) -> Headers:
    """Add the W3C trace context of ``context`` (default: current) to ``headers``."""
    propagate.inject(headers, context=context, setter=HEADER_SETTER)
    return headers


def extract(headers: Sequence[tuple[str, bytes | str | None]] | None) -> Context:
    """The trace context carried in Kafka ``headers`` (empty context if none)."""
    return propagate.extract(headers or [], getter=HEADER_GETTER)


def setup_tracing(
    service_name: str, extra_processors: Iterable[SpanProcessor] = ()
) -> TracerProvider | None:
    """Install a tracer provider for this process (idempotent per process).

    Returns None when ``OTEL_SDK_DISABLED=true``. Exports over OTLP only when an endpoint is
    configured, so a laptop run needs no collector.
    """
    if _sdk_disabled():
        return None
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        for processor in extra_processors:
            current.add_span_processor(processor)
        return current
    provider = TracerProvider(resource=_resource(service_name))
    if _otlp_endpoint("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    for processor in extra_processors:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    return provider


def setup_process_tracing(service_name: str, settings: HubSettings) -> TracerProvider | None:
    """Tracing for a deployable: OTLP if configured, and the spans topic for the timeline.

    Spans reach the timeline unless ``SAFEHUB_TRACING__TO_TIMELINE=false``. The provider
    flushes its processors at interpreter exit, so a drained process loses no spans.
    """
    processors: list[SpanProcessor] = []
    if settings.tracing.to_timeline and settings.kafka.bootstrap_servers:
        from safehub.kernel.span_export import KafkaSpanExporter
        from safehub.kernel.topics import SPANS, TopicCatalog

        topic = TopicCatalog(settings.kafka.topic_prefix).name(SPANS)
        exporter = KafkaSpanExporter(settings.kafka, topic, client_id=service_name)
        processors.append(
            BatchSpanProcessor(exporter, schedule_delay_millis=settings.tracing.export_delay_ms)
        )
    return setup_tracing(service_name, processors)


def setup_metrics(service_name: str, readers: Iterable[MetricReader] = ()) -> MeterProvider | None:
    """Install a meter provider for this process (once; later calls return it unchanged).

    Returns None when ``OTEL_SDK_DISABLED=true``. Exports over OTLP only when an endpoint is
    configured and the OTLP metric exporter is installed. A meter provider takes its readers
    when it is made, so ``readers`` of a later call are shut down, not added.
    """
    readers = list(readers)
    if _sdk_disabled():
        return None
    current = metrics.get_meter_provider()
    if isinstance(current, MeterProvider):
        for reader in readers:
            reader.shutdown()
        return current
    if _otlp_endpoint("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"):
        try:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter,
            )
        except ImportError:
            log.warning("OTLP endpoint set but no OTLP metric exporter installed")
        else:
            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    provider = MeterProvider(resource=_resource(service_name), metric_readers=readers)
    metrics.set_meter_provider(provider)
    return provider


def setup_process_metrics(
    service_name: str, settings: HubSettings, topic_base: str
) -> MeterProvider | None:
    """Metrics for a deployable: OTLP if configured, and the metrics topic ``topic_base``.

    The topic gets the deployment prefix like every topic; it is taken as given, not from
    the catalog (which refuses names it does not declare). Reports go every
    ``OTEL_METRIC_EXPORT_INTERVAL`` ms (60 s by default), and once more at exit.
    """
    if _sdk_disabled():
        return None
    current = metrics.get_meter_provider()
    if isinstance(current, MeterProvider):  # set up already: make no exporter to throw away
        return current
    readers: list[MetricReader] = []
    if settings.kafka.bootstrap_servers:
        from safehub.kernel.metric_export import KafkaMetricExporter
        from safehub.kernel.topics import TopicCatalog

        topic = TopicCatalog(settings.kafka.topic_prefix).prefix + topic_base
        exporter = KafkaMetricExporter(settings.kafka, topic, client_id=service_name)
        readers.append(PeriodicExportingMetricReader(exporter))
    return setup_metrics(service_name, readers)


def _sdk_disabled() -> bool:
    return os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true"


def _otlp_endpoint(signal_variable: str) -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(signal_variable))


def _resource(service_name: str) -> Resource:
    # Resource.create adds OTEL_RESOURCE_ATTRIBUTES; the service name is the deployable's.
    return Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", service_name)})


def tracer() -> trace.Tracer:
    """The SafeHub tracer (resolved at call time, so set-up order does not matter)."""
    return trace.get_tracer(TRACER_NAME)
