"""LivePeople on a real broker: the seed, then upserts, stale versions, deletions, replays,
bad records; the seed import is idempotent."""

from __future__ import annotations

from pathlib import Path

import pytest

from safehub.kernel.bus import EventProducer
from safehub.kernel.codec import Codec
from safehub.kernel.live_people import LivePeople, publish_seed
from safehub.kernel.people import People, StaffRole
from safehub.kernel.person_events import seed_event_id, seed_events
from safehub.kernel.reader import TopicReader
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import PEOPLE, TopicCatalog
from tests.directory.helpers import LINCOLN, SEED, WASHINGTON, person_changed, seed_contacts
from tests.support.waiting import wait_until


def live(kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec) -> LivePeople:
    return LivePeople(People.load(SEED), kafka, catalog, codec, name="test-people").start()


def test_upserts_stale_versions_deletions_and_replays(
    kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec, producer: EventProducer
) -> None:
    added = person_changed("grd-new-1", version=10, email="new.one@families.example.org")
    teacher = person_changed(
        "stf-new-2", version=5, kind="STAFF", schools=(LINCOLN, WASHINGTON), staff_role="nurse"
    )
    student = person_changed("stu-new-3", version=1, kind="STUDENT", class_ids=["cls-1"])
    for event in (added, teacher, student):
        producer.publish(event)
    with live(kafka, catalog, codec) as people:
        assert people.wait_ready(30)
        snapshot = people.current()
        assert "grd-new-1" in [g.id for g in snapshot.guardians(LINCOLN)]
        assert [m.role for m in snapshot.staff(WASHINGTON) if m.id == "stf-new-2"] == [
            StaffRole.NURSE
        ]
        assert snapshot.staff_member(LINCOLN, "stf-new-2") is not None
        assert [(s.id, s.grade, s.class_ids) for s in snapshot.students(LINCOLN)] == [
            ("stu-new-3", "09", ["cls-1"])
        ]
        assert people.version_of("grd-new-1") == 10 and people.version_of("stf-lincoln-000") == 0
        seeded = len(snapshot.staff(LINCOLN))
        changes: list[People] = []
        people.on_change(changes.append)

        # An older version (a late redelivery) changes nothing; a newer one replaces.
        producer.publish(person_changed("grd-new-1", version=9, name="Stale Name"))
        producer.publish(person_changed("grd-new-1", version=11, name="New Name", email="x@y.org"))
        wait_until(lambda: people.version_of("grd-new-1") == 11, what="version 11 applied")
        names = [g.name for g in people.current().guardians(LINCOLN) if g.id == "grd-new-1"]
        assert names == ["New Name"]
        assert people.ignored >= 1
        # The snapshot a reader held is untouched by the change (immutable, swapped whole).
        assert [g.name for g in snapshot.guardians(LINCOLN) if g.id == "grd-new-1"] == [
            "Test Person"
        ]

        # A deletion removes; an older upsert replayed afterwards does not bring them back.
        producer.publish(
            person_changed("stf-lincoln-000", version=2, kind="STAFF", change="DELETED")
        )
        producer.publish(person_changed("stf-lincoln-000", version=1, kind="STAFF"))
        wait_until(
            lambda: people.current().staff_member(LINCOLN, "stf-lincoln-000") is None,
            what="the deletion applied",
        )
        assert len(people.current().staff(LINCOLN)) == seeded - 1
        assert changes and changes[-1] is people.current()

        # Replaying everything already applied changes nothing.
        before, version = people.current(), people.version
        for event in (added, teacher, student):
            producer.publish(event)
        marker = person_changed("grd-marker", version=1)
        producer.publish(marker)
        wait_until(lambda: people.version_of("grd-marker") == 1, what="the marker")
        after = people.current()
        assert people.version == version + 1  # only the marker made a new snapshot
        without_marker = after.model_dump()
        for school in without_marker["schools"]:
            school["guardians"] = [g for g in school["guardians"] if g["id"] != "grd-marker"]
        assert without_marker == before.model_dump()


