"""The sis_roster connector's imports on a real broker: OneRoster packages and the custody
feed become RosterChange and PersonChanged events; bad rows are reported and dead-lettered;
a re-import publishes nothing; a delta after a bulk gives exactly its changes."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from connectors.sis_roster.custody import CustodyRow
from connectors.sis_roster.importer import Importer, SyncReport
from connectors.sis_roster.people import apply_custody
from connectors.sis_roster.people import person_fields as roster_person_fields
from connectors.sis_roster.settings import RosterSource, SisRosterConfig
from connectors.sis_roster.state import RosterState
from safehub.kernel.bus import EventProducer
from safehub.kernel.codec import Codec
from safehub.kernel.envelope import new_event
from safehub.kernel.live_people import LivePeople
from safehub.kernel.people import People
from safehub.kernel.person_events import person_fields
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import TopicCatalog
from safehub.standards.oneroster import OneRosterPackage, OneRosterPackageError, Severity
from tests.roster.roster_support import (
    DELTA,
    FULL,
    MINIMAL,
    dead_letters,
    duplicates,
    headers_of,
    people,
    roster,
    write_package,
)
from tests.support.waiting import wait_until

CONTACT_COLUMNS = {"email", "phone", "sms", "username", "password"}


class Hub:
    """An importer of one source on the test's topics and state database."""

    def __init__(
        self, kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, url: str, **source: Any
    ) -> None:
        self.kafka, self.codec, self.catalog = kafka, codec, catalog
        self.config = SisRosterConfig(state_url=url, checkpoint_rows=3)
        self.source = RosterSource(
            **{"name": "sis", "district": "dist-1", "path": Path("."), **source}
        )
        self.producer = EventProducer(kafka, codec, catalog, client_id="roster-test")
        self.state = RosterState(url)

    def importer(self) -> Importer:
        return Importer(self.config, self.source, self.producer, self.catalog, self.state)

    def package(self, path: Path) -> SyncReport:
        return self.importer().import_package(path)

    def custody(self, path: Path) -> SyncReport:
        return self.importer().import_custody(path)

    def roster(self) -> list[Any]:
        return roster(self.kafka, self.codec, self.catalog)

    def people(self) -> list[Any]:
        return people(self.kafka, self.codec, self.catalog)

    def close(self) -> None:
        self.producer.close()
        self.state.close()


@pytest.fixture
def hub(kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, tmp_path: Path) -> Any:
    made = Hub(kafka, codec, catalog, f"sqlite:///{tmp_path / 'roster.sqlite3'}")
    yield made
    made.close()


@pytest.mark.parametrize("sample", [DELTA, MINIMAL, FULL], ids=lambda p: p.name)
def test_the_sample_sets_import_with_their_defects_reported_and_dead_lettered(
    hub: Hub, sample: Path
) -> None:
    expected = OneRosterPackage(sample)
    accepted = sum(
        1 for item in expected.records() if not hasattr(item, "severity")
    )  # records, not defects
    errors = [d for d in expected.defects if d.severity is Severity.ERROR]

    report = hub.package(sample)

    assert report.defect_count == len(expected.defects)
    assert {(d["file"], d["line"], d["column"]) for d in report.defects} == {
        (d.file, d.line, d.column) for d in expected.defects
    }
    assert sum(c.rejected for c in report.entities.values()) == len(errors)
    changes = hub.roster()
    assert len(changes) == accepted and not duplicates(changes)
    for change in changes:  # contact details never reach the timeline's topic
        assert not CONTACT_COLUMNS & set(change["attributes"])
    letters = dead_letters(hub.kafka, hub.catalog)
    assert len(letters) == len(errors) == report.dead_lettered
    for letter, defect in zip(letters, errors, strict=True):
        h = headers_of(letter)
        assert (h["safehub-dlq-file"], h["safehub-dlq-line"]) == (defect.file, str(defect.line))
        assert h["safehub-dlq-column"] == (defect.column or "")
        assert defect.reason in h["safehub-dlq-reason"]
        assert b"Session Title" not in letter.value()  # the row's values never travel
    persons = {p["person_id"]: p for p in hub.people()}
    if sample == FULL:
        assert persons["usr-222-123456"]["kind"] == "STAFF"
        assert persons["usr-222-123456"]["staff_role"] == "teacher"
        assert persons["usr-222-123456"]["contact"]["phone"] == "+16037778888"  # sms first
        assert persons["usr-222-123456"]["class_ids"] == ["cls-222-123456", "cls-222-123478"]
        student = persons["usr-222-1234561232"]
        assert (student["kind"], student["grade"]) == ("STUDENT", "12")
        assert student["school_ids"] == ["org-sch-222-456"] and student["contact"] is None
        # Enrolled in a class now deleted and one still running: still a student.
        assert student["class_ids"] == ["cls-222-123456", "cls-222-123478"]
        parent = persons["usr-222-1234561"]
        assert (parent["kind"], parent["student_ids"]) == ("GUARDIAN", ["usr-222-66778899"])
    if sample == DELTA:  # 1.2: the role comes from roles.csv
        assert persons["USER_0"]["kind"] == "STUDENT"
        assert persons["USER_0"]["class_ids"] == ["CLASS_001"]


