"""Bus metrics reach the metrics topic as OTLP protobuf: latency, dead letters, lag, no payload."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource

from safehub.contracts.registry import event_schemas
from safehub.kernel.bus import ConsumedEvent, EventProducer, PoisonPolicy
from safehub.kernel.codec import Codec
from safehub.kernel.errors import HandlerError
from safehub.kernel.metric_export import KafkaMetricExporter
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import METRICS as METRICS_TOPIC
from safehub.kernel.topics import TopicCatalog
from safehub.kernel.tracing import setup_metrics
from tests.support.examples import SENSITIVE_MARK, example_event, panic_at
from tests.support.kafka import consuming, read_all
from tests.support.processes import Component
from tests.support.waiting import wait_until

pytestmark = pytest.mark.kafka

PANIC = "safehub.events.PanicAlert"

Point = tuple[str, dict[str, str], float]  # (metric name, attributes, value or count)


def _attributes(pairs: Iterator[KeyValue] | Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        value = pair.value
        kind = value.WhichOneof("value")
        out[pair.key] = str(getattr(value, kind)) if kind else ""
    return out


def _points(request: ExportMetricsServiceRequest) -> tuple[set[str], list[Point]]:
    """Service names and (name, attributes, value) of every data point in one request."""
    services: set[str] = set()
    points: list[Point] = []
    for resource_metrics in request.resource_metrics:
        services.add(_attributes(resource_metrics.resource.attributes).get(SERVICE_NAME, ""))
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                assert kind is not None, metric.name
                for point in getattr(metric, kind).data_points:
                    if kind == "histogram":
                        value = float(point.count)
                    else:
                        value = float(point.as_int if point.HasField("as_int") else point.as_double)
                    points.append((metric.name, _attributes(point.attributes), value))
    return services, points


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


@pytest.fixture
def metrics_topic(kafka: KafkaSettings, make_catalog: Callable[..., TopicCatalog]) -> str:
    """The metrics topic under a prefix of this test."""
    return make_catalog("safehub.deadletter.v1", METRICS_TOPIC).name(METRICS_TOPIC)


def test_consumer_metrics_are_exported_to_the_metrics_topic_as_otlp(
    kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, group_id: str, metrics_topic: str
) -> None:
    exporter = KafkaMetricExporter(kafka, metrics_topic, client_id="safehub-test")
    # Exports only when forced: the test decides when a report is written.
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(
        resource=Resource.create({SERVICE_NAME: "safehub-test"}), metric_readers=[reader]
    )
    schema = event_schemas()[PANIC]
    ok, flaky, poison = (example_event(schema, school=f"sch-metrics-{n}") for n in range(3))
    ids = {"flaky": flaky["envelope"]["event_id"], "poison": poison["envelope"]["event_id"]}
    handled: list[str] = []
    failed_once: set[str] = set()

    def handler(consumed: ConsumedEvent) -> None:
        if consumed.event_id == ids["poison"]:
            raise HandlerError("this one is permanent")
        if consumed.event_id == ids["flaky"] and consumed.event_id not in failed_once:
            failed_once.add(consumed.event_id)
            raise ValueError("transient")
        handled.append(consumed.event_id)

    topic = catalog.topic_for(PANIC)
    try:
        with (
            EventProducer(kafka, codec, catalog, meter_provider=provider) as producer,
            consuming(
                kafka,
                codec,
                catalog,
                producer,
                group_id,
                ["safehub.alerts.v1"],
                handler,
                policy=PoisonPolicy(max_attempts=3, backoff_s=0.01),
                meter_provider=provider,
            ) as consumer,
        ):
            for event in (ok, flaky, poison):
                producer.publish(event)
            wait_until(
                lambda: len(handled) == 2 and consumer.stats.dead_lettered == 1,
                what="two events handled and one dead-lettered",
            )

            def report() -> tuple[set[str], list[Point]] | None:
                # Lag is measured on the consumer's thread about once a second: until then a
                # report has no lag for this topic yet.
                assert reader.force_flush(10_000)
                records = read_all(kafka, metrics_topic)
                latest = ExportMetricsServiceRequest.FromString(records[-1].value())
                services, points = _points(latest)
                lagging = [
                    p
                    for p in points
                    if p[0] == "safehub.consumer.lag"
                    and p[1].get("topic") == topic
                    and p[1].get("group") == group_id
                ]
                return (services, points) if lagging else None

            found = wait_until(report, timeout=20, what="a report with the lag")
            assert found is not None
            services, points = found
    finally:
        provider.shutdown()

    assert services == {"safehub-test"}

    def total(name: str, **attributes: str) -> float:
        return sum(
            value
            for metric, attrs, value in points
            if metric == name and all(attrs.get(k) == v for k, v in attributes.items())
        )

    latency = "safehub.handler.duration"
    assert total(latency, topic=topic, event_type=PANIC) == 3
    assert total(latency, topic=topic, outcome="ok") == 1
    assert total(latency, topic=topic, outcome="retried") == 1
    assert total(latency, topic=topic, outcome="dead_lettered") == 1
    dead = "safehub.messages.dead_lettered"
    assert total(dead) == 1
    assert total(dead, topic=topic, group=group_id, error_type="HandlerError") == 1
    assert total("safehub.messages.consumed", topic=topic, group=group_id) == 3
    assert total("safehub.messages.produced", topic=topic, event_type=PANIC) == 3
    lag = [v for m, a, v in points if m == "safehub.consumer.lag" and a["topic"] == topic]
    assert lag and all(v == 0 for v in lag), "everything was consumed: no lag"

    # Identifiers only: no value of any event's payload in any attribute.
    payload = {
        s
        for event in (ok, flaky, poison)
        for s in _strings(event)
        if s and s != event["envelope"]["event_type"]
    }
    for _, attrs, _ in points:
        for value in attrs.values():
            assert SENSITIVE_MARK not in value
            assert value not in payload, value


def test_metrics_setup_honours_otel_sdk_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert setup_metrics("safehub-test") is None


def test_lag_gauge_stops_reporting_a_closed_consumer(
    kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, group_id: str
) -> None:
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    stop = threading.Event()
    with EventProducer(kafka, codec, catalog, meter_provider=provider) as producer:
        producer.publish(example_event(event_schemas()[PANIC]))
        with consuming(
            kafka,
            codec,
            catalog,
            producer,
            group_id,
            ["safehub.alerts.v1"],
            lambda _c: stop.set(),
            meter_provider=provider,
        ):
            wait_until(stop.is_set, what="the event handled")
            wait_until(lambda: _lag_points(reader), what="lag reported while consuming")
        assert not _lag_points(reader)
    provider.shutdown()


def _lag_points(reader: Any) -> list[Any]:
    data = reader.get_metrics_data()
    return [
        point
        for resource in (data.resource_metrics if data else ())
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "safehub.consumer.lag"
        for point in metric.data.data_points
    ]


def test_a_deployable_exports_its_metrics_under_its_own_service_name(
    kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, tmp_path: Path
) -> None:
    topic = catalog.name(METRICS_TOPIC)
    incidents = Component(
        "services.incidents",
        kafka,
        catalog.prefix,
        tmp_path,
        env={"OTEL_METRIC_EXPORT_INTERVAL": "200"},
    ).start()
    alerts = catalog.name("safehub.alerts.v1")
    try:
        with EventProducer(kafka, codec, catalog, client_id="test") as producer:
            producer.publish(panic_at(datetime.now(UTC)))

        def lag_reported() -> bool:
            # A partition has a lag once its consumer took a record from it: the panic's.
            for record in read_all(kafka, topic):
                services, points = _points(ExportMetricsServiceRequest.FromString(record.value()))
                if services == {"safehub-incidents"} and any(
                    name == "safehub.consumer.lag" and attrs["topic"] == alerts
                    for name, attrs, _ in points
                ):
                    return True
            return False

        wait_until(lag_reported, timeout=30, what="the incidents service's lag reported")
    finally:
        incidents.stop()