def test_bad_records_are_skipped_and_logged_by_event_id_only(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    codec: Codec,
    producer: EventProducer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret = "+15559990001"
    bad_kind = person_changed("grd-bad-1", version=1, kind="UNKNOWN", phone=secret)
    bad_phone = person_changed("grd-bad-2", version=1, phone="555-not-e164-" + secret)
    producer.publish(bad_kind)
    producer.publish(bad_phone)
    producer.publish_raw(
        catalog.name(PEOPLE), b"sch-lincoln-hs", b"\x00garbage" + secret.encode(), []
    )
    producer.publish(person_changed("grd-good", version=1, phone=secret))
    with live(kafka, catalog, codec) as people:
        assert people.wait_ready(30)
        assert people.rejected == 3 and people.applied == 1
        ids = {g.id for g in people.current().guardians(LINCOLN)}
        assert "grd-good" in ids and not {"grd-bad-1", "grd-bad-2"} & ids
    logged = capsys.readouterr()
    text = logged.out + logged.err
    assert bad_kind["envelope"]["event_id"] in text and bad_phone["envelope"]["event_id"] in text
    assert secret not in text and "not-e164" not in text


def test_the_seed_import_is_idempotent(
    kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec, producer: EventProducer
) -> None:
    events = seed_events(SEED)
    assert len({e["envelope"]["event_id"] for e in events}) == len(events)
    assert [e["envelope"]["event_id"] for e in seed_events(SEED)] == [
        e["envelope"]["event_id"] for e in events
    ]
    assert events[0]["envelope"]["event_id"] == seed_event_id(events[0]["person_id"])
    first = publish_seed(producer, SEED, kafka=kafka, catalog=catalog, codec=codec)
    assert first.published == first.people == len(events) and first.already == 0
    again = publish_seed(producer, SEED, kafka=kafka, catalog=catalog, codec=codec)
    assert again.published == 0 and again.already == len(events)
    with TopicReader(kafka, catalog, [PEOPLE], name="test-seed") as reader:
        on_topic = [codec.decode(m.value() or b"") for m in reader.read_to_end(30)]
    assert len(on_topic) == len(events)
    assert {e["version"] for e in on_topic} == {1} and {e["roster_source"] for e in on_topic} == {
        "seed"
    }
    with live(kafka, catalog, codec) as people:
        assert people.wait_ready(30)
        # The topic holds exactly the seed: the live view equals the seed file's people.
        assert people.current().model_dump() == People.load(SEED).model_dump()
        assert all(people.version_of(e["person_id"]) == 1 for e in events)
    contacts = seed_contacts()
    assert contacts and all(
        (e["contact"] or {}).get("email") in contacts for e in on_topic if e["contact"]
    )


def test_a_seed_file_with_students_loads_and_imports(tmp_path: Path) -> None:
    import json

    data = json.loads(SEED.read_text(encoding="utf-8"))
    school = data["districts"][0]["schools"][0]
    school["students"] = [
        {"id": "stu-lincoln-0000", "name": "Sam Student", "school": school["id"], "grade": "10"}
    ]
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    people = People.load(path)
    assert [s.id for s in people.students(school["id"])] == ["stu-lincoln-0000"]
    kinds = {e["person_id"]: e["kind"] for e in seed_events(path)}
    assert kinds["stu-lincoln-0000"] == "STUDENT"


def test_the_seed_command_publishes_once(
    kafka: KafkaSettings, catalog: TopicCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from typer.testing import CliRunner

    from safehub.cli.directory import app

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka.bootstrap_servers or "")
    monkeypatch.setenv("SAFEHUB_KAFKA__TOPIC_PREFIX", catalog.prefix)
    runs = [CliRunner().invoke(app, ["seed", str(SEED), "--json"]) for _ in range(2)]
    assert all(r.exit_code == 0 for r in runs), [r.output for r in runs]
    first, second = (json.loads(r.output[r.output.index("{") :]) for r in runs)
    assert first["published"] == first["people"] == len(seed_events(SEED))
    assert second["published"] == 0 and second["already"] == first["people"]
