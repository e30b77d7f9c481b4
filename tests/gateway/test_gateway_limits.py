"""The gateway under a hostile or broken caller (issue 17 items 11 and 15), over real mTLS gRPC.

Bytes that are not the request are INVALID_ARGUMENT, never INTERNAL; one client's streams
cannot take the worker threads the panic path needs; a silent stream is ended; a long stream
is processed as it comes with its error list capped.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from pydantic import ValidationError

from safehub.gen.safehub.common.v1 import door_pb2
from safehub.gen.safehub.connector.v1 import connector_pb2
from safehub.gen.safehub.ingest.v1 import ingest_pb2
from safehub.kernel.codec import Codec
from safehub.kernel.envelope import event_id_for
from safehub.kernel.errors import ConfigError
from safehub.kernel.settings import KafkaSettings, load_settings
from safehub.kernel.topics import TopicCatalog
from services.gateway.settings import GatewaySection, GatewaySettings
from tests.support.gateway import (
    GatewayHandle,
    door_request,
    has_event,
    panic_request,
    place,
    read_events,
    running_gateway,
)
from tests.support.gateway import (
    field_violations as violations,
)
from tests.support.waiting import wait_until

INGEST = "/safehub.ingest.v1.IngestService"
ATTACH = "/safehub.connector.v1.ConnectorService/Attach"
DOOR = "acme-access-north"
TIMEOUT = 15
#: Per-call deadline of the life-safety calls made while streams hold the gateway.
PANIC_DEADLINE = 5
#: Neither a tag nor a length can end like this: not a protobuf message of any type.
GARBAGE = b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"


@pytest.fixture
def gateway(
    kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec, tmp_path: Path
) -> Callable[..., Any]:
    """``gateway(**settings)``: a running gateway context on this test's topics."""

    def make(**settings: Any) -> Any:
        return running_gateway(
            kafka,
            catalog.prefix,
            tmp_path,
            codec=codec,
            door_commands_group=f"gw-{uuid.uuid4().hex[:8]}",
            announcements_group=f"gwa-{uuid.uuid4().hex[:8]}",
            **settings,
        )

    return make


def field_bytes(number: int, value: bytes) -> bytes:
    """A length-delimited protobuf field written by hand (short values only)."""
    assert len(value) < 128
    return bytes([number << 3 | 2, len(value)]) + value


def held_open(release: threading.Event, *first: Any) -> Iterator[Any]:
    """A request stream that sends ``first`` and then nothing until ``release`` is set."""
    yield from first
    release.wait(60)


def code_of(call: Any) -> grpc.StatusCode:
    """Status code of a finished call future or stream (blocks until it finished)."""
    code: grpc.StatusCode = call.code()
    return code


# -- item 15: bytes that are not the request -----------------------------------------------

RAW_CALLS = [
    ("ReportPanic", "unary", "panic-badges-north", "ReportPanicRequest"),
    ("CancelPanic", "unary", "panic-badges-north", "CancelPanicRequest"),
    ("RequestSrpAction", "unary", "staff-app-lincoln", "RequestSrpActionRequest"),
    ("ReportCameraAlert", "unary", "vision-analytics-north", "ReportCameraAlertRequest"),
    ("ReportDoorState", "unary", DOOR, "ReportDoorStateRequest"),
    ("ReportDoorStates", "unary", DOOR, "ReportDoorStatesRequest"),
    ("StreamDoorStates", "client-stream", DOOR, "ReportDoorStateRequest"),
]


def raw_call(gw: GatewayHandle, client: str, path: str, kind: str, *messages: bytes) -> Any:
    """Send ``messages`` as they are (no serializer) and return the finished call's error."""
    channel = gw.channel_for(client)
    with pytest.raises(grpc.RpcError) as info:
        if kind == "unary":
            (message,) = messages
            channel.unary_unary(path)(message, timeout=TIMEOUT)
        elif kind == "client-stream":
            channel.stream_unary(path)(iter(messages), timeout=TIMEOUT)
        else:
            list(channel.stream_stream(path)(iter(messages), timeout=TIMEOUT))
    return info.value


