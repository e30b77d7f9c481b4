"""Roster import end to end: a generated district of 50,000 users through the sis_roster
importer onto the broker, next to a raw confluent-kafka baseline in the same run.

Usage: ``python bench/roster.py [--json] [--users 50000]``

The district: 10 schools, 5% staff (teachers, administrators, aides, proctors: the 1.1 roles), 60%
students (two class enrolments each), 35% guardians (each of one or two students), as a
OneRoster 1.1 bulk CSV package. *bulk*: package → RosterChange and PersonChanged events,
every one confirmed by the broker, state checkpointed (SQLite). *raw*: a plain idempotent
confluent-kafka producer sending the same number of records of the same mean size,
pre-encoded, until flushed. *delta*: a delta package changing 1% of the users (half of them
moving school), imported after the bulk. *notify view*: a LivePeople (what notify's audiences
read) catching up on the whole people topic, as a starting notify does, then how long a new
guardian published on the topic takes to be in its snapshot.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import broker, raw_throughput, report
from connectors.sis_roster.importer import Importer
from connectors.sis_roster.settings import RosterSource, SisRosterConfig
from connectors.sis_roster.state import RosterState
from safehub.contracts.names import EventType
from safehub.kernel.admin import ensure_topics
from safehub.kernel.bus import EventProducer
from safehub.kernel.codec import Codec
from safehub.kernel.envelope import new_event
from safehub.kernel.live_people import LivePeople
from safehub.kernel.logging import configure_logging
from safehub.kernel.people import People
from safehub.kernel.person_events import person_fields
from safehub.kernel.settings import KafkaSettings, LogSettings
from safehub.kernel.topics import TopicCatalog
from safehub.standards.oneroster import load_facts

SCHOOLS = 10
FACTS = load_facts()["v1.1"]


def _write(path: Path, name: str, rows: list[dict[str, str]]) -> None:
    columns = [c.name for c in FACTS.files[name].columns]
    with (path / name).open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(columns)
        writer.writerows([row.get(c, "") for c in columns] for row in rows)


def _manifest(path: Path, files: list[str], mode: str) -> None:
    lines = ["propertyName,value"]
    for prop in FACTS.manifest_required:
        if prop == "manifest.version":
            lines.append("manifest.version,1.0")
        elif prop == "oneroster.version":
            lines.append("oneroster.version,1.1")
        else:
            listed = prop[len("file.") :] + ".csv" in files
            lines.append(f"{prop},{mode if listed else 'absent'}")
    (path / "manifest.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _user(sid: str, role: str, org: str, n: int, **extra: str) -> dict[str, str]:
    return {
        "sourcedId": sid,
        "enabledUser": "true",
        "orgSourcedIds": org,
        "role": role,
        "username": f"user{n}",
        "givenName": f"Given{n}",
        "familyName": f"Family{n % 997}",
        **extra,
    }


def generate(root: Path, users: int) -> tuple[Path, Path, int]:
    """The bulk package, a 1% delta, and the bulk's row count."""
    bulk = root / "bulk"
    bulk.mkdir(parents=True)
    staff_n, student_n = users * 5 // 100, users * 60 // 100
    guardian_n = users - staff_n - student_n
    orgs = [
        {"sourcedId": f"sch-{s}", "name": f"School {s}", "type": "school"} for s in range(SCHOOLS)
    ]
    roles = ("teacher", "teacher", "teacher", "administrator", "aide", "proctor")
    staff = [
        _user(
            f"t{i}",
            roles[i % len(roles)],
            f"sch-{i % SCHOOLS}",
            i,
            email=f"t{i}@school.example",
            phone=f"555{i:07d}",
        )
        for i in range(staff_n)
    ]
    teachers = [u for u in staff if u["role"] == "teacher"]
    classes = [
        {
            "sourcedId": f"c{i}",
            "title": f"Class {i}",
            "courseSourcedId": "crs-1",
            "classType": "scheduled",
            "schoolSourcedId": t["orgSourcedIds"],
            "termSourcedIds": "term-1",
        }
        for i, t in enumerate(teachers)
    ]
    by_school: dict[str, list[str]] = {}
    for c, t in zip(classes, teachers, strict=True):
        by_school.setdefault(t["orgSourcedIds"], []).append(c["sourcedId"])
    students = [
        _user(f"s{i}", "student", f"sch-{i % SCHOOLS}", i, grades=f"{i % 12 + 1:02d}")
        for i in range(student_n)
    ]
    guardians = [
        _user(
            f"g{i}",
            "parent",
            f"sch-{i % SCHOOLS}",
            i,
            agentSourcedIds=",".join(sorted({f"s{i % student_n}", f"s{(i * 7 + 3) % student_n}"})),
            sms=f"+1555{i:07d}",
        )
        for i in range(guardian_n)
    ]
    enrolments = []
    for i, s in enumerate(students):
        school_classes = by_school[s["orgSourcedIds"]]
        for k in range(2):
            cls = school_classes[(i + k) % len(school_classes)]
            enrolments.append(
                {
                    "sourcedId": f"e{i}-{k}",
                    "classSourcedId": cls,
                    "schoolSourcedId": s["orgSourcedIds"],
                    "userSourcedId": s["sourcedId"],
                    "role": "student",
                }
            )
    for i, (c, t) in enumerate(zip(classes, teachers, strict=True)):
        enrolments.append(
            {
                "sourcedId": f"et{i}",
                "classSourcedId": c["sourcedId"],
                "schoolSourcedId": t["orgSourcedIds"],
                "userSourcedId": t["sourcedId"],
                "role": "teacher",
            }
        )
    all_users = staff + students + guardians
    _write(bulk, "orgs.csv", orgs)
    _write(bulk, "classes.csv", classes)
    _write(bulk, "users.csv", all_users)
    _write(bulk, "enrollments.csv", enrolments)
    _manifest(bulk, ["orgs.csv", "classes.csv", "users.csv", "enrollments.csv"], "bulk")
    rows = len(orgs) + len(classes) + len(all_users) + len(enrolments)

    delta = root / "delta"
    delta.mkdir()
    changed = []
    for n, u in enumerate(all_users[::100]):
        row = {**u, "status": "active", "dateLastModified": "2026-06-01T08:00:00.000Z"}
        if row["role"] == "student" and n % 2 == 0:
            row["orgSourcedIds"] = f"sch-{(int(row['sourcedId'][1:]) + 1) % SCHOOLS}"
        else:
            row["givenName"] += "x"
        changed.append(row)
    _write(delta, "users.csv", changed)
    _manifest(delta, ["users.csv"], "delta")
    return bulk, delta, rows


