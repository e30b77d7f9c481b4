"""The timeline as a real process on a real broker, with SQLite and PostgreSQL: events land in
order once each, tampering is named (server and CLI), scope and clearance hold over HTTP and
gRPC, spans show in the trace view, undecodable input goes to the dead-letter topic."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import create_engine, text

from safehub.devstack.pki import DevPki
from safehub.gen.safehub.timeline.v1 import timeline_pb2, timeline_pb2_grpc
from safehub.kernel.bus import EventProducer
from safehub.kernel.codec import Codec
from safehub.kernel.directory import Directory, Reviewer, default_directory_file
from safehub.kernel.live_directory import change_event
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import SPANS, TopicCatalog
from tests.support.kafka import read_topic
from tests.support.timeline import (
    COUNSEL_TOKEN,
    NORTH_TOKEN,
    SOUTH_TOKEN,
    STATE_TOKEN,
    Scenario,
    TimelineProcess,
    fresh_database,
    referral,
)
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SAFEHUB = str(Path(sys.executable).parent / "safehub")


@pytest.fixture
def store_url(database_url: str) -> Iterator[str]:
    with fresh_database(database_url) as url:
        yield url


@pytest.fixture
def timeline(
    kafka: KafkaSettings, catalog: TopicCatalog, tmp_path: Path, store_url: str
) -> Iterator[TimelineProcess]:
    process = TimelineProcess(kafka, catalog.prefix, tmp_path, store_url, grpc=True).start()
    try:
        yield process
    finally:
        process.stop()


def _cli(timeline: TimelineProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"SAFEHUB_TIMELINE_URL": timeline.url, "SAFEHUB_TIMELINE_TOKEN": STATE_TOKEN}
    return subprocess.run(
        [SAFEHUB, "timeline", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def _publish_story(producer: EventProducer, scenario: Scenario) -> list[Any]:
    events = scenario.story()
    for event in events:
        producer.publish(event)
    return events


def test_incident_lands_in_order_once_scoped_and_redacted(
    timeline: TimelineProcess,
    producer: EventProducer,
    spans: InMemorySpanExporter,
    catalog: TopicCatalog,
) -> None:
    scenario = Scenario()
    events = _publish_story(producer, scenario)
    body = timeline.wait_entries(scenario.incident_id, len(events))
    # One entry per event (the panic too, whichever of it and its incident came first);
    # the chain is in recording order, occurred_at gives the order of the story.
    assert sorted(e["event_id"] for e in body["entries"]) == sorted(
        e["envelope"]["event_id"] for e in events
    )
    by_time = sorted(body["entries"], key=lambda e: (e["occurred_at"], e["seq"]))
    assert [e["event_id"] for e in by_time] == [
        e["envelope"]["event_id"]
        for e in sorted(events, key=lambda e: e["envelope"]["occurred_at"])
    ]
    assert [e["seq"] for e in body["entries"]] == list(range(1, len(events) + 1))
    assert body["chain"]["ok"] and body["subject"]["status"] == "cleared"
    # Incident-keyed events of one topic keep their order.
    incident_events = [e for e in body["entries"] if e["lane"] == "incidents"]
    assert [e["event_type"] for e in incident_events] == [
        "IncidentOpened",
        "IncidentChanged",
        "IncidentCleared",
    ]

    # Every event published twice more, then a sentinel per topic: still one entry each.
    for event in events[1:]:
        producer.publish(event)
    sentinels = [
        scenario.changed(70.0, "ALL_CLEAR", "reviewed"),
        scenario.ack(71.0, "stf-lincoln-003"),
    ]
    for event in sentinels:
        producer.publish(event)
    body = timeline.wait_entries(scenario.incident_id, len(events) + 2)
    ids = [e["event_id"] for e in body["entries"]]
    assert len(ids) == len(set(ids)) == len(events) + 2

    # Scope: another district gets 404 exactly like an unknown id; its list is empty.
    with timeline.client(SOUTH_TOKEN) as south:
        assert south.get(f"/api/v1/subjects/{scenario.incident_id}/timeline").status_code == 404
        assert south.get("/api/v1/subjects/inc-nope/timeline").status_code == 404
        assert south.get("/api/v1/subjects").json()["items"] == []
        assert south.get("/api/v1/subjects?district=dist-north-isd").status_code == 403
    with timeline.client(None) as anonymous:
        assert anonymous.get("/api/v1/subjects").status_code == 401
        page = anonymous.get(f"/incidents/{scenario.incident_id}")
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert anonymous.get("/static/..%2Fstore.py").status_code == 404
    with timeline.client("not-a-token") as stranger:
        assert stranger.get("/api/v1/subjects").status_code == 401
    # Bad input: 400 naming the parameter, whatever the route.
    incident_path = f"/api/v1/subjects/{scenario.incident_id}"
    with timeline.client(STATE_TOKEN) as state:
        for path, named in [
            ("/api/v1/subjects?limit=0", "limit"),
            ("/api/v1/subjects?from=yesterday", "from"),
            ("/api/v1/subjects?exercise=maybe", "exercise"),
            ("/api/v1/subjects?kind=school", "kind"),
            ("/api/v1/subjects?status=burning", "status"),
            ("/api/v1/subjects?cursor=not-ours", "cursor"),
            (f"{incident_path}/timeline?after_seq=abc", "after_seq"),
            (f"{incident_path}/export?format=pdf", "format"),
            ("/api/v1/traces/xyz", "trace_id"),
        ]:
            answer = state.get(path)
            assert answer.status_code == 400, path
            assert answer.json()["error"].startswith(named), (path, answer.json())

    # Clearance: the EIDO (student record) is withheld from a reviewer without clearance.
    with timeline.client(NORTH_TOKEN) as north:
        entries = north.get(f"/api/v1/subjects/{scenario.incident_id}/timeline").json()["entries"]
    dispatch = next(e for e in entries if e["event_type"] == "CadDispatch")
    assert dispatch["data"]["eido"] == {"withheld": "STUDENT_RECORD"}
    assert dispatch["withheld"] == ["eido"]
    assert "asthma" not in str(entries)
    with timeline.client(COUNSEL_TOKEN) as counsel:
        entries = counsel.get(f"/api/v1/subjects/{scenario.incident_id}/timeline").json()["entries"]
    assert "asthma" in next(e for e in entries if e["event_type"] == "CadDispatch")["data"]["eido"]

    # People: who got what, who never did.
    with timeline.client(STATE_TOKEN) as state:
        people = state.get(f"/api/v1/subjects/{scenario.incident_id}/people").json()
    assert people["never_reached"] == ["stf-lincoln-002"]
    first = next(r for r in people["recipients"] if r["recipient_id"] == "stf-lincoln-001")
    assert first["channels"][0]["delivered_at"] and first["acknowledged_at"]

    # gRPC over mTLS: the reviewer is the certificate's CN.
    pki = DevPki(timeline.pki_dir)
    with pki.grpc_channel(timeline.grpc_address, "rev-south-aar") as channel:
        stub = timeline_pb2_grpc.TimelineServiceStub(channel)
        with pytest.raises(grpc.RpcError) as denied:
            stub.GetTimeline(timeline_pb2.GetTimelineRequest(subject_id=scenario.incident_id))
        assert denied.value.code() == grpc.StatusCode.NOT_FOUND
        assert not stub.ListSubjects(timeline_pb2.ListSubjectsRequest()).subjects
    with pki.grpc_channel(timeline.grpc_address, "rev-north-aar") as channel:
        stub = timeline_pb2_grpc.TimelineServiceStub(channel)
        with pytest.raises(grpc.RpcError) as bad:
            stub.GetTrace(timeline_pb2.GetTraceRequest(trace_id="xyz"))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "trace_id" in (bad.value.details() or "")
        page = stub.GetTimeline(timeline_pb2.GetTimelineRequest(subject_id=scenario.incident_id))
        assert [e.seq for e in page.entries] == list(range(1, len(events) + 3))
        grpc_dispatch = next(e for e in page.entries if e.event_type == "CadDispatch")
        assert list(grpc_dispatch.withheld) == ["eido"] and "asthma" not in grpc_dispatch.data_json
        assert stub.VerifyChain(
            timeline_pb2.VerifyChainRequest(subject_id=scenario.incident_id)
        ).chain.ok
    with pki.grpc_channel(timeline.grpc_address, "not-a-reviewer") as channel:
        stub = timeline_pb2_grpc.TimelineServiceStub(channel)
        with pytest.raises(grpc.RpcError) as unknown:
            stub.ListSubjects(timeline_pb2.ListSubjectsRequest())
        assert unknown.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # Spans from the spans topic appear in the trace view, with durations.
    entry = next(e for e in body["entries"] if e["event_type"] == "IncidentOpened")
    assert entry["trace_id"] and entry["span_id"]
    finished = [
        s for s in spans.get_finished_spans() if s.context.trace_id == int(entry["trace_id"], 16)
    ]
    assert finished
    producer.publish_raw(
        catalog.name(SPANS),
        entry["trace_id"].encode(),
        encode_spans(finished).SerializeToString(),
        [],
    )
    with timeline.client(STATE_TOKEN) as state:
        trace = wait_until(
            lambda: state.get(f"/api/v1/traces/{entry['trace_id']}").json().get("spans"),
            what="spans in the trace view",
        )
        publish = next(s for s in trace if s["span_id"] == entry["span_id"])
        assert publish["name"].startswith("send ") and publish["duration_ms"] >= 0
        assert publish["end"] >= publish["start"]
    with timeline.client(SOUTH_TOKEN) as south:
        assert south.get(f"/api/v1/traces/{entry['trace_id']}").status_code == 404


def test_reviewers_added_and_deleted_at_run_time_count_from_the_next_request(
    kafka: KafkaSettings, catalog: TopicCatalog, tmp_path: Path, producer: EventProducer
) -> None:
    """The timeline looks reviewers up in the live directory per request: one published on
    the directory topic while it runs can read (bearer token and certificate CN), one
    deleted is refused, without a restart."""
    store = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    timeline = TimelineProcess(kafka, catalog.prefix, tmp_path, store, grpc=True).start()
    try:
        scenario = Scenario()
        events = _publish_story(producer, scenario)
        timeline.wait_entries(scenario.incident_id, len(events))
        path = f"/api/v1/subjects/{scenario.incident_id}/timeline"
        seed = Directory.load(default_directory_file())
        token = f"token-{uuid.uuid4().hex}"
        newcomer = Reviewer(
            id="rev-north-new",
            name="New After-Action Reviewer",
            district="dist-north-isd",
            token_sha256=hashlib.sha256(token.encode()).hexdigest(),
        )
        with timeline.client(token) as new, timeline.client(NORTH_TOKEN) as veteran:
            assert new.get(path).status_code == 401
            assert veteran.get(path).status_code == 200
            producer.publish(
                change_event(seed, "REVIEWER", newcomer, version=1, changed_by="ops-1")
            )
            answer = wait_until(
                lambda: (a := new.get(path)).status_code == 200 and a,
                what="the new reviewer let in",
            )
            assert len(answer.json()["entries"]) == len(events)
            pki = DevPki(timeline.pki_dir)
            with pki.grpc_channel(timeline.grpc_address, newcomer.id) as channel:
                stub = timeline_pb2_grpc.TimelineServiceStub(channel)
                request = timeline_pb2.GetTimelineRequest(subject_id=scenario.incident_id)
                assert len(stub.GetTimeline(request).entries) == len(events)

            north = seed.reviewer("rev-north-aar")
            assert (
                north is not None
                and north.token_sha256 == hashlib.sha256(NORTH_TOKEN.encode()).hexdigest()
            )
            producer.publish(
                change_event(
                    seed, "REVIEWER", north, version=1, changed_by="ops-1", change="DELETED"
                )
            )
            wait_until(
                lambda: veteran.get(path).status_code == 401, what="the deleted reviewer refused"
            )
            with pki.grpc_channel(timeline.grpc_address, north.id) as channel:
                stub = timeline_pb2_grpc.TimelineServiceStub(channel)
                with pytest.raises(grpc.RpcError) as refused:
                    stub.ListSubjects(timeline_pb2.ListSubjectsRequest())
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert new.get(path).status_code == 200
    finally:
        timeline.stop()


def test_tampering_is_named_by_the_server_and_the_cli(
    timeline: TimelineProcess, producer: EventProducer, store_url: str
) -> None:
    edited, deleted, swapped = Scenario(), Scenario(), Scenario()
    for scenario in (edited, deleted, swapped):
        _publish_story(producer, scenario)
    for scenario in (edited, deleted, swapped):
        timeline.wait_entries(scenario.incident_id, 9)
    result = _cli(timeline, "verify", edited.incident_id)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "chain OK (recomputed here): 9 entries" in result.stdout

    engine = create_engine(store_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE entries SET payload = replace(payload, :real, :drill) "
                    "WHERE subject_id = :s AND seq = 2"
                ),
                {"s": edited.incident_id, "real": '"exercise":false', "drill": '"exercise":true'},
            )
            conn.execute(
                text("DELETE FROM entries WHERE subject_id = :s AND seq = 4"),
                {"s": deleted.incident_id},
            )
            for old, new in ((5, -1), (6, 5), (-1, 6)):
                conn.execute(
                    text("UPDATE entries SET seq = :new WHERE subject_id = :s AND seq = :old"),
                    {"s": swapped.incident_id, "old": old, "new": new},
                )
    finally:
        engine.dispose()

    expected = {
        edited.incident_id: (2, "altered"),
        deleted.incident_id: (4, "removed"),
        swapped.incident_id: (5, "reordered"),
    }
    with timeline.client(STATE_TOKEN) as state:
        for subject_id, (seq, kind) in expected.items():
            problem = state.get(f"/api/v1/subjects/{subject_id}/verify").json()["problem"]
            assert (problem["seq"], problem["kind"]) == (seq, kind), problem
            timeline_chain = state.get(f"/api/v1/subjects/{subject_id}/timeline").json()["chain"]
            assert not timeline_chain["ok"]
    for subject_id, (seq, kind) in expected.items():
        result = _cli(timeline, "verify", subject_id)
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"chain BROKEN (recomputed here): entry {seq} {kind}" in result.stdout
        assert f"chain BROKEN (server check): entry {seq} {kind}" in result.stdout

    listed = _cli(timeline, "list")
    assert listed.returncode == 0 and edited.incident_id[:8] in listed.stdout
    shown = _cli(timeline, "show", swapped.incident_id)
    assert shown.returncode == 0 and "PanicAlert" in shown.stdout
    missing = _cli(timeline, "verify", "inc-does-not-exist")
    assert missing.returncode == 2 and "404" in missing.stderr


def test_kill_9_mid_burst_leaves_one_entry_per_event(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    tmp_path: Path,
    store_url: str,
    producer: EventProducer,
) -> None:
    scenario = Scenario()
    process = TimelineProcess(kafka, catalog.prefix, tmp_path, store_url).start()
    producer.publish(scenario.panic())
    producer.publish(scenario.opened())
    burst = [scenario.changed(1 + i / 100, "CONFIRMED", f"update {i}") for i in range(400)]
    futures = [producer.publish_nowait(event) for event in burst]
    wait_until(
        lambda: (
            (process.client().get(f"/api/v1/subjects/{scenario.incident_id}/timeline?limit=1"))
            .json()
            .get("subject", {})
            .get("entry_count", 0)
            > 50
        ),
        what="the burst being recorded",
    )
    process.kill()  # mid-burst: written batches whose offsets were not committed come back
    for future in futures:
        future.result(30)
    process.start()
    try:
        last = scenario.changed(9.0, "ALL_CLEAR", "done")
        producer.publish(last)
        body = process.wait_entries(scenario.incident_id, 2 + len(burst) + 1)
        while body["next_after_seq"] is not None:
            more = (
                process.client()
                .get(
                    f"/api/v1/subjects/{scenario.incident_id}/timeline",
                    params={"after_seq": body["next_after_seq"]},
                )
                .json()
            )
            body["entries"] += more["entries"]
            body["next_after_seq"] = more["next_after_seq"]
        ids = [e["event_id"] for e in body["entries"]]
        assert len(ids) == len(set(ids)) == 2 + len(burst) + 1
        assert process.client().get(f"/api/v1/subjects/{scenario.incident_id}/verify").json()["ok"]
    finally:
        process.stop()


def test_undecodable_messages_go_to_the_dead_letter_topic(
    timeline: TimelineProcess,
    producer: EventProducer,
    kafka: KafkaSettings,
    catalog: TopicCatalog,
) -> None:
    producer.publish_raw(catalog.name("safehub.incidents.v1"), b"inc-x", b"\xc3\x01garbage", [])
    producer.publish_raw(catalog.name(SPANS), b"trace-x", b"\xff\xff\xff not protobuf", [])
    records = read_topic(kafka, catalog.dead_letter, expect=2, timeout=60)
    reasons = {
        dict(r.headers())["safehub-dlq-topic"].decode(): dict(r.headers())[
            "safehub-dlq-reason"
        ].decode()
        for r in records
    }
    assert (
        "not an Avro single-object encoded message" in reasons[catalog.name("safehub.incidents.v1")]
    )
    assert "OTLP" in reasons[catalog.name(SPANS)]
    # And the service carries on: a good incident still lands.
    scenario = Scenario()
    _publish_story(producer, scenario)
    assert timeline.wait_entries(scenario.incident_id, 9)["chain"]["ok"]
    with timeline.client(STATE_TOKEN) as state:
        case = referral("case-dlq")
        producer.publish(case)
        wait_until(
            lambda: state.get("/api/v1/subjects/case-dlq/timeline").status_code == 200,
            what="the case",
        )


def test_a_year_one_timestamp_or_a_misrouted_record_is_dead_lettered_and_ingest_goes_on(
    timeline: TimelineProcess,
    producer: EventProducer,
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    codec: Codec,
) -> None:
    # What the gateway once let through: a panic whose device said 0001-01-01.
    ancient = Scenario()
    bad = ancient.panic()
    bad["envelope"]["occurred_at"] = datetime(1, 1, 1, tzinfo=UTC)
    producer.publish(bad)
    # And a valid event on a topic that does not carry it.
    stray = Scenario().opened()
    producer.publish_raw(
        catalog.name("safehub.doors.v1"),
        b"sch-lincoln-hs",
        codec.encode(stray),
        [("safehub-event-type", stray["envelope"]["event_type"].encode())],
    )
    records = read_topic(kafka, catalog.dead_letter, expect=2, timeout=60)
    topics = {dict(r.headers())["safehub-dlq-topic"].decode() for r in records}
    assert topics == {catalog.name("safehub.alerts.v1"), catalog.name("safehub.doors.v1")}
    # The service still answers, and the next incident is recorded.
    scenario = Scenario()
    _publish_story(producer, scenario)
    assert timeline.wait_entries(scenario.incident_id, 9)["chain"]["ok"]
