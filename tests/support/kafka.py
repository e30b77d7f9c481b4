"""Reading topics directly in tests (assign, no group) to see exactly what landed."""

from __future__ import annotations

import time
import uuid
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from safehub.kernel.settings import KafkaSettings


def read_topic(
    kafka: KafkaSettings, topic: str, *, expect: int, timeout: float = 20.0
) -> list[Any]:
    """Read every partition of ``topic`` from the start until ``expect`` records arrived."""
    admin = AdminClient(kafka.client_config())
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    consumer = Consumer(
        {
            **kafka.client_config(),
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 50,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expect and time.monotonic() < deadline:
            for message in consumer.consume(100, 0.1):
                if message.error() is None:
                    records.append(message)
    finally:
        consumer.close()
    return records


def read_all(kafka: KafkaSettings, topic: str, *, timeout: float = 20.0) -> list[Any]:
    """Every record on ``topic`` now: read until each partition reached its high watermark.

    The watermark comes from fetch responses (``cached=True``): tansu's ListOffsets is wrong.
    """
    admin = AdminClient(kafka.client_config())
    partitions = list(admin.list_topics(topic, timeout=10).topics[topic].partitions)
    consumer = Consumer(
        {
            **kafka.client_config(),
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    assigned = [TopicPartition(topic, p, 0) for p in partitions]
    consumer.assign(assigned)
    positions = dict.fromkeys(partitions, 0)
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for message in consumer.consume(500, 0.05):
                if message.error() is None:
                    records.append(message)
                    positions[message.partition()] = message.offset() + 1
            highs = [consumer.get_watermark_offsets(tp, cached=True)[1] for tp in assigned]
            if all(
                h >= 0 and positions[tp.partition] >= h
                for tp, h in zip(assigned, highs, strict=True)
            ):
                return records
    finally:
        consumer.close()
    raise AssertionError(f"could not read {topic} to its end within {timeout} s")
