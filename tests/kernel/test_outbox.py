"""The kernel's transactional outbox on a real broker, on SQLite and PostgreSQL.

State and events commit together or not at all; a committed event is published and its row
deleted once the broker confirmed it; a relay that died before confirming, or a process that
died before publishing, is covered by the sweep (at least once, the same event id).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest
from sqlalchemy import Column, Engine, MetaData, String, Table, func, select, text

from safehub.contracts.names import EventType
from safehub.kernel.bus import H_EVENT_ID, EventProducer
from safehub.kernel.codec import Codec, Event
from safehub.kernel.envelope import new_event
from safehub.kernel.outbox import OutboxItem, OutboxRelay, OutboxTable
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.store import StoreError, make_engine
from safehub.kernel.topics import NOTIFICATIONS, TopicCatalog
from tests.support.kafka import read_all
from tests.support.waiting import wait_until


class _ThingError(StoreError):
    store = "thing store"


class Things:
    """A minimal store: one state table and its outbox, under a prefix unique to the test."""

    def __init__(self, url: str, prefix: str) -> None:
        self.engine: Engine = make_engine(url, name="thing store")
        self.metadata = MetaData()
        self.things = Table(
            f"{prefix}things", self.metadata, Column("thing_id", String(100), primary_key=True)
        )
        self.outbox = OutboxTable(self.metadata, prefix=prefix, error=_ThingError)

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(self.things)).scalar_one())

    def add(self, thing_id: str, items: list[OutboxItem]) -> None:
        """The state change and its events in one transaction."""
        with self.engine.begin() as conn:
            conn.execute(self.things.insert().values(thing_id=thing_id))
            self.outbox.add(conn, items)


class _Crash(Exception):
    pass


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}_"


@pytest.fixture
def things(database_url: str, prefix: str) -> Iterator[Things]:
    store = Things(database_url, prefix)
    # The tables a service's migrations would create (the contract test checks notify's).
    store.metadata.create_all(store.engine)
    try:
        yield store
    finally:
        store.metadata.drop_all(store.engine)
        store.engine.dispose()


@pytest.fixture
def topics(make_catalog: Callable[..., TopicCatalog]) -> TopicCatalog:
    return make_catalog(NOTIFICATIONS)


def receipt(thing_id: str) -> Event:
    return new_event(
        EventType.DELIVERY_RECEIPT,
        source="outbox-test",
        tenant={"state": "CA", "district": "d-1", "school": "s-1"},
        payload={
            "notification_id": f"n-{thing_id}",
            "recipient_id": "stf-1",
            "channel": "SMS",
            "status": "SENT",
            "attempt": 1,
            "provider_message_id": None,
            "error": None,
        },
    )


def event_ids_on(kafka: KafkaSettings, catalog: TopicCatalog) -> list[str]:
    """The event id header of every record on the notifications topic."""
    found = []
    for record in read_all(kafka, catalog.name(NOTIFICATIONS)):
        headers = dict(record.headers() or [])
        found.append(bytes(headers[H_EVENT_ID]).decode())
    return found


class Running:
    """A relay's ``run`` on a thread for the length of a block (drained on exit)."""

    def __init__(self, relay: OutboxRelay, **kwargs: Any) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=relay.run, args=(self.stop,), kwargs=kwargs, daemon=True
        )

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


