"""A full OneRoster REST sync is a complete listing: what this source delivered before and the
provider no longer lists is removed (RosterChange DELETED, PersonChanged DELETED, counted as
removed), exactly that and only when the listing was whole — never on a delta, never when a
page failed mid-sync (until the resumed sync completes), never from a collection with a
rejected object. The schedule makes a sync full every ``full_sync_interval_s``; the CLI's
``sync --full`` asks for one."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.sis_roster.importer import SyncReport
from connectors.sis_roster.lease import holder_name
from connectors.sis_roster.rest_client import OneRosterRestError
from connectors.sis_roster.service import full_sync_due, scheduled_sync, sync_source
from connectors.sis_roster.settings import RosterSource, SisRosterConfig
from connectors.sis_roster.state import RosterState
from safehub.kernel.bus import EventProducer
from safehub.kernel.codec import Codec
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import TopicCatalog
from tests.roster.roster_support import FULL, cli_env, json_report, people, roster, run_cli
from tests.support.oneroster import OneRosterSimProcess, csv_ids

GONE = "usr-222-567891"  # Anna Brown, a student the SIS deletes outright
WITHDRAWN = "enr-s-222-12345-987655"  # a student's enrolment in Introduction to Physics


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OneRosterSimProcess]:
    with OneRosterSimProcess(tmp_path_factory.mktemp("oneroster"), data=FULL) as process:
        yield process


def without(root: Path, rows: dict[str, list[str]]) -> Path:
    """The sample set with these rows (file → sourcedIds) gone: hard deletes in the SIS."""
    shutil.copytree(FULL, root)
    for name, ids in rows.items():
        path = root / name
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if not line.startswith(tuple(i + "," for i in ids))]
        assert len(kept) == len(lines) - len(ids)
        path.write_text("".join(kept), encoding="utf-8")
    return root


def without_user(root: Path, user: str) -> Path:
    """The sample set with one user's row gone."""
    return without(root, {"users.csv": [user]})


class RestHub:
    """Syncs of one REST source on the test's topics and state database."""

    def __init__(
        self,
        kafka: KafkaSettings,
        codec: Codec,
        catalog: TopicCatalog,
        state_url: str,
        sim: OneRosterSimProcess,
        **rest: Any,
    ) -> None:
        self.kafka, self.codec, self.catalog = kafka, codec, catalog
        self.config = SisRosterConfig(state_url=state_url, checkpoint_rows=2)
        self.source = RosterSource(
            name="sis-rest",
            district="dist-1",
            kind="rest",
            rest=sim.settings("1.2", page_size=2, **rest),
        )
        self.producer = EventProducer(kafka, codec, catalog, client_id="roster-test")
        self.state = RosterState(state_url)

    def sync(self, *, full: bool = False, on_progress: Any = None) -> SyncReport:
        (report,) = sync_source(
            self.config,
            self.source,
            self.producer,
            self.catalog,
            self.state,
            holder=holder_name("test sync"),
            full=full,
            on_progress=on_progress,
        )
        return report

    def roster_ids(self) -> set[str]:
        return {e["envelope"]["event_id"] for e in roster(self.kafka, self.codec, self.catalog)}

    def people_ids(self) -> set[str]:
        return {e["envelope"]["event_id"] for e in people(self.kafka, self.codec, self.catalog)}

    def new_roster(self, before: set[str]) -> list[tuple[str, str, str]]:
        found = roster(self.kafka, self.codec, self.catalog)
        return sorted(
            (e["entity"], e["sourced_id"], e["change"])
            for e in found
            if e["envelope"]["event_id"] not in before
        )

    def new_people(self, before: set[str]) -> list[tuple[str, str, str]]:
        found = people(self.kafka, self.codec, self.catalog)
        return sorted(
            (e["person_id"], e["kind"], e["change"])
            for e in found
            if e["envelope"]["event_id"] not in before
        )

    def close(self) -> None:
        self.producer.close()
        self.state.close()


