"""The gRPC server of every deployable: mTLS, health, reflection, traces, graceful stop.

::

    server = GrpcServer("timeline", section.grpc_listen, section.grpc_tls())
    server.add(SERVICE, timeline_pb2_grpc.add_TimelineServiceServicer_to_server, servicer)
    server.add(OTHER, lambda grpc_server: add_guarded(grpc_server, ...))   # any registrar
    port = server.start()      # bound (port 0 picks one), SERVING, port file written
    ...
    server.stop()              # NOT_SERVING, calls in flight get the grace, then closed

Every server requires a client certificate from the CA of its :class:`TlsFiles`, answers
``grpc.health.v1`` (``""`` and each added service; non-blocking, so probes never take a
worker) and reflection for the added services, and traces each RPC with the OpenTelemetry
server interceptor, except the ``grpc.*`` probes (health, reflection), which are not work.
Used as a context manager it starts on entry (if not started) and stops on exit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any, Self

import grpc
import structlog
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import filters, server_interceptor

from safehub.kernel.errors import ConfigError
from safehub.kernel.lifecycle import Closing, write_port_file
from safehub.kernel.settings import ListenSettings
from safehub.kernel.tls import TlsFiles

log = structlog.get_logger(__name__)

#: gRPC's own default largest request.
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1_048_576
#: Server pings an idle connection every 30 s (dead peers free their streams); clients may
#: ping every 10 s without calls in flight (the connector SDK's keepalive).
KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
)
_NO_SERVICER = object()


def tracing_interceptor() -> grpc.ServerInterceptor:
    """The OpenTelemetry server interceptor, skipping the ``grpc.*`` probes."""
    return server_interceptor(  # type: ignore[no-untyped-call]
        filter_=filters.negate(filters.service_prefix("grpc."))
    )


class GrpcServer(Closing):
    """One mTLS gRPC server: add services, :meth:`start`, :meth:`stop`."""

    def __init__(
        self,
        name: str,
        listen: ListenSettings,
        tls: TlsFiles,
        *,
        max_workers: int = 16,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        grace_s: float = 5.0,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.name = name
        self.listen = listen
        self.tls = tls
        self.grace_s = grace_s
        #: The health servicer (``enter_graceful_shutdown`` is what :meth:`stop` does first).
        self.health = health.HealthServicer(experimental_non_blocking=True)
        #: The underlying server, for registrars that need it (``add`` hands it to them).
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"{name}-rpc"),
            interceptors=[tracing_interceptor()],
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                *KEEPALIVE_OPTIONS,
                *options,
            ],
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        #: Full names of the services added, in order.
        self.services: list[str] = []
        #: The bound port once started (0 before).
        self.port = 0
        self._lock = threading.Lock()
        self._started = False
        self._stopped = False

    def add(
        self,
        service: ServiceDescriptor | str,
        register: Callable[..., object],
        servicer: object = _NO_SERVICER,
    ) -> None:
        """Add a service: ``register(servicer, server)`` (a generated ``add_*_to_server``) or,
        without ``servicer``, ``register(server)`` (any callable registering on the server).

        ``service`` (its descriptor or full name) is reported by health and reflection.
        """
        if self._started:
            raise RuntimeError(f"{self.name}: services are added before start()")
        name = service if isinstance(service, str) else service.full_name
        if servicer is _NO_SERVICER:
            register(self.server)
        else:
            register(servicer, self.server)
        self.services.append(name)

    def start(self) -> int:
        """Bind (mTLS), serve, mark every service SERVING, write the port file; the port."""
        with self._lock:
            if self._started:
                return self.port
            reflection.enable_server_reflection(
                (*self.services, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
            )
            address = self.listen.address
            try:
                port = int(self.server.add_secure_port(address, self.tls.server_credentials()))
            except RuntimeError as exc:
                raise ConfigError(f"the {self.name} cannot listen on {address}: {exc}") from exc
            if port == 0:
                raise ConfigError(f"the {self.name} cannot listen on {address}")
            self.port = port
            self.server.start()
            self._started = True
        for service in ("", *self.services):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if self.listen.port_file is not None:
            write_port_file(self.listen.port_file, port)
        log.info("grpc listening", server=self.name, host=self.listen.host, port=port)
        return port

    def not_serving(self) -> None:
        """Health NOT_SERVING for every service (the first step of :meth:`stop`)."""
        self.health.enter_graceful_shutdown()

    def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, refuse new calls, give calls in flight ``grace`` (default ``grace_s``)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        grace_s = self.grace_s if grace is None else grace
        self.not_serving()
        self.server.stop(grace_s).wait(grace_s + 1.0)
        if self._started:
            log.info("grpc stopped", server=self.name, port=self.port)

    def close(self) -> None:
        """Same as :meth:`stop` with the configured grace."""
        self.stop()

    def __enter__(self) -> Self:
        self.start()
        return self
