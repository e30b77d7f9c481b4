"""PA, intercom and signage announcements through the gateway's connector stream.

Real parts: the embedded broker, the gateway as a process (mTLS, dev PKI, a copy of the demo
directory with the PA / signage clients), the PA / signage simulator attached over mTLS (in
this process, or as its own process), and raw in-test connector clients where a test must
see every message the gateway sends.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from safehub.gen.safehub.connector.v1 import connector_pb2
from safehub.kernel.bus import EventProducer
from safehub.kernel.codec import Codec, Event
from safehub.kernel.directory import Directory
from safehub.kernel.envelope import new_event
from safehub.kernel.errors import ConfigError
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import TopicCatalog
from safehub.sdk.client import ConnectorClientConfig, ConnectorSession
from services.gateway.settings import DEMO_DIRECTORY
from tests.support.gateway import (
    GatewayClient,
    GatewayProcessHandle,
    gateway_process,
    issued_env,
    read_events,
)
from tests.support.processes import Component
from tests.support.waiting import wait_until
from vendors.access_control_sim.settings import AccessControlSimSection
from vendors.pa_signage_sim.settings import PaSignageSimSection
from vendors.pa_signage_sim.sim import PaSignageSim, spoken_text

pytestmark = pytest.mark.kafka

NOTIFICATIONS = "safehub.notifications.v1"
TIMEOUT = 20

PA_NORTH = "pa-signage-north"
PA_SOUTH = "pa-signage-south"
#: The directory clients this feature needs (the lead adds them to deploy/directory/demo.json).
PA_CLIENTS = [
    {"id": PA_NORTH, "district": "dist-north-isd", "scopes": ["connector"]},
    {"id": PA_SOUTH, "district": "dist-south-isd", "scopes": ["connector"]},
]
#: A test-only school no connector in this module ever serves.
QUIET_SCHOOL = "sch-quiet-ms"

LINCOLN = "sch-lincoln-hs"  # school A
WASHINGTON = "sch-washington-ms"  # school B, same district
RIVERSIDE = "sch-riverside-es"  # another district

SessionT = TypeVar("SessionT", bound=ConnectorSession[Any])


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def directory_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo directory plus the PA / signage clients and a school without connectors."""
    data = json.loads(DEMO_DIRECTORY.read_text(encoding="utf-8"))
    known = {c["id"] for c in data["clients"]}
    data["clients"] += [c for c in PA_CLIENTS if c["id"] not in known]
    north = next(d for d in data["districts"] if d["id"] == "dist-north-isd")
    north["schools"].append(
        {"id": QUIET_SCHOOL, "name": "Quiet Middle School", "psap_id": "psap-north-county"}
    )
    path = tmp_path_factory.mktemp("directory") / "directory.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    Directory.load(path)  # the copy must still be a valid directory
    return path


@pytest.fixture(scope="module")
def gw(
    module_kafka: KafkaSettings,
    module_catalog: TopicCatalog,
    directory_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcessHandle]:
    """One gateway process for the module (starting one costs seconds)."""
    with gateway_process(
        module_kafka,
        module_catalog.prefix,
        tmp_path_factory.mktemp("gateway"),
        env={"SAFEHUB_GATEWAY__DIRECTORY_FILE": str(directory_file)},
    ) as handle:
        yield handle


@pytest.fixture(scope="module")
def producer(
    module_kafka: KafkaSettings, module_catalog: TopicCatalog, codec: Codec
) -> Iterator[EventProducer]:
    with EventProducer(
        module_kafka.model_copy(update={"topic_prefix": module_catalog.prefix}),
        codec,
        module_catalog,
    ) as producer:
        yield producer


def pa_section(
    gw: GatewayClient, directory_file: Path, *schools: str, client_id: str, **section: Any
) -> PaSignageSimSection:
    """PA / signage settings for ``schools``, dialling ``gw``, fast to play and reconnect."""
    return PaSignageSimSection(
        client_id=client_id,
        gateway_address=gw.address,
        directory_file=directory_file,
        school_ids=list(schools),
        play_delay_ms=10,
        reconnect_initial_s=0.05,
        reconnect_max_s=0.5,
        **section,
    )


