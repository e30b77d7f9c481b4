"""Shared benchmark plumbing: a broker, percentiles, raw confluent-kafka baselines."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from safehub.devstack.broker import EmbeddedBroker


@contextlib.contextmanager
def broker() -> Iterator[str]:
    """KAFKA_BOOTSTRAP_SERVERS if set, else a fresh embedded tansu broker."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    with EmbeddedBroker() as running:
        yield running.bootstrap_servers


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    """p50/p99/max of latency samples in milliseconds."""
    ordered = sorted(samples_ms)
    q = statistics.quantiles(ordered, n=100, method="inclusive")
    return {
        "p50_ms": round(q[49], 2),
        "p99_ms": round(q[98], 2),
        "max_ms": round(ordered[-1], 2),
        "n": len(ordered),
    }


def create_topic(bootstrap: str, partitions: int = 1) -> str:
    """A fresh topic with ``partitions`` partitions."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(10)
    return name


def raw_producer(bootstrap: str, linger_ms: int) -> Producer:
    """Idempotent, acks=all: the same guarantees the kernel's producer gives."""
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": linger_ms,
            "allow.auto.create.topics": False,
        }
    )


def raw_consumer(bootstrap: str, topic: str, partitions: int, fetch_wait_ms: int) -> Consumer:
    """Assigned from offset 0 (no group join in the measurement)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": fetch_wait_ms,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    return consumer


def raw_round_trip(bootstrap: str, *, rate: float, count: int, size: int = 1024) -> dict[str, Any]:
    """Produce→consume latency, plain confluent-kafka, ``rate`` msg/s, low-latency settings."""
    topic = create_topic(bootstrap)
    producer = raw_producer(bootstrap, linger_ms=0)
    consumer = raw_consumer(bootstrap, topic, 1, fetch_wait_ms=10)
    latencies: list[float] = []
    done = threading.Event()

    def consume() -> None:
        while len(latencies) < count:
            message = consumer.poll(0.05)
            if message is not None and message.error() is None:
                sent = float(message.value()[:20].decode())
                latencies.append((time.perf_counter() - sent) * 1000)
        done.set()

    # Warm up: producer id and first fetch, outside the measurement.
    producer.produce(topic, b"0".ljust(size, b" "))
    producer.flush(10)
    while not [m for m in consumer.consume(10, 0.5) if m.error() is None]:
        pass
    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    pace(
        count,
        rate,
        lambda: producer.produce(topic, f"{time.perf_counter():<20.9f}".encode().ljust(size, b" ")),
        producer.poll,
    )
    producer.flush(10)
    done.wait(60)
    consumer.close()
    return percentiles(latencies)


def pace(count: int, rate: float, send: Any, idle: Any) -> None:
    """Call ``send`` ``count`` times at ``rate`` per second, calling ``idle(0)`` in between."""
    interval = 1.0 / rate
    start = time.perf_counter()
    for i in range(count):
        target = start + i * interval
        while (now := time.perf_counter()) < target:
            idle(0)
            if target - now > 0.002:
                time.sleep(min(target - now - 0.001, 0.01))
        send()


def raw_throughput(bootstrap: str, *, count: int, size: int = 1024) -> dict[str, float]:
    """Messages per second produced (until flushed) and consumed, plain confluent-kafka."""
    topic = create_topic(bootstrap)
    producer = raw_producer(bootstrap, linger_ms=5)
    payload = b"x" * size
    start = time.perf_counter()
    for _ in range(count):
        while True:
            try:
                producer.produce(topic, payload)
                break
            except BufferError:
                producer.poll(0.01)
    producer.flush(60)
    produce_s = time.perf_counter() - start
    consumer = raw_consumer(bootstrap, topic, 1, fetch_wait_ms=100)
    got = 0
    start = time.perf_counter()
    while got < count:
        got += sum(1 for m in consumer.consume(1000, 0.5) if m.error() is None)
    consume_s = time.perf_counter() - start
    consumer.close()
    return {"produce_msg_s": round(count / produce_s), "consume_msg_s": round(count / consume_s)}


def report(result: dict[str, Any], *, as_json: bool) -> None:
    """Print a benchmark's result: JSON (``--json``) or one ``key: value`` line per figure."""
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        for key, value in result.items():
            sys.stdout.write(f"{key}: {value}\n")
