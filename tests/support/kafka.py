"""Reading topics directly in tests (the kernel's TopicReader: no group) to see what landed."""

from __future__ import annotations

import time
from typing import Any

from safehub.kernel.errors import BusError
from safehub.kernel.reader import TopicReader
from safehub.kernel.settings import KafkaSettings


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