@contextlib.contextmanager
def attached(session: SessionT) -> Iterator[SessionT]:
    """``session`` running in a thread, once the hub has acknowledged its Hello."""
    client_id = session.config.client_id
    thread = threading.Thread(target=session.run, name=f"connector-{client_id}", daemon=True)
    thread.start()
    try:
        wait_until(session.connected.is_set, timeout=TIMEOUT, what=f"{client_id} attached")
        yield session
    finally:
        session.close()
        thread.join(timeout=10)


@contextlib.contextmanager
def pa_sim(
    gw: GatewayClient,
    directory_file: Path,
    *schools: str,
    client_id: str = PA_NORTH,
    **section: Any,
) -> Iterator[PaSignageSim]:
    """The PA / signage simulator attached to ``gw`` for ``schools`` (waits for the hub's ack)."""
    settings = pa_section(gw, directory_file, *schools, client_id=client_id, **section)
    sim = PaSignageSim(settings, Directory.load(directory_file), gw.credentials_for(client_id))
    with attached(sim):
        yield sim


class RawConnector:
    """A connector client over mTLS that records every message the gateway sends it."""

    def __init__(
        self, gw: GatewayClient, client_id: str, schools: list[str], capabilities: list[int]
    ) -> None:
        self.received: list[connector_pb2.HubMessage] = []
        self._outbox: queue.Queue[connector_pb2.ConnectorMessage | None] = queue.Queue()
        self._outbox.put(
            connector_pb2.ConnectorMessage(
                hello=connector_pb2.Hello(
                    connector_id=client_id,
                    school_ids=schools,
                    capabilities=capabilities,  # type: ignore[arg-type]
                )
            )
        )
        self._call = gw.connector_stub_for(client_id).Attach(self._requests())
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_until(lambda: self.received, timeout=TIMEOUT, what=f"{client_id} acknowledged")

    def _requests(self) -> Iterator[connector_pb2.ConnectorMessage]:
        while (message := self._outbox.get()) is not None:
            yield message

    def _read(self) -> None:
        with contextlib.suppress(Exception):  # the call ends when the test closes it
            for message in self._call:
                if message.WhichOneof("body") == "ping":
                    self.send(pong=connector_pb2.Pong(nonce=message.ping.nonce))
                self.received.append(message)

    def send(self, **body: Any) -> None:
        self._outbox.put(connector_pb2.ConnectorMessage(**body))

    def announcements(self, command_id: str) -> list[connector_pb2.Announcement]:
        return [
            m.announcement
            for m in list(self.received)
            if m.WhichOneof("body") == "announcement" and m.announcement.command_id == command_id
        ]

    def close(self) -> None:
        self._outbox.put(None)
        self._call.cancel()
        self._reader.join(timeout=10)


def announcement(
    school: str = LINCOLN,
    *,
    channel: str = "PUBLIC_ADDRESS",
    exercise: bool = False,
    expires_in_s: float | None = 120.0,
    text: str = "Lockdown. Locks, lights, out of sight.",
    district: str | None = None,
    incident_id: str | None = "inc-pa-1",
) -> Event:
    """An AnnouncementCommand as the notify service publishes it."""
    north = school != RIVERSIDE
    recipient = f"{'pa' if channel == 'PUBLIC_ADDRESS' else 'signage'}:{school}"
    return new_event(
        "AnnouncementCommand",
        source="notify",
        tenant={
            "state": "US-TX",
            "district": district or ("dist-north-isd" if north else "dist-south-isd"),
            "school": school,
        },
        incident_id=incident_id,
        exercise=exercise,
        payload={
            "command_id": f"ann-{uuid.uuid4().hex[:10]}",
            "notification_id": f"ntf-{uuid.uuid4().hex[:10]}",
            "recipient_id": recipient,
            "channel": channel,
            "srp_action": "LOCKDOWN",
            "text": text,
            "language": "en-US",
            "repeat": 2,
            "expires_at": None
            if expires_in_s is None
            else datetime.now(UTC) + timedelta(seconds=expires_in_s),
        },
    )


