"""The faust (faust-streaming) side of the kernel: stateful stream services, set up once.

Services that need changelog-backed tables, timers and a query API run as a faust worker
(:func:`make_app`, :func:`run_worker`); everything else uses :mod:`safehub.kernel.bus`. Both
speak the same wire format, so a faust service is just another member of the hub:

* **input** topics are read as raw bytes (:func:`raw_topic`) and decoded with
  :class:`~safehub.kernel.codec.Codec` by :class:`StreamIO`, which sends undecodable or
  rejected messages to the dead-letter topic with the bus's ``safehub-dlq-*`` headers and keeps
  going; each event is handled inside a ``process <topic>`` consumer span whose parent is
  the ``traceparent`` the producer injected, with the bus's metrics
  (:mod:`safehub.kernel.observe`);
* **output** is Avro-encoded, keyed by the topic's rule and carries ``safehub-*`` headers and
  ``traceparent`` (:meth:`StreamIO.publish`);
* the **partitioner** is librdkafka's (CRC-32 of the key): keys land on the partitions
  where the bus puts them, so co-partitioned topics line up and one incident stays on one
  partition whoever wrote it (faust's default, murmur2, would scatter them).

What this module changes in faust for the broker (BROKER.md §1-2):

* **Exact table recovery.** faust reads a changelog up to ListOffsets(latest), which tansu
  answers with the base offset of the last *batch* + 1, so recovery silently dropped the
  tail of the last batch (1-3 updates in 3 of 7 restarts). The consumer here corrects the
  end offsets with the high watermark of a fetch response (right on tansu, equal on Kafka):
  the last batch is fetched once per recovery. Recovery then reads every record, whenever
  the worker stopped; nothing depends on the worker having been idle.
* **Fetch wait.** faust hard-codes ``fetch_max_wait_ms=1500`` and tansu holds every fetch for
  about half of it, so each hop would cost ~750 ms; it is set from the Kafka settings.
* **At least once.** ``exactly_once`` does not start on tansu (aiokafka gets no producer id):
  handlers must be idempotent, output carries deterministic event ids where it matters.
* **Topics.** Declared topics are created by :func:`safehub.kernel.admin.ensure_topics` with
  their final partition counts before the worker subscribes (tansu auto-creates unknown
  topics with 4 partitions and cannot add any later); faust declares only its own changelog
  topics, with ``topic_partitions`` (12, like the source topics they mirror).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import tempfile
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
import structlog
from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from aiokafka.structs import TopicPartition  # type: ignore[import-untyped]
from faust.transport.drivers import aiokafka as faust_aiokafka
from opentelemetry.metrics import MeterProvider

from safehub.kernel import observe, tracing
from safehub.kernel.admin import ensure_topics
from safehub.kernel.bus import ConsumedEvent, dead_letter_of, dead_lettered, event_headers
from safehub.kernel.codec import Codec, Event
from safehub.kernel.errors import BusError, CodecError
from safehub.kernel.logging import configure_logging
from safehub.kernel.settings import HubSettings
from safehub.kernel.topics import METRICS, TopicCatalog

log = structlog.get_logger(__name__)

#: Partition count of faust's own (changelog) topics: the same as the source topics.
TOPIC_PARTITIONS = 12

#: How long the exact-end-offset probe may take before falling back to ListOffsets.
_END_PROBE_TIMEOUT_S = 10.0


def librdkafka_partition(
    key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]
) -> int:
    """librdkafka's default partitioner (``consistent_random``): CRC-32 of the key.

    Matches :class:`safehub.kernel.bus.EventProducer` (confluent-kafka), so a key lands on
    the same partition whichever client wrote it.
    """
    if key is None:
        return random.choice(list(available or all_partitions))  # noqa: S311 - not security
    ordered = sorted(all_partitions)
    return ordered[zlib.crc32(key) % len(ordered)]


async def exact_end_offsets(
    bootstrap_servers: list[str], ends: dict[Any, int], **client_options: Any
) -> dict[Any, int]:
    """Correct ListOffsets(latest) ``ends`` with fetch-response high watermarks.

    tansu reports the base offset of the last batch + 1 for ListOffsets(latest); a fetch
    from that offset - 1 returns the last batch and the true high watermark. On Kafka both
    agree and this costs one small fetch per partition. Keys are topic-partition tuples.
    """
    probe = {tp: end for tp, end in ends.items() if end and end > 0}
    if not probe:
        return dict(ends)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        fetch_max_wait_ms=10,
        **client_options,
    )
    exact = dict(ends)
    await consumer.start()
    try:
        partitions = {TopicPartition(tp[0], tp[1]): tp for tp in probe}
        consumer.assign(list(partitions))
        for tp, original in partitions.items():
            consumer.seek(tp, probe[original] - 1)
        pending = set(partitions)
        deadline = time.monotonic() + _END_PROBE_TIMEOUT_S
        while pending and time.monotonic() < deadline:
            await consumer.getmany(*pending, timeout_ms=100)
            for tp in list(pending):
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    original = partitions[tp]
                    exact[original] = max(probe[original], highwater)
                    pending.discard(tp)
        if pending:
            log.warning(
                "end offsets not confirmed by a fetch; using ListOffsets",
                partitions=sorted(f"{tp.topic}/{tp.partition}" for tp in pending),
            )
    finally:
        await consumer.stop()
    corrected = {f"{tp[0]}/{tp[1]}": (ends[tp], n) for tp, n in exact.items() if n != ends[tp]}
    if corrected:
        log.info("end offsets corrected by fetch high watermark", corrected=corrected)
    return exact


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's aiokafka consumer thread with the two broker fixes (see module doc)."""

    # Service logs stay under faust's logger names (their level is set in run_worker).
    logger = logging.getLogger("faust.transport.drivers.aiokafka")

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # faust passes a fixed 1500 ms; aiokafka reads the attribute when start() builds
        # its fetcher, which happens after this returns.
        consumer._fetch_max_wait_ms = getattr(self.app, "safehub_fetch_wait_ms", 50)
        return consumer

    async def _highwaters(self, partitions: list[Any]) -> Any:
        ends = await super()._highwaters(partitions)
        if self.consumer.in_transaction:
            return ends
        return await exact_end_offsets(
            faust_aiokafka.server_list(self.transport.url, faust_aiokafka.Transport.default_port),
            dict(ends),
            **faust_aiokafka.credentials_to_aiokafka_auth(
                self.app.conf.broker_credentials, self.app.conf.ssl_context
            ),
        )


