"""The doorstate service as a real faust worker on a real broker: door states, lockdown
confirmation, dead letters, and exact table recovery after SIGTERM and kill -9."""

from __future__ import annotations

import asyncio
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient
from opentelemetry import trace

from safehub.kernel import tracing
from safehub.kernel.admin import ensure_topics
from safehub.kernel.bus import ConsumedEvent, EventProducer
from safehub.kernel.codec import Codec
from safehub.kernel.directory import Building, Directory, Door, School, default_directory_file
from safehub.kernel.envelope import new_event
from safehub.kernel.errors import HandlerError
from safehub.kernel.live_directory import change_event
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.streams import StreamIO, StreamRecord, librdkafka_partition
from safehub.kernel.topics import TopicCatalog
from tests.support.doorstate import DoorstateHandle, running_doorstate
from tests.support.kafka import read_all
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

LINCOLN = {"state": "US-TX", "district": "dist-north-isd", "school": "sch-lincoln-hs"}
WASHINGTON = {"state": "US-TX", "district": "dist-north-isd", "school": "sch-washington-ms"}
BUILDING_A = ["A-cafeteria-exit", "A-gym-exit", "A-main-entry", "A-office"]
BUILDING_B = ["B-214", "B-east-entry", "B-library", "B-north-exit", "B-stair-2", "B-west-entry"]
DEADLINE_S = 2.0


def door_state(
    tenant: dict[str, str],
    door_id: str,
    state: str,
    at: datetime,
    *,
    building: str = "B",
    command_id: str | None = None,
) -> dict[str, Any]:
    return new_event(
        "DoorLockState",
        source="test-access-control",
        tenant=tenant,
        building=building,
        occurred_at=at,
        payload={
            "door_id": door_id,
            "door_name": None,
            "state": state,
            "exterior": "entry" in door_id or "exit" in door_id,
            "command_id": command_id,
        },
    )


def lock_command(
    building: str, *, scope: str = "ALL", exercise: bool = False
) -> tuple[dict[str, Any], str, str]:
    command_id, incident_id = str(uuid.uuid4()), f"inc-{uuid.uuid4().hex[:8]}"
    event = new_event(
        "LockCommand",
        source="incidents",
        tenant=LINCOLN,
        building=building,
        incident_id=incident_id,
        exercise=exercise,
        payload={
            "command_id": command_id,
            "scope": scope,
            "door_ids": [],
            "target": "LOCKED",
            "srp_action": "LOCKDOWN",
            "reason": "SRP LOCKDOWN",
            "requested_by": "staff-1",
        },
    )
    return event, command_id, incident_id


def progress_of(
    kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, command_id: str
) -> list[tuple[dict[str, Any], dict[str, bytes]]]:
    """Every LockdownProgress on the incidents topic for ``command_id``, with its headers."""
    found = []
    for record in read_all(kafka, catalog.name("safehub.incidents.v1")):
        event = codec.decode(record.value())
        if event.get("command_id") == command_id:
            found.append((event, dict(record.headers() or [])))
    return found


def trace_id(headers: dict[str, bytes]) -> str:
    return headers["traceparent"].decode().split("-")[1]


@pytest.fixture(scope="module")
def shared(
    module_kafka: KafkaSettings,
    module_catalog: TopicCatalog,
    codec: Codec,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[DoorstateHandle, TopicCatalog, EventProducer]]:
    """One worker for the tests that do not restart it (each uses its own doors/commands)."""
    catalog = module_catalog
    workdir = tmp_path_factory.mktemp("doorstate")
    with (
        EventProducer(module_kafka, codec, catalog) as producer,
        running_doorstate(
            module_kafka, catalog.prefix, workdir, confirm_deadline_s=DEADLINE_S
        ) as worker,
    ):
        yield worker, catalog, producer


def publish_and_wait(
    worker: DoorstateHandle, producer: EventProducer, events: list[dict[str, Any]]
) -> dict[str, Any]:
    before = worker.stats()["events_processed"]
    for event in events:
        producer.publish(event)
    return worker.wait_processed(before + len(events))


