"""Creating the declared topics at start (idempotent) and checking their layout."""

from __future__ import annotations

from collections.abc import Iterable

import structlog
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from safehub.kernel.errors import BusError
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import DEAD_LETTER, TopicCatalog

log = structlog.get_logger(__name__)


def ensure_topics(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    *,
    only: Iterable[str] | None = None,
    timeout: float = 30.0,
) -> list[str]:
    """Create every declared topic that does not exist; return the names created.

    An existing topic with a different partition count is an error: partitions cannot be
    added on tansu, and silently running on a wrong layout would break key ordering.
    """
    admin = AdminClient(kafka.client_config())
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise BusError(f"cannot reach the broker to list topics: {exc}") from exc
    selected = set(only) if only is not None else set(catalog.specs)
    wanted = {
        catalog.prefix + spec.name: spec
        for spec in catalog.specs.values()
        if spec.name in selected or spec.name == DEAD_LETTER
    }
    for name, spec in wanted.items():
        if name in existing and len(existing[name].partitions) != spec.partitions:
            raise BusError(
                f"topic {name} has {len(existing[name].partitions)} partitions, "
                f"declared {spec.partitions}"
            )
    missing = [
        NewTopic(
            name,
            num_partitions=spec.partitions,
            replication_factor=kafka.replication_factor,
            config=dict(spec.config),
        )
        for name, spec in wanted.items()
        if name not in existing
    ]
    created: list[str] = []
    if not missing:
        return created
    for name, future in admin.create_topics(missing, operation_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BusError(f"cannot create topic {name}: {exc}") from exc
    log.info("topics created", count=len(created))
    return created