class _Consumer(faust_aiokafka.Consumer):
    logger = logging.getLogger("faust.transport.drivers.aiokafka")

    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class _App(faust.App):
    """faust.App whose consumer transport carries the broker fixes."""

    logger = logging.getLogger("faust.app.base")
    safehub_fetch_wait_ms: int = 50

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host if host != "0.0.0.0" else "", 0))  # noqa: S104 - probing only
        return int(sock.getsockname()[1])


def _credentials(settings: HubSettings) -> Any:
    kafka = settings.kafka
    protocol = kafka.security_protocol
    if protocol == "PLAINTEXT":
        return None
    import ssl

    context = (
        ssl.create_default_context(cafile=kafka.ssl_ca_location)
        if protocol.endswith("SSL")
        else None
    )
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=kafka.sasl_username,
        password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
        mechanism=kafka.sasl_mechanism or "PLAIN",
        ssl_context=context,
    )


def make_app(
    name: str,
    settings: HubSettings,
    *,
    web_port: int | None,
    web_bind: str = "127.0.0.1",
    web_host: str | None = None,
    data_dir: Path | None = None,
    fetch_wait_max_ms: int | None = None,
    commit_interval_s: float = 1.0,
) -> faust.App:
    """A faust app for this hub and broker.

    The app id (consumer group, changelog topic prefix) is the deployment's topic prefix +
    ``name``. ``web_port`` None disables the web server; 0 picks a free port (read it back
    from ``app.conf.web_port``). ``web_host`` is the name other workers use to reach this
    one (faust routes table queries to the owning worker), by default the bind address or,
    for a wildcard bind, the host name.
    """
    kafka = settings.kafka
    bootstrap = str(kafka.client_config()["bootstrap.servers"])  # ConfigError if unset
    catalog = TopicCatalog(kafka.topic_prefix)
    if web_port == 0:
        web_port = _free_port(web_bind)
    if web_host is None:
        web_host = socket.gethostname() if web_bind in ("0.0.0.0", "::") else web_bind  # noqa: S104
    app_id = catalog.prefix + name
    app = _App(
        app_id,
        broker=[f"kafka://{server.strip()}" for server in bootstrap.split(",")],
        broker_credentials=_credentials(settings),
        store="memory://",
        autodiscover=False,
        # Only directories (the memory store writes nothing); /tmp is writable in containers.
        datadir=str(data_dir or Path(tempfile.gettempdir()) / f"safehub-faust-{app_id}"),
        processing_guarantee="at_least_once",
        broker_session_timeout=kafka.session_timeout_ms / 1000,
        # faust refuses a session timeout above the request timeout (90 s by default).
        broker_request_timeout=max(90.0, kafka.session_timeout_ms / 1000 * 1.5),
        broker_heartbeat_interval=kafka.heartbeat_interval_ms / 1000,
        broker_commit_interval=commit_interval_s,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger=kafka.linger_ms / 1000,
        producer_max_request_size=kafka.max_message_bytes,
        producer_partitioner=librdkafka_partition,
        topic_partitions=TOPIC_PARTITIONS,
        topic_replication_factor=kafka.replication_factor,
        topic_allow_declare=True,
        # No leader election topic: timers run on every worker, each on its own partitions.
        topic_disable_leader=True,
        # A standby replays whole changelogs; tansu never compacts them. Recovery instead.
        table_standby_replicas=0,
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=web_port is not None,
        web_port=web_port or 6066,
        web_bind=web_bind,
        web_host=web_host,
        worker_redirect_stdouts=False,
    )
    app.safehub_fetch_wait_ms = fetch_wait_max_ms or kafka.fetch_wait_max_ms
    return app


