"""Running the gateway for tests (in-process or as a process) and talking to it over mTLS.

In-process::

    with running_gateway(kafka, catalog.prefix, tmp_path) as gw:
        gw.stub_for("panic-badges-north").ReportPanic(panic_request(), timeout=10)

As a process (SIGTERM / kill -9 tests, or hub-level tests)::

    with gateway_process(kafka, catalog.prefix, tmp_path) as gw:
        gw.stub_for("panic-badges-north") ...

A door-vendor connector attached to it::

    with running_access_control_sim(gw, jammed_doors=["B-214"]) as sim: ...

Every handle owns a development PKI (``handle.pki``): ``pki.client(cn)`` issues a client
certificate for any CN, registered in the directory or not.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_health.v1 import health_pb2_grpc
from grpc_status import rpc_status

from safehub.devstack.pki import DevPki
from safehub.gen.safehub.common.v1 import door_pb2, place_pb2
from safehub.gen.safehub.connector.v1 import connector_pb2_grpc
from safehub.gen.safehub.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from safehub.kernel.codec import Codec, Event
from safehub.kernel.directory import Directory
from safehub.kernel.reader import TopicReader
from safehub.kernel.runtime import Runtime
from safehub.kernel.settings import KafkaSettings
from services.gateway.service import Gateway, start
from services.gateway.settings import DEMO_DIRECTORY, GatewaySection, GatewaySettings
from tests.support.processes import Component
from tests.support.waiting import wait_until
from vendors.access_control_sim.settings import AccessControlSimSection
from vendors.access_control_sim.sim import AccessControlSim

HOST = "127.0.0.1"


@dataclass
class GatewayClient:
    """Client side of a running gateway: mTLS channels and stubs per client id."""

    port: int
    pki: DevPki
    _channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def address(self) -> str:
        """host:port of the gateway."""
        return f"{HOST}:{self.port}"

    def credentials_for(self, client_id: str) -> grpc.ChannelCredentials:
        """mTLS credentials with a certificate whose CN is ``client_id``."""
        pair = self.pki.client(client_id)
        return grpc.ssl_channel_credentials(
            root_certificates=self.pki.ca.cert.read_bytes(),
            private_key=pair.key.read_bytes(),
            certificate_chain=pair.cert.read_bytes(),
        )

    def channel(self, credentials: grpc.ChannelCredentials) -> grpc.Channel:
        """A channel with any credentials (closed with the handle)."""
        channel = grpc.secure_channel(self.address, credentials)
        self._channels.append(channel)
        return channel

    def channel_for(self, client_id: str) -> grpc.Channel:
        """A channel authenticated as ``client_id``."""
        return self.channel(self.credentials_for(client_id))

    def stub_for(self, client_id: str) -> ingest_pb2_grpc.IngestServiceStub:
        """An IngestService stub authenticated as ``client_id``."""
        return ingest_pb2_grpc.IngestServiceStub(self.channel_for(client_id))

    def connector_stub_for(self, client_id: str) -> connector_pb2_grpc.ConnectorServiceStub:
        """A ConnectorService stub authenticated as ``client_id``."""
        return connector_pb2_grpc.ConnectorServiceStub(self.channel_for(client_id))

    def health_stub(self, client_id: str = "panic-badges-north") -> health_pb2_grpc.HealthStub:
        """A grpc.health.v1 stub (any registered client certificate will do)."""
        return health_pb2_grpc.HealthStub(self.channel_for(client_id))

    def close_channels(self) -> None:
        """Close every channel opened through this handle."""
        for channel in self._channels:
            channel.close()
        self._channels.clear()


@dataclass
class GatewayHandle(GatewayClient):
    """An in-process gateway: its runtime and :class:`Gateway` are at hand."""

    gateway: Gateway | None = None
    runtime: Runtime[GatewaySettings] | None = None

    @property
    def gw(self) -> Gateway:
        """The running Gateway."""
        assert self.gateway is not None
        return self.gateway

    @property
    def directory(self) -> Directory:
        """The directory the gateway loaded."""
        return self.gw.directory


def issued(pki: DevPki, client_id: str | None = None) -> dict[str, Path]:
    """TLS-file settings issued by ``pki`` (a server's, or ``client_id``'s), as ``safehub up``
    passes them."""
    pair = pki.server() if client_id is None else pki.client(client_id)
    return {"tls_cert_file": pair.cert, "tls_key_file": pair.key, "tls_ca_file": pki.ca.cert}


def issued_env(pki: DevPki, section: str, client_id: str) -> dict[str, str]:
    """The same as ``SAFEHUB_<SECTION>__TLS_*`` variables, for a component process."""
    return {
        f"SAFEHUB_{section}__{name.upper()}": str(path)
        for name, path in issued(pki, client_id).items()
    }


def gateway_settings(
    kafka: KafkaSettings, catalog_prefix: str, tmp_path: Path, **gateway: Any
) -> GatewaySettings:
    """Settings for a test gateway: port 0, TLS files from a dev PKI under ``tmp_path/pki``
    (as ``safehub up`` passes them), test topics.

    ``gateway`` overrides fields of :class:`GatewaySection` (e.g. ``dedupe_window=10``).
    """
    pki = DevPki(tmp_path / "pki")
    server = pki.server()
    section: dict[str, Any] = {
        "port": 0,
        "port_file": tmp_path / "gateway.port",
        "tls_cert_file": server.cert,
        "tls_key_file": server.key,
        "tls_ca_file": pki.ca.cert,
        "directory_file": DEMO_DIRECTORY,
        "grace_s": 1.0,
        **gateway,
    }
    return GatewaySettings(
        kafka=kafka.model_copy(update={"topic_prefix": catalog_prefix}),
        gateway=GatewaySection(**section),
    )


@contextlib.contextmanager
def running_gateway(
    kafka: KafkaSettings,
    catalog_prefix: str,
    tmp_path: Path,
    *,
    codec: Codec | None = None,
    **gateway: Any,
) -> Iterator[GatewayHandle]:
    """A gateway in this process (its spans go to the test's tracer provider)."""
    settings = gateway_settings(kafka, catalog_prefix, tmp_path, **gateway)
    pki = DevPki(tmp_path / "pki")
    with Runtime("gateway", settings, codec=codec) as runtime:
        gw = start(runtime)
        handle = GatewayHandle(port=gw.port, pki=pki, gateway=gw, runtime=runtime)
        try:
            yield handle
        finally:
            handle.close_channels()


@dataclass
class GatewayProcessHandle(GatewayClient):
    """A gateway running as ``python -m services.gateway``."""

    component: Component | None = None


@contextlib.contextmanager
def gateway_process(
    kafka: KafkaSettings,
    catalog_prefix: str,
    tmp_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> Iterator[GatewayProcessHandle]:
    """A gateway process on a free port with a dev PKI under ``tmp_path/pki``; SIGTERM at exit.

    ``handle.component`` is the :class:`tests.support.processes.Component` (stop, kill, logs).
    """
    port_file = tmp_path / "gateway-process.port"
    port_file.unlink(missing_ok=True)
    pki = DevPki(tmp_path / "pki")
    server = pki.server()
    component = Component(
        "services.gateway",
        kafka,
        catalog_prefix,
        tmp_path,
        env={
            "SAFEHUB_GATEWAY__PORT": "0",
            "SAFEHUB_GATEWAY__PORT_FILE": str(port_file),
            "SAFEHUB_GATEWAY__TLS_CERT_FILE": str(server.cert),
            "SAFEHUB_GATEWAY__TLS_KEY_FILE": str(server.key),
            "SAFEHUB_GATEWAY__TLS_CA_FILE": str(pki.ca.cert),
            "SAFEHUB_GATEWAY__GRACE_S": "2",
            **(env or {}),
        },
    )
    with component:
        port = int(port_file.read_text().strip())
        handle = GatewayProcessHandle(port=port, pki=pki, component=component)
        try:
            yield handle
        finally:
            handle.close_channels()


@contextlib.contextmanager
def running_access_control_sim(
    gateway: GatewayClient,
    *,
    client_id: str = "acme-access-north",
    school_ids: Iterable[str] = (),
    jammed_doors: Iterable[str] = (),
    report_delay_ms: int = 20,
    port_file: Path | None = None,
    wait_attached: bool = True,
    **section: Any,
) -> Iterator[AccessControlSim]:
    """The door-vendor simulator attached to ``gateway`` (waits for the hub's ack).

    With ``port_file`` it reads the gateway's port from that file on every reconnect
    (restart tests); otherwise it dials ``gateway.address``.
    """
    settings = AccessControlSimSection(
        client_id=client_id,
        gateway_address=gateway.address,
        gateway_port_file=port_file,
        directory_file=DEMO_DIRECTORY,
        school_ids=list(school_ids),
        jammed_doors=list(jammed_doors),
        report_delay_ms=report_delay_ms,
        reconnect_initial_s=0.05,
        reconnect_max_s=0.5,
        **section,
    )
    sim = AccessControlSim(
        settings, Directory.load(DEMO_DIRECTORY), gateway.credentials_for(client_id)
    )
    thread = threading.Thread(target=sim.run, name="access-control-sim", daemon=True)
    thread.start()
    try:
        if wait_attached:
            wait_until(sim.connected.is_set, timeout=20, what="simulator attached")
        yield sim
    finally:
        sim.close()
        thread.join(timeout=10)


# -- requests --------------------------------------------------------------------------


def timestamp(when: datetime | None = None) -> Timestamp:
    """A protobuf Timestamp (now by default)."""
    stamp = Timestamp()
    stamp.FromDatetime(when or datetime.now(UTC))
    return stamp


def place(school: str = "sch-lincoln-hs", building: str = "B", room: str = "") -> place_pb2.Place:
    """A Place message."""
    return place_pb2.Place(school_id=school, building=building, room=room)


def panic_request(**fields: Any) -> ingest_pb2.ReportPanicRequest:
    """A valid ReportPanic request for sch-lincoln-hs B/214; ``fields`` override."""
    values: dict[str, Any] = {
        "client_event_id": f"panic-{uuid.uuid4()}",
        "place": place(room="214"),
        "device_id": "badge-0042",
        "reporter_role": ingest_pb2.REPORTER_ROLE_TEACHER,
        "panic_type": ingest_pb2.PANIC_TYPE_ACTIVE_ASSAILANT,
        "silent": True,
        "occurred_at": timestamp(),
        **fields,
    }
    return ingest_pb2.ReportPanicRequest(**values)


def door_request(**fields: Any) -> ingest_pb2.ReportDoorStateRequest:
    """A valid door state report (sch-lincoln-hs B, B-east-entry LOCKED); ``fields`` override."""
    values: dict[str, Any] = {
        "client_event_id": f"door-{uuid.uuid4()}",
        "place": place(),
        "door_id": "B-east-entry",
        "state": door_pb2.DOOR_STATE_LOCKED,
        "occurred_at": timestamp(),
        **fields,
    }
    return ingest_pb2.ReportDoorStateRequest(**values)


def camera_request(**fields: Any) -> ingest_pb2.ReportCameraAlertRequest:
    """A valid gunshot alert (sch-lincoln-hs A/gym, confidence 0.5); ``fields`` override."""
    values: dict[str, Any] = {
        "client_event_id": f"cam-{uuid.uuid4()}",
        "place": place(building="A", room="gym"),
        "camera_id": "cam-1",
        "analytic": ingest_pb2.CAMERA_ANALYTIC_GUNSHOT,
        "confidence": 0.5,
        "occurred_at": timestamp(),
        **fields,
    }
    return ingest_pb2.ReportCameraAlertRequest(**values)


def field_violations(error: grpc.RpcError) -> dict[str, str]:
    """Field → description of the ``google.rpc.BadRequest`` detail of a refused call."""
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status in the trailers"
    found: dict[str, str] = {}
    for detail in status.details:
        request = error_details_pb2.BadRequest()
        if detail.Unpack(request):
            found.update({v.field: v.description for v in request.field_violations})
    return found


# -- reading what landed -----------------------------------------------------------------


def read_events(
    kafka: KafkaSettings,
    codec: Codec,
    topic: str,
    until: Callable[[list[Event]], bool],
    *,
    timeout: float = 20.0,
) -> list[Event]:
    """Decode every event of ``topic`` from the start until ``until(events)`` holds."""
    events: list[Event] = []
    with TopicReader.of_names(kafka, [topic], name="reader", fetch_wait_ms=20) as reader:

        def done() -> bool:
            events.extend(codec.decode(m.value() or b"") for m in reader.poll(0.05))
            return until(events)

        wait_until(done, timeout=timeout, interval=0, what=f"events on {topic}")
    return events


def has_event(event_id: str) -> Callable[[list[Event]], bool]:
    """``until`` for :func:`read_events`: an event with this id has arrived."""
    return lambda events: any(e["envelope"]["event_id"] == event_id for e in events)
