"""The runtime every service and connector runs in: one small, shared shape.

A deployable is a package ``services/<name>`` or ``connectors/<name>`` with:

* ``settings.py``: one :class:`HubSettings` subclass with the deployable's own section;
* ``service.py``: ``setup(runtime)`` that opens consumers, servers and threads through the
  runtime, and ``main()`` that calls :func:`run`;
* ``__main__.py``: ``main()`` (so ``python -m services.<name>`` runs it).

The runtime owns logging, tracing and metrics, the codec, the topic catalog, one producer and
the stop signal. On SIGTERM/SIGINT it drains in order: stop accepting work (servers, with grace),
let consumer loops finish their batch and commit, run registered closers (LIFO), flush the
producer.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Generic, TypeVar

import structlog

from safehub.kernel import topics, tracing
from safehub.kernel.bus import EventConsumer, EventProducer, Handler, Headers, PoisonPolicy
from safehub.kernel.codec import Codec
from safehub.kernel.errors import SafeHubError
from safehub.kernel.lifecycle import Closing
from safehub.kernel.logging import configure_logging
from safehub.kernel.settings import HubSettings, load_settings
from safehub.kernel.topics import TopicCatalog

log = structlog.get_logger(__name__)

SettingsT = TypeVar("SettingsT", bound=HubSettings)


class Runtime(Closing, Generic[SettingsT]):
    """Shared resources and orderly shutdown for one deployable process."""

    def __init__(self, name: str, settings: SettingsT, *, codec: Codec | None = None) -> None:
        self.name = name
        self.settings = settings
        self.codec = codec or Codec.from_contracts()
        self.catalog = TopicCatalog(settings.kafka.topic_prefix)
        self.stop = threading.Event()
        self.producer = EventProducer(settings.kafka, self.codec, self.catalog, client_id=name)
        self._consumers: list[EventConsumer] = []
        self._consumer_threads: dict[EventConsumer, threading.Thread] = {}
        self._threads: list[threading.Thread] = []
        self._closers: list[Callable[[], Any]] = []
        self._failure: BaseException | None = None
        self._closed = False

    def consumer(
        self,
        group_id: str,
        topics: Iterable[str],
        handler: Handler,
        *,
        policy: PoisonPolicy | None = None,
        fetch_wait_max_ms: int | None = None,
        extra_config: dict[str, Any] | None = None,
        accept: Callable[[Headers], bool] | None = None,
        start: bool = True,
    ) -> EventConsumer:
        """A consumer in ``group_id`` whose loop runs in its own thread until stop.

        The group id gets the deployment's topic prefix, like the topics it reads.
        """
        consumer = EventConsumer(
            self.settings.kafka,
            self.codec,
            self.catalog,
            group_id=self.catalog.prefix + group_id,
            topics=topics,
            handler=handler,
            dead_letter=self.producer,
            policy=policy,
            client_id=self.name,
            fetch_wait_max_ms=fetch_wait_max_ms,
            extra_config=extra_config,
            accept=accept,
        )
        if start:

            def consume() -> None:
                # The thread that polls a consumer closes it: librdkafka deadlocks when
                # close() (and its revoke callback) runs while another thread is in poll().
                try:
                    consumer.run(self.stop)
                finally:
                    consumer.close()

            self._consumer_threads[consumer] = self.spawn(consume, name=f"consume-{group_id}")
        self._consumers.append(consumer)
        return consumer

    def spawn(self, target: Callable[[], Any], *, name: str) -> threading.Thread:
        """Run ``target`` in a thread; if it raises, the whole deployable stops (fail fast)."""

        def guarded() -> None:
            try:
                target()
            except BaseException as exc:
                log.exception("worker failed, stopping", worker=name, service=self.name)
                self._failure = exc
                self.stop.set()

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()
        return thread

    def on_close(self, closer: Callable[[], Any]) -> None:
        """Register a cleanup; closers run in reverse order of registration."""
        self._closers.append(closer)

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT set the stop signal (call from the main thread)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())

    def wait(self) -> None:
        """Block until stop is requested; re-raise a worker failure as SafeHubError."""
        while not self.stop.wait(0.5):
            pass
        if self._failure is not None:
            raise SafeHubError(f"{self.name} stopped after a worker failed") from self._failure

    def close(self) -> None:
        """Drain: closers (servers first, LIFO), consumer loops, commits, producer flush."""
        if self._closed:
            return
        self._closed = True
        self.stop.set()
        for closer in reversed(self._closers):
            try:
                closer()
            except Exception:
                log.exception("closer failed", service=self.name)
        for thread in self._threads:
            thread.join(timeout=10)
        for consumer in self._consumers:
            polling = self._consumer_threads.get(consumer)
            if polling is not None and polling.is_alive():
                # Still inside poll (a slow rebalance): closing it from here could deadlock;
                # its own thread closes it when poll returns.
                log.warning("consumer still polling at shutdown", service=self.name)
                continue
            consumer.close()
        self.producer.close()
        log.info("drained", service=self.name)


def run(
    name: str,
    settings_cls: type[SettingsT],
    setup: Callable[[Runtime[SettingsT]], None],
) -> None:
    """Entry point of a deployable: settings, logging, telemetry, setup, wait, drain."""
    ready_file = os.environ.get("SAFEHUB_READY_FILE")
    if ready_file:  # a file left by a previous run must not make this one look ready
        Path(ready_file).unlink(missing_ok=True)
    settings = load_settings(settings_cls)
    configure_logging(settings.log)
    tracing.setup_process_tracing(f"safehub-{name}", settings)
    tracing.setup_process_metrics(f"safehub-{name}", settings, topics.METRICS)
    # Latency over throughput: a busy thread (a device feed) must not hold the GIL for the
    # default 5 ms while a thread carrying a panic waits to run.
    sys.setswitchinterval(0.0005)
    with Runtime(name, settings) as runtime:
        runtime.install_signal_handlers()
        setup(runtime)
        log.info("ready", service=name)
        if ready_file:  # readiness for supervisors and probes: setup finished
            Path(ready_file).write_text(str(os.getpid()), encoding="utf-8")
        runtime.wait()
