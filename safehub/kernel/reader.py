"""Reading topics without a consumer group: every partition, from the start or the end.

Some readers must see *every* partition whatever the consumer groups do: the incidents
service rebuilding its book from the incidents topic, the gateway following decisions, the
demo's report, tests. :class:`TopicReader` assigns all partitions of its topics (offset 0 or
the end), never commits, and knows when it has read everything there was: the end is the
high watermark the fetch responses carry (``get_watermark_offsets(cached=True)``), never
ListOffsets, which tansu answers inexactly (BROKER.md). Topics are declared ones (base
names, partitions from the catalog) or, with :meth:`TopicReader.of_names`, any topic by its
full name (partitions from the broker's metadata).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from confluent_kafka import OFFSET_END, Consumer, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from safehub.kernel.errors import BusError
from safehub.kernel.lifecycle import Closing
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import TopicCatalog

#: Records taken from the local queue per poll beyond the first.
BATCH = 499


class TopicReader(Closing):
    """All partitions of ``topics`` (base names), read from ``start``; no group, no commits."""

    def __init__(
        self,
        kafka: KafkaSettings,
        catalog: TopicCatalog,
        topics: Sequence[str],
        *,
        name: str,
        start: Literal["beginning", "end"] = "beginning",
        fetch_wait_ms: int = 100,
    ) -> None:
        self._open(
            kafka,
            {catalog.name(base): range(catalog.specs[base].partitions) for base in topics},
            name=name,
            start=start,
            fetch_wait_ms=fetch_wait_ms,
        )

    @classmethod
    def of_names(
        cls,
        kafka: KafkaSettings,
        topics: Sequence[str],
        *,
        name: str,
        start: Literal["beginning", "end"] = "beginning",
        fetch_wait_ms: int = 100,
        timeout: float = 10.0,
    ) -> TopicReader:
        """A reader of topics named in full (undeclared ones too), partitions from metadata."""
        admin = AdminClient(kafka.client_config())
        partitions: dict[str, Sequence[int]] = {}
        for topic in topics:
            try:
                found = admin.list_topics(topic, timeout=timeout).topics.get(topic)
            except KafkaException as exc:
                raise BusError(f"{name} cannot look {topic} up: {exc}") from exc
            if found is None or found.error is not None:
                raise BusError(f"{name} cannot read {topic}: {found and found.error}")
            partitions[topic] = sorted(found.partitions)
        reader = cls.__new__(cls)
        reader._open(kafka, partitions, name=name, start=start, fetch_wait_ms=fetch_wait_ms)
        return reader

    def _open(
        self,
        kafka: KafkaSettings,
        partitions: Mapping[str, Sequence[int]],
        *,
        name: str,
        start: Literal["beginning", "end"],
        fetch_wait_ms: int,
    ) -> None:
        self.name = name
        offset = 0 if start == "beginning" else OFFSET_END
        self._partitions = [
            TopicPartition(topic, p, offset) for topic, ids in partitions.items() for p in ids
        ]
        try:
            self._consumer = Consumer(
                {
                    **kafka.client_config(),
                    # A group id librdkafka insists on; never joined, never committed.
                    "group.id": f"{name}-{uuid.uuid4().hex[:8]}",
                    "enable.auto.commit": False,
                    "fetch.wait.max.ms": fetch_wait_ms,
                    "allow.auto.create.topics": False,
                }
            )
            self._consumer.assign(self._partitions)
        except KafkaException as exc:
            raise BusError(f"{name} cannot read {', '.join(partitions)}: {exc}") from exc
        #: Next offset to read per (topic, partition), from what was read (start: 0).
        self._positions = {(tp.topic, tp.partition): 0 for tp in self._partitions}
        self._closed = False

    def poll(self, timeout: float) -> list[Message]:
        """What the next poll brings (waits up to ``timeout`` for the first record).

        Broker errors are :class:`BusError`; per-partition errors (end of partition) are
        left out.
        """
        try:
            first = self._consumer.poll(timeout)
            messages = [first, *self._consumer.consume(BATCH, 0)] if first is not None else []
        except KafkaException as exc:
            raise BusError(f"{self.name}: poll failed: {exc}") from exc
        read = [m for m in messages if m.error() is None]
        for message in read:
            key = (str(message.topic()), message.partition() or 0)
            self._positions[key] = (message.offset() or 0) + 1
        return read

    def at_end(self) -> bool:
        """Every partition read up to the high watermark of its last fetch response."""
        for tp in self._partitions:
            _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if high < 0 or self._positions[tp.topic, tp.partition] < high:
                return False
        return True

    def catch_up(self, handle: Callable[[Message], None], timeout: float = 60.0) -> int:
        """Read and ``handle`` records until every partition is at its end; their number."""
        deadline = time.monotonic() + timeout
        handled = 0
        while True:
            for message in self.poll(0.05):
                handle(message)
                handled += 1
            if self.at_end():
                return handled
            if time.monotonic() > deadline:
                raise BusError(f"{self.name} did not reach the end within {timeout} s")

    def read_to_end(self, timeout: float = 60.0) -> list[Message]:
        """The records from here to every partition's end (:meth:`catch_up`, collected)."""
        messages: list[Message] = []
        self.catch_up(messages.append, timeout)
        return messages

    def close(self) -> None:
        """Leave (idempotent)."""
        if not self._closed:
            self._closed = True
            self._consumer.close()
