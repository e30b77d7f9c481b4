"""The directory service: every version stored (SQLite and PostgreSQL), idempotent by event id
and version; its read API (and the CLI over it) never returns a contact detail."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
import sqlalchemy
from typer.testing import CliRunner

from safehub.cli.directory import app as directory_cli
from safehub.kernel.bus import EventProducer
from safehub.kernel.codec import Codec
from safehub.kernel.live_people import publish_seed
from safehub.kernel.person_events import seed_events
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import DEAD_LETTER, TopicCatalog
from services.directory.store import DirectoryStore
from tests.directory.helpers import (
    LINCOLN,
    SEED,
    TOKEN,
    WASHINGTON,
    person_changed,
    seed_contacts,
)
from tests.support.kafka import read_all
from tests.support.waiting import wait_until


def test_the_store_keeps_every_version_idempotently(database_url: str) -> None:
    store = DirectoryStore(database_url, table_prefix=f"t{uuid.uuid4().hex[:6]}_")
    with store:
        seed = seed_events(SEED)
        assert all(store.apply(e) for e in seed)
        assert not any(store.apply(e) for e in seed)  # redelivered: no-op
        lincoln = store.school_people(LINCOLN)
        assert len(lincoln) == 48 + 10 + 2
        assert len(store.school_people(LINCOLN, "STAFF")) == 48
        moved = person_changed(
            "stf-lincoln-003", version=7, kind="STAFF", schools=(WASHINGTON,), name="Moved"
        )
        assert store.apply(moved)
        assert not store.apply(moved)
        stale = person_changed("stf-lincoln-003", version=3, kind="STAFF", name="Stale")
        assert not store.apply(stale)  # kept in the history, not current
        assert "stf-lincoln-003" not in {p["id"] for p in store.school_people(LINCOLN)}
        [now] = [p for p in store.school_people(WASHINGTON) if p["id"] == "stf-lincoln-003"]
        assert (now["name"], now["version"], now["role"]) == ("Moved", 7, "teacher")
        assert [v["version"] for v in store.versions("stf-lincoln-003")] == [1, 3, 7]
        gone = person_changed("grd-lincoln-000", version=2, change="DELETED")
        assert store.apply(gone)
        assert "grd-lincoln-000" not in {p["id"] for p in store.school_people(LINCOLN)}
        assert [v["change"] for v in store.versions("grd-lincoln-000")] == [
            "UPSERTED",
            "DELETED",
        ]
        answers = json.dumps([store.school_people(s) for s in (LINCOLN, WASHINGTON)])
        answers += json.dumps(store.versions("grd-lincoln-000"))
        assert not [c for c in seed_contacts() if c in answers]


def test_the_store_keeps_each_students_guardianship(database_url: str) -> None:
    parent = {"relationship": "parent", "has_custody": True, "may_pick_up": True}
    split = person_changed(
        "grd-split",
        version=4,
        student_ids=["stu-a", "stu-b"],
        guardianship=parent | {"restricted": True},
        student_guardianships=[
            {"student_id": "stu-a", **parent, "restricted": False},
            {"student_id": "stu-b", **parent, "restricted": True},
        ],
    )
    store = DirectoryStore(database_url, table_prefix=f"t{uuid.uuid4().hex[:6]}_")
    with store:
        assert store.apply(split)
        assert not store.apply(split)  # redelivered: no-op
        engine = sqlalchemy.create_engine(database_url)
        try:
            with engine.connect() as conn:
                current = conn.execute(
                    sqlalchemy.select(store.people.c.record).where(
                        store.people.c.person_id == "grd-split"
                    )
                ).scalar_one()
                versions = conn.execute(
                    sqlalchemy.select(store.versions_table.c.record).where(
                        store.versions_table.c.person_id == "grd-split"
                    )
                ).scalars()
                kept = [json.loads(v)["student_guardianships"] for v in versions]
        finally:
            engine.dispose()
    assert json.loads(current)["student_guardianships"] == split["student_guardianships"]
    assert kept == [split["student_guardianships"]]


def test_the_service_consumes_the_topic_and_serves_no_contact_detail(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    codec: Codec,
    directory_service: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with EventProducer(kafka, codec, catalog) as producer:
        publish_seed(producer, SEED, kafka=kafka, catalog=catalog, codec=codec)
        producer.publish(
            person_changed("grd-new", version=5, email="new.guardian@families.example.org")
        )

    def lincoln() -> list[dict[str, object]]:
        answer = directory_service.get(f"/api/v1/schools/{LINCOLN}/people")
        people: list[dict[str, object]] = answer.raise_for_status().json()["people"]
        return people

    found = wait_until(lambda: [p for p in [lincoln()] if len(p) == 61], what="61 people")[0]
    assert {"id", "kind", "name", "role", "version"} <= set(found[0])
    guardians = directory_service.get(
        f"/api/v1/schools/{LINCOLN}/people", params={"kind": "guardian"}
    ).json()["people"]
    assert len(guardians) == 11 and {g["kind"] for g in guardians} == {"GUARDIAN"}
    versions = directory_service.get("/api/v1/people/grd-new/versions").json()["versions"]
    assert [(v["version"], v["change"], v["roster_source"]) for v in versions] == [
        (5, "UPSERTED", "sis-north")
    ]
    assert directory_service.get("/api/v1/people/nobody/versions").status_code == 404
    assert (
        directory_service.get(f"/api/v1/schools/{LINCOLN}/people", params={"kind": "x"}).status_code
        == 400
    )
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        refused = httpx.get(
            f"{directory_service.base_url}/api/v1/schools/{LINCOLN}/people", headers=headers
        )
        assert refused.status_code == 401

    # The CLI lists through the API, ids whole.
    monkeypatch.setenv("SAFEHUB_DIRECTORY_URL", str(directory_service.base_url))
    monkeypatch.setenv("SAFEHUB_DIRECTORY_TOKEN", TOKEN)
    as_json = CliRunner().invoke(directory_cli, ["people", "--school", LINCOLN, "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert len(json.loads(as_json.stdout)) == 61  # stdout only: logs go to stderr
    table = CliRunner().invoke(directory_cli, ["people", "--school", LINCOLN, "--kind", "STAFF"])
    assert table.exit_code == 0 and "stf-lincoln-047" in table.output

    answers = (
        "".join(
            directory_service.get(path).text
            for path in [
                *(f"/api/v1/schools/{s}/people" for s in (LINCOLN, WASHINGTON, "sch-riverside-es")),
                *(f"/api/v1/people/{p['id']}/versions" for p in found),
            ]
        )
        + as_json.output
        + table.output
    )
    leaked = [c for c in [*seed_contacts(), "new.guardian@families.example.org"] if c in answers]
    assert not leaked, f"{len(leaked)} contact details served"


def test_an_invalid_person_is_dead_lettered_with_its_reason_and_the_next_one_recorded(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    codec: Codec,
    directory_service: httpx.Client,
) -> None:
    secret = "bad.version@families.example.org"
    with EventProducer(kafka, codec, catalog) as producer:
        producer.publish(person_changed("grd-bad", version=0, email=secret))
        producer.publish(person_changed("grd-after", version=1))

    wait_until(
        lambda: directory_service.get("/api/v1/people/grd-after/versions").status_code == 200,
        what="the person after the bad one recorded",
    )
    assert directory_service.get("/api/v1/people/grd-bad/versions").status_code == 404
    (letter,) = read_all(kafka, catalog.name(DEAD_LETTER))
    headers = {k: (v or b"").decode() for k, v in letter.headers() or []}
    reason = headers["safehub-dlq-reason"]
    assert "version is not a positive integer" in reason
    assert secret not in reason and "grd-bad" not in reason
