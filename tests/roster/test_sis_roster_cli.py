"""``safehub roster import`` / ``sync`` as processes on a real broker: the report (and its
``--json``), a refused package, a crash mid-import resumed without duplicates, and REST syncs
against the OneRoster simulator process (pages, authentication, deltas, resume)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from safehub.kernel.codec import Codec
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import TopicCatalog
from safehub.standards.oneroster import OneRosterPackage, Record
from tests.roster.roster_support import (
    DELTA,
    FULL,
    cli_env,
    dead_letters,
    duplicates,
    json_report,
    people,
    roster,
    run_cli,
    write_package,
)
from tests.support.oneroster import OneRosterSimProcess, csv_ids


@pytest.fixture
def state_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'roster-state.sqlite3'}"


def test_the_cli_prints_the_report_and_its_json(
    kafka: KafkaSettings, catalog: TopicCatalog, state_url: str
) -> None:
    env = cli_env(kafka, catalog, state_url)
    human = run_cli(["roster", "import", str(FULL), "--district", "dist-1"], env)
    assert human.returncode == 0, human.stderr[-3000:]
    assert "USER" in human.stdout and "academicSessions.csv" in human.stdout
    assert "added" in human.stdout and "rejected" in human.stdout

    again = run_cli(["roster", "import", str(FULL), "--district", "dist-1", "--json"], env)
    assert again.returncode == 0, again.stderr[-3000:]
    report = json_report(again)
    assert report["already_applied"] is True
    assert report["entities"]["USER"] == {
        "added": 0, "changed": 0, "removed": 0, "unchanged": 6, "rejected": 0
    }  # fmt: skip
    assert report["entities"]["ACADEMIC_SESSION"]["rejected"] == 1
    (error,) = [d for d in report["defects"] if d["severity"] == "error"]
    assert (error["file"], error["line"], error["column"]) == (
        "academicSessions.csv",
        4,
        "status",
    )
    # Never a value of a row: the users' e-mails and names are nowhere in the report.
    text = json.dumps(report)
    assert "myschool.com" not in text and "Thomas" not in text


def test_a_package_with_a_bad_manifest_is_refused_naming_it(
    kafka: KafkaSettings, catalog: TopicCatalog, state_url: str, tmp_path: Path
) -> None:
    package = write_package(tmp_path / "pkg", {"orgs.csv": []}, mode="bulk")
    manifest = package / "manifest.csv"
    manifest.write_text(
        manifest.read_text().replace("oneroster.version,1.1", "oneroster.version,9")
    )
    result = run_cli(
        ["roster", "import", str(package), "--district", "d"], cli_env(kafka, catalog, state_url)
    )
    assert result.returncode == 2
    assert "manifest.csv" in result.stderr and "oneroster.version" in result.stderr

    (package / "manifest.csv").write_text(
        manifest.read_text().replace("oneroster.version,9", "oneroster.version,1.1")
    )
    (package / "orgs.csv").write_text("sourcedId,nonsense\n")
    result = run_cli(
        ["roster", "import", str(package), "--district", "d"], cli_env(kafka, catalog, state_url)
    )
    assert result.returncode == 2
    assert "orgs.csv" in result.stderr and "nonsense" in result.stderr
    assert roster_is_empty(kafka, catalog)


def roster_is_empty(kafka: KafkaSettings, catalog: TopicCatalog) -> bool:
    from tests.support.kafka import read_all

    return not read_all(kafka, catalog.name("safehub.roster.v1"))


def _accepted(path: Path) -> int:
    return sum(isinstance(item, Record) for item in OneRosterPackage(path).records())


def test_a_crash_mid_import_then_a_rerun_completes_without_duplicates(
    kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, state_url: str
) -> None:
    crash = cli_env(
        kafka,
        catalog,
        state_url,
        SAFEHUB_SIS_ROSTER__CHECKPOINT_ROWS="4",
        SAFEHUB_SIS_ROSTER__CRASH_AFTER_ROWS="9",
    )
    first = run_cli(["roster", "import", str(FULL), "--district", "dist-1", "--json"], crash)
    assert first.returncode == 70, first.stderr[-3000:]
    partial = roster(kafka, codec, catalog)
    assert 0 < len(partial) < _accepted(FULL)

    env = cli_env(kafka, catalog, state_url, SAFEHUB_SIS_ROSTER__CHECKPOINT_ROWS="4")
    second = run_cli(["roster", "import", str(FULL), "--district", "dist-1", "--json"], env)
    assert second.returncode == 0, second.stderr[-3000:]
    report = json_report(second)
    assert report["resumed"] is True
    assert report["rows"] == 20  # every row counted once across both runs

    changes = roster(kafka, codec, catalog)
    assert not duplicates(changes)
    assert len(changes) == _accepted(FULL)
    persons = people(kafka, codec, catalog)
    assert not duplicates(persons) and len({p["person_id"] for p in persons}) == len(persons) == 6
    assert len(dead_letters(kafka, catalog)) == 1


# -- REST ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OneRosterSimProcess]:
    with OneRosterSimProcess(tmp_path_factory.mktemp("oneroster"), data=FULL) as process:
        yield process


def _rest_env(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    state_url: str,
    sim: OneRosterSimProcess,
    version: str,
    **extra: str,
) -> dict[str, str]:
    source: dict[str, Any] = {
        "name": "sis-rest",
        "district": "dist-1",
        "kind": "rest",
        "rest": {
            "base_url": sim.base_url,
            "version": version,
            "client_id": sim.key,
            "client_secret": sim.secret,
            "page_size": 2,
            "backoff_initial_s": 0.01,
            "backoff_max_s": 0.05,
        },
    }
    return cli_env(
        kafka, catalog, state_url, SAFEHUB_SIS_ROSTER__SOURCES=json.dumps([source]), **extra
    )


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_a_rest_sync_pages_authenticates_and_then_takes_only_the_changes(
    kafka: KafkaSettings,
    codec: Codec,
    catalog: TopicCatalog,
    state_url: str,
    sim: OneRosterSimProcess,
    version: str,
) -> None:
    sim.reset()
    env = _rest_env(kafka, catalog, state_url, sim, version)
    first = run_cli(["roster", "sync", "--source", "sis-rest", "--json"], env)
    assert first.returncode == 0, first.stderr[-3000:]
    report = json_report(first)
    assert report["entities"]["USER"]["added"] == len(csv_ids(FULL, "users")) == 6
    users = sim.requests("/users")
    assert [r["query"]["offset"] for r in users] == ["0", "2", "4"]
    assert all(r["status"] == 200 for r in users)
    if version == "1.2":
        assert sim.requests("/oauth/token")
        assert {r["auth"] for r in users} == {"Bearer"}
    else:
        assert {r["auth"] for r in users} == {"OAuth"}
    persons = {p["person_id"]: p for p in people(kafka, codec, catalog)}
    assert persons["usr-222-123456"]["kind"] == "STAFF"

    before = {e["envelope"]["event_id"] for e in roster(kafka, codec, catalog)}
    sim.touch(["usr-222-567891"], givenName="Annie")
    second = run_cli(["roster", "sync", "--source", "sis-rest", "--json"], env)
    assert second.returncode == 0, second.stderr[-3000:]
    delta = json_report(second)
    assert delta["entities"]["USER"]["changed"] == 1
    assert "filter" in sim.requests("/users")[-1]["query"]
    new = [e for e in roster(kafka, codec, catalog) if e["envelope"]["event_id"] not in before]
    assert [(e["entity"], e["sourced_id"]) for e in new] == [("USER", "usr-222-567891")]


def test_an_interrupted_rest_sync_resumes_from_its_cursor(
    kafka: KafkaSettings,
    codec: Codec,
    catalog: TopicCatalog,
    state_url: str,
    sim: OneRosterSimProcess,
) -> None:
    sim.reset()
    crash = _rest_env(
        kafka, catalog, state_url, sim, "1.2",
        SAFEHUB_SIS_ROSTER__CHECKPOINT_ROWS="3",
        SAFEHUB_SIS_ROSTER__CRASH_AFTER_ROWS="9",
    )  # fmt: skip
    first = run_cli(["roster", "sync", "--source", "sis-rest"], crash)
    assert first.returncode == 70, first.stderr[-3000:]
    fetched = len(sim.requests())
    env = _rest_env(kafka, catalog, state_url, sim, "1.2", SAFEHUB_SIS_ROSTER__CHECKPOINT_ROWS="3")
    second = run_cli(["roster", "sync", "--source", "sis-rest", "--json"], env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert json_report(second)["resumed"] is True
    later = [r for r in sim.requests()[fetched:] if "/ims/" in r["path"]]
    # The collection it was in is read on from the saved offset, not from the start.
    assert later[0]["query"]["offset"] != "0"
    changes = roster(kafka, codec, catalog)
    assert not duplicates(changes)
    assert len({(c["entity"], c["sourced_id"]) for c in changes}) == len(changes)
    assert not duplicates(people(kafka, codec, catalog))


def test_the_delta_sample_imports_through_the_cli(
    kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, state_url: str
) -> None:
    result = run_cli(
        ["roster", "import", str(DELTA), "--district", "dist-1", "--json"],
        cli_env(kafka, catalog, state_url),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json_report(result)["people"]["published"] == 1
