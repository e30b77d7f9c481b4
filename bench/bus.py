"""Kernel bus vs raw confluent-kafka on the same broker, in the same run.

Usage: ``python bench/bus.py [--json] [--rate 200] [--count 2000] [--throughput 50000]``

Round trip: produce→consume latency at a steady rate, 1 partition, low-latency settings
(linger.ms=0, fetch.wait.max.ms=10). The kernel path adds Avro encoding with its
single-object header, envelope headers, W3C trace context, OpenTelemetry spans, a delivery
confirmation per message, consumer-group offsets and decoding.
Throughput: messages per second produced until confirmed and consumed until handled.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from bench.common import broker, pace, percentiles, raw_round_trip, raw_throughput, report
from safehub.contracts.names import EventType
from safehub.contracts.registry import event_schemas
from safehub.kernel.admin import ensure_topics
from safehub.kernel.bus import ConsumedEvent, EventConsumer, EventProducer
from safehub.kernel.codec import Codec
from safehub.kernel.logging import configure_logging
from safehub.kernel.settings import KafkaSettings, LogSettings
from safehub.kernel.topics import KeyBy, TopicCatalog, TopicSpec
from safehub.kernel.tracing import setup_metrics, setup_tracing
from tests.support.examples import example_event

PANIC = EventType.PANIC_ALERT


def _catalog() -> TopicCatalog:
    # One partition, like the raw baseline, so the comparison is like for like.
    spec = TopicSpec("bench.alerts", 1, KeyBy.SCHOOL, (PANIC,), "benchmark topic")
    dead = TopicSpec("safehub.deadletter.v1", 1, KeyBy.SCHOOL, (), "dead letters")
    return TopicCatalog(prefix=f"b{time.time_ns() % 10**8}.", specs=(spec, dead))


def _event(schema: dict[str, Any]) -> dict[str, Any]:
    event = example_event(schema)
    event["location_text"] = "x" * 600  # about 1 KiB on the wire, like the raw baseline
    return event


def kernel_round_trip(
    kafka: KafkaSettings, codec: Codec, *, rate: float, count: int
) -> dict[str, Any]:
    catalog = _catalog()
    ensure_topics(kafka, catalog)
    schema = event_schemas()[PANIC]
    sent: dict[str, float] = {}
    latencies: list[float] = []

    def handler(consumed: ConsumedEvent) -> None:
        started = sent.get(consumed.event_id)
        if started is not None:
            latencies.append((time.perf_counter() - started) * 1000)

    with EventProducer(kafka, codec, catalog) as producer:
        consumer = EventConsumer(
            kafka,
            codec,
            catalog,
            group_id=f"{catalog.prefix}g",
            topics=["bench.alerts"],
            handler=handler,
            dead_letter=producer,
            fetch_wait_max_ms=10,
        )
        consumer.wait_for_assignment()
        stop = threading.Event()
        thread = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
        thread.start()
        producer.publish(_event(schema))  # warm up

        def send() -> None:
            event = _event(schema)
            sent[event["envelope"]["event_id"]] = time.perf_counter()
            producer.publish_nowait(event)

        pace(count, rate, send, lambda _t: None)
        deadline = time.monotonic() + 60
        while len(latencies) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        thread.join()
        consumer.close()
    return percentiles(latencies)


def kernel_throughput(kafka: KafkaSettings, codec: Codec, *, count: int) -> dict[str, float]:
    catalog = _catalog()
    ensure_topics(kafka, catalog)
    schema = event_schemas()[PANIC]
    events = [_event(schema) for _ in range(count)]
    fast = kafka.model_copy(update={"linger_ms": 5})
    with EventProducer(fast, codec, catalog) as producer:
        start = time.perf_counter()
        futures = [producer.publish_nowait(e) for e in events]
        for future in futures:
            future.result(60)
        produce_s = time.perf_counter() - start
        handled = 0

        def handler(_c: ConsumedEvent) -> None:
            nonlocal handled
            handled += 1

        consumer = EventConsumer(
            kafka,
            codec,
            catalog,
            group_id=f"{catalog.prefix}t",
            topics=["bench.alerts"],
            handler=handler,
            dead_letter=producer,
            fetch_wait_max_ms=100,
        )
        consumer.wait_for_assignment()
        start = time.perf_counter()
        while handled < count:
            consumer.poll_once(0.5)
        consume_s = time.perf_counter() - start
        consumer.close()
    return {"produce_msg_s": round(count / produce_s), "consume_msg_s": round(count / consume_s)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--rate", type=float, default=200.0, help="round-trip rate, msg/s")
    parser.add_argument("--count", type=int, default=2000, help="round-trip messages")
    parser.add_argument("--throughput", type=int, default=50_000, help="throughput messages")
    args = parser.parse_args()
    configure_logging(LogSettings(level="WARNING"))  # logs to stderr: stdout is the JSON
    setup_tracing("bench")
    # Metrics recorded as a deployable records them (an in-memory reader: nothing exported).
    setup_metrics("bench", [InMemoryMetricReader()])
    codec = Codec.from_contracts()
    with broker() as bootstrap:
        kafka = KafkaSettings(
            bootstrap_servers=bootstrap, session_timeout_ms=6000, heartbeat_interval_ms=500
        )
        raw_rt = raw_round_trip(bootstrap, rate=args.rate, count=args.count)
        bus_rt = kernel_round_trip(kafka, codec, rate=args.rate, count=args.count)
        raw_tp = raw_throughput(bootstrap, count=args.throughput)
        bus_tp = kernel_throughput(kafka, codec, count=args.throughput)
    result = {
        "broker": "KAFKA_BOOTSTRAP_SERVERS"
        if bootstrap and "127.0.0.1" not in bootstrap
        else "embedded tansu (memory)",
        "round_trip": {
            "rate_msg_s": args.rate,
            "raw_confluent_kafka": raw_rt,
            "kernel_bus": bus_rt,
            "ratio_p50": round(bus_rt["p50_ms"] / raw_rt["p50_ms"], 2),
            "ratio_p99": round(bus_rt["p99_ms"] / raw_rt["p99_ms"], 2),
        },
        "throughput": {
            "messages": args.throughput,
            "raw_confluent_kafka": raw_tp,
            "kernel_bus": bus_tp,
            "ratio_produce": round(bus_tp["produce_msg_s"] / raw_tp["produce_msg_s"], 3),
            "ratio_consume": round(bus_tp["consume_msg_s"] / raw_tp["consume_msg_s"], 3),
        },
    }
    report(result, as_json=args.json)


if __name__ == "__main__":
    main()
