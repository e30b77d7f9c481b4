"""The directory service keeps the live directory's places and systems (DirectoryChanged on
``safehub.directory.v1``): every version in its store (SQLite and PostgreSQL), the newest
served, idempotent by event id and by entry and version, an older version never replacing a
newer one, deletions as tombstones; invalid changes dead-lettered with a reason naming the
field; the read API (and the CLI over it) never serves a reviewer's token hash."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, select, text
from typer.testing import CliRunner

from safehub.cli.directory import DirectoryClientError
from safehub.cli.directory import app as directory_cli
from safehub.kernel.bus import EventProducer
from safehub.kernel.codec import Codec, Event
from safehub.kernel.directory import Directory, Reviewer
from safehub.kernel.live_directory import (
    InvalidEntryError,
    change_event,
    directory_seed_events,
    entries_of,
    publish_directory_seed,
)
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import DEAD_LETTER, TopicCatalog
from services.directory.store import MIGRATIONS, DirectoryStore
from tests.directory.helpers import LINCOLN, SEED, TOKEN, WASHINGTON
from tests.support.kafka import read_all
from tests.support.waiting import wait_until

NORTH = "dist-north-isd"
SOUTH = "dist-south-isd"
RIVERSIDE = "sch-riverside-es"
#: The seed's entries by kind (25 in all).
SEED_KINDS = Counter(kind for kind, _, _ in entries_of(Directory.load(SEED)))


def _school(name: str, version: int, *, school: str = LINCOLN, **kwargs: Any) -> Event:
    """A DirectoryChanged of one seed school, renamed, at ``version``."""
    seed = Directory.load(SEED)
    renamed = seed.school(school).model_copy(update={"name": name})
    district = seed.district_of(school).id
    return change_event(seed, "SCHOOL", renamed, version=version, district_id=district, **kwargs)


def _token_hashes() -> set[str]:
    hashes = {r.token_sha256 for r in Directory.load(SEED).reviewers if r.token_sha256}
    assert len(hashes) == 4
    return hashes


def _store(database_url: str) -> DirectoryStore:
    return DirectoryStore(database_url, table_prefix=f"t{uuid.uuid4().hex[:6]}_")


def test_the_store_keeps_every_entry_version_and_serves_the_newest(database_url: str) -> None:
    seed = Directory.load(SEED)
    with _store(database_url) as store:
        events = directory_seed_events(SEED)
        assert all(store.apply_entry(e) for e in events)
        assert not any(store.apply_entry(e) for e in events)  # a replay: no-op
        now = store.entries()
        assert Counter(e["kind"] for e in now) == SEED_KINDS
        assert {(e["version"], e["change"], e["changed_by"]) for e in now} == {
            (1, "UPSERTED", "seed")
        }
        assert [len(store.entry_versions(e["kind"], e["id"])) for e in now] == [1] * 25
        assert [e["id"] for e in store.entries("SCHOOL", NORTH)] == [LINCOLN, WASHINGTON]
        assert [e["id"] for e in store.entries("REVIEWER", NORTH)] == [
            "rev-north-aar",
            "rev-north-counsel",
        ]
        [auditor] = [e for e in store.entries("REVIEWER") if e["id"] == "rev-state-auditor"]
        assert auditor["district_id"] is None  # state-wide
        assert {e["district_id"] for e in store.entries("CALL_TREE")} == {NORTH, SOUTH}

        # A change replaces; a newer one, then an older one arriving late: kept, not served.
        assert store.apply_entry(_school("Lincoln v2", 2, changed_by="ops-1"))
        assert store.apply_entry(_school("Lincoln v4", 4, changed_by="ops-2"))
        assert not store.apply_entry(_school("Lincoln v3 (late)", 3, changed_by="ops-1"))
        assert not store.apply_entry(_school("Lincoln v4 again", 4, changed_by="ops-3"))
        [lincoln] = [e for e in store.entries("SCHOOL", NORTH) if e["id"] == LINCOLN]
        assert (lincoln["version"], lincoln["changed_by"]) == (4, "ops-2")
        assert lincoln["entry"]["name"] == "Lincoln v4"
        assert lincoln["entry"]["district_id"] == NORTH  # the entry as the event carried it
        history = store.entry_versions("SCHOOL", LINCOLN)
        assert [(v["version"], v["entry"]["name"], v["changed_by"]) for v in history] == [
            (1, seed.school(LINCOLN).name, "seed"),
            (2, "Lincoln v2", "ops-1"),
            (3, "Lincoln v3 (late)", "ops-1"),
            (4, "Lincoln v4", "ops-2"),
        ]

        # A deletion is a tombstone: hidden by default, and an older upsert cannot undo it.
        client = seed.client("tips-app-north")
        assert client is not None
        assert store.apply_entry(
            change_event(seed, "CLIENT", client, version=3, changed_by="ops-1", change="DELETED")
        )
        assert not store.apply_entry(
            change_event(seed, "CLIENT", client, version=2, changed_by="ops-1")
        )
        assert "tips-app-north" not in {e["id"] for e in store.entries("CLIENT")}
        [tomb] = [
            e for e in store.entries("CLIENT", include_deleted=True) if e["id"] == "tips-app-north"
        ]
        assert (tomb["version"], tomb["change"], tomb["entry"], tomb["district_id"]) == (
            3,
            "DELETED",
            None,
            NORTH,
        )
        assert [(v["version"], v["change"]) for v in store.entry_versions("CLIENT", client.id)] == [
            (1, "UPSERTED"),
            (2, "UPSERTED"),
            (3, "DELETED"),
        ]
        assert store.entry_versions("CLIENT", "nobody") == []

        # Too long for the tables: invalid (a dead letter), not a store failure on PostgreSQL.
        with pytest.raises(InvalidEntryError, match="changed_by is longer than 200"):
            store.apply_entry(_school("Lincoln v5", 5, changed_by="o" * 201))

        # The token hash is stored as the event carried it, and never answered.
        with store._engine.connect() as conn:
            stored = conn.execute(select(store.entries_table.c.entry)).scalars().all()
        hashes = _token_hashes()
        assert hashes <= {h for row in stored if row for h in hashes if h in row}
        answers = json.dumps(store.entries(include_deleted=True))
        answers += json.dumps([store.entry_versions("REVIEWER", r.id) for r in seed.reviewers])
        assert "token_sha256" not in answers
        assert not [h for h in hashes if h in answers]


def test_a_store_from_before_the_entries_is_upgraded(database_url: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:6]}_"
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["version_table"] = f"{prefix}alembic_version"
    config.attributes["options"] = {"table_prefix": prefix}
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0001")  # the people tables only
        with DirectoryStore(database_url, table_prefix=prefix) as store:
            assert all(store.apply_entry(e) for e in directory_seed_events(SEED))
            assert len(store.entries()) == 25
        with engine.connect() as conn:
            version = conn.execute(text(f"SELECT version_num FROM {prefix}alembic_version"))
            assert version.scalar_one() == "0002"
    finally:
        engine.dispose()


def _entries(api: httpx.Client, **params: str) -> list[dict[str, Any]]:
    answer = api.get("/api/v1/directory/entries", params=params).raise_for_status()
    entries: list[dict[str, Any]] = answer.json()["entries"]
    return entries


def _versions(api: httpx.Client, kind: str, entry_id: str) -> list[dict[str, Any]]:
    answer = api.get(f"/api/v1/directory/entries/{kind}/{entry_id}/versions")
    if answer.status_code == 404:
        return []
    versions: list[dict[str, Any]] = answer.raise_for_status().json()["versions"]
    return versions


def _seeded(
    api: httpx.Client,
    producer: EventProducer,
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    codec: Codec,
) -> list[dict[str, Any]]:
    """Publish the seed and wait until the service serves its 25 entries."""
    report = publish_directory_seed(producer, SEED, kafka=kafka, catalog=catalog, codec=codec)
    assert report.published == 25
    return wait_until(
        lambda: [e for e in [_entries(api)] if len(e) == 25],
        what="the seed's 25 entries served",
    )[0]


def test_the_service_records_the_topic_and_serves_the_newest_versions(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    codec: Codec,
    producer: EventProducer,
    directory_service: httpx.Client,
) -> None:
    api = directory_service
    seed = Directory.load(SEED)
    landed = _seeded(api, producer, kafka, catalog, codec)
    assert Counter(e["kind"] for e in landed) == SEED_KINDS
    assert {(e["version"], e["change"], e["changed_by"]) for e in landed} == {
        (1, "UPSERTED", "seed")
    }
    schools = _entries(api, kind="school", district=NORTH)
    assert [(s["id"], s["entry"]["name"]) for s in schools] == [
        (LINCOLN, seed.school(LINCOLN).name),
        (WASHINGTON, seed.school(WASHINGTON).name),
    ]

    # Version 2 replaces; a replay of everything (seed and change) changes nothing; version 4
    # then a late version 3 (one partition, in this order): 3 is kept, 4 is served.
    v2 = _school("Lincoln v2", 2, changed_by="ops-1")
    producer.publish(v2)
    wait_until(lambda: len(_versions(api, "SCHOOL", LINCOLN)) == 2, what="version 2 recorded")
    for event in [*directory_seed_events(SEED), v2]:
        producer.publish(event)
    producer.publish(_school("Lincoln v4", 4, changed_by="ops-2"))
    producer.publish(_school("Lincoln v3 (late)", 3, changed_by="ops-1"))
    # Markers behind the replay on the other keys (south, state-wide).
    producer.publish(_school("Riverside v2", 2, school=RIVERSIDE, changed_by="ops-1"))
    auditor = seed.reviewer("rev-state-auditor")
    assert isinstance(auditor, Reviewer)
    producer.publish(change_event(seed, "REVIEWER", auditor, version=2, changed_by="ops-1"))
    wait_until(
        lambda: (
            len(_versions(api, "SCHOOL", LINCOLN)) == 4
            and len(_versions(api, "SCHOOL", RIVERSIDE)) == 2
            and len(_versions(api, "REVIEWER", auditor.id)) == 2
        ),
        what="the late version and the markers recorded",
    )
    history = _versions(api, "SCHOOL", LINCOLN)
    assert [(v["version"], v["change"], v["changed_by"], v["entry"]["name"]) for v in history] == [
        (1, "UPSERTED", "seed", seed.school(LINCOLN).name),
        (2, "UPSERTED", "ops-1", "Lincoln v2"),
        (3, "UPSERTED", "ops-1", "Lincoln v3 (late)"),
        (4, "UPSERTED", "ops-2", "Lincoln v4"),
    ]
    assert all(v["recorded_at"] for v in history)
    [lincoln] = [s for s in _entries(api, kind="SCHOOL") if s["id"] == LINCOLN]
    assert (lincoln["version"], lincoln["entry"]["name"]) == (4, "Lincoln v4")
    now = _entries(api)
    moved = {(e["kind"], e["id"]) for e in now if e["version"] != 1}
    assert moved == {("SCHOOL", LINCOLN), ("SCHOOL", RIVERSIDE), ("REVIEWER", auditor.id)}
    assert [len(_versions(api, e["kind"], e["id"])) for e in now if e["version"] == 1] == [1] * 22

    # A deletion is a tombstone, hidden unless asked for.
    producer.publish(
        change_event(
            seed,
            "SCHOOL",
            seed.school(WASHINGTON),
            version=2,
            changed_by="ops-1",
            district_id=NORTH,
            change="DELETED",
        )
    )
    wait_until(
        lambda: WASHINGTON not in {s["id"] for s in _entries(api, kind="SCHOOL")},
        what="the deleted school hidden",
    )
    [tomb] = [
        s for s in _entries(api, kind="SCHOOL", include_deleted="true") if s["id"] == WASHINGTON
    ]
    assert (tomb["version"], tomb["change"], tomb["entry"]) == (2, "DELETED", None)
    assert [v["change"] for v in _versions(api, "SCHOOL", WASHINGTON)] == ["UPSERTED", "DELETED"]

    # Errors name the bad field; unknown kinds and entries; the bearer token.
    for params, field in [
        ({"kind": "PLANET"}, "kind"),
        ({"include_deleted": "maybe"}, "include_deleted"),
        ({"district": " "}, "district"),
        ({"colour": "red"}, "colour"),
    ]:
        refused = api.get("/api/v1/directory/entries", params=params)
        assert refused.status_code == 400 and field in refused.json()["error"]
    unknown_kind = api.get(f"/api/v1/directory/entries/PLANET/{LINCOLN}/versions")
    assert unknown_kind.status_code == 400 and "kind" in unknown_kind.json()["error"]
    assert api.get("/api/v1/directory/entries/SCHOOL/sch-nowhere/versions").status_code == 404
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        refused = httpx.get(f"{api.base_url}/api/v1/directory/entries", headers=headers)
        assert refused.status_code == 401

    # No answer carries a reviewer's token hash.
    answers = "".join(
        api.get(path).text
        for path in [
            "/api/v1/directory/entries?include_deleted=true",
            "/api/v1/directory/entries?kind=REVIEWER",
            *(f"/api/v1/directory/entries/REVIEWER/{r.id}/versions" for r in seed.reviewers),
        ]
    )
    assert "rev-north-aar" in answers and "token_sha256" not in answers
    assert not [h for h in _token_hashes() if h in answers]


def test_an_invalid_directory_change_is_dead_lettered_with_its_reason_and_the_next_one_stored(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    producer: EventProducer,
    directory_service: httpx.Client,
) -> None:
    seed = Directory.load(SEED)
    secret = "f" * 64
    bad_reviewer = Reviewer(
        id="rev-bad", name="Bad Reviewer Name", district=NORTH, token_sha256=secret
    )
    bad_version = change_event(seed, "REVIEWER", bad_reviewer, version=1, changed_by="ops-1")
    bad_version["version"] = 0
    bad_id = _school("Mismatched School Name", 1, school=LINCOLN, changed_by="ops-1")
    bad_id["entry_id"] = "sch-mismatch"
    client = seed.client("tips-app-north")
    assert client is not None
    after = change_event(
        seed,
        "CLIENT",
        client.model_copy(update={"id": "tips-app-after"}),
        version=1,
        changed_by="ops-1",
    )
    for event in (bad_version, bad_id, after):
        producer.publish(event)

    wait_until(
        lambda: _versions(directory_service, "CLIENT", "tips-app-after"),
        what="the entry after the bad ones recorded",
    )
    assert _versions(directory_service, "REVIEWER", "rev-bad") == []
    assert _versions(directory_service, "SCHOOL", "sch-mismatch") == []
    letters = read_all(kafka, catalog.name(DEAD_LETTER))
    reasons = sorted(
        dict((k, (v or b"").decode()) for k, v in letter.headers() or [])["safehub-dlq-reason"]
        for letter in letters
    )
    assert len(reasons) == 2
    assert "invalid DirectoryChanged: school.id differs from entry_id" in reasons[0]
    assert "invalid DirectoryChanged: version is not a positive integer" in reasons[1]
    for value in (secret, "rev-bad", "Bad Reviewer Name", "sch-mismatch", "Mismatched"):
        assert not [r for r in reasons if value in r]


def test_the_cli_lists_entries_and_versions_through_the_api(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    codec: Codec,
    producer: EventProducer,
    directory_service: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _seeded(directory_service, producer, kafka, catalog, codec)
    producer.publish(_school("Lincoln v2", 2, changed_by="ops-7"))
    wait_until(lambda: len(_versions(directory_service, "SCHOOL", LINCOLN)) == 2, what="version 2")
    monkeypatch.setenv("SAFEHUB_DIRECTORY_URL", str(directory_service.base_url))
    monkeypatch.setenv("SAFEHUB_DIRECTORY_TOKEN", TOKEN)
    cli = CliRunner()

    table = cli.invoke(directory_cli, ["entries", "--kind", "SCHOOL", "--district", NORTH])
    assert table.exit_code == 0, table.output
    assert LINCOLN in table.output and WASHINGTON in table.output  # ids whole
    assert "Lincoln v2" in table.output and RIVERSIDE not in table.output
    as_json = cli.invoke(directory_cli, ["entries", "--kind", "SCHOOL", "--json"])
    assert as_json.exit_code == 0, as_json.output
    listed = json.loads(as_json.stdout)  # stdout only: logs go to stderr
    assert [(e["id"], e["version"]) for e in listed] == [
        (LINCOLN, 2),
        (RIVERSIDE, 1),
        (WASHINGTON, 1),
    ]

    versions = cli.invoke(directory_cli, ["versions", "SCHOOL", LINCOLN])
    assert versions.exit_code == 0, versions.output
    assert f"SCHOOL {LINCOLN}: 2 versions" in versions.output and "ops-7" in versions.output
    versions_json = cli.invoke(directory_cli, ["versions", "school", LINCOLN, "--json"])
    assert [(v["version"], v["changed_by"]) for v in json.loads(versions_json.stdout)] == [
        (1, "seed"),
        (2, "ops-7"),
    ]

    shown = ""
    for args in (
        ["entries", "--kind", "REVIEWER"],
        ["entries", "--kind", "REVIEWER", "--json"],
        ["versions", "REVIEWER", "rev-north-aar"],
        ["versions", "REVIEWER", "rev-state-auditor", "--json"],
    ):
        answer = cli.invoke(directory_cli, args)
        assert answer.exit_code == 0, answer.output
        shown += answer.output
    assert "rev-state-auditor" in shown and "(state-wide)" in shown
    assert not [h for h in _token_hashes() if h in shown]

    # Errors say what is wrong and what to do.
    missing = cli.invoke(directory_cli, ["versions", "SCHOOL", "sch-nowhere"])
    assert isinstance(missing.exception, DirectoryClientError)
    assert "404" in str(missing.exception)
    assert "safehub directory entries" in str(missing.exception)
    bad_kind = cli.invoke(directory_cli, ["entries", "--kind", "PLANET"])
    assert "kind must be one of" in str(bad_kind.exception)
    refused = cli.invoke(directory_cli, ["entries", "--kind", "SCHOOL", "--token", "wrong"])
    assert "SAFEHUB_DIRECTORY_TOKEN" in str(refused.exception)
