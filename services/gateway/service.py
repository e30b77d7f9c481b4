"""The gateway deployable: mTLS gRPC front door of the hub (ingest + connector APIs).

``start(runtime)`` loads the directory, binds the server (writing the bound port to
``port_file`` when set), registers health and reflection, and consumes the door-commands and
announcements topics to feed attached connectors. Every handler is registered guarded
(:mod:`services.gateway.wire`): bytes that are not the request are INVALID_ARGUMENT, and
streams hold a :class:`~services.gateway.limits.StreamLimits` slot (per client, and at most
half of the workers, so unary life-safety calls always find one). On SIGTERM the runtime
drains it: health turns NOT_SERVING, connector sessions end, in-flight calls get ``grace_s``
to finish.
"""

from __future__ import annotations

import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import (
    filters,
    server_interceptor,
)

from safehub.embedded.pki import DevPki
from safehub.gen.safehub.connector.v1 import connector_pb2, connector_pb2_grpc
from safehub.gen.safehub.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from safehub.kernel.directory import Directory
from safehub.kernel.errors import ConfigError
from safehub.kernel.lifecycle import write_port_file
from safehub.kernel.runtime import Runtime, run
from services.gateway.connectors import ConnectorHub
from services.gateway.decisions import Decisions
from services.gateway.dedupe import Deduper
from services.gateway.ingest import IngestServicer
from services.gateway.intake import Intake
from services.gateway.limits import StreamLimits
from services.gateway.settings import GatewaySection, GatewaySettings
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


@dataclass(frozen=True)
class TlsFiles:
    """PEM material of the server."""

    cert: Path
    key: Path
    ca: Path


def tls_files(settings: GatewaySection) -> TlsFiles:
    """The server's TLS files, or a dev PKI's; ConfigError naming what is missing."""
    given = {
        "SAFEHUB_GATEWAY__TLS_CERT_FILE": settings.tls_cert_file,
        "SAFEHUB_GATEWAY__TLS_KEY_FILE": settings.tls_key_file,
        "SAFEHUB_GATEWAY__TLS_CA_FILE": settings.tls_ca_file,
    }
    if settings.tls_cert_file and settings.tls_key_file and settings.tls_ca_file:
        files = TlsFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file)
    elif not any(given.values()) and settings.dev_pki_dir is not None:
        pki = DevPki(settings.dev_pki_dir)
        server = pki.server()
        files = TlsFiles(server.cert, server.key, pki.ca.cert)
    else:
        missing = [name for name, value in given.items() if value is None]
        raise ConfigError(
            f"the gateway needs TLS material: set {', '.join(missing)} "
            "(or only SAFEHUB_GATEWAY__DEV_PKI_DIR for development)"
        )
    for path in (files.cert, files.key, files.ca):
        if not path.is_file():
            raise ConfigError(f"TLS file {path} does not exist")
    return files


class Gateway:
    """The running gateway: server, directory, connector sessions."""

    def __init__(self, runtime: Runtime[GatewaySettings], directory: Directory) -> None:
        self.runtime = runtime
        self.directory = directory
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
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self.port = 0
        self._stopped = threading.Event()
        # Health and reflection are probes, not work: no spans for them.
        tracing_interceptor = server_interceptor(  # type: ignore[no-untyped-call]
            filter_=filters.negate(filters.service_prefix("grpc."))
        )
        self.server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=self.settings.max_workers, thread_name_prefix="gateway-rpc"
            ),
            interceptors=[tracing_interceptor],
            options=[
                ("grpc.max_receive_message_length", self.settings.max_message_bytes),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ],
        )
        # Device feeds (streams, door reports) take at most half of the workers; the rest
        # serve the life-safety calls.
        self.stream_limits = StreamLimits(
            self.settings.stream_limit, self.settings.max_streams_per_client
        )
        # Malformed requests are refused INVALID_ARGUMENT (not INTERNAL); streams are slotted.
        add_guarded(
            self.server,
            INGEST,
            ingest_pb2_grpc.add_IngestServiceServicer_to_server,
            self.ingest,
            self.stream_limits,
            # Unary door feeds hold workers too: many at once must not take the panics'.
            bulk=frozenset({"ReportDoorState", "ReportDoorStates"}),
        )
        add_guarded(
            self.server,
            CONNECTOR,
            connector_pb2_grpc.add_ConnectorServiceServicer_to_server,
            self.connectors,
            self.stream_limits,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )

    def start(self) -> int:
        """Bind, start serving and mark every service SERVING; returns the bound port."""
        files = tls_files(self.settings)
        credentials = grpc.ssl_server_credentials(
            [(files.key.read_bytes(), files.cert.read_bytes())],
            root_certificates=files.ca.read_bytes(),
            require_client_auth=True,
        )
        address = f"{self.settings.host}:{self.settings.port}"
        try:
            port = int(self.server.add_secure_port(address, credentials))
        except RuntimeError as exc:
            raise ConfigError(f"the gateway cannot listen on {address}: {exc}") from exc
        if port == 0:
            raise ConfigError(f"the gateway cannot listen on {address}")
        self.port = port
        self.server.start()
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.settings.port_file is not None:
            write_port_file(self.settings.port_file, port)
        log.info("gateway listening", host=self.settings.host, port=port)
        return port

    def stop(self) -> None:
        """Drain: NOT_SERVING, end connector sessions, let in-flight calls finish."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        self.connectors.close_all()
        self.server.stop(self.settings.grace_s).wait(self.settings.grace_s + 1.0)
        log.info("gateway stopped", port=self.port)


def start(runtime: Runtime[GatewaySettings]) -> Gateway:
    """Start the gateway inside ``runtime`` (tests call this to get the Gateway object)."""
    section = runtime.settings.gateway
    directory = Directory.load(section.resolved_directory_file())
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