def test_door_states_are_queryable_and_newest_wins(
    shared: tuple[DoorstateHandle, TopicCatalog, EventProducer],
) -> None:
    worker, _catalog, producer = shared
    t0 = datetime.now(UTC)
    newest = door_state(WASHINGTON, "MAIN-front", "LOCKED", t0 + timedelta(seconds=2))
    older = door_state(WASHINGTON, "MAIN-front", "UNLOCKED", t0 + timedelta(seconds=1))
    back = door_state(WASHINGTON, "MAIN-back", "HELD_OPEN", t0)
    # The newest report first, then an older one arriving late, then a duplicate.
    publish_and_wait(worker, producer, [newest, older, back, newest])

    doors = worker.doors("sch-washington-ms")
    assert set(doors) == {"MAIN-front", "MAIN-back"}
    assert doors["MAIN-front"]["state"] == "LOCKED"
    assert doors["MAIN-front"]["event_id"] == newest["envelope"]["event_id"]
    assert doors["MAIN-back"] == {
        "door_id": "MAIN-back",
        "state": "HELD_OPEN",
        "exterior": False,
        "building": "B",
        "command_id": None,
        "occurred_at": t0.isoformat(timespec="microseconds"),
        "event_id": back["envelope"]["event_id"],
    }
    assert worker.doors("sch-riverside-es") == {}  # known school, no reports in these tests
    unknown = httpx.get(worker.url + "/doors/sch-unknown", timeout=10)
    assert unknown.status_code == 404
    assert unknown.json() == {"error": "unknown school 'sch-unknown'"}


def test_lockdown_confirmed_by_every_door_is_reported_complete_once(
    shared: tuple[DoorstateHandle, TopicCatalog, EventProducer],
    module_kafka: KafkaSettings,
    codec: Codec,
) -> None:
    worker, catalog, producer = shared
    command, command_id, incident_id = lock_command("B", exercise=True)
    reports = [
        # Half echo the command id, half are plain state reports after the command.
        door_state(
            LINCOLN, door, "LOCKED", datetime.now(UTC), command_id=command_id if i % 2 else None
        )
        for i, door in enumerate(BUILDING_B)
    ]
    # The command and a report arrive twice; reports may be handled before the command.
    publish_and_wait(worker, producer, [command, *reports, reports[0], command])

    progress = wait_until(
        lambda: progress_of(module_kafka, codec, catalog, command_id), what="progress"
    )
    event, _headers = progress[0]
    assert event["complete"] is True
    assert event["deadline_passed"] is False
    assert event["incident_id"] == incident_id
    assert event["envelope"]["incident_id"] == incident_id
    assert event["envelope"]["exercise"] is True
    assert sorted(event["doors_expected"]) == BUILDING_B
    assert sorted(event["doors_confirmed"]) == BUILDING_B
    assert event["doors_unconfirmed"] == []
    # Keyed by incident, on the partition the bus (librdkafka) would have chosen.
    partitions = [
        r.partition()
        for r in read_all(module_kafka, catalog.name("safehub.incidents.v1"))
        if r.key() == incident_id.encode()
    ]
    assert partitions == [zlib.crc32(incident_id.encode()) % 12]

    # Never twice: let the deadline pass and the timer check it twice more.
    deadline = command["envelope"]["recorded_at"].timestamp() + DEADLINE_S
    checks = wait_until(lambda: (s := worker.stats())["now"] > deadline and s["deadline_checks"])
    wait_until(lambda: worker.stats()["deadline_checks"] >= checks + 2, what="two more checks")
    assert len(progress_of(module_kafka, codec, catalog, command_id)) == 1


def test_a_school_added_at_run_time_is_known_and_its_doors_confirm_a_lockdown(
    shared: tuple[DoorstateHandle, TopicCatalog, EventProducer],
    module_kafka: KafkaSettings,
    codec: Codec,
) -> None:
    """doorstate follows the live directory: a school published on the directory topic while
    the worker runs is answered by the query API, and a lock command there expects the doors
    the directory lists for it, without a restart."""
    worker, catalog, producer = shared
    doors = [Door(id="N-front", exterior=True), Door(id="N-back", exterior=True)]
    school = School(
        id="sch-doorstate-new",
        name="New Elementary",
        psap_id="psap-north-county",
        buildings=[Building(id="N", doors=doors)],
    )
    tenant = {**LINCOLN, "school": school.id}
    assert httpx.get(f"{worker.url}/doors/{school.id}", timeout=10).status_code == 404
    seed = Directory.load(default_directory_file())
    producer.publish(
        change_event(
            seed, "SCHOOL", school, version=1, changed_by="ops-1", district_id=LINCOLN["district"]
        )
    )
    wait_until(
        lambda: httpx.get(f"{worker.url}/doors/{school.id}", timeout=10).status_code == 200,
        what="the new school known to doorstate",
    )
    command, command_id, incident_id = lock_command("N", exercise=True)
    command["envelope"]["tenant"] = tenant
    reports = [
        door_state(tenant, door.id, "LOCKED", datetime.now(UTC), building="N") for door in doors
    ]
    publish_and_wait(worker, producer, [command, *reports])
    progress = wait_until(
        lambda: progress_of(module_kafka, codec, catalog, command_id), what="progress"
    )
    event, _headers = progress[0]
    assert event["complete"] is True and event["incident_id"] == incident_id
    assert sorted(event["doors_expected"]) == sorted(d.id for d in doors)


