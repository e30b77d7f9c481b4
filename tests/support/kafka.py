"""Reading topics directly in tests (the kernel's TopicReader: no group) to see what landed,
and running a consumer for the length of a block."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from safehub.kernel.bus import ConsumedEvent, EventConsumer, EventProducer
from safehub.kernel.codec import Codec
from safehub.kernel.errors import BusError
from safehub.kernel.reader import TopicReader
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import TopicCatalog


def read_topic(
    kafka: KafkaSettings, topic: str, *, expect: int, timeout: float = 20.0
) -> list[Any]:
    """Read every partition of ``topic`` from the start until ``expect`` records arrived.

    At the deadline, what was read so far (a test may expect nothing to arrive).
    """
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    with TopicReader.of_names(kafka, [topic], name="reader", fetch_wait_ms=50) as reader:
        while len(records) < expect and time.monotonic() < deadline:
            records.extend(reader.poll(0.1))
    return records


def read_all(kafka: KafkaSettings, topic: str, *, timeout: float = 20.0) -> list[Any]:
    """Every record on ``topic`` now: read until each partition reached its high watermark.

    The watermark comes from fetch responses (``cached=True``): tansu's ListOffsets is wrong.
    """
    with TopicReader.of_names(kafka, [topic], name="reader", fetch_wait_ms=10) as reader:
        try:
            return list(reader.read_to_end(timeout))
        except BusError as exc:
            raise AssertionError(f"could not read {topic} to its end within {timeout} s") from exc


@contextlib.contextmanager
def consuming(
    kafka: KafkaSettings,
    codec: Codec,
    catalog: TopicCatalog,
    producer: EventProducer,
    group_id: str,
    topics: list[str],
    handler: Callable[[ConsumedEvent], None],
    **kwargs: Any,
) -> Iterator[EventConsumer]:
    """A consumer running in a thread for the duration of the block, closed (committed) after."""
    consumer = EventConsumer(
        kafka,
        codec,
        catalog,
        group_id=group_id,
        topics=topics,
        handler=handler,
        dead_letter=producer,
        **kwargs,
    )
    consumer.wait_for_assignment()
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield consumer
    finally:
        stop.set()
        thread.join()
        consumer.close()
