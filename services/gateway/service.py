"""The gateway deployable: mTLS gRPC front door of the hub (ingest + connector APIs).

``start(runtime)`` follows the live directory (:func:`~safehub.kernel.views.follow_directory`:
every call authorises its caller and checks its place against ``current()``, so a client, a
school or a door added or removed at run time counts from the next call), binds the server
(writing the bound port to ``port_file`` when set), registers health and reflection, and
consumes the door-commands and announcements topics to feed attached connectors. Every
handler is registered guarded (:mod:`services.gateway.wire`): bytes that are not the request
are INVALID_ARGUMENT, and streams hold a :class:`~services.gateway.limits.StreamLimits` slot
(per client, and at most half of the workers, so unary life-safety calls always find one).
On SIGTERM the runtime drains it: health turns NOT_SERVING, connector sessions end,
in-flight calls get ``grace_s`` to finish.
"""

from __future__ import annotations

import threading

import structlog

from safehub.gen.safehub.connector.v1 import connector_pb2, connector_pb2_grpc
from safehub.gen.safehub.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from safehub.kernel.directory import Directory, DirectorySource
from safehub.kernel.grpc_server import GrpcServer
from safehub.kernel.runtime import Runtime, run
from safehub.kernel.views import follow_directory
from services.gateway.connectors import ConnectorHub
from services.gateway.decisions import Decisions
from services.gateway.dedupe import Deduper
from services.gateway.ingest import IngestServicer
from services.gateway.intake import Intake
from services.gateway.limits import StreamLimits
from services.gateway.settings import GatewaySettings
from services.gateway.wire import add_guarded

log = structlog.get_logger(__name__)

NAME = "gateway"
DOOR_COMMANDS = "safehub.door-commands.v1"
ANNOUNCEMENTS = "safehub.announcements.v1"
INGEST = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"]
CONNECTOR = connector_pb2.DESCRIPTOR.services_by_name["ConnectorService"]
INGEST_SERVICE = INGEST.full_name
CONNECTOR_SERVICE = CONNECTOR.full_name
SERVICE_NAMES = (INGEST_SERVICE, CONNECTOR_SERVICE)


class Gateway:
    """The running gateway: server, directory, connector sessions."""

    def __init__(self, runtime: Runtime[GatewaySettings], directory: DirectorySource) -> None:
        self.runtime = runtime
        self.directory_source = directory
        self.settings = runtime.settings.gateway
        self.deduper = Deduper(self.settings.dedupe_window)
        self.intake = Intake(
            runtime.producer, self.deduper, runtime.settings.kafka.delivery_timeout_s
        )
        self.decisions = Decisions(runtime.settings.kafka, runtime.codec, runtime.catalog)
        self.ingest = IngestServicer(directory, self.intake, self.settings, self.decisions)
        self.connectors = ConnectorHub(
            directory, self.intake, self.ingest, self.settings, runtime.stop
        )
        self.grpc = GrpcServer(
            NAME,
            self.settings.listen,
            self.settings.tls(),
            max_workers=self.settings.max_workers,
            max_message_bytes=self.settings.max_message_bytes,
            grace_s=self.settings.grace_s,
        )
        self.health = self.grpc.health
        self.server = self.grpc.server
        self.port = 0
        self._stopped = threading.Event()
        # Device feeds (streams, door reports) take at most half of the workers; the rest
        # serve the life-safety calls.
        self.stream_limits = StreamLimits(
            self.settings.stream_limit, self.settings.max_streams_per_client
        )
        # Malformed requests are refused INVALID_ARGUMENT (not INTERNAL); streams are slotted.
        self.grpc.add(
            INGEST,
            lambda server: add_guarded(
                server,
                INGEST,
                ingest_pb2_grpc.add_IngestServiceServicer_to_server,
                self.ingest,
                self.stream_limits,
                # Unary door feeds hold workers too: many at once must not take the panics'.
                bulk=frozenset({"ReportDoorState", "ReportDoorStates"}),
            ),
        )
        self.grpc.add(
            CONNECTOR,
            lambda server: add_guarded(
                server,
                CONNECTOR,
                connector_pb2_grpc.add_ConnectorServiceServicer_to_server,
                self.connectors,
                self.stream_limits,
            ),
        )

    @property
    def directory(self) -> Directory:
        """The directory now (a snapshot; the handlers read the source per call)."""
        return self.directory_source.current()

    def start(self) -> int:
        """Bind, start serving and mark every service SERVING; returns the bound port."""
        self.port = self.grpc.start()
        return self.port

    def stop(self) -> None:
        """Drain: NOT_SERVING, end connector sessions, let in-flight calls finish."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.grpc.not_serving()
        self.connectors.close_all()
        self.grpc.stop()


def start(runtime: Runtime[GatewaySettings]) -> Gateway:
    """Start the gateway inside ``runtime`` (tests call this to get the Gateway object)."""
    section = runtime.settings.gateway
    directory = follow_directory(
        runtime.settings.kafka,
        runtime.catalog,
        runtime.codec,
        section.resolved_directory_file(),
        name="gateway-directory",
        ready_timeout=section.directory_ready_s,
    )
    runtime.on_close(directory.close)  # closed after the server stopped (closers are LIFO)
    gateway = Gateway(runtime, directory)
    runtime.spawn(lambda: gateway.decisions.run(runtime.stop), name="gateway-decisions")
    gateway.start()
    runtime.on_close(gateway.stop)
    runtime.consumer(
        section.door_commands_group,
        [DOOR_COMMANDS],
        gateway.connectors.forward,
        fetch_wait_max_ms=section.door_commands_fetch_wait_ms,
    )
    runtime.consumer(
        section.announcements_group,
        [ANNOUNCEMENTS],
        gateway.connectors.announcements.forward,
        fetch_wait_max_ms=section.announcements_fetch_wait_ms,
    )
    return gateway


def setup(runtime: Runtime[GatewaySettings]) -> None:
    """Service entry used by :func:`run`."""
    start(runtime)


def main() -> None:
    """``python -m services.gateway``."""
    run(NAME, GatewaySettings, setup)
