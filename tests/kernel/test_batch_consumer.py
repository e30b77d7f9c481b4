"""The kernel's batch consumer on a real broker: one write per batch, dead letters, redelivery."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from safehub.contracts.registry import event_schemas
from safehub.kernel.batch import BatchConsumer
from safehub.kernel.bus import EventProducer, PoisonPolicy
from safehub.kernel.codec import Codec, Event
from safehub.kernel.errors import HandlerError, StopWithoutCommit
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import TopicCatalog
from tests.support.examples import example_event
from tests.support.kafka import read_topic
from tests.support.waiting import wait_until

pytestmark = pytest.mark.kafka

ALERTS = "safehub.alerts.v1"
PANIC = "safehub.events.PanicAlert"
SCHOOL = "sch-batch"  # one school, one partition: the records arrive in one order


@pytest.fixture
def catalog(make_catalog: Callable[..., TopicCatalog]) -> TopicCatalog:
    """Only the topics these tests use, under a prefix unique to the test."""
    return make_catalog(ALERTS, "safehub.deadletter.v1")


def _panics(n: int) -> list[Event]:
    return [example_event(event_schemas()[PANIC], school=SCHOOL) for _ in range(n)]


def _ids(events: Sequence[Event]) -> list[str]:
    return [str(e["envelope"]["event_id"]) for e in events]


def _consumer(
    kafka: KafkaSettings,
    codec: Codec,
    catalog: TopicCatalog,
    producer: EventProducer,
    group_id: str,
    write: Callable[[list[Event]], Any],
    **kwargs: Any,
) -> BatchConsumer[Event]:
    return BatchConsumer(
        kafka,
        catalog,
        group_id=group_id,
        topics=[ALERTS],
        decode=lambda data, _headers: [codec.decode(data)],
        write=write,
        event_type=lambda event: str(event["envelope"]["event_type"]),
        dead_letter=producer,
        policy=PoisonPolicy(max_attempts=1, backoff_s=0.01, backoff_max_s=0.05),
        **kwargs,
    )


@contextlib.contextmanager
def running(consumer: BatchConsumer[Event]) -> Iterator[threading.Thread]:
    """``consumer.run`` in a thread for the block; stopped, joined and closed (committed) after."""
    consumer.wait_for_assignment()
    thread = threading.Thread(target=consumer.run, kwargs={"poll_timeout": 0.1}, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        consumer.stop()
        thread.join(30)
        consumer.close()


def test_a_batch_is_written_once_in_one_call_and_committed(
    kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, group_id: str
) -> None:
    batches: list[list[str]] = []
    sent = _panics(12)
    with EventProducer(kafka, codec, catalog) as producer:
        for event in sent:
            producer.publish(event)
        consumer = _consumer(
            kafka, codec, catalog, producer, group_id, lambda b: batches.append(_ids(b))
        )
        with running(consumer):
            wait_until(lambda: sum(map(len, batches)) >= len(sent), what="the batch written")
        written = [event_id for batch in batches for event_id in batch]
        assert sorted(written) == sorted(_ids(sent)), "each event exactly once"
        assert len(batches) < len(sent), "written a batch per call, not an event per call"
        assert consumer.stats.handled == len(sent) and consumer.stats.dead_lettered == 0
        # Committed: the same group's next member starts after the batch.
        later = _panics(1)
        producer.publish(later[0])
        again: list[str] = []
        with running(
            _consumer(kafka, codec, catalog, producer, group_id, lambda b: again.extend(_ids(b)))
        ):
            wait_until(lambda: again, what="the event published after the commit")
        assert again == _ids(later)


def test_poison_records_go_to_the_dead_letter_topic_with_their_reason_and_the_rest_is_written(
    kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, group_id: str
) -> None:
    good = _panics(3)
    refused = _panics(1)[0]  # decodes, but the write rejects it
    incident = example_event(event_schemas()["safehub.events.IncidentOpened"], school=SCHOOL)
    topic = catalog.name(ALERTS)
    key = catalog.key_for(good[0])
    garbage = b'{"json": "is not our wire format"}'
    written: list[str] = []

    def write(batch: list[Event]) -> None:
        if refused["envelope"]["event_id"] in _ids(batch):
            raise HandlerError("refused by the store's rules")
        written.extend(_ids(batch))

    with EventProducer(kafka, codec, catalog) as producer:
        producer.publish(good[0])
        producer.publish_raw(topic, key, garbage, [])
        producer.publish(refused)
        producer.publish(good[1])
        # An event its topic does not carry: by its header, and (without one) once decoded.
        producer.publish_raw(
            topic, key, codec.encode(incident), [("safehub-event-type", b"safehub.events.X")]
        )
        producer.publish_raw(topic, key, codec.encode(incident), [])
        producer.publish(good[2])
        consumer = _consumer(kafka, codec, catalog, producer, group_id, write)
        with running(consumer):
            wait_until(
                lambda: len(written) == len(good) and consumer.stats.dead_lettered == 4,
                what="the good events written and the poison dead-lettered",
            )
    assert sorted(written) == sorted(_ids(good))
    letters = read_topic(kafka, catalog.dead_letter, expect=4, timeout=30)
    assert len(letters) == 4
    by_offset: dict[int, tuple[dict[str, str], bytes]] = {}
    for record in letters:
        h = {k: v.decode() for k, v in record.headers() or []}
        by_offset[int(h["safehub-dlq-offset"])] = (h, record.value())
    assert sorted(by_offset) == [1, 2, 4, 5]  # the offsets of the poison on the partition
    for h, _value in by_offset.values():
        assert h["safehub-dlq-topic"] == topic
        assert h["safehub-dlq-group"] == group_id
        assert h["safehub-dlq-attempts"] == "1"
    undecodable, value = by_offset[1]
    assert value == garbage
    assert undecodable["safehub-dlq-error-type"] == "CorruptMessageError"
    assert "not an Avro single-object encoded message" in undecodable["safehub-dlq-reason"]
    rejected, value = by_offset[2]
    assert value == codec.encode(refused)
    assert rejected["safehub-dlq-error-type"] == "HandlerError"
    assert rejected["safehub-dlq-reason"] == "refused by the store's rules"
    assert rejected["safehub-event-id"] == refused["envelope"]["event_id"], "original headers"
    claimed, _ = by_offset[4]
    assert claimed["safehub-dlq-reason"] == f"safehub.events.X is not declared for topic {topic}"
    decoded, _ = by_offset[5]
    assert decoded["safehub-dlq-reason"] == (
        f"safehub.events.IncidentOpened is not declared for topic {topic}"
    )


class StoreDown(Exception):
    """The write target is unreachable: retried, never dead-lettered."""


@pytest.mark.parametrize("failure", ["stop-without-commit", "transient-while-stopping"])
def test_a_batch_left_by_a_stop_is_not_committed_and_the_next_member_gets_it_again(
    kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, group_id: str, failure: str
) -> None:
    sent = _panics(5)
    attempted: list[str] = []
    stop = threading.Event()

    def failing(batch: list[Event]) -> None:
        attempted.extend(_ids(batch))
        if failure == "stop-without-commit":
            raise StopWithoutCommit("the write cannot finish now")
        stop.set()  # the service is stopping while the store is down
        raise StoreDown

    with EventProducer(kafka, codec, catalog) as producer:
        consumer = _consumer(
            kafka, codec, catalog, producer, group_id, failing, transient=(StoreDown,), stop=stop
        )
        consumer.wait_for_assignment()
        for event in sent:
            producer.publish(event)  # after the join: run() is what fetches them
        thread = threading.Thread(target=consumer.run, daemon=True)
        thread.start()
        wait_until(lambda: not thread.is_alive(), what="run() returning on its own")
        consumer.close()
        assert attempted and set(attempted) <= set(_ids(sent))
        assert consumer.stats.dead_lettered == 0 and consumer.stats.handled == 0
        again: list[str] = []
        with running(
            _consumer(kafka, codec, catalog, producer, group_id, lambda b: again.extend(_ids(b)))
        ):
            wait_until(lambda: len(again) >= len(sent), what="the batch again in the next run")
    assert sorted(again) == sorted(_ids(sent)), "nothing of the batch was committed"
    assert set(attempted) <= set(again)