def test_jammed_door_is_reported_unconfirmed_at_the_deadline(
    shared: tuple[DoorstateHandle, TopicCatalog, EventProducer],
    module_kafka: KafkaSettings,
    codec: Codec,
) -> None:
    worker, catalog, producer = shared
    now = datetime.now(UTC)
    # One door reported LOCKED before the command was read (topics are not ordered).
    early = door_state(LINCOLN, "A-office", "LOCKED", now + timedelta(milliseconds=1), building="A")
    command, command_id, incident_id = lock_command("A")
    command["envelope"]["occurred_at"] = now
    reports = [
        door_state(LINCOLN, door, "LOCKED", datetime.now(UTC), building="A")
        for door in BUILDING_A
        if door not in ("A-office", "A-gym-exit")
    ]
    jammed = door_state(LINCOLN, "A-gym-exit", "UNLOCKED", datetime.now(UTC), building="A")
    publish_and_wait(worker, producer, [early, command, *reports, jammed])

    progress = wait_until(
        lambda: progress_of(module_kafka, codec, catalog, command_id),
        timeout=DEADLINE_S + 15,
        what="deadline progress",
    )
    event, headers = progress[0]
    assert event["deadline_passed"] is True
    assert event["complete"] is False
    assert event["doors_unconfirmed"] == ["A-gym-exit"]
    assert sorted(event["doors_confirmed"]) == [d for d in BUILDING_A if d != "A-gym-exit"]
    assert event["envelope"]["incident_id"] == incident_id
    # The deadline report continues the trace of the command it is about.
    command_record = next(
        r
        for r in read_all(module_kafka, catalog.name("safehub.door-commands.v1"))
        if codec.decode(r.value())["command_id"] == command_id
    )
    assert trace_id(headers) == trace_id(dict(command_record.headers() or []))

    # Reported once: more deadline checks add nothing; the door locking at last completes it.
    checks = worker.stats()["deadline_checks"]
    wait_until(lambda: worker.stats()["deadline_checks"] >= checks + 2, what="two more checks")
    assert len(progress_of(module_kafka, codec, catalog, command_id)) == 1
    publish_and_wait(
        worker,
        producer,
        [door_state(LINCOLN, "A-gym-exit", "LOCKED", datetime.now(UTC), building="A")],
    )
    both = wait_until(
        lambda: len(p := progress_of(module_kafka, codec, catalog, command_id)) == 2 and p,
        what="complete after the deadline",
    )
    final = both[1][0]
    assert final["complete"] is True
    assert final["deadline_passed"] is True
    assert final["doors_unconfirmed"] == []


def test_corrupt_bytes_are_dead_lettered_and_the_worker_goes_on(
    shared: tuple[DoorstateHandle, TopicCatalog, EventProducer],
    module_kafka: KafkaSettings,
) -> None:
    worker, catalog, producer = shared
    doors_topic = catalog.name("safehub.doors.v1")
    garbage = b"\xc3\x01not-a-fingerprint-" + uuid.uuid4().bytes
    producer.publish_raw(doors_topic, b"sch-riverside-es", garbage, [("traceparent", b"x")])
    after = door_state(
        {**LINCOLN, "district": "dist-south-isd", "school": "sch-riverside-es"},
        "1-front",
        "LOCKED",
        datetime.now(UTC),
        building="1",
    )
    producer.publish(after)

    wait_until(lambda: "1-front" in worker.doors("sch-riverside-es"), what="the next event")
    dead = [r for r in read_all(module_kafka, catalog.dead_letter) if r.value() == garbage]
    assert len(dead) == 1
    headers = dict(dead[0].headers() or [])
    assert headers["safehub-dlq-reason"].startswith(b"unknown writer schema")
    assert headers["safehub-dlq-error-type"] == b"UnknownSchemaError"
    assert headers["safehub-dlq-topic"] == doors_topic.encode()
    assert headers["safehub-dlq-group"] == (catalog.prefix + "doorstate").encode()
    assert dead[0].key() == b"sch-riverside-es"
    assert worker.stats()["dead_lettered"] >= 1