def test_reimporting_the_same_package_publishes_nothing_new(hub: Hub) -> None:
    first = hub.package(FULL)
    changes, persons = hub.roster(), hub.people()
    letters = dead_letters(hub.kafka, hub.catalog)

    again = hub.package(FULL)

    assert again.already_applied and not first.already_applied
    assert all(c.added == c.changed == c.removed == 0 for c in again.entities.values())
    assert again.people["published"] == 0
    assert again.defect_count == first.defect_count  # still reported
    assert len(hub.roster()) == len(changes)
    assert len(hub.people()) == len(persons)
    assert len(dead_letters(hub.kafka, hub.catalog)) == len(letters)


def _ids(found: list[Any]) -> set[str]:
    return {e["envelope"]["event_id"] for e in found}


def _new(found: list[Any], before: set[str]) -> list[Any]:
    return [e for e in found if e["envelope"]["event_id"] not in before]


def _user(sid: str, role: str, org: str, **extra: str) -> dict[str, str]:
    return {
        "sourcedId": sid,
        "enabledUser": "true",
        "orgSourcedIds": org,
        "role": role,
        "username": f"u-{sid}",
        "givenName": f"Given{sid}",
        "familyName": "Family",
        **extra,
    }


def _enrol(
    sid: str, user: str, cls: str, school: str, role: str = "student", **extra: str
) -> dict[str, str]:
    return {
        "sourcedId": sid,
        "classSourcedId": cls,
        "schoolSourcedId": school,
        "userSourcedId": user,
        "role": role,
        **extra,
    }


ORGS = [
    {"sourcedId": "sch-a", "name": "A", "type": "school"},
    {"sourcedId": "sch-b", "name": "B", "type": "school"},
]
CLASSES = [
    {
        "sourcedId": "c-a",
        "title": "Math",
        "courseSourcedId": "crs-1",
        "classType": "scheduled",
        "schoolSourcedId": "sch-a",
        "termSourcedIds": "t1",
    },
    {
        "sourcedId": "c-b",
        "title": "Art",
        "courseSourcedId": "crs-1",
        "classType": "scheduled",
        "schoolSourcedId": "sch-b",
        "termSourcedIds": "t1",
    },
]
NOW = "2026-01-10T08:00:00.000Z"
LATER = "2026-02-01T08:00:00.000Z"


def _bulk(root: Path) -> Path:
    users = [
        _user("s1", "student", "sch-a", grades="05", agentSourcedIds="p1"),
        _user("s2", "student", "sch-a", grades="06"),
        _user("s3", "student", "sch-a", grades="07"),
        _user("t1", "teacher", "sch-a", email="t1@school.example", phone="5550001111"),
        _user("p1", "parent", "sch-a", agentSourcedIds="s1", sms="+15550002222"),
    ]
    enrolments = [
        _enrol("e1", "s1", "c-a", "sch-a"),
        _enrol("e2", "s2", "c-a", "sch-a"),
        _enrol("e3", "s3", "c-a", "sch-a"),
        _enrol("e4", "t1", "c-a", "sch-a", role="teacher"),
    ]
    return write_package(
        root,
        {
            "orgs.csv": ORGS,
            "classes.csv": CLASSES,
            "users.csv": users,
            "enrollments.csv": enrolments,
        },
        mode="bulk",
    )


