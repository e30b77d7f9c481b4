"""The hub supervisor behind ``safehub up`` and ``safehub demo``.

Starts the embedded broker unless ``KAFKA_BOOTSTRAP_SERVERS`` names a real cluster, creates
the declared topics, then runs each service and connector as its own process
(``python -m services.<name>`` / ``python -m connectors.<name>``), exactly as they run on
Kubernetes. The kernel never imports a service; it only knows their module names.
On exit, services get SIGTERM (they drain: flush producers, commit offsets, stop gRPC with
grace), then the broker stops.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

import structlog

from safehub.embedded.broker import EmbeddedBroker
from safehub.kernel.admin import ensure_topics
from safehub.kernel.errors import SafeHubError
from safehub.kernel.lifecycle import Closing
from safehub.kernel.settings import HubSettings
from safehub.kernel.topics import TopicCatalog

log = structlog.get_logger(__name__)

#: Module names of the deployables ``safehub up`` runs, in start order.
DEFAULT_COMPONENTS: tuple[str, ...] = ()


class Hub(Closing):
    """Broker + topics + component processes, as one context manager."""

    def __init__(
        self,
        settings: HubSettings,
        *,
        durable_dir: Path | None = None,
        components: Sequence[str] = DEFAULT_COMPONENTS,
        env: Mapping[str, str] | None = None,
        grace_s: float = 10.0,
    ) -> None:
        self.settings = settings
        self._durable_dir = durable_dir
        self._components = list(components)
        self._env = dict(env or {})
        self._grace_s = grace_s
        self._broker: EmbeddedBroker | None = None
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.catalog = TopicCatalog(settings.kafka.topic_prefix)

    @property
    def bootstrap_servers(self) -> str:
        """Where the broker listens."""
        return self.settings.kafka.bootstrap_servers or ""

    def __enter__(self) -> Self:
        try:
            if not self.settings.kafka.bootstrap_servers:
                broker = EmbeddedBroker(durable_dir=self._durable_dir)
                broker.start()
                self._broker = broker
                self.settings.kafka.bootstrap_servers = broker.bootstrap_servers
            ensure_topics(self.settings.kafka, self.catalog)
            for component in self._components:
                self.start_component(component)
        except BaseException:
            self.close()
            raise
        return self

    def component_env(self) -> dict[str, str]:
        """Environment every component process gets."""
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "SAFEHUB_KAFKA__TOPIC_PREFIX": self.settings.kafka.topic_prefix,
            **self._env,
        }

    def start_component(self, module: str) -> subprocess.Popen[bytes]:
        """Start ``python -m module`` (e.g. ``services.incidents``)."""
        if module in self.processes and self.processes[module].poll() is None:
            raise SafeHubError(f"{module} is already running")
        process = subprocess.Popen(
            [sys.executable, "-m", module], env=self.component_env(), start_new_session=True
        )
        self.processes[module] = process
        log.info("component started", component=module, pid=process.pid)
        return process

    def stop_component(self, module: str, *, kill: bool = False) -> int | None:
        """SIGTERM (drain) or SIGKILL (crash) one component and wait for it."""
        process = self.processes.get(module)
        if process is None or process.poll() is not None:
            return process.returncode if process else None
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            return process.wait(timeout=self._grace_s)
        except subprocess.TimeoutExpired:
            log.warning("component did not drain in time, killing", component=module)
            process.kill()
            return process.wait(timeout=5)

    def close(self) -> None:
        """Stop components (reverse start order), then the embedded broker."""
        for module in reversed(list(self.processes)):
            self.stop_component(module)
        broker, self._broker = self._broker, None
        if broker is not None:
            broker.stop()
