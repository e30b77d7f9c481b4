"""The kernel gRPC server over real sockets: mTLS required, health, reflection, spans, port file.

Also the one TLS-files setting: its errors name the ``SAFEHUB_*`` variables to set.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from safehub.devstack.pki import DevPki
from safehub.gen.safehub.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from safehub.gen.safehub.timeline.v1 import timeline_pb2, timeline_pb2_grpc
from safehub.kernel.errors import ConfigError
from safehub.kernel.grpc_server import GrpcServer
from safehub.kernel.settings import ListenSettings, TlsFileSettings
from safehub.kernel.tls import TlsFiles, tls_files
from services.gateway.settings import GatewaySection
from services.timeline.grpc_api import grpc_server
from services.timeline.query import Queries
from services.timeline.settings import TimelineSection
from tests.support.gateway import issued
from vendors.access_control_sim.settings import AccessControlSimSection

TIMEOUT = 10.0
TIMELINE = timeline_pb2.DESCRIPTOR.services_by_name["TimelineService"]
INGEST = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"]
VERIFY = "/safehub.timeline.v1.TimelineService/VerifyChain"


class Timeline(timeline_pb2_grpc.TimelineServiceServicer):
    """Answers VerifyChain with the caller's certificate CN as the head hash."""

    def VerifyChain(
        self, request: timeline_pb2.VerifyChainRequest, context: grpc.ServicerContext
    ) -> timeline_pb2.VerifyChainResponse:
        names = (context.auth_context() or {}).get("x509_common_name") or [b""]
        return timeline_pb2.VerifyChainResponse(
            chain=timeline_pb2.ChainStatus(ok=True, head_hash=names[0].decode())
        )


@pytest.fixture
def pki(tmp_path: Path) -> DevPki:
    return DevPki(tmp_path / "pki")


@pytest.fixture
def tls(pki: DevPki) -> TlsFiles:
    server = pki.server()
    files = TlsFileSettings(
        tls_cert_file=server.cert, tls_key_file=server.key, tls_ca_file=pki.ca.cert
    )
    return tls_files("test", files)


def new_server(tls: TlsFiles, port_file: Path | None = None) -> GrpcServer:
    server = GrpcServer("test", ListenSettings(port=0, port_file=port_file), tls, grace_s=1.0)
    # A generated add_*_to_server with its servicer, and a callable registering on the server.
    server.add(TIMELINE, timeline_pb2_grpc.add_TimelineServiceServicer_to_server, Timeline())
    server.add(
        INGEST.full_name,
        lambda grpc_server: ingest_pb2_grpc.add_IngestServiceServicer_to_server(
            ingest_pb2_grpc.IngestServiceServicer(), grpc_server
        ),
    )
    return server


@pytest.fixture
def server(tls: TlsFiles, tmp_path: Path) -> Iterator[GrpcServer]:
    with new_server(tls, tmp_path / "run" / "test.port") as running:
        yield running


def channel(pki: DevPki, server: GrpcServer, client_id: str = "someone") -> grpc.Channel:
    files = tls_files("client", TlsFileSettings(**issued(pki, client_id)))
    return grpc.secure_channel(f"127.0.0.1:{server.port}", files.channel_credentials())


def test_the_port_file_names_the_bound_port(server: GrpcServer, tmp_path: Path) -> None:
    assert server.port > 0
    assert (tmp_path / "run" / "test.port").read_text() == f"{server.port}\n"


def test_a_client_certificate_from_the_ca_is_required(pki: DevPki, server: GrpcServer) -> None:
    with channel(pki, server, "rev-north") as ok:
        answer = timeline_pb2_grpc.TimelineServiceStub(ok).VerifyChain(
            timeline_pb2.VerifyChainRequest(subject_id="x"), timeout=TIMEOUT
        )
        assert answer.chain.head_hash == "rev-north"  # the server sees the CN

    ca = pki.ca.cert.read_bytes()
    foreign = DevPki(pki.root.parent / "foreign")
    pair = foreign.client("rev-north")
    refused = [
        grpc.ssl_channel_credentials(root_certificates=ca),  # no certificate at all
        grpc.ssl_channel_credentials(  # a certificate from another CA
            root_certificates=ca,
            private_key=pair.key.read_bytes(),
            certificate_chain=pair.cert.read_bytes(),
        ),
    ]
    for credentials in refused:
        with grpc.secure_channel(f"127.0.0.1:{server.port}", credentials) as bad:
            with pytest.raises(grpc.RpcError) as error:
                health_pb2_grpc.HealthStub(bad).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert cast(grpc.Call, error.value).code() == grpc.StatusCode.UNAVAILABLE