def _delta(root: Path) -> Path:
    def d(row: dict[str, str], status: str = "active") -> dict[str, str]:
        return {**row, "status": status, "dateLastModified": LATER}

    users = [
        d(_user("s1", "student", "sch-b", grades="05", agentSourcedIds="p1")),  # moved school
        d(_user("s2", "student", "sch-a", grades="06"), "tobedeleted"),  # left
        d(_user("p2", "guardian", "sch-a", agentSourcedIds="s3")),  # a new guardian
    ]
    enrolments = [
        d(_enrol("e1", "s1", "c-a", "sch-a"), "tobedeleted"),
        d(_enrol("e5", "s1", "c-b", "sch-b")),
        d(_enrol("e3", "s3", "c-a", "sch-a"), "tobedeleted"),  # withdrawn from everything
    ]
    return write_package(root, {"users.csv": users, "enrollments.csv": enrolments}, mode="delta")


def test_a_delta_after_a_bulk_gives_exactly_the_changes(hub: Hub, tmp_path: Path) -> None:
    bulk = hub.package(_bulk(tmp_path / "bulk"))
    assert bulk.entities["USER"].added == 5 and bulk.entities["ENROLLMENT"].added == 4
    before_changes, before_people = _ids(hub.roster()), _ids(hub.people())
    assert len(before_people) == 5

    delta = hub.package(_delta(tmp_path / "delta"))

    changes = _new(hub.roster(), before_changes)
    assert sorted((c["entity"], c["sourced_id"], c["change"]) for c in changes) == [
        ("ENROLLMENT", "e1", "DELETED"),
        ("ENROLLMENT", "e3", "DELETED"),
        ("ENROLLMENT", "e5", "UPSERTED"),
        ("USER", "p2", "UPSERTED"),
        ("USER", "s1", "UPSERTED"),
        ("USER", "s2", "DELETED"),
    ]
    assert (delta.entities["USER"].added, delta.entities["USER"].changed) == (1, 1)
    assert delta.entities["USER"].removed == 1 and delta.entities["ENROLLMENT"].removed == 2
    persons = {p["person_id"]: p for p in _new(hub.people(), before_people)}
    # s1 moved (its guardian's school with it), s2 deleted, s3 withdrawn, p2 new: nobody else.
    assert set(persons) == {"s1", "s2", "s3", "p1", "p2"}
    assert persons["s1"]["school_ids"] == ["sch-b"] and persons["s1"]["class_ids"] == ["c-b"]
    assert persons["p1"]["school_ids"] == ["sch-b"]
    assert persons["s2"]["change"] == "DELETED"
    assert persons["s3"]["change"] == "DELETED"
    assert persons["p2"]["kind"] == "GUARDIAN" and persons["p2"]["student_ids"] == ["s3"]
    later_us = 1769932800000000  # 2026-02-01T08:00Z: the version is the SIS's time
    assert persons["s1"]["version"] == later_us
    assert persons["s1"]["envelope"]["tenant"]["school"] == "sch-b"


CUSTODY_HEADER = (
    "student_sourced_id,guardian_sourced_id,guardian_name,relationship,has_custody,"
    "may_pick_up,court_order_restriction,email,phone,language\n"
)


