"""The kernel's bus against a real broker: round trips, tracing, dead letters, redelivery."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from safehub.contracts.registry import event_schemas
from safehub.kernel.bus import (
    H_EVENT_TYPE,
    ConsumedEvent,
    EventConsumer,
    EventProducer,
    PoisonPolicy,
    fair_order,
    header,
)
from safehub.kernel.codec import Codec
from safehub.kernel.errors import HandlerError, StopWithoutCommit
from safehub.kernel.reader import TopicReader
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import TopicCatalog
from tests.support.examples import SENSITIVE_MARK, example_event
from tests.support.kafka import consuming, read_topic
from tests.support.waiting import wait_until

pytestmark = pytest.mark.kafka

ALL_TOPICS = [name for name in TopicCatalog().specs if name != "safehub.deadletter.v1"]


def test_every_event_type_round_trips_with_trace_context(
    kafka: KafkaSettings,
    codec: Codec,
    catalog: TopicCatalog,
    group_id: str,
    spans: InMemorySpanExporter,
) -> None:
    schemas = event_schemas()
    assert len(schemas) >= 20
    received: dict[str, tuple[ConsumedEvent, Any]] = {}

    def handler(consumed: ConsumedEvent) -> None:
        received[consumed.event_id] = (consumed, trace.get_current_span().get_span_context())

    with EventProducer(kafka, codec, catalog) as producer:
        with consuming(kafka, codec, catalog, producer, group_id, ALL_TOPICS, handler):
            sent: dict[str, tuple[dict[str, Any], int]] = {}
            tracer = trace.get_tracer("test")
            for name, schema in schemas.items():
                event = example_event(schema)
                with tracer.start_as_current_span(f"root {name}") as root:
                    producer.publish(event)
                sent[event["envelope"]["event_id"]] = (event, root.get_span_context().trace_id)
            wait_until(lambda: len(received) == len(sent), what="all event types consumed")

    send_spans = {
        s.attributes["messaging.message.id"]: s
        for s in spans.get_finished_spans()
        if s.name.startswith("send ")
    }
    for event_id, (event, trace_id) in sent.items():
        consumed, context = received[event_id]
        assert consumed.event == event, consumed.event_type
        assert consumed.topic == catalog.topic_for(consumed.event_type)
        # Consumer span is a child of the producer span, in the root's trace.
        assert context.trace_id == trace_id
        process_span = next(
            s for s in spans.get_finished_spans() if s.context.span_id == context.span_id
        )
        assert process_span.parent is not None
        assert process_span.parent.span_id == send_spans[event_id].context.span_id
        assert process_span.attributes["messaging.system"] == "kafka"
    # No personal data in any span attribute.
    for span in spans.get_finished_spans():
        for value in (span.attributes or {}).values():
            assert SENSITIVE_MARK not in str(value)


def _dead_letters(kafka: KafkaSettings, catalog: TopicCatalog, n: int) -> list[dict[str, str]]:
    records = read_topic(kafka, catalog.dead_letter, expect=n)
    return [
        {k: v.decode() for k, v in (r.headers() or [])} | {"_value": r.value()} for r in records
    ]


def test_corrupt_and_unknown_schema_go_to_dead_letter_and_consumer_keeps_going(
    kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, group_id: str
) -> None:
    good = example_event(event_schemas()["safehub.events.PanicAlert"])
    handled: list[str] = []
    topic = catalog.topic_for("safehub.events.PanicAlert")
    corrupt = b"\xc3\x01" + codec.fingerprint("safehub.events.PanicAlert") + b"\xff\xff\xff"
    unknown = b"\xc3\x01" + b"\x01\x02\x03\x04\x05\x06\x07\x08" + b"\x00"
    not_avro = b'{"json": "is not our wire format"}'
    with (
        EventProducer(kafka, codec, catalog) as producer,
        consuming(
            kafka,
            codec,
            catalog,
            producer,
            group_id,
            ["safehub.alerts.v1"],
            lambda c: handled.append(c.event_id),
        ) as consumer,
    ):
        for value in (corrupt, unknown, not_avro):
            producer.publish_raw(topic, b"sch-1", value, [])
        producer.publish(good)
        wait_until(lambda: handled, what="good event after the bad ones")
    assert handled == [good["envelope"]["event_id"]]
    assert consumer.stats.dead_lettered == 3
    letters = _dead_letters(kafka, catalog, 3)
    by_value = {letter["_value"]: letter for letter in letters}
    assert set(by_value) == {corrupt, unknown, not_avro}
    assert by_value[corrupt]["safehub-dlq-error-type"] == "CorruptMessageError"
    assert "does not decode" in by_value[corrupt]["safehub-dlq-reason"]
    assert by_value[unknown]["safehub-dlq-error-type"] == "UnknownSchemaError"
    assert "0807060504030201" in by_value[unknown]["safehub-dlq-reason"]
    assert "bad header" in by_value[not_avro]["safehub-dlq-reason"]
    for letter in letters:
        assert letter["safehub-dlq-topic"] == topic
        assert letter["safehub-dlq-group"] == group_id
        assert int(letter["safehub-dlq-offset"]) >= 0


def test_records_not_accepted_by_header_are_passed_over_without_decoding(
    kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, group_id: str
) -> None:
    panic = example_event(event_schemas()["safehub.events.PanicAlert"])
    camera = example_event(event_schemas()["safehub.events.CameraAlert"])
    topic = catalog.topic_for("safehub.events.PanicAlert")
    # Undecodable, but its header says it is not for this consumer: passed over, not a DLQ.
    foreign = [(H_EVENT_TYPE, b"safehub.events.CameraAlert")]
    handled: list[str] = []

    def panics_only(headers: Sequence[tuple[str, bytes]]) -> bool:
        return header(headers, H_EVENT_TYPE) == "safehub.events.PanicAlert"

    with (
        EventProducer(kafka, codec, catalog) as producer,
        consuming(
            kafka,
            codec,
            catalog,
            producer,
            group_id,
            ["safehub.alerts.v1"],
            lambda c: handled.append(c.event_type),
            accept=panics_only,
        ) as consumer,
    ):
        producer.publish_raw(topic, b"sch-1", b"not even avro", foreign)
        producer.publish(camera)
        producer.publish(panic)
        wait_until(lambda: handled, what="the panic handled")
        wait_until(lambda: consumer.stats.skipped == 2, what="both others passed over")
    assert handled == ["safehub.events.PanicAlert"]
    assert consumer.stats.dead_lettered == 0


def test_failing_handler_is_retried_then_dead_lettered_permanent_errors_at_once(
    kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, group_id: str
) -> None:
    schema = event_schemas()["safehub.events.CameraAlert"]
    flaky, broken, permanent = (example_event(schema) for _ in range(3))
    calls: dict[str, int] = {}

    def handler(consumed: ConsumedEvent) -> None:
        calls[consumed.event_id] = calls.get(consumed.event_id, 0) + 1
        if consumed.event_id == flaky["envelope"]["event_id"] and calls[consumed.event_id] < 2:
            raise ConnectionError("transient")
        if consumed.event_id == broken["envelope"]["event_id"]:
            raise RuntimeError("student Jane Doe crashed me")  # message must not leak
        if consumed.event_id == permanent["envelope"]["event_id"]:
            raise HandlerError("incident id refers to another district")

    with (
        EventProducer(kafka, codec, catalog) as producer,
        consuming(
            kafka,
            codec,
            catalog,
            producer,
            group_id,
            ["safehub.alerts.v1"],
            handler,
            policy=PoisonPolicy(max_attempts=3, backoff_s=0.01),
        ) as consumer,
    ):
        for event in (flaky, broken, permanent):
            producer.publish(event)
        wait_until(lambda: consumer.stats.dead_lettered == 2 and consumer.stats.handled == 1)
    assert calls[flaky["envelope"]["event_id"]] == 2
    assert calls[broken["envelope"]["event_id"]] == 3
    assert calls[permanent["envelope"]["event_id"]] == 1
    reasons = {
        d["safehub-event-id"]: d["safehub-dlq-reason"] for d in _dead_letters(kafka, catalog, 2)
    }
    assert reasons[broken["envelope"]["event_id"]] == (
        "handler failed after 3 attempts: unexpected RuntimeError"
    )
    assert "Jane" not in " ".join(reasons.values())
    assert reasons[permanent["envelope"]["event_id"]] == "incident id refers to another district"


CRASHING_CONSUMER = Path(__file__).resolve().parents[1] / "support" / "crashing_consumer.py"


def test_consumer_killed_before_commit_gets_the_message_again(
    kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, group_id: str, tmp_path: Path
) -> None:
    event = example_event(event_schemas()["safehub.events.PanicAlert"])
    marker = tmp_path / "handled"
    with EventProducer(kafka, codec, catalog) as producer:
        producer.publish(event)
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers or ""}
        proc = subprocess.Popen(
            [sys.executable, str(CRASHING_CONSUMER), catalog.prefix, group_id, str(marker)],
            env=env,
        )
        try:
            # The child handles the event, writes the marker, then hangs before commit.
            wait_until(marker.exists, timeout=60, what="child consumer handled the event")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert marker.read_text() == event["envelope"]["event_id"]
        again: list[str] = []
        with consuming(
            kafka,
            codec,
            catalog,
            producer,
            group_id,
            ["safehub.alerts.v1"],
            lambda c: again.append(c.event_id),
        ):
            wait_until(lambda: again, what="redelivery after the crash")
    assert again == [event["envelope"]["event_id"]]


def test_committed_message_is_not_redelivered(
    kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, group_id: str
) -> None:
    first, second = (example_event(event_schemas()["safehub.events.PanicAlert"]) for _ in range(2))
    seen: list[str] = []
    with EventProducer(kafka, codec, catalog) as producer:
        producer.publish(first)
        with consuming(
            kafka,
            codec,
            catalog,
            producer,
            group_id,
            ["safehub.alerts.v1"],
            lambda c: seen.append(c.event_id),
        ):
            wait_until(lambda: seen)
        producer.publish(second)
        with consuming(
            kafka,
            codec,
            catalog,
            producer,
            group_id,
            ["safehub.alerts.v1"],
            lambda c: seen.append(c.event_id),
        ):
            wait_until(lambda: len(seen) == 2)
    assert seen == [first["envelope"]["event_id"], second["envelope"]["event_id"]]


def test_oversized_message_is_refused_by_the_hub(
    kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog
) -> None:
    from safehub.kernel.errors import BusError

    small = kafka.model_copy(update={"max_message_bytes": 1024})
    with EventProducer(small, codec, catalog) as producer, pytest.raises(BusError, match="1024"):
        producer.publish_raw(catalog.dead_letter, b"k", b"x" * 2048, [])


@dataclass(frozen=True)
class _Fetched:
    """What fair_order reads of a fetched record (confluent_kafka.Message has no constructor)."""

    _topic: str
    _partition: int
    offset: int

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition


def test_a_burst_on_one_partition_does_not_hold_back_another_partitions_message() -> None:
    """480 alerts of one school fetched ahead of another school's panic: the panic goes next,
    and each partition keeps its own order."""
    burst = [_Fetched("alerts", 3, n) for n in range(480)]
    quiet = _Fetched("alerts", 7, 0)
    later = [_Fetched("alerts", 7, 1), _Fetched("dispatch", 3, 0)]
    ordered = fair_order([*burst, quiet, *later])  # type: ignore[list-item]
    assert ordered.index(quiet) == 1
    assert ordered.index(later[1]) == 2  # another topic's partition is its own lane too
    for lane in ({("alerts", 3)}, {("alerts", 7)}):
        offsets = [m.offset for m in ordered if (m.topic(), m.partition()) in lane]
        assert offsets == sorted(offsets)
    assert sorted(ordered, key=id) == sorted([*burst, quiet, *later], key=id)  # nothing lost
    single = burst[:5]
    assert fair_order(single) == single  # type: ignore[arg-type]


def _run_once_then_again(
    kafka: KafkaSettings,
    codec: Codec,
    catalog: TopicCatalog,
    group_id: str,
    handler: Callable[[ConsumedEvent], None],
    stop: threading.Event | None = None,
) -> tuple[EventConsumer, list[str]]:
    """Publish one panic, let ``handler`` meet it in a first run (which must return by
    itself), then check a second run of the same group gets it again; the first consumer
    and the event id."""
    event = example_event(event_schemas()["safehub.events.PanicAlert"])
    with EventProducer(kafka, codec, catalog) as producer:
        consumer = EventConsumer(
            kafka,
            codec,
            catalog,
            group_id=group_id,
            topics=["safehub.alerts.v1"],
            handler=handler,
            dead_letter=producer,
            policy=PoisonPolicy(max_attempts=3, backoff_s=0.01),
        )
        consumer.wait_for_assignment()
        producer.publish(event)  # after the join: run() is what fetches it
        consumer.run(stop)
        consumer.close()
        again: list[str] = []
        with consuming(
            kafka,
            codec,
            catalog,
            producer,
            group_id,
            ["safehub.alerts.v1"],
            lambda c: again.append(c.event_id),
        ):
            wait_until(lambda: again, what="the message again in the next run")
    assert again == [event["envelope"]["event_id"]], "not committed: the next run gets it"
    return consumer, again


def test_a_handler_that_says_stop_without_commit_leaves_the_message_for_the_next_run(
    kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, group_id: str
) -> None:
    """StopWithoutCommit: not retried, not dead-lettered, not committed; run() returns."""
    attempts: list[str] = []

    def interrupted(consumed: ConsumedEvent) -> None:
        attempts.append(consumed.event_id)
        raise StopWithoutCommit("a real dispatch is undecided and we are stopping")

    # run() returns without anyone setting a stop signal
    consumer, again = _run_once_then_again(kafka, codec, catalog, group_id, interrupted)
    assert attempts == again, "never retried"
    assert consumer.stats.dead_lettered == 0 and consumer.stats.retried == 0


def test_failure_while_stopping_is_neither_dead_lettered_nor_committed(
    kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, group_id: str
) -> None:
    attempts: list[str] = []
    stop = threading.Event()

    def failing(consumed: ConsumedEvent) -> None:
        attempts.append(consumed.event_id)
        stop.set()  # the service is shutting down while CAD (say) is unreachable
        raise ConnectionError("downstream unavailable")

    consumer, again = _run_once_then_again(kafka, codec, catalog, group_id, failing, stop)
    assert attempts == again
    assert consumer.stats.dead_lettered == 0


def test_a_topic_reader_reads_every_partition_to_its_end_or_follows_from_the_end(
    kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog
) -> None:
    """No group, no commits; the end comes from fetch high watermarks (exact on tansu)."""
    schema = event_schemas()["safehub.events.PanicAlert"]
    with EventProducer(kafka, codec, catalog) as producer:
        before = [example_event(schema, school=f"sch-{n}") for n in range(40)]
        for event in before:
            producer.publish(event)
        with TopicReader(
            kafka, catalog, ["safehub.alerts.v1"], name="test-tail", start="end", fetch_wait_ms=10
        ) as tail:
            tail.poll(0.5)  # joined at the end: nothing of before
            seen: list[str] = []
            with TopicReader(kafka, catalog, ["safehub.alerts.v1"], name="test-reader") as reader:
                count = reader.catch_up(
                    lambda m: seen.append(codec.decode(m.value() or b"")["envelope"]["event_id"]),
                    timeout=30,
                )
                assert reader.at_end()
            assert count == 40
            assert sorted(seen) == sorted(e["envelope"]["event_id"] for e in before)
            after = example_event(schema, school="sch-after")
            producer.publish(after)
            followed: list[str] = []
            wait_until(
                lambda: (
                    followed.extend(
                        codec.decode(m.value() or b"")["envelope"]["event_id"]
                        for m in tail.poll(0.1)
                    )
                    or after["envelope"]["event_id"] in followed
                ),
                what="the new event at the tail",
            )
            # (tansu may place "end" a few records early: at most those come before it)
            assert followed[-1] == after["envelope"]["event_id"] and len(followed) < 40