def receipts_until(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    codec: Codec,
    until: Callable[[list[Event]], bool],
) -> list[Event]:
    """DeliveryReceipts on the notifications topic, read until ``until`` holds."""

    def only_receipts(events: list[Event]) -> bool:
        return until([e for e in events if "status" in e])

    events = read_events(
        kafka.model_copy(update={"topic_prefix": catalog.prefix}),
        codec,
        catalog.name(NOTIFICATIONS),
        only_receipts,
        timeout=TIMEOUT,
    )
    return [e for e in events if "status" in e]


def of(command: Event, receipts: list[Event]) -> list[Event]:
    """The receipts for ``command``'s notification."""
    return [r for r in receipts if r["notification_id"] == command["notification_id"]]


def has_status(command: Event, *wanted: str) -> Callable[[list[Event]], bool]:
    return lambda receipts: set(wanted) <= {r["status"] for r in of(command, receipts)}


def played(sim: PaSignageSim, command: Event) -> list[Any]:
    return [p for p in sim.played if p.command_id == command["command_id"]]


# -- routing and receipts --------------------------------------------------------------------


def test_an_announcement_plays_at_its_school_only_and_becomes_delivered_receipts(
    gw: GatewayProcessHandle,
    directory_file: Path,
    producer: EventProducer,
    module_kafka: KafkaSettings,
    module_catalog: TopicCatalog,
    codec: Codec,
) -> None:
    with (
        pa_sim(gw, directory_file, LINCOLN) as school_a,
        pa_sim(gw, directory_file, WASHINGTON) as school_b,
        pa_sim(gw, directory_file, RIVERSIDE, client_id=PA_SOUTH) as other_district,
    ):
        command = announcement(LINCOLN)
        producer.publish(command)
        receipts = receipts_until(
            module_kafka, module_catalog, codec, has_status(command, "SENT", "DELIVERED")
        )

        (pa,) = played(school_a, command)
        assert pa.endpoint_id == f"{LINCOLN}/pa"
        assert pa.output == "PA_ANNOUNCEMENT"  # a PA channel is not shown on signage
        assert pa.text == "Lockdown. Locks, lights, out of sight."
        assert (pa.srp_action, pa.language, pa.repeat, pa.exercise) == (
            "LOCKDOWN",
            "en-US",
            2,
            False,
        )
        assert not played(school_b, command)
        assert not played(other_district, command)

    mine = of(command, receipts)
    assert sorted(r["status"] for r in mine) == ["DELIVERED", "SENT"]
    for receipt in mine:
        assert receipt["recipient_id"] == f"pa:{LINCOLN}"
        assert receipt["channel"] == "PUBLIC_ADDRESS"
        assert receipt["attempt"] == 1
        assert receipt["error"] is None
        envelope = receipt["envelope"]
        assert envelope["event_type"] == "safehub.events.DeliveryReceipt"
        assert envelope["tenant"] == command["envelope"]["tenant"]
        assert envelope["incident_id"] == "inc-pa-1"
        assert envelope["exercise"] is False
        assert envelope["causation_id"] == command["envelope"]["event_id"]
        assert envelope["source"] == PA_NORTH
    (delivered,) = (r for r in mine if r["status"] == "DELIVERED")
    assert delivered["provider_message_id"] == f"{PA_NORTH}/{LINCOLN}/pa"