class _FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []

    async def send(self, topic: str, key: Any, value: Any, _p: Any, _t: Any, headers: Any) -> None:
        self.sent.append((topic, key, value, list(headers)))

    send_and_wait = send


def _stream_io(codec: Codec) -> tuple[StreamIO, _FakeProducer]:
    producer = _FakeProducer()
    app = SimpleNamespace(conf=SimpleNamespace(id="t.doorstate"), producer=producer)
    return StreamIO(app, codec, TopicCatalog("t."), max_bytes=1_048_576), producer


def test_stream_io_joins_the_producers_trace_and_dead_letters_poison(
    codec: Codec, spans: Any
) -> None:
    """In process, no broker: span parentage, output headers, dead-letter headers."""
    io, producer = _stream_io(codec)
    report = door_state(LINCOLN, "B-214", "LOCKED", datetime.now(UTC))
    headers: list[tuple[str, bytes]] = [("safehub-event-id", b"e-1")]
    with trace.get_tracer("test").start_as_current_span("send upstream") as upstream:
        tracing.inject(headers)
    record = StreamRecord(
        "t.safehub.doors.v1", 3, 41, b"sch-lincoln-hs", codec.encode(report), headers
    )
    incident_id = f"inc-{uuid.uuid4().hex[:8]}"
    progress = new_event(
        "LockdownProgress",
        source="test",
        tenant=LINCOLN,
        incident_id=incident_id,
        payload={
            "incident_id": incident_id,
            "command_id": "c-1",
            "target": "LOCKED",
            "doors_expected": [],
            "doors_confirmed": [],
            "doors_unconfirmed": [],
            "deadline_passed": False,
            "complete": True,
        },
    )
    seen: list[str] = []

    async def handler(consumed: ConsumedEvent) -> None:
        seen.append(consumed.event_id)
        await io.publish(progress)

    async def poison(_consumed: ConsumedEvent) -> None:
        raise HandlerError("no such door")

    asyncio.run(io.handle(record, handler))
    assert seen == [report["envelope"]["event_id"]]
    process = next(s for s in spans.get_finished_spans() if s.name == "process t.safehub.doors.v1")
    assert process.parent.span_id == upstream.get_span_context().span_id
    assert process.context.trace_id == upstream.get_span_context().trace_id
    topic, key, value, out_headers = producer.sent[0]
    assert (topic, key) == ("t.safehub.incidents.v1", incident_id.encode())
    assert codec.decode(value)["command_id"] == "c-1"
    out = dict(out_headers)
    assert out["safehub-event-type"] == b"safehub.events.LockdownProgress"
    assert int(trace_id(out), 16) == upstream.get_span_context().trace_id

    garbage = StreamRecord("t.safehub.doors.v1", 3, 42, b"k", b"garbage", headers)
    asyncio.run(io.handle(garbage, handler))
    asyncio.run(io.handle(record, poison))
    (dlq1, _k1, v1, h1), (dlq2, _k2, _v2, h2) = producer.sent[1:]
    assert dlq1 == dlq2 == "t.safehub.deadletter.v1"
    assert v1 == b"garbage"
    first, second = dict(h1), dict(h2)
    assert first["safehub-dlq-error-type"] == b"CorruptMessageError"
    assert first["safehub-dlq-offset"] == b"42"
    assert first["safehub-dlq-group"] == b"t.doorstate"
    assert first["safehub-dlq-attempts"] == b"0"
    assert second["safehub-dlq-reason"] == b"no such door"
    assert second["safehub-dlq-attempts"] == b"1"
    assert first["traceparent"] == dict(headers)["traceparent"]
    assert io.stats.handled == 1
    assert io.stats.dead_lettered == 2
    assert (
        librdkafka_partition(b"sch-lincoln-hs", range(12), []) == zlib.crc32(b"sch-lincoln-hs") % 12
    )


def _committed_everything(
    kafka: KafkaSettings, group: str, ends: dict[tuple[str, int], int]
) -> bool:
    """True once ``group`` committed every (topic, partition) in ``ends`` up to its end."""
    admin = AdminClient(kafka.client_config())
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t, p in ends])
    result = admin.list_consumer_group_offsets([request])[group].result()
    committed = {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions}
    return all(committed.get(tp, -1) >= end for tp, end in ends.items())