@pytest.mark.kafka
def test_garbage_bytes_are_invalid_argument_on_every_rpc(gateway: Callable[..., Any]) -> None:
    with gateway() as gw:
        for method, kind, client, message in RAW_CALLS:
            error = raw_call(gw, client, f"{INGEST}/{method}", kind, GARBAGE)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            where = "item 0 of the stream" if kind == "client-stream" else "the request"
            assert error.details().startswith(
                f"{where} is not a valid safehub.ingest.v1.{message}: the bytes do not parse"
            ), error.details()
            assert "\\xff" not in error.details() and "ÿ" not in error.details()

        error = raw_call(gw, DOOR, ATTACH, "bidi", GARBAGE)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "is not a valid safehub.connector.v1.ConnectorMessage" in error.details()

        # The gateway is unharmed: a well-formed panic right after is accepted.
        gw.stub_for("panic-badges-north").ReportPanic(panic_request(), timeout=TIMEOUT)


@pytest.mark.kafka
def test_a_string_that_is_not_utf8_is_invalid_argument_naming_the_field(
    gateway: Callable[..., Any],
) -> None:
    good = panic_request()
    rest = ingest_pb2.ReportPanicRequest()
    rest.CopyFrom(good)
    rest.ClearField("client_event_id")
    bad_id = field_bytes(1, b"\xff\xfe") + rest.SerializeToString()
    rest.CopyFrom(good)
    rest.ClearField("place")
    bad_room = rest.SerializeToString() + field_bytes(
        2, field_bytes(1, b"sch-lincoln-hs") + field_bytes(2, b"B") + field_bytes(3, b"2\xc3")
    )
    with gateway() as gw:
        path = f"{INGEST}/ReportPanic"
        error = raw_call(gw, "panic-badges-north", path, "unary", bad_id)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == (
            "the request is not a valid safehub.ingest.v1.ReportPanicRequest: "
            "client_event_id is not valid UTF-8"
        )
        assert violations(error) == {"client_event_id": "is not valid UTF-8"}

        error = raw_call(gw, "panic-badges-north", path, "unary", bad_room)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(error) == {"place.room": "is not valid UTF-8"}

        # A bad item in a stream ends the stream, saying which item and what came before.
        first = door_request()
        bad_door = door_request()
        bad_door.ClearField("door_id")
        item = bad_door.SerializeToString() + field_bytes(3, b"\xfe")
        error = raw_call(
            gw, DOOR, f"{INGEST}/StreamDoorStates", "client-stream", first.SerializeToString(), item
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == (
            "item 1 of the stream is not a valid safehub.ingest.v1.ReportDoorStateRequest: "
            "door_id is not valid UTF-8 (1 accepted, 0 rejected before)"
        )

        # A connector session that sends a broken message after its Hello is ended.
        hello = connector_pb2.ConnectorMessage(
            hello=connector_pb2.Hello(connector_id=DOOR, school_ids=["sch-lincoln-hs"])
        )
        release = threading.Event()
        session = gw.channel_for(DOOR).stream_stream(ATTACH)(
            held_open(release, hello.SerializeToString(), GARBAGE), timeout=TIMEOUT
        )
        try:
            with pytest.raises(grpc.RpcError) as info:
                list(session)
        finally:
            release.set()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith(
            "item 1 of the stream is not a valid safehub.connector.v1.ConnectorMessage"
        )


# -- item 11: streams cannot starve the panic path ------------------------------------------


def open_idle_streams(
    gw: GatewayHandle, kind: str, count: int, release: threading.Event
) -> list[Any]:
    """``count`` streams from the door client that say nothing until ``release``."""
    if kind == "StreamDoorStates":
        stub = gw.stub_for(DOOR)
        return [stub.StreamDoorStates.future(held_open(release), timeout=60) for _ in range(count)]
    connectors = gw.connector_stub_for(DOOR)
    return [connectors.Attach(held_open(release), timeout=60) for _ in range(count)]


def panics_succeed(gw: GatewayHandle, count: int = 10) -> None:
    """``count`` concurrent ReportPanic calls, each answered OK within its deadline."""
    stub = gw.stub_for("panic-badges-north")
    with ThreadPoolExecutor(count) as pool:
        calls = [
            pool.submit(stub.ReportPanic, panic_request(), timeout=PANIC_DEADLINE)
            for _ in range(count)
        ]
        for call in calls:
            assert call.result().event_id


@pytest.mark.kafka
@pytest.mark.parametrize("kind", ["StreamDoorStates", "Attach"])
def test_seventy_idle_streams_of_one_door_client_leave_the_panic_path_free(
    gateway: Callable[..., Any], kind: str
) -> None:
    """Default workers (64): 70 silent streams, then panics are answered within 5 s each."""
    release = threading.Event()
    with gateway(hello_timeout_s=120, stream_idle_timeout_s=120) as gw:
        per_client = gw.gw.settings.max_streams_per_client
        streams = open_idle_streams(gw, kind, 70, release)
        try:
            wait_until(
                lambda: sum(s.done() for s in streams) == 70 - per_client,
                timeout=TIMEOUT,
                what="the streams beyond the client's limit refused",
            )
            assert gw.gw.stream_limits.open_streams(DOOR) == per_client
            panics_succeed(gw)
            refused = [s for s in streams if s.done()]
            assert {code_of(s) for s in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert "SAFEHUB_GATEWAY__MAX_STREAMS_PER_CLIENT" in refused[0].details()
        finally:
            release.set()


@pytest.mark.kafka
def test_unary_door_feeds_count_against_the_same_limits(gateway: Callable[..., Any]) -> None:
    """A door feed's unary batches hold workers too: they take a slot like a stream."""
    release = threading.Event()
    with gateway(max_streams_per_client=1, stream_idle_timeout_s=120) as gw:
        (stream,) = open_idle_streams(gw, "StreamDoorStates", 1, release)
        try:
            wait_until(
                lambda: gw.gw.stream_limits.open_streams(DOOR) == 1,
                timeout=TIMEOUT,
                what="the stream admitted",
            )
            stub = gw.stub_for(DOOR)
            batch = ingest_pb2.ReportDoorStatesRequest(items=[door_request()])
            with pytest.raises(grpc.RpcError) as info:
                stub.ReportDoorStates(batch, timeout=TIMEOUT)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "SAFEHUB_GATEWAY__MAX_STREAMS_PER_CLIENT=1" in (info.value.details() or "")
            panics_succeed(gw)
        finally:
            release.set()
        stream.result(timeout=TIMEOUT)
        wait_until(
            lambda: gw.gw.stream_limits.open_streams(DOOR) == 0, timeout=TIMEOUT, what="freed"
        )
        answer = stub.ReportDoorStates(batch, timeout=TIMEOUT)
        assert answer.accepted_count == 1
        assert gw.gw.stream_limits.open_streams(DOOR) == 0, "the unary call gave its slot back"


@pytest.mark.kafka
def test_the_71st_stream_of_a_client_is_refused_and_other_clients_are_not(
    gateway: Callable[..., Any],
) -> None:
    release = threading.Event()
    with gateway(max_workers=160, max_streams_per_client=70, hello_timeout_s=120) as gw:
        streams = open_idle_streams(gw, "StreamDoorStates", 69, release)
        streams += open_idle_streams(gw, "Attach", 1, release)  # connector sessions count too
        try:
            wait_until(
                lambda: gw.gw.stream_limits.open_streams(DOOR) == 70,
                timeout=TIMEOUT,
                what="70 streams admitted",
            )
            extra = gw.stub_for(DOOR).StreamDoorStates.future(held_open(release), timeout=TIMEOUT)
            error = extra.exception(timeout=TIMEOUT)
            assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "SAFEHUB_GATEWAY__MAX_STREAMS_PER_CLIENT=70" in error.details()
            assert not any(s.done() for s in streams)

            other = gw.stub_for("acme-access-south").StreamDoorStates.future(
                held_open(release), timeout=TIMEOUT
            )
            wait_until(
                lambda: gw.gw.stream_limits.open_streams("acme-access-south") == 1,
                timeout=TIMEOUT,
                what="another client's stream admitted",
            )
            panics_succeed(gw)
        finally:
            release.set()
        assert other.result(timeout=TIMEOUT).accepted_count == 0
        for stream in streams[:69]:
            assert stream.result(timeout=TIMEOUT).accepted_count == 0
        wait_until(
            lambda: gw.gw.stream_limits.open_streams() == 0, timeout=TIMEOUT, what="slots freed"
        )


@pytest.mark.kafka
def test_streams_of_all_clients_together_never_take_the_reserved_workers(
    gateway: Callable[..., Any],
) -> None:
    """8 workers: at most 4 streams, whoever opens them; the other 4 serve panics."""
    release = threading.Event()
    with gateway(max_workers=8, max_connector_sessions=2, hello_timeout_s=120) as gw:
        streams = [
            gw.stub_for(client).StreamDoorStates.future(held_open(release), timeout=60)
            for client in ("acme-access-north", "acme-access-south")
            for _ in range(4)
        ]
        pa = gw.connector_stub_for("pa-signage-north").Attach(held_open(release), timeout=60)
        try:
            wait_until(
                lambda: sum(s.done() for s in [*streams, pa]) == 5,
                timeout=TIMEOUT,
                what="the streams beyond the gateway's limit refused",
            )
            assert gw.gw.stream_limits.open_streams() == 4
            panics_succeed(gw, count=8)
            refused = [s for s in [*streams, pa] if s.done()]
            assert {code_of(s) for s in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert any("SAFEHUB_GATEWAY__MAX_STREAMS=4" in s.details() for s in refused)
        finally:
            release.set()


@pytest.mark.kafka
def test_a_silent_stream_is_ended_and_its_worker_freed(
    gateway: Callable[..., Any], kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog
) -> None:
    release = threading.Event()
    first = door_request()
    with gateway(stream_idle_timeout_s=0.5, max_streams_per_client=1) as gw:
        stub = gw.stub_for(DOOR)
        try:
            call = stub.StreamDoorStates.future(held_open(release, first), timeout=60)
            error = call.exception(timeout=TIMEOUT)
        finally:
            release.set()
        assert error is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "SAFEHUB_GATEWAY__STREAM_IDLE_TIMEOUT_S" in error.details()
        assert error.details().endswith("(1 accepted, 0 rejected before)")
        # What came before the silence was stored.
        read_events(
            kafka,
            codec,
            catalog.name("safehub.doors.v1"),
            has_event(event_id_for(DOOR, first.client_event_id)),
        )
        # Slot, worker and reader thread are free: the one stream allowed can be opened again.
        wait_until(
            lambda: not any(t.name == "StreamDoorStates-reader" for t in threading.enumerate()),
            timeout=TIMEOUT,
            what="the stream's reader thread ended",
        )
        assert gw.gw.stream_limits.open_streams() == 0
        again = stub.StreamDoorStates(iter([door_request()]), timeout=TIMEOUT)
        assert again.accepted_count == 1


@pytest.mark.kafka
def test_a_long_stream_is_counted_in_full_with_its_errors_capped(
    gateway: Callable[..., Any],
) -> None:
    total, every = 20_000, 50
    at = place()

    def items() -> Iterator[ingest_pb2.ReportDoorStateRequest]:
        for index in range(total):
            state = (
                door_pb2.DOOR_STATE_UNSPECIFIED
                if index % every == 7
                else door_pb2.DOOR_STATE_LOCKED
            )
            yield door_request(client_event_id=f"long-{index}", place=at, state=state)

    with gateway(max_stream_errors=10, stream_window=64, max_stream_items=total) as gw:
        response = gw.stub_for(DOOR).StreamDoorStates(items(), timeout=120)
    rejected = total // every
    assert (response.accepted_count, response.rejected_count, response.duplicate_count) == (
        total - rejected,
        rejected,
        0,
    )
    assert [e.index for e in response.errors] == [7 + every * k for k in range(10)]
    assert all(e.reason == ingest_pb2.REJECT_REASON_INVALID_ARGUMENT for e in response.errors)
    assert response.errors[0].client_event_id == "long-7"


# -- settings ----------------------------------------------------------------------------------


def test_stream_limits_must_leave_workers_for_unary_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    assert GatewaySection(max_workers=64).stream_limit == 32
    assert GatewaySection(max_workers=8, max_connector_sessions=2, max_streams=3).stream_limit == 3
    with pytest.raises(ValidationError, match="SAFEHUB_GATEWAY__MAX_STREAMS"):
        GatewaySection(max_workers=8, max_connector_sessions=2, max_streams=5)
    with pytest.raises(ValidationError, match="SAFEHUB_GATEWAY__MAX_CONNECTOR_SESSIONS"):
        GatewaySection(max_workers=64, max_connector_sessions=16, max_streams=8)
    monkeypatch.setenv("SAFEHUB_GATEWAY__MAX_STREAMS_PER_CLIENT", "0")
    with pytest.raises(ConfigError, match="SAFEHUB_GATEWAY__MAX_STREAMS_PER_CLIENT"):
        load_settings(GatewaySettings)
    monkeypatch.setenv("SAFEHUB_GATEWAY__MAX_STREAMS_PER_CLIENT", "8")
    monkeypatch.setenv("SAFEHUB_GATEWAY__STREAM_IDLE_TIMEOUT_S", "0")
    with pytest.raises(ConfigError, match="SAFEHUB_GATEWAY__STREAM_IDLE_TIMEOUT_S"):
        load_settings(GatewaySettings)
