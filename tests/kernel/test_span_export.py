"""Spans reach the spans topic as OTLP protobuf, joined to the trace of the event they served."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from safehub.kernel.bus import EventProducer
from safehub.kernel.codec import Codec
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.span_export import KafkaSpanExporter
from safehub.kernel.topics import SPANS, TopicCatalog
from safehub.kernel.tracing import extract
from tests.support.examples import panic_at
from tests.support.kafka import read_all, read_topic
from tests.support.processes import Component
from tests.support.waiting import wait_until

pytestmark = pytest.mark.kafka


def _spans(records: list[object]) -> list[tuple[str, str, str, str]]:
    """(key, service, trace id, span name) of every span in OTLP records."""
    found = []
    for record in records:
        request = ExportTraceServiceRequest.FromString(record.value())  # type: ignore[attr-defined]
        for resource_spans in request.resource_spans:
            service = next(
                a.value.string_value
                for a in resource_spans.resource.attributes
                if a.key == SERVICE_NAME
            )
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(
                        (record.key().decode(), service, span.trace_id.hex(), span.name)  # type: ignore[attr-defined]
                    )
    return found


def test_exporter_writes_one_otlp_record_per_trace_keyed_by_trace_id(
    kafka: KafkaSettings, make_catalog: Callable[..., TopicCatalog]
) -> None:
    catalog = make_catalog(SPANS)
    exporter = KafkaSpanExporter(kafka, catalog.name(SPANS), client_id="test")
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: "safehub-test"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("parent") as parent, tracer.start_as_current_span("child"):
        pass
    with tracer.start_as_current_span("other"):
        pass
    assert exporter.force_flush(10_000)
    spans = _spans(read_topic(kafka, catalog.name(SPANS), expect=3))
    trace_id = format(parent.get_span_context().trace_id, "032x")
    assert sorted(name for _, _, t, name in spans if t == trace_id) == ["child", "parent"]
    assert all(key == trace for key, _, trace, _ in spans)
    assert {service for _, service, _, _ in spans} == {"safehub-test"}
    provider.shutdown()


def test_a_service_exports_its_spans_in_the_trace_of_the_event_it_handled(
    kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec, tmp_path: Path
) -> None:
    incidents = Component(
        "services.incidents",
        kafka,
        catalog.prefix,
        tmp_path,
        env={"SAFEHUB_TRACING__EXPORT_DELAY_MS": "50"},
    ).start()
    try:
        with EventProducer(kafka, codec, catalog, client_id="test") as producer:
            producer.publish(panic_at(datetime.now(UTC)))
        opened = read_topic(kafka, catalog.name("safehub.incidents.v1"), expect=1)
        assert opened, "the panic opened no incident"
        context = trace.get_current_span(extract(opened[0].headers())).get_span_context()
        trace_id = format(context.trace_id, "032x")

        def incidents_spans() -> list[str]:
            return [
                name
                for _, service, trace, name in _spans(read_all(kafka, catalog.name(SPANS)))
                if trace == trace_id and service == "safehub-incidents"
            ]

        wait_until(incidents_spans, timeout=30, what="the incidents service's spans exported")
        assert any("consume" in name or "process" in name for name in incidents_spans())
    finally:
        incidents.stop()