def test_health_is_serving_then_not_serving_on_stop(pki: DevPki, tls: TlsFiles) -> None:
    server = new_server(tls)
    server.start()
    with channel(pki, server) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", TIMELINE.full_name, INGEST.full_name):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as error:
            health.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=TIMEOUT)
        assert cast(grpc.Call, error.value).code() == grpc.StatusCode.NOT_FOUND

        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        stopping = threading.Thread(target=server.stop)
        stopping.start()
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        stopping.join(timeout=TIMEOUT)
        assert not stopping.is_alive()
        watch.cancel()
    server.stop()  # idempotent


def test_reflection_lists_the_services(pki: DevPki, server: GrpcServer) -> None:
    with channel(pki, server) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert names == {
        TIMELINE.full_name,
        INGEST.full_name,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


def test_a_span_per_rpc_but_none_for_health(
    pki: DevPki, server: GrpcServer, spans: InMemorySpanExporter
) -> None:
    with channel(pki, server) as ch:
        health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
        stub = timeline_pb2_grpc.TimelineServiceStub(ch)
        for _ in range(2):
            stub.VerifyChain(timeline_pb2.VerifyChainRequest(subject_id="x"), timeout=TIMEOUT)
    finished = spans.get_finished_spans()
    rpc = [s for s in finished if s.name == VERIFY and s.kind == SpanKind.SERVER]
    assert len(rpc) == 2
    assert not [s for s in finished if "grpc.health" in s.name]


def test_services_are_added_before_start(server: GrpcServer) -> None:
    with pytest.raises(RuntimeError, match="before start"):
        server.add("late.Service", lambda grpc_server: None)
    assert server.start() == server.port  # starting twice is the same server


def test_a_bad_address_fails_naming_it(tls: TlsFiles) -> None:
    server = GrpcServer("test", ListenSettings(host="203.0.113.1", port=0), tls)
    with pytest.raises(ConfigError, match=r"the test cannot listen on 203\.0\.113\.1:0"):
        server.start()
    server.stop()


class _NoReviewers:
    def reviewer(self, client_id: str) -> None:
        return None


def test_the_timeline_api_is_traced(
    pki: DevPki, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    section = TimelineSection(grpc_port=0, grace_s=1.0, **issued(pki))
    with grpc_server(cast(Queries, _NoReviewers()), section) as server:
        with channel(pki, server, "stranger") as ch:
            with pytest.raises(grpc.RpcError) as error:
                timeline_pb2_grpc.TimelineServiceStub(ch).VerifyChain(
                    timeline_pb2.VerifyChainRequest(subject_id="x"), timeout=TIMEOUT
                )
    assert cast(grpc.Call, error.value).code() == grpc.StatusCode.UNAUTHENTICATED
    assert [s for s in spans.get_finished_spans() if s.name == VERIFY]


# -- the TLS-files setting ---------------------------------------------------------------------


def test_tls_errors_name_the_variables(pki: DevPki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        GatewaySection().tls()
    message = str(error.value)
    for name in ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CA_FILE"):
        assert f"SAFEHUB_GATEWAY__{name}" in message

    server = pki.server()
    with pytest.raises(ConfigError) as error:
        GatewaySection(tls_cert_file=server.cert).tls()
    message = str(error.value)
    assert "SAFEHUB_GATEWAY__TLS_KEY_FILE and SAFEHUB_GATEWAY__TLS_CA_FILE" in message
    assert "SAFEHUB_GATEWAY__TLS_CERT_FILE," not in message

    missing = tmp_path / "nowhere.pem"
    with pytest.raises(
        ConfigError, match=r"nowhere\.pem does not exist \(set by SAFEHUB_GATEWAY__TLS_CA_FILE\)"
    ):
        GatewaySection(
            tls_cert_file=server.cert, tls_key_file=server.key, tls_ca_file=missing
        ).tls()

    with pytest.raises(ConfigError, match="SAFEHUB_TIMELINE__GRPC_ENABLED=false"):
        TimelineSection().grpc_tls()


def test_tls_files_come_from_the_settings_only(pki: DevPki) -> None:
    server = pki.server()
    given = GatewaySection(
        tls_cert_file=server.cert, tls_key_file=server.key, tls_ca_file=pki.ca.cert
    ).tls()
    assert given == TlsFiles(cert=server.cert, key=server.key, ca=pki.ca.cert)
    client = tls_files("x", TlsFileSettings(**issued(pki, "acme-access-north")))
    assert client.cert == pki.client("acme-access-north").cert
    assert client.ca == pki.ca.cert

    # A connector's section is the same setting, its errors naming its own variables.
    connector = AccessControlSimSection(**issued(pki, "acme-access-north"))
    assert connector.tls().cert == client.cert
    with pytest.raises(ConfigError, match="SAFEHUB_ACCESS_CONTROL_SIM__TLS_KEY_FILE"):
        AccessControlSimSection(tls_cert_file=server.cert).tls()