def _new_guardian(person_id: str) -> dict[str, Any]:
    """A guardian a roster delta adds: the change whose visibility to notify is measured."""
    return new_event(
        EventType.PERSON_CHANGED,
        source="bench",
        tenant={"state": "US-TX", "district": "dist-bench", "school": "sch-bench-0"},
        classification=("INTERNAL", "STUDENT_RECORD"),
        payload=person_fields(
            person_id,
            kind="GUARDIAN",
            version=1,
            roster_source="bench",
            school_ids=["sch-bench-0"],
            name="New Guardian",
            student_ids=["stu-bench-0"],
            contact={
                "email": f"{person_id}@bench.example.org",
                "phone": None,
                "push_token": None,
                "language": "en",
            },
        ),
    )


def run(users: int) -> dict[str, Any]:
    configure_logging(LogSettings(level="WARNING"))
    with broker() as bootstrap, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        bulk, delta, rows = generate(root, users)
        generated_s = time.perf_counter() - started
        kafka = KafkaSettings(bootstrap_servers=bootstrap, linger_ms=5)
        catalog = TopicCatalog(prefix=f"b{uuid.uuid4().hex[:8]}.")
        ensure_topics(kafka, catalog)
        codec = Codec.from_contracts()
        config = SisRosterConfig(
            state_url=f"sqlite:///{root / 'state.sqlite3'}",
            checkpoint_rows=5000,
            progress_every=10**9,
        )
        source = RosterSource(name="bench", district="dist-bench", path=bulk)
        sizes: list[int] = []
        with (
            EventProducer(kafka, codec, catalog, client_id="bench-roster") as producer,
            RosterState(config.state_url) as state,
        ):
            encode = codec.encode

            def measured(event: Any) -> bytes:
                data = encode(event)
                sizes.append(len(data))
                return data

            codec.encode = measured  # type: ignore[method-assign]
            importer = Importer(config, source, producer, catalog, state)
            start = time.perf_counter()
            bulk_report = importer.import_package(bulk)
            bulk_s = time.perf_counter() - start
            events = len(sizes)
            start = time.perf_counter()
            delta_report = importer.import_package(delta)
            delta_s = time.perf_counter() - start
            delta_events = len(sizes) - events
            codec.encode = encode  # type: ignore[method-assign]
            # What notify sees: a LivePeople reading the people topic from its start (what a
            # notify process does when it starts), then one new guardian published.
            live = LivePeople(People(), kafka, catalog, codec, name="bench-live").start()
            with live:
                start = time.perf_counter()
                live.wait_ready(300)
                catch_up_s = time.perf_counter() - start
                people_held = sum(
                    len(s.staff) + len(s.guardians) + len(s.students)
                    for s in live.current().schools
                )
                visible = []
                for n in range(5):
                    person = f"bench-new-guardian-{n}"
                    start = time.perf_counter()
                    producer.publish(_new_guardian(person))
                    while live.version_of(person) is None:
                        time.sleep(0.001)
                    visible.append((time.perf_counter() - start) * 1000)
        mean_size = round(sum(sizes[:events]) / max(1, events))
        raw = raw_throughput(bootstrap, count=events, size=mean_size)
        raw_s = events / raw["produce_msg_s"]
    people = bulk_report.people["published"]
    return {
        "users": users,
        "rows": rows,
        "generate_s": round(generated_s, 2),
        "bulk": {
            "seconds": round(bulk_s, 2),
            "rows_s": round(rows / bulk_s),
            "events": events,
            "events_s": round(events / bulk_s),
            "people_published": people,
            "mean_event_bytes": mean_size,
            "target_s": 60,
            "met": bulk_s < 60,
        },
        "raw_baseline": {
            "records": events,
            "seconds": round(raw_s, 2),
            "records_s": raw["produce_msg_s"],
        },
        "bulk_vs_raw": round(bulk_s / raw_s, 1),
        "notify_view": {
            "catch_up_s": round(catch_up_s, 2),
            "people_entries_by_school": people_held,  # a guardian of two schools counts twice
            "change_visible_ms": sorted(round(v, 1) for v in visible),
        },
        "delta_1pct": {
            "users_changed": delta_report.rows,
            "seconds": round(delta_s, 2),
            "events": delta_events,
            "people_published": delta_report.people["published"],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--users", type=int, default=50_000)
    args = parser.parse_args()
    report(run(args.users), as_json=args.json)


if __name__ == "__main__":
    main()