def raw_topic(app: Any, catalog: TopicCatalog, *bases: str) -> Any:
    """A faust channel over declared topics, values and keys as raw bytes (decode yourself)."""
    partitions = {catalog.specs[base].partitions for base in bases if base in catalog.specs}
    if len(partitions) > 1:
        raise BusError(f"topics {bases} are not co-partitioned: {sorted(partitions)}")
    return app.topic(
        *(catalog.name(base) for base in bases),
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions.pop() if partitions else None,
        internal=False,
    )


@dataclass(frozen=True)
class StreamRecord:
    """A record as faust delivered it, with its coordinates and headers normalised."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    @classmethod
    def of(cls, event: Any) -> StreamRecord:
        """From a faust ``EventT`` (``stream.events()``) of a raw topic."""
        message = event.message
        raw_headers = message.headers or []
        pairs = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
        return cls(
            topic=str(message.topic),
            partition=int(message.partition),
            offset=int(message.offset),
            key=_as_bytes(message.key),
            value=_as_bytes(message.value),
            headers=[
                (str(name), val.encode() if isinstance(val, str) else bytes(val))
                for name, val in pairs
                if val is not None
            ],
        )


def _as_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return bytes(value)


@dataclass
class StreamStats:
    """Counters a stream service exposes (``/stats``) and tests assert on."""

    handled: int = 0
    dead_lettered: int = 0
    published: int = 0
    first_event_at: float | None = None
    last_event_at: float | None = None
    by_topic: dict[str, int] = field(default_factory=dict)


StreamHandler = Callable[[ConsumedEvent], Awaitable[None]]


class StreamIO:
    """Decoding, dead-lettering, tracing and publishing for the agents of one faust app."""

    def __init__(
        self,
        app: Any,
        codec: Codec,
        catalog: TopicCatalog,
        *,
        max_bytes: int,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self.app = app
        self.codec = codec
        self.catalog = catalog
        self.stats = StreamStats()
        self._max_bytes = max_bytes
        self._meters = observe.instruments(meter_provider)

    @property
    def group(self) -> str:
        """The consumer group (the app id)."""
        return str(self.app.conf.id)

    async def consume(self, stream: Any, handler: StreamHandler) -> None:
        """Handle every event of ``stream``; poison messages go to the dead-letter topic.

        Bytes that do not decode and handlers that raise are dead-lettered (confirmed by the
        broker before the event is acknowledged) and the agent carries on; retrying in place
        would only stall the partition for a deterministic in-memory failure.
        """
        async for raw in stream.events():
            await self.handle(StreamRecord.of(raw), handler)

    async def handle(self, record: StreamRecord, handler: StreamHandler) -> None:
        """One record: span, decode, handler, dead letter on failure."""
        with self.processing(record) as processing:
            try:
                event = self.codec.decode(record.value or b"")
            except CodecError as exc:
                processing.failed(exc)
                await self.dead_letter(record, exc, attempts=0)
                return
            consumed = ConsumedEvent(
                event, record.topic, record.partition, record.offset, record.key, record.headers
            )
            processing.decoded(consumed.event_type)
            try:
                await handler(consumed)
            except Exception as exc:
                processing.failed(exc)
                await self.dead_letter(record, exc, attempts=1)
                return
        stats = self.stats
        stats.handled += 1
        stats.by_topic[record.topic] = stats.by_topic.get(record.topic, 0) + 1
        stats.last_event_at = time.time()
        if stats.first_event_at is None:
            stats.first_event_at = stats.last_event_at

    def processing(
        self, record: StreamRecord
    ) -> contextlib.AbstractContextManager[observe.Processing]:
        """The consumer span and metrics of one record (:func:`observe.processing`)."""
        return observe.processing(
            self._meters,
            record.topic,
            partition=record.partition,
            offset=record.offset,
            headers=record.headers,
            group=self.group,
        )

    async def dead_letter(self, record: StreamRecord, exc: BaseException, *, attempts: int) -> None:
        """Send the original record to the dead-letter topic and wait for the broker."""
        reason, headers = dead_letter_of(record, exc, attempts=attempts, group=self.group)
        # Confirmed before the event is acknowledged; a failure here crashes the agent and
        # the uncommitted record is read again after the restart.
        await self.app.producer.send_and_wait(
            self.catalog.dead_letter, record.key, record.value, None, None, headers
        )
        self.stats.dead_lettered += 1
        dead_lettered(record, exc, reason=reason, group=self.group, meters=self._meters)

    async def publish(self, event: Event, *, wait: bool = False) -> None:
        """Encode ``event`` and send it to its topic, keyed by the topic's rule.

        Inside an agent, ``wait=False`` is enough: faust flushes the producer before it
        commits the offsets of the input. Outside one (timers), wait for the broker.
        """
        envelope = event["envelope"]
        event_type = str(envelope["event_type"])
        topic = self.catalog.topic_for(event_type)
        key = self.catalog.key_for(event)
        value = self.codec.encode(event)
        if len(value) > self._max_bytes:
            # The hub enforces the size limit itself: tansu does not (BROKER.md).
            raise BusError(
                f"message for {topic} is {len(value)} bytes, over the {self._max_bytes}-byte limit"
            )
        headers = event_headers(event)
        with observe.sending(
            self._meters,
            topic,
            event_type=event_type,
            event_id=str(envelope["event_id"]),
            size=len(value),
            headers=headers,
        ):
            if wait:
                await self.app.producer.send_and_wait(topic, key, value, None, None, headers)
            else:
                await self.app.producer.send(topic, key, value, None, None, headers)
        self.stats.published += 1


def set_table_key(table: Any, partition: int, key: Any, value: Any) -> None:
    """Set ``table[key]`` outside an agent (e.g. in a timer), on an explicit changelog partition.

    faust only allows table writes from inside a stream, where it takes the partition from
    the current event; a timer has none, so the caller names the partition the key belongs
    to (the one its source events came from).
    """
    table.data[key] = value
    table.send_changelog(partition, key, value)


def assigned_partitions(app: Any, topic: str) -> set[int]:
    """Partitions of ``topic`` this worker currently owns."""
    return {tp.partition for tp in app.consumer.assignment() if tp.topic == topic}


class _Worker(faust.Worker):
    """faust.Worker that leaves logging to structlog and reports readiness in a file."""

    logger = logging.getLogger("faust.worker")
    ready_file: Path | None = None

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        if self._shutdown_immediately:
            return
        log.info("ready", app=self.app.conf.id, web_port=self.app.conf.web_port)
        if self.ready_file is not None:
            # Readiness for supervisors and tests: tables recovered, web server up.
            self.ready_file.write_text(str(os.getpid()), encoding="utf-8")


def run_worker(app: Any, settings: HubSettings, *, topics: Iterable[str]) -> None:
    """Create the declared ``topics``, then run ``app`` until SIGTERM/SIGINT (never returns).

    Logging goes through structlog; tracing is set up as for every deployable. The file
    named by ``SAFEHUB_READY_FILE`` is written once tables are recovered and the web server
    is up.
    """
    configure_logging(settings.log)
    if settings.log.level != "DEBUG":
        # faust and mode log every service start and stop, and whole assignment and
        # recovery tables, at INFO; keep their warnings and errors.
        for noisy in ("faust", "mode"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    tracing.setup_process_tracing(f"safehub-{settings.service_name}", settings)
    tracing.setup_process_metrics(f"safehub-{settings.service_name}", settings, METRICS)
    ensure_topics(settings.kafka, TopicCatalog(settings.kafka.topic_prefix), only=list(topics))
    # The worker must own the running loop (faust creates services bound to it).
    asyncio.set_event_loop(asyncio.new_event_loop())
    worker = _Worker(
        app,
        loglevel=settings.log.level,
        quiet=True,
        redirect_stdouts=False,
        override_logging=False,
    )
    worker.spinner = None  # a terminal progress spinner; its escape codes end up in logs
    ready_file = os.environ.get("SAFEHUB_READY_FILE")
    worker.ready_file = Path(ready_file) if ready_file else None
    worker.execute_from_commandline()
