"""Reading topics without a consumer group: every partition, from the start or the end.

Some readers must see *every* partition whatever the consumer groups do: the incidents
service rebuilding its book from the incidents topic, the gateway following decisions, the
demo's report, tests. :class:`TopicReader` assigns all partitions of its topics (offset 0 or
the end), never commits, and knows when it has read everything there was: the end is the
high watermark the fetch responses carry (``get_watermark_offsets(cached=True)``), never
ListOffsets, which tansu answers inexactly (BROKER.md).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import Literal

from confluent_kafka import OFFSET_END, Consumer, KafkaException, Message, TopicPartition

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
        self.name = name
        offset = 0 if start == "beginning" else OFFSET_END
        self._partitions = [
            TopicPartition(catalog.name(base), p, offset)
            for base in topics
            for p in range(catalog.specs[base].partitions)
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
            raise BusError(f"{name} cannot read {', '.join(topics)}: {exc}") from exc
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

    def close(self) -> None:
        """Leave (idempotent)."""
        if not self._closed:
            self._closed = True
            self._consumer.close()