def test_signage_gets_signage_commands_and_pa_gets_pa_commands(
    gw: GatewayProcessHandle,
    directory_file: Path,
    producer: EventProducer,
    module_kafka: KafkaSettings,
    module_catalog: TopicCatalog,
    codec: Codec,
) -> None:
    with (
        pa_sim(gw, directory_file, LINCOLN, outputs=["PA_ANNOUNCEMENT"]) as pa_only,
        pa_sim(gw, directory_file, LINCOLN, outputs=["SIGNAGE"]) as signs,
    ):
        sign_command = announcement(LINCOLN, channel="DIGITAL_SIGNAGE")
        pa_command = announcement(LINCOLN)
        producer.publish(sign_command)
        producer.publish(pa_command)
        receipts = receipts_until(
            module_kafka,
            module_catalog,
            codec,
            lambda rs: (
                has_status(sign_command, "DELIVERED")(rs)
                and has_status(pa_command, "DELIVERED")(rs)
            ),
        )
        assert [p.endpoint_id for p in played(signs, sign_command)] == [f"{LINCOLN}/signage"]
        assert [p.endpoint_id for p in played(pa_only, pa_command)] == [f"{LINCOLN}/pa"]
        assert not played(pa_only, sign_command)
        assert not played(signs, pa_command)
    (sign_delivered,) = (r for r in of(sign_command, receipts) if r["status"] == "DELIVERED")
    assert sign_delivered["channel"] == "DIGITAL_SIGNAGE"
    assert sign_delivered["recipient_id"] == f"signage:{LINCOLN}"


def test_a_drill_is_announced_as_a_drill(
    gw: GatewayProcessHandle,
    directory_file: Path,
    producer: EventProducer,
    module_kafka: KafkaSettings,
    module_catalog: TopicCatalog,
    codec: Codec,
) -> None:
    with pa_sim(gw, directory_file, LINCOLN) as sim:
        command = announcement(LINCOLN, exercise=True)
        producer.publish(command)
        receipts = receipts_until(
            module_kafka, module_catalog, codec, has_status(command, "DELIVERED")
        )
        (pa,) = played(sim, command)
    assert pa.exercise is True
    assert pa.text == "This is a drill. Lockdown. Locks, lights, out of sight."
    assert all(r["envelope"]["exercise"] is True for r in of(command, receipts))
    # A text that already says so is not prefixed twice; Spanish says it in Spanish.
    assert spoken_text("DRILL: Lockdown.", "en-US", True) == "DRILL: Lockdown."
    assert spoken_text("Cierre de emergencia.", "es-US", True).startswith("Esto es un simulacro.")


def test_a_connector_that_fails_yields_a_failed_receipt_with_its_reason(
    gw: GatewayProcessHandle,
    directory_file: Path,
    producer: EventProducer,
    module_kafka: KafkaSettings,
    module_catalog: TopicCatalog,
    codec: Codec,
) -> None:
    with pa_sim(gw, directory_file, LINCOLN, failing_endpoints=[f"{LINCOLN}/pa"]) as sim:
        command = announcement(LINCOLN)
        producer.publish(command)
        receipts = receipts_until(
            module_kafka, module_catalog, codec, has_status(command, "SENT", "FAILED")
        )
        assert not played(sim, command)
    (failed,) = (r for r in of(command, receipts) if r["status"] == "FAILED")
    assert failed["error"] == "COMMAND_OUTCOME_FAILED: amplifier offline"
    assert failed["provider_message_id"] == f"{PA_NORTH}/{LINCOLN}/pa"
    assert failed["recipient_id"] == f"pa:{LINCOLN}"
    assert "DELIVERED" not in {r["status"] for r in of(command, receipts)}


def test_no_connector_attached_yields_a_failed_receipt_naming_the_reason(
    gw: GatewayProcessHandle,
    producer: EventProducer,
    module_kafka: KafkaSettings,
    module_catalog: TopicCatalog,
    codec: Codec,
) -> None:
    pa_command = announcement(QUIET_SCHOOL)
    sign_command = announcement(QUIET_SCHOOL, channel="DIGITAL_SIGNAGE", exercise=True)
    producer.publish(pa_command)
    producer.publish(sign_command)
    receipts = receipts_until(
        module_kafka,
        module_catalog,
        codec,
        lambda rs: bool(of(pa_command, rs)) and bool(of(sign_command, rs)),
    )
    (pa_failed,) = of(pa_command, receipts)
    assert pa_failed["status"] == "FAILED"
    assert pa_failed["error"] == (
        f"no connector attached for {QUIET_SCHOOL} with capability PA_ANNOUNCEMENT or INTERCOM"
    )
    assert pa_failed["recipient_id"] == f"pa:{QUIET_SCHOOL}"
    assert pa_failed["envelope"]["source"] == "gateway"
    assert pa_failed["envelope"]["incident_id"] == "inc-pa-1"
    (sign_failed,) = of(sign_command, receipts)
    assert sign_failed["error"] == (
        f"no connector attached for {QUIET_SCHOOL} with capability SIGNAGE"
    )
    assert sign_failed["envelope"]["exercise"] is True


