"""Fixtures that give every test real parts: a Kafka-protocol broker, topics, the codec.

Broker choice, in order: ``KAFKA_BOOTSTRAP_SERVERS`` if set; a testcontainers Kafka (KRaft)
if a Docker engine answers; else the embedded tansu broker. Every test gets its own topic
prefix, so tests never see each other's messages.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from safehub.kernel.admin import ensure_topics
from safehub.kernel.bus import EventProducer
from safehub.kernel.codec import Codec
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import TopicCatalog
from tests.support.processes import Component

_SPANS = InMemorySpanExporter()


def pytest_configure(config: pytest.Config) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_SPANS))
    trace.set_tracer_provider(provider)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Markers from what a test really uses, so ``-m "not kafka and not postgres"`` is the
    fast tier whatever a module remembered to declare."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if "kafka_bootstrap" in names:
            item.add_marker(pytest.mark.kafka)
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("database_url") == "postgresql":
            item.add_marker(pytest.mark.postgres)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Finished spans recorded during the test."""
    _SPANS.clear()
    yield _SPANS


def _docker_kafka() -> Any | None:
    try:
        import docker.errors
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:
        return None
    try:
        return KafkaContainer().with_kraft()
    except docker.errors.DockerException:
        return None


@pytest.fixture(autouse=True)
def _no_leaked_processes() -> Iterator[None]:
    """Kill component processes a test started and left running (e.g. it failed half-way)."""
    before = set(map(id, Component.running))
    yield
    for component in [c for c in Component.running if id(c) not in before]:
        component.kill()
        Component.running.remove(component)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a real Kafka-protocol broker for the whole session."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    container = _docker_kafka()
    if container is not None:
        with container as kafka:
            yield kafka.get_bootstrap_server()
        return
    from safehub.devstack.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers


def _test_kafka(bootstrap: str) -> KafkaSettings:
    """Kafka settings tuned for tests: fast group joins, short fetch waits."""
    return KafkaSettings(
        bootstrap_servers=bootstrap,
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
        fetch_wait_max_ms=50,
    )


@pytest.fixture
def kafka(kafka_bootstrap: str) -> KafkaSettings:
    """Kafka settings tuned for tests: fast group joins, short fetch waits."""
    return _test_kafka(kafka_bootstrap)


@pytest.fixture(scope="module")
def module_kafka(kafka_bootstrap: str) -> KafkaSettings:
    """The same settings, for fixtures shared by a module (a process started once)."""
    return _test_kafka(kafka_bootstrap)


@pytest.fixture(scope="module")
def module_catalog(module_kafka: KafkaSettings) -> TopicCatalog:
    """Every declared topic under a prefix unique to this module."""
    catalog = TopicCatalog(prefix=f"t{uuid.uuid4().hex[:10]}.")
    ensure_topics(module_kafka, catalog)
    return catalog


@pytest.fixture(scope="session")
def codec() -> Codec:
    """The codec over every schema in schemas/."""
    return Codec.from_contracts()


@pytest.fixture
def make_catalog(kafka: KafkaSettings) -> Callable[..., TopicCatalog]:
    """Create a fresh, uniquely prefixed set of topics (all declared, or ``only`` some)."""

    def make(*only: str) -> TopicCatalog:
        catalog = TopicCatalog(prefix=f"t{uuid.uuid4().hex[:10]}.")
        ensure_topics(kafka, catalog, only=only or None)
        return catalog

    return make


@pytest.fixture
def producer(kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog) -> Iterator[EventProducer]:
    """The kernel producer on this test's topics."""
    with EventProducer(kafka, codec, catalog) as running:
        yield running


@pytest.fixture
def catalog(make_catalog: Callable[..., TopicCatalog]) -> TopicCatalog:
    """Every declared topic under a prefix unique to this test."""
    return make_catalog()


POSTGRES_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLAlchemy URL for each store SafeHub supports: SQLite (embedded) and PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite3'}"
    import psycopg

    try:
        psycopg.connect(POSTGRES_DSN, connect_timeout=3).close()
    except psycopg.Error as exc:
        pytest.skip(f"PostgreSQL is not reachable at 127.0.0.1:5432 ({type(exc).__name__})")
    return "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture
def group_id() -> str:
    """A consumer group id unique to this test."""
    return f"g-{uuid.uuid4().hex[:10]}"