def test_a_custody_feed_row_gives_the_guardian_its_guardianship(hub: Hub, tmp_path: Path) -> None:
    hub.package(_bulk(tmp_path / "bulk"))
    before = _ids(hub.people())
    feed = tmp_path / "custody.csv"
    feed.write_text(
        CUSTODY_HEADER
        + "s1,p1,,parent,true,true,false,p1@home.example,555-000-3333,es\n"
        + "s2,x9,Pat Doe,grandparent,false,false,true,,,en\n"
        + "s3,p1,,parent,maybe,true,false,,,en\n",
        encoding="utf-8",
    )

    report = hub.custody(feed)

    assert report.entities["CUSTODY"].added == 2 and report.entities["CUSTODY"].rejected == 1
    assert [(d["file"], d["line"], d["column"]) for d in report.defects] == [
        ("custody.csv", 4, "has_custody")
    ]
    persons = {p["person_id"]: p for p in _new(hub.people(), before)}
    assert persons["p1"]["guardianship"] == {
        "relationship": "parent",
        "has_custody": True,
        "may_pick_up": True,
        "restricted": False,
    }
    assert persons["p1"]["contact"]["phone"] == "+15550003333"
    assert persons["p1"]["contact"]["language"] == "es"
    assert persons["p1"]["version"] > 0
    restricted = persons["x9"]  # an emergency contact the roster does not list
    assert restricted["kind"] == "GUARDIAN" and restricted["student_ids"] == ["s2"]
    assert restricted["guardianship"]["restricted"] is True
    assert restricted["school_ids"] == ["sch-a"]
    (letter,) = dead_letters(hub.kafka, hub.catalog)
    assert headers_of(letter)["safehub-dlq-line"] == "4"
    assert b"maybe" not in letter.value()

    again = hub.custody(feed)
    assert again.people["published"] == 0


def _guardianship(
    relationship: str, custody: bool, pickup: bool, restricted: bool
) -> dict[str, Any]:
    return {
        "relationship": relationship,
        "has_custody": custody,
        "may_pick_up": pickup,
        "restricted": restricted,
    }


def test_a_court_order_for_one_child_restricts_the_guardian_for_that_child_only(
    hub: Hub, tmp_path: Path
) -> None:
    hub.package(_bulk(tmp_path / "bulk"))
    before = _ids(hub.people())
    feed = tmp_path / "custody.csv"
    feed.write_text(
        CUSTODY_HEADER
        + "s1,p1,,parent,true,true,false,,,en\n"  # their child: custody
        + "s3,p1,,step-parent,false,false,true,,,en\n"  # a protective order for this one
        + "s2,p1,,relative,false,true,false,,,en\n"  # may collect, no custody
        + "s2,x9,Pat Doe,grandparent,false,true,false,,,en\n"
        + "s2,x9,Pat Doe,grandparent,false,false,true,,,en\n",  # same pair: restriction holds
        encoding="utf-8",
    )

    report = hub.custody(feed)

    assert report.entities["CUSTODY"].rejected == 0
    published = _new(hub.people(), before)
    persons = {p["person_id"]: p for p in published}
    p1 = persons["p1"]
    assert p1["student_ids"] == ["s1", "s2", "s3"]
    assert p1["student_guardianships"] == [
        {"student_id": "s1", **_guardianship("parent", True, True, False)},
        {"student_id": "s2", **_guardianship("relative", False, True, False)},
        {"student_id": "s3", **_guardianship("step-parent", False, False, True)},
    ]
    # Old readers still get one guardianship: the most restrictive summary, as before.
    assert p1["guardianship"] == _guardianship("parent", True, True, True)
    assert persons["x9"]["student_guardianships"] == [
        {"student_id": "s2", **_guardianship("grandparent", False, True, True)}
    ]

    live_people = LivePeople(People(), hub.kafka, hub.catalog, hub.codec, name="test-roster")
    with live_people.start() as live:
        assert live.wait_ready(30)
        people = live.current()
        assert people.may_release_to("p1", "s1") and people.may_release_to("p1", "s2")
        assert not people.may_release_to("p1", "s3")  # the court order, for s3 only
        assert not people.may_release_to("x9", "s2")
        assert not people.may_release_to("x9", "s1")  # not theirs
        guardian = people.guardian("p1")
        assert guardian is not None and guardian.for_student("s3") == people.guardianship(
            "p1", "s3"
        )

        # A replay changes nothing: the import publishes nothing, the events replayed to the
        # topic are ignored (older or equal versions).
        again = hub.custody(feed)
        assert again.already_applied and again.people["published"] == 0
        snapshot, version = live.current(), live.version
        for event in published:
            hub.producer.publish(event)
        marker = person_fields(
            "marker", kind="GUARDIAN", version=1, roster_source="test", school_ids=["sch-a"]
        )
        hub.producer.publish(
            new_event(
                "PersonChanged",
                source="test",
                tenant=p1["envelope"]["tenant"],
                classification=("INTERNAL", "STUDENT_RECORD"),
                payload=marker,
            )
        )
        wait_until(lambda: live.version_of("marker") == 1, what="the marker")
        assert live.version == version + 1 and live.ignored >= len(published)
        assert not live.current().may_release_to("p1", "s3")
        assert live.current().guardian("p1") == snapshot.guardian("p1")