def test_an_expired_command_is_not_played_and_yields_an_expired_receipt(
    gw: GatewayProcessHandle,
    directory_file: Path,
    producer: EventProducer,
    module_kafka: KafkaSettings,
    module_catalog: TopicCatalog,
    codec: Codec,
) -> None:
    with pa_sim(gw, directory_file, LINCOLN) as sim:
        expired = announcement(LINCOLN, expires_in_s=-5)
        # No expires_at, but recorded long ago: a stale replay (older than the max age).
        stale = announcement(LINCOLN, expires_in_s=None)
        stale["envelope"]["recorded_at"] -= timedelta(hours=1)
        fresh = announcement(LINCOLN, expires_in_s=None)
        for command in (expired, stale, fresh):
            producer.publish(command)
        # Same school → same partition, in order: once fresh is delivered, the others were seen.
        receipts = receipts_until(
            module_kafka,
            module_catalog,
            codec,
            lambda rs: (
                has_status(fresh, "DELIVERED")(rs) and bool(of(expired, rs)) and bool(of(stale, rs))
            ),
        )
        assert not played(sim, expired)
        assert not played(sim, stale)
        assert played(sim, fresh)
    for command in (expired, stale):
        (receipt,) = of(command, receipts)
        assert receipt["status"] == "EXPIRED"
        assert receipt["error"].startswith("expired at ")
        assert receipt["error"].endswith("before it was played")
        assert receipt["recipient_id"] == f"pa:{LINCOLN}"


# -- idempotency and trust -----------------------------------------------------------------


def test_a_redelivered_command_goes_once_per_session_and_results_are_deduplicated(
    gw: GatewayProcessHandle,
    producer: EventProducer,
    module_kafka: KafkaSettings,
    module_catalog: TopicCatalog,
    codec: Codec,
) -> None:
    pa = [connector_pb2.CAPABILITY_PA_ANNOUNCEMENT]
    command = announcement(WASHINGTON)
    first = RawConnector(gw, PA_NORTH, [WASHINGTON], pa)
    other_district = RawConnector(gw, PA_SOUTH, [RIVERSIDE], pa)
    try:
        producer.publish(command)
        producer.publish(command)  # a redelivery (same event, same command id)
        marker = announcement(WASHINGTON)
        producer.publish(marker)
        wait_until(lambda: first.announcements(marker["command_id"]), what="marker received")
        (sent,) = first.announcements(command["command_id"])
        assert sent.place.school_id == WASHINGTON
        assert sent.texts[0].text == command["text"]
        assert sent.repeat == 2
        assert list(sent.outputs) == [
            connector_pb2.CAPABILITY_PA_ANNOUNCEMENT,
            connector_pb2.CAPABILITY_INTERCOM,
        ]
        assert sent.expires_at.ToDatetime(tzinfo=UTC) == command["expires_at"]
        assert not other_district.announcements(command["command_id"])

        def result(command_id: str, outcome: int, endpoint: str = "zone-1") -> None:
            first.send(
                command_result=connector_pb2.CommandResult(
                    command_id=command_id,
                    endpoint_id=endpoint,
                    outcome=outcome,  # type: ignore[arg-type]
                )
            )

        # Another district's connector cannot forge a receipt for this command.
        other_district.send(
            command_result=connector_pb2.CommandResult(
                command_id=command["command_id"],
                endpoint_id="zone-1",
                outcome=connector_pb2.COMMAND_OUTCOME_FAILED,
            )
        )
        result(command["command_id"], connector_pb2.COMMAND_OUTCOME_SUCCEEDED)
        result(command["command_id"], connector_pb2.COMMAND_OUTCOME_SUCCEEDED)  # reported twice
        result(marker["command_id"], connector_pb2.COMMAND_OUTCOME_SUCCEEDED)
        # One session's results are handled in order, on one partition: after the marker's
        # receipt, any duplicate or forged receipt would already be there.
        receipts = receipts_until(
            module_kafka, module_catalog, codec, has_status(marker, "DELIVERED")
        )
        (delivered,) = of(command, receipts)
        assert delivered["status"] == "DELIVERED"
        assert delivered["provider_message_id"] == f"{PA_NORTH}/zone-1"
    finally:
        first.close()

    # After a reconnect the connector's new session gets a redelivered command once more
    # (the connector deduplicates by command_id); a further redelivery does not repeat it.
    second = RawConnector(gw, PA_NORTH, [WASHINGTON], pa)
    try:
        producer.publish(command)
        producer.publish(command)
        marker = announcement(WASHINGTON)
        producer.publish(marker)
        wait_until(lambda: second.announcements(marker["command_id"]), what="marker received")
        assert len(second.announcements(command["command_id"])) == 1
    finally:
        second.close()
        other_district.close()