@pytest.fixture
def hub(
    kafka: KafkaSettings,
    codec: Codec,
    catalog: TopicCatalog,
    tmp_path: Path,
    sim: OneRosterSimProcess,
) -> Iterator[RestHub]:
    sim.reset()
    made = RestHub(
        kafka, codec, catalog, f"sqlite:///{tmp_path / 'state.sqlite3'}", sim, max_attempts=2
    )
    yield made
    made.close()


def test_a_full_sync_removes_exactly_the_user_the_provider_no_longer_lists(
    hub: RestHub, sim: OneRosterSimProcess, tmp_path: Path
) -> None:
    first = hub.sync()
    assert first.entities["USER"].added == len(csv_ids(FULL, "users")) == 6
    # (The sample's own ``tobedeleted`` records count as removed already; no user is.)
    assert first.entities["USER"].removed == 0
    sim.post("/_sim/load", {"data": str(without_user(tmp_path / "sis-now", GONE))})
    roster_before, people_before = hub.roster_ids(), hub.people_ids()

    # A delta cannot see a hard delete: it removes nothing.
    delta = hub.sync()
    assert "filter" in sim.requests("/users")[-1]["query"]
    assert all(c.removed == 0 for c in delta.entities.values())
    assert hub.new_roster(roster_before) == [] and hub.new_people(people_before) == []

    full = hub.sync(full=True)

    assert "filter" not in sim.requests("/users")[-1]["query"]
    assert hub.new_roster(roster_before) == [("USER", GONE, "DELETED")]
    assert hub.new_people(people_before) == [(GONE, "STUDENT", "DELETED")]
    assert full.entities["USER"].removed == 1 and full.entities["USER"].unchanged == 5
    assert sum(c.removed for c in full.entities.values()) == 1
    assert full.people["deleted"] == 1
    # Nothing more the next time round.
    roster_after, people_after = hub.roster_ids(), hub.people_ids()
    again = hub.sync(full=True)
    assert sum(c.removed for c in again.entities.values()) == 0
    assert hub.new_roster(roster_after) == [] and hub.new_people(people_after) == []


def test_a_page_failing_mid_sync_removes_nothing_until_the_resumed_sync_completes(
    hub: RestHub, sim: OneRosterSimProcess, tmp_path: Path
) -> None:
    hub.sync()
    sim.post("/_sim/load", {"data": str(without_user(tmp_path / "sis-now", GONE))})
    roster_before, people_before = hub.roster_ids(), hub.people_ids()
    users_before = len(sim.requests("/users"))  # the log keeps the first sync's requests
    failed = False

    def fail_the_second_users_page(rows: int, total: int | None) -> None:
        nonlocal failed
        if not failed and len(sim.requests("/users")) == users_before + 1:
            failed = True
            sim.fail(10, status=503)  # more than the client's attempts

    with pytest.raises(OneRosterRestError) as caught:
        hub.sync(full=True, on_progress=fail_the_second_users_page)
    assert caught.value.status == 503 and failed
    assert sim.requests("/users")[-1]["status"] == 503
    # Not a thing removed: the listing of users was cut short.
    assert hub.new_roster(roster_before) == [] and hub.new_people(people_before) == []

    sim.fail(0)
    users_failed = len(sim.requests("/users"))
    resumed = hub.sync(full=True)
    assert resumed.resumed
    # It went on from the users page that failed (a full listing still: no filter).
    resumed_users = sim.requests("/users")[users_failed:]
    assert resumed_users[0]["query"]["offset"] == "2"
    assert all("filter" not in r["query"] for r in resumed_users)
    assert hub.new_roster(roster_before) == [("USER", GONE, "DELETED")]
    assert hub.new_people(people_before) == [(GONE, "STUDENT", "DELETED")]
    assert resumed.entities["USER"].removed == 1