def test_custody_pieces_kept_before_per_student_guardianships_hold_for_every_student() -> None:
    old = {  # the pieces of a guardian as the connector kept them before
        "user": {"role": "parent", "agents": [], "orgs": ["sch-a"]},
        "custody": {
            "feed": "custody:old",
            "students": ["s1", "s2"],
            **_guardianship("parent", True, True, True),
        },
    }
    fields = roster_person_fields("p1", old, {}, {})
    assert fields is not None
    assert fields["guardianship"] == _guardianship("parent", True, True, True)
    assert fields["student_guardianships"] == [
        {"student_id": s, **_guardianship("parent", True, True, True)} for s in ("s1", "s2")
    ]
    # A later row of the same feed sets its own pair only.
    row = CustodyRow(3, "s3", "p1", None, "parent", True, True, False, None, None, "en")
    apply_custody(old, row, "custody:old")
    fields = roster_person_fields("p1", old, {}, {})
    assert fields is not None
    assert [g["restricted"] for g in fields["student_guardianships"]] == [True, True, False]


def test_the_state_gives_the_same_answers_on_every_store(
    kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, database_url: str
) -> None:
    # A source name of its own: a PostgreSQL database outlives the test.
    made = Hub(kafka, codec, catalog, database_url, name=f"sis-{uuid.uuid4().hex[:8]}")
    try:
        first = made.package(FULL)
        again = made.package(FULL)
    finally:
        made.close()
    assert first.entities["USER"].added == 6 and first.people["published"] == 6
    assert again.already_applied and again.people["published"] == 0
    assert again.entities["USER"].unchanged == 6


def test_a_custody_feed_with_a_wrong_header_is_refused_naming_the_columns(
    hub: Hub, tmp_path: Path
) -> None:
    feed = tmp_path / "custody.csv"
    feed.write_text("student_sourced_id,guardian_sourced_id,relationship\ns1,p1,parent\n")
    with pytest.raises(OneRosterPackageError, match="has_custody") as info:
        hub.custody(feed)
    assert "custody.csv" in str(info.value)


def test_a_bulk_package_removes_what_it_no_longer_lists(hub: Hub, tmp_path: Path) -> None:
    first = _bulk(tmp_path / "bulk")
    hub.package(first)
    before_changes, before_people = _ids(hub.roster()), _ids(hub.people())
    second = tmp_path / "bulk2"
    shutil.copytree(first, second)
    for name, gone in (("users.csv", "s3,"), ("enrollments.csv", "e3,")):
        lines = (second / name).read_text().splitlines(keepends=True)
        (second / name).write_text("".join(x for x in lines if not x.startswith(gone)))

    report = hub.package(second)

    changes = _new(hub.roster(), before_changes)
    assert sorted((c["entity"], c["sourced_id"], c["change"]) for c in changes) == [
        ("ENROLLMENT", "e3", "DELETED"),
        ("USER", "s3", "DELETED"),
    ]
    assert report.entities["USER"].removed == 1 and report.entities["USER"].unchanged == 4
    (gone,) = _new(hub.people(), before_people)
    assert (gone["person_id"], gone["change"]) == ("s3", "DELETED")
    # The same package again: nothing more.
    assert hub.package(second).already_applied
    assert len(hub.roster()) == len(before_changes) + 2
