"""The timeline deployable: ingest every event and span, serve the reviewers' APIs and pages.

``setup(runtime)`` follows the live directory (reviewers, looked up per request), opens the
store (applying migrations), starts the HTTP API and pages (writing the bound port to
``port_file``), the gRPC API over mTLS (unless disabled), and the two consumer groups
(events, spans). On SIGTERM: servers stop first, consumers finish and
commit their batch, the store closes last.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.exc import SQLAlchemyError

from safehub.kernel.batch import BatchConsumer
from safehub.kernel.http_server import ServerThread
from safehub.kernel.people import People
from safehub.kernel.runtime import Runtime, run
from safehub.kernel.views import follow_directory
from services.timeline.grpc_api import grpc_server
from services.timeline.http_api import HttpApi
from services.timeline.ingest import Ingest, wait_closed
from services.timeline.query import Queries
from services.timeline.settings import TimelineSettings
from services.timeline.store import Store, StoreError

log = structlog.get_logger(__name__)

NAME = "timeline"
PRUNE_EVERY_S = 600.0


def setup(runtime: Runtime[TimelineSettings]) -> None:
    """Service entry used by :func:`run`."""
    section = runtime.settings.timeline
    # Reviewers come from the live directory, looked up per request: one added or removed at
    # run time can (or can no longer) read from the next request on, without a restart.
    directory = follow_directory(
        runtime.settings.kafka,
        runtime.catalog,
        runtime.codec,
        section.directory_file,
        name="timeline-directory",
        ready_timeout=section.directory_ready_s,
    )
    runtime.on_close(directory.close)
    store = Store(section.database_url)
    runtime.on_close(store.close)
    retention = timedelta(seconds=section.pending_retention_s)
    ingest = Ingest(store, runtime.codec)
    consumers = ingest.consumers(
        runtime.settings.kafka,
        runtime.catalog,
        events_group=runtime.catalog.prefix + section.events_group,
        spans_group=runtime.catalog.prefix + section.spans_group,
        dead_letter=runtime.producer,
        stop=runtime.stop,
        batch_size=section.batch_size,
        fetch_wait_max_ms=section.fetch_wait_max_ms,
    )
    for name, consumer in consumers.items():
        thread = runtime.spawn(consumer.run, name=f"timeline-{name}")
        runtime.on_close(_closer(thread, consumer, section.grace_s + 10))
    runtime.spawn(
        lambda: _prune_until_stopped(store, retention, runtime.stop), name="timeline-prune"
    )

    people = People.load(section.directory_file)  # recipients' names for the people view
    queries = Queries(store, directory, people=people, chain_cache_s=section.chain_cache_s)
    http = ServerThread(
        section.http_listen, name="timeline-http", shutdown_timeout_s=section.grace_s
    )
    port = http.start(HttpApi(queries).app())
    runtime.on_close(http.close)
    log.info("timeline HTTP listening", host=section.http_host, port=port)
    if section.grpc_enabled:
        api = grpc_server(queries, section)
        api.start()  # logs "grpc listening" with the bound port
        runtime.on_close(api.stop)


def _closer(
    thread: threading.Thread, consumer: BatchConsumer[Any], timeout: float
) -> Callable[[], None]:
    return lambda: wait_closed(thread, consumer, timeout)


def _prune_until_stopped(store: Store, retention: timedelta, stop: threading.Event) -> None:
    while True:
        try:
            removed = store.prune(datetime.now(UTC) - retention)
        except (StoreError, SQLAlchemyError) as exc:  # the next round tries again
            log.warning("pruning failed", error_type=type(exc).__name__)
        else:
            if removed:
                log.info("old pending signals and claims pruned", count=removed)
        if stop.wait(PRUNE_EVERY_S):
            return


def main() -> None:
    """``python -m services.timeline``."""
    run(NAME, TimelineSettings, setup)