def _dead_letters(
    kafka: KafkaSettings, topic: str, until: Callable[[list[Any]], bool]
) -> list[Any]:
    partitions = AdminClient(kafka.client_config()).list_topics(topic, timeout=10).topics[topic]
    consumer = Consumer(
        {
            **kafka.client_config(),
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 20,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions.partitions])
    records: list[Any] = []
    try:

        def done() -> bool:
            records.extend(m for m in consumer.consume(100, 0.05) if m.error() is None)
            return until(records)

        wait_until(done, timeout=TIMEOUT, interval=0, what=f"records on {topic}")
    finally:
        consumer.close()
    return records


def test_commands_that_cannot_be_routed_are_dead_lettered_with_the_reason(
    gw: GatewayProcessHandle,
    producer: EventProducer,
    module_kafka: KafkaSettings,
    module_catalog: TopicCatalog,
) -> None:
    unknown = announcement("sch-nowhere")
    wrong_tenant = announcement(LINCOLN, district="dist-south-isd")
    wrong_channel = announcement(LINCOLN)
    wrong_channel["channel"] = "EMAIL"
    for command in (unknown, wrong_tenant, wrong_channel):
        producer.publish(command)
    ids = {c["envelope"]["event_id"] for c in (unknown, wrong_tenant, wrong_channel)}

    def reasons(records: list[Any]) -> dict[str, str]:
        found = {}
        for record in records:
            headers = {k: v.decode() for k, v in record.headers() or []}
            if headers.get("safehub-event-id") in ids:
                found[headers["safehub-event-id"]] = headers["safehub-dlq-reason"]
        return found

    letters = _dead_letters(
        module_kafka, module_catalog.dead_letter, lambda rs: len(reasons(rs)) == 3
    )
    found = reasons(letters)
    assert "unknown school 'sch-nowhere'" in found[unknown["envelope"]["event_id"]]
    tenant_reason = found[wrong_tenant["envelope"]["event_id"]]
    assert (
        "tenant.district 'dist-south-isd' is not the district of 'sch-lincoln-hs'" in tenant_reason
    )
    channel_reason = found[wrong_channel["envelope"]["event_id"]]
    assert "channel EMAIL is not PUBLIC_ADDRESS or DIGITAL_SIGNAGE" in channel_reason
    # No announcement text in a reason (it may name people).
    assert not any("Locks, lights" in reason for reason in found.values())


# -- the connector SDK ---------------------------------------------------------------------


class SignsWithoutPlayer(ConnectorSession[ConnectorClientConfig]):
    """A vendor session that declares signage but implements no command hook."""

    def capabilities(self) -> list[connector_pb2.Capability.ValueType]:
        return [connector_pb2.CAPABILITY_SIGNAGE]