def test_a_rejected_object_keeps_its_collection_from_removing(
    hub: RestHub, sim: OneRosterSimProcess, tmp_path: Path
) -> None:
    hub.sync()
    # The SIS deletes a user and an enrolment; another user's row now has a status the
    # binding does not permit, so the users listing is not whole (the enrolments' is).
    root = without(tmp_path / "sis-now", {"users.csv": [GONE], "enrollments.csv": [WITHDRAWN]})
    users = root / "users.csv"
    users.write_text(
        users.read_text(encoding="utf-8").replace(
            "usr-222-987654,active,", "usr-222-987654,retired,"
        ),
        encoding="utf-8",
    )
    sim.post("/_sim/load", {"data": str(root)})
    roster_before, people_before = hub.roster_ids(), hub.people_ids()

    report = hub.sync(full=True)

    assert report.entities["USER"].rejected == 1
    assert report.entities["USER"].removed == 0
    assert report.entities["ENROLLMENT"].removed == 1
    assert hub.new_roster(roster_before) == [("ENROLLMENT", WITHDRAWN, "DELETED")]
    assert GONE not in {person for person, _, _ in hub.new_people(people_before)}


def test_the_schedule_makes_every_full_sync_interval_a_full_sync(
    hub: RestHub, sim: OneRosterSimProcess, tmp_path: Path
) -> None:
    def scheduled(interval: float | None) -> SyncReport:
        source = hub.source.model_copy(update={"full_sync_interval_s": interval})
        reports = scheduled_sync(hub.config, source, hub.producer, hub.catalog, hub.state)
        assert reports is not None
        return reports[0]

    assert full_sync_due(hub.source, hub.state)  # none on record yet
    scheduled(3600)
    last = hub.state.last_full_sync(hub.source.name)
    assert last is not None
    hourly = hub.source.model_copy(update={"full_sync_interval_s": 3600})
    never = hub.source.model_copy(update={"full_sync_interval_s": None})
    assert not full_sync_due(hourly, hub.state, now=last + timedelta(seconds=3599))
    assert full_sync_due(hourly, hub.state, now=last + timedelta(seconds=3600))
    assert not full_sync_due(never, hub.state, now=last + timedelta(days=3650))

    sim.post("/_sim/load", {"data": str(without_user(tmp_path / "sis-now", GONE))})
    delta = scheduled(3600)  # an hour has not passed: a delta, which cannot see the delete
    assert "filter" in sim.requests("/users")[-1]["query"]
    assert delta.entities.get("USER") is None or delta.entities["USER"].removed == 0
    assert hub.state.last_full_sync(hub.source.name) == last

    full = scheduled(1e-6)  # due: the full listing removes the user

    assert "filter" not in sim.requests("/users")[-1]["query"]
    assert full.entities["USER"].removed == 1
    later = hub.state.last_full_sync(hub.source.name)
    assert later is not None and later > last


def test_the_cli_syncs_in_full_with_full(
    kafka: KafkaSettings, catalog: TopicCatalog, sim: OneRosterSimProcess, tmp_path: Path
) -> None:
    sim.reset()
    source = {
        "name": "sis-rest",
        "district": "dist-1",
        "kind": "rest",
        "rest": {
            "base_url": sim.base_url,
            "version": "1.2",
            "client_id": sim.key,
            "client_secret": sim.secret,
            "page_size": 2,
        },
    }
    env = cli_env(
        kafka,
        catalog,
        f"sqlite:///{tmp_path / 'roster-state.sqlite3'}",
        SAFEHUB_SIS_ROSTER__SOURCES=json.dumps([source]),
    )
    sync = ["roster", "sync", "--source", "sis-rest", "--json"]
    first = run_cli(sync, env)
    assert first.returncode == 0, first.stderr[-3000:]
    sim.post("/_sim/load", {"data": str(without_user(tmp_path / "sis-now", GONE))})

    delta = run_cli(sync, env)
    full = run_cli([*sync, "--full"], env)

    assert delta.returncode == 0, delta.stderr[-3000:]
    assert json_report(delta)["entities"].get("USER", {}).get("removed", 0) == 0
    assert full.returncode == 0, full.stderr[-3000:]
    assert json_report(full)["entities"]["USER"]["removed"] == 1
    assert "filter" not in sim.requests("/users")[-1]["query"]