class TestOutbox:
    #: Sweeps often, but only rows older than a confirmation takes (none in these tests).
    relay_options: ClassVar[dict[str, float]] = {"older_than_s": 30.0, "sweep_every_s": 0.1}

    def test_a_rolled_back_transaction_leaves_neither_state_nor_event(
        self, things: Things, kafka: KafkaSettings, codec: Codec, topics: TopicCatalog
    ) -> None:
        with EventProducer(kafka, codec, topics) as producer:
            relay = OutboxRelay(things.outbox, things.engine, producer, codec)
            lost, kept = receipt("lost"), receipt("kept")
            with pytest.raises(_Crash), things.engine.begin() as conn:
                conn.execute(things.things.insert().values(thing_id="lost"))
                things.outbox.add(conn, [relay.item(lost)])
                raise _Crash  # the service fails before its commit
            assert things.count() == 0
            assert things.outbox.pending(things.engine) == []
            relay.sweep()  # nothing for a sweep (or a restart) to find either
            things.add("kept", [relay.item(kept)])
            relay.publish([kept])
            with Running(relay, sweep_at_start=False):
                wait_until(lambda: not things.outbox.pending(things.engine), what="confirmed")
        # The topic holds the committed event only (same key: one partition, in order).
        assert event_ids_on(kafka, topics) == [kept["envelope"]["event_id"]]

    def test_a_committed_event_is_published_once_and_forgotten_when_confirmed(
        self, things: Things, kafka: KafkaSettings, codec: Codec, topics: TopicCatalog
    ) -> None:
        with EventProducer(kafka, codec, topics) as producer:
            relay = OutboxRelay(things.outbox, things.engine, producer, codec, **self.relay_options)
            events = [receipt(f"t-{i}") for i in range(5)]
            with Running(relay):
                for i, event in enumerate(events):
                    things.add(f"t-{i}", [relay.item(event)])
                    relay.publish([event])
                wait_until(lambda: not things.outbox.pending(things.engine), what="confirmed")
                assert things.count() == 5
        published = event_ids_on(kafka, topics)
        assert sorted(published) == sorted(str(e["envelope"]["event_id"]) for e in events)

    def test_a_relay_that_died_before_confirming_is_covered_by_the_sweep(
        self,
        things: Things,
        database_url: str,
        prefix: str,
        kafka: KafkaSettings,
        codec: Codec,
        topics: TopicCatalog,
    ) -> None:
        event = receipt("t-1")
        event_id = str(event["envelope"]["event_id"])
        with EventProducer(kafka, codec, topics) as producer:
            dying = OutboxRelay(things.outbox, things.engine, producer, codec)
            things.add("t-1", [dying.item(event)])
            dying.publish([event])
            # The broker has it, but the relay dies before deleting the row.
            wait_until(lambda: event_ids_on(kafka, topics) == [event_id], what="published")
        assert [i.event_id for i in things.outbox.pending(things.engine)] == [event_id]
        things.engine.dispose()
        # The next process: a store opened afresh, a new producer and relay.
        again = Things(database_url, prefix)
        try:
            assert [i.event_id for i in again.outbox.pending(again.engine)] == [event_id]
            with EventProducer(kafka, codec, topics) as producer:
                relay = OutboxRelay(again.outbox, again.engine, producer, codec, older_than_s=0)
                with Running(relay):  # sweeps at start
                    wait_until(lambda: not again.outbox.pending(again.engine), what="confirmed")
        finally:
            again.engine.dispose()
        # At least once: published again with the same id, for consumers to dedupe.
        assert event_ids_on(kafka, topics) == [event_id, event_id]

    def test_rows_committed_before_a_crash_are_published_after_the_restart(
        self,
        things: Things,
        database_url: str,
        prefix: str,
        kafka: KafkaSettings,
        codec: Codec,
        topics: TopicCatalog,
    ) -> None:
        events = [receipt("t-1"), receipt("t-2")]
        ids = [str(e["envelope"]["event_id"]) for e in events]
        with EventProducer(kafka, codec, topics) as producer:
            relay = OutboxRelay(things.outbox, things.engine, producer, codec)
            things.add("t-1", [relay.item(events[0])])
            things.add("t-2", [relay.item(events[1])])
        things.engine.dispose()  # the process died between commit and publish
        assert event_ids_on(kafka, topics) == []
        again = Things(database_url, prefix)
        try:
            assert sorted(i.event_id for i in again.outbox.pending(again.engine)) == sorted(ids)
            with EventProducer(kafka, codec, topics) as producer:
                relay = OutboxRelay(again.outbox, again.engine, producer, codec)
                assert relay.sweep() == 2
                assert relay.drain(timeout=30) == 0  # waits for the broker, deletes the rows
            assert again.outbox.pending(again.engine) == []
            assert again.count() == 2
        finally:
            again.engine.dispose()
        assert sorted(event_ids_on(kafka, topics)) == sorted(ids)


def test_outbox_errors_name_the_store_never_the_sql(things: Things) -> None:
    things.add("t-1", [OutboxItem("e-1", b"x")])
    assert [i.event_id for i in things.outbox.pending(things.engine)] == ["e-1"]
    assert things.outbox.pending(things.engine, older_than_s=3600) == []
    with things.engine.begin() as conn:
        conn.execute(text(f'DROP TABLE "{things.outbox.table.name}"'))
    with pytest.raises(_ThingError, match=r"^thing store: cannot read the outbox: \w+$"):
        things.outbox.pending(things.engine)
    with pytest.raises(_ThingError, match=r"^thing store: cannot clear the outbox: \w+$"):
        things.outbox.done(things.engine, ["e-1"])
    things.outbox.table.create(things.engine)  # for the fixture's drop_all