def test_a_command_without_a_hook_is_answered_unsupported(
    gw: GatewayProcessHandle,
    directory_file: Path,
    producer: EventProducer,
    module_kafka: KafkaSettings,
    module_catalog: TopicCatalog,
    codec: Codec,
) -> None:
    section = pa_section(gw, directory_file, WASHINGTON, client_id=PA_NORTH)
    session = SignsWithoutPlayer(
        section, Directory.load(directory_file), gw.credentials_for(PA_NORTH)
    )
    with attached(session):
        command = announcement(WASHINGTON, channel="DIGITAL_SIGNAGE")
        producer.publish(command)
        receipts = receipts_until(
            module_kafka, module_catalog, codec, has_status(command, "FAILED")
        )
    (failed,) = of(command, receipts)  # refused without being accepted: no SENT
    assert failed["status"] == "FAILED"
    assert failed["error"] == "COMMAND_OUTCOME_UNSUPPORTED: not supported by this connector"
    assert failed["provider_message_id"] == PA_NORTH
    assert session.sessions == 1


@pytest.mark.parametrize(
    ("section", "prefix"),
    [
        (PaSignageSimSection, "SAFEHUB_PA_SIGNAGE_SIM__"),
        (AccessControlSimSection, "SAFEHUB_ACCESS_CONTROL_SIM__"),
    ],
)
def test_a_misconfigured_connector_names_its_own_variables(
    section: type[PaSignageSimSection | AccessControlSimSection],
    prefix: str,
    directory_file: Path,
    tmp_path: Path,
) -> None:
    with pytest.raises(
        ConfigError,
        match=f"set {prefix}TLS_CERT_FILE, {prefix}TLS_KEY_FILE and {prefix}TLS_CA_FILE",
    ):
        section().channel_credentials()
    missing = tmp_path / "nowhere.json"
    with pytest.raises(
        ConfigError, match=re.escape(f"{missing} does not exist: set {prefix}DIRECTORY_FILE")
    ):
        section(directory_file=missing).resolved_directory_file()
    stranger = section(client_id="nobody", directory_file=directory_file)
    with pytest.raises(ConfigError, match="client 'nobody' is not in the directory"):
        SignsWithoutPlayer(
            stranger,
            Directory.load(stranger.resolved_directory_file()),
            grpc.ssl_channel_credentials(),
        )


# -- the deployable ------------------------------------------------------------------------


def test_the_simulator_runs_as_a_process_and_plays(
    gw: GatewayProcessHandle,
    directory_file: Path,
    producer: EventProducer,
    module_kafka: KafkaSettings,
    module_catalog: TopicCatalog,
    codec: Codec,
    tmp_path: Path,
) -> None:
    played_file = tmp_path / "played.jsonl"
    with Component(
        "vendors.pa_signage_sim",
        module_kafka,
        "unused.",
        tmp_path,
        env={
            "SAFEHUB_PA_SIGNAGE_SIM__GATEWAY_ADDRESS": gw.address,
            **issued_env(gw.pki, "PA_SIGNAGE_SIM", PA_SOUTH),
            "SAFEHUB_PA_SIGNAGE_SIM__DIRECTORY_FILE": str(directory_file),
            "SAFEHUB_PA_SIGNAGE_SIM__SCHOOL_IDS": f'["{RIVERSIDE}"]',
            "SAFEHUB_PA_SIGNAGE_SIM__CLIENT_ID": PA_SOUTH,
            "SAFEHUB_PA_SIGNAGE_SIM__PLAYED_FILE": str(played_file),
        },
    ) as sim:
        wait_until(
            lambda: "attached to gateway" in sim.log_file.read_text(errors="replace"),
            timeout=TIMEOUT,
            what="simulator process attached",
        )
        command = announcement(RIVERSIDE, channel="DIGITAL_SIGNAGE")
        producer.publish(command)
        receipts = receipts_until(
            module_kafka, module_catalog, codec, has_status(command, "DELIVERED")
        )
        lines = [json.loads(line) for line in played_file.read_text().splitlines()]
        assert [(p["command_id"], p["endpoint_id"]) for p in lines] == [
            (command["command_id"], f"{RIVERSIDE}/signage")
        ]
        (delivered,) = (r for r in of(command, receipts) if r["status"] == "DELIVERED")
        assert delivered["envelope"]["source"] == PA_SOUTH
        assert delivered["envelope"]["tenant"]["district"] == "dist-south-isd"
        assert sim.stop() == 0