def test_tables_recover_exactly_after_sigterm_and_kill(
    module_kafka: KafkaSettings, codec: Codec, tmp_path: Path
) -> None:
    """Door states and lock commands come back exactly, whenever the worker stopped.

    Without the fetch-high-watermark correction in safehub.kernel.streams, faust stops
    reading each changelog at tansu's short ListOffsets answer and this test fails.
    """
    catalog = TopicCatalog(f"t{uuid.uuid4().hex[:10]}.")
    ensure_topics(module_kafka, catalog)
    expected: dict[str, dict[str, str]] = {}
    ends: dict[tuple[str, int], int] = {}
    start = datetime.now(UTC)

    def send_all(producer: EventProducer, events: list[dict[str, Any]]) -> None:
        futures = [producer.publish_nowait(event) for event in events]
        for future in futures:
            done = future.result(timeout=30)
            ends[done.topic, done.partition] = max(
                ends.get((done.topic, done.partition), 0), done.offset + 1
            )

    def burst(producer: EventProducer, count: int, offset: int) -> None:
        events = []
        for i in range(count):
            door = (i + offset) % 300  # 300 doors in 40 schools, each updated again and again
            school = f"sch-{door % 40}"
            event = door_state(
                {**LINCOLN, "school": school},
                f"door-{door}",
                ("LOCKED", "UNLOCKED", "OFFLINE")[i % 3],
                start + timedelta(milliseconds=offset + i),
            )
            expected.setdefault(school, {})[event["door_id"]] = event["envelope"]["event_id"]
            events.append(event)
        send_all(producer, events)

    def recovered(worker: DoorstateHandle) -> dict[str, dict[str, str]]:
        return {
            school: {door: state["event_id"] for door, state in worker.doors(school).items()}
            for school in expected
        }

    def progress(command_id: str) -> list[dict[str, Any]]:
        return [event for event, _ in progress_of(module_kafka, codec, catalog, command_id)]

    group = catalog.prefix + "doorstate"
    with (
        EventProducer(module_kafka, codec, catalog, extra_config={"linger.ms": 5}) as producer,
        running_doorstate(
            module_kafka, catalog.prefix, tmp_path, confirm_deadline_s=DEADLINE_S
        ) as worker,
    ):
        done, done_id, _ = lock_command("A")
        jammed, jammed_id, _ = lock_command("B", scope="EXTERIOR")
        locked = [
            door_state(LINCOLN, door, "LOCKED", datetime.now(UTC), building="A")
            for door in BUILDING_A
        ]
        send_all(producer, [done, jammed, *locked])
        burst(producer, 600, 0)
        worker.wait_processed(606)
        wait_until(lambda: progress(done_id) and progress(jammed_id), what="both outcomes")
        worker.restart()  # SIGTERM: faust commits; the changelog tail sits in multi-record batches
        assert recovered(worker) == expected, worker.tail()
        stats = worker.stats()
        assert stats["door_states"] == 300 + len(BUILDING_A)
        assert stats["open_commands"] == 1  # the jammed one: reported, still open
        assert stats["events_processed"] == 0  # all of it came from the changelogs

        burst(producer, 400, 600)
        worker.wait_processed(400)
        # Once the inputs are committed nothing is read again: the state must come back from
        # the changelog alone, and kill -9 right away (no idle period) leaves its tail as is.
        wait_until(lambda: _committed_everything(module_kafka, group, ends), what="commit")
        worker.restart(kill=True)
        assert recovered(worker) == expected, worker.tail()
        assert worker.stats()["events_processed"] == 0

        # kill -9 in the middle of a burst: what was not committed is read again (no-ops or
        # newer), so the state still converges on exactly the newest report of every door.
        burst(producer, 600, 1000)
        worker.wait_processed(200)
        worker.restart(kill=True)
        wait_until(lambda: recovered(worker) == expected, what="state after a mid-burst kill")

        # Outcomes restored with the commands are not reported again.
        checks = worker.stats()["deadline_checks"]
        wait_until(lambda: worker.stats()["deadline_checks"] >= checks + 2, what="two checks")
        assert len(progress(done_id)) == 1
        assert [p["deadline_passed"] for p in progress(jammed_id)] == [True]
