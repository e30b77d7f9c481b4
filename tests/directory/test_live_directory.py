"""LiveDirectory on a real broker: places, systems and call trees follow DirectoryChanged
(newer versions win, replays and stale versions change nothing, deletions are remembered, a
school without its district is not served); the seed import is idempotent; call chains walk
school → district → state with on-duty rotations."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from safehub.kernel.bus import EventProducer
from safehub.kernel.codec import Codec
from safehub.kernel.directory import (
    CallTree,
    CallTreeScope,
    CallTreeStep,
    Client,
    Directory,
    District,
    OnDuty,
    School,
    Scope,
)
from safehub.kernel.live_directory import (
    LiveDirectory,
    change_event,
    directory_seed_events,
    publish_directory_seed,
)
from safehub.kernel.reader import TopicReader
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import DIRECTORY, TopicCatalog
from tests.directory.helpers import LINCOLN, SEED
from tests.support.waiting import wait_until

NORTH = "dist-north-isd"


def live(kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec) -> LiveDirectory:
    return LiveDirectory(Directory.load(SEED), kafka, catalog, codec, name="test-dir").start()


def test_places_and_systems_follow_the_topic(
    kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec, producer: EventProducer
) -> None:
    seed = Directory.load(SEED)
    lincoln = seed.school(LINCOLN)
    renumbered = lincoln.model_copy(
        update={"buildings": [lincoln.buildings[0].model_copy(update={"rooms": ["A-100"]})]}
    )
    new_school = School(id="sch-new-es", name="New Elementary", psap_id="psap-north-county")
    vendor = Client(id="tips-app-north", district=NORTH, scopes={Scope.TIPS})
    with live(kafka, catalog, codec) as directory:
        assert directory.wait_ready(30)
        assert directory.current().school(LINCOLN).buildings[0].rooms != ["A-100"]
        producer.publish(
            change_event(
                seed, "SCHOOL", renumbered, version=2, changed_by="ops-1", district_id=NORTH
            )
        )
        producer.publish(
            change_event(
                seed, "SCHOOL", new_school, version=1, changed_by="ops-1", district_id=NORTH
            )
        )
        producer.publish(change_event(seed, "CLIENT", vendor, version=1, changed_by="ops-1"))
        wait_until(
            lambda: (
                directory.current().has_school("sch-new-es")
                and directory.current().client("tips-app-north") is not None
            ),
            what="the new school and client served",
        )
        now = directory.current()
        assert now.school(LINCOLN).buildings[0].rooms == ["A-100"]
        assert now.district_of("sch-new-es").id == NORTH
        client = now.client("tips-app-north")
        assert client is not None and now.may(client, Scope.TIPS, LINCOLN)

        # A stale version (a late redelivery) changes nothing.
        producer.publish(
            change_event(seed, "SCHOOL", lincoln, version=1, changed_by="ops-1", district_id=NORTH)
        )
        # A deletion removes the client, and an older upsert replayed later cannot undo it.
        producer.publish(
            change_event(seed, "CLIENT", vendor, version=2, changed_by="ops-1", change="DELETED")
        )
        producer.publish(change_event(seed, "CLIENT", vendor, version=1, changed_by="ops-1"))
        # A school of a district nobody declared is not served without its tenant.
        orphan = School(id="sch-orphan", name="Orphan", psap_id="psap-x")
        producer.publish(
            change_event(
                seed, "SCHOOL", orphan, version=1, changed_by="ops-1", district_id="dist-x"
            )
        )
        marker = District(id="dist-marker", name="Marker")
        producer.publish(change_event(seed, "DISTRICT", marker, version=1, changed_by="ops-1"))
        wait_until(
            lambda: any(d.id == "dist-marker" for d in directory.current().districts),
            what="the marker district served",
        )
        now = directory.current()
        assert now.client("tips-app-north") is None
        assert now.school(LINCOLN).buildings[0].rooms == ["A-100"]
        assert not now.has_school("sch-orphan")
        assert directory.ignored >= 2
        assert directory.version_of("CLIENT", "tips-app-north") == 2

        # The district arriving later brings its school in.
        producer.publish(
            change_event(
                seed, "DISTRICT", District(id="dist-x", name="X"), version=1, changed_by="ops-1"
            )
        )
        wait_until(lambda: directory.current().has_school("sch-orphan"), what="orphan adopted")


def test_an_invalid_entry_is_skipped_and_the_next_applied(
    kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec, producer: EventProducer
) -> None:
    seed = Directory.load(SEED)
    good = District(id="dist-after-bad", name="After")
    bad = change_event(
        seed, "DISTRICT", District(id="dist-bad", name="Bad"), version=1, changed_by="t"
    )
    bad["entry_id"] = "dist-other"  # the body's id differs from the entry id
    with live(kafka, catalog, codec) as directory:
        assert directory.wait_ready(30)
        producer.publish(bad)
        producer.publish(change_event(seed, "DISTRICT", good, version=1, changed_by="t"))
        wait_until(
            lambda: any(d.id == "dist-after-bad" for d in directory.current().districts),
            what="the good entry after the bad one",
        )
        assert directory.rejected == 1
        assert not any(d.id in ("dist-bad", "dist-other") for d in directory.current().districts)


def test_the_seed_import_is_idempotent(
    kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec, producer: EventProducer
) -> None:
    events = directory_seed_events(SEED)
    seed = Directory.load(SEED)
    kinds = {e["entry_kind"] for e in events}
    assert kinds == {"DISTRICT", "SCHOOL", "CLIENT", "REVIEWER", "CALL_TREE"}
    assert len(events) == (
        len(seed.districts)
        + sum(len(d.schools) for d in seed.districts)
        + len(seed.clients)
        + len(seed.reviewers)
        + len(seed.call_trees)
    )
    first = publish_directory_seed(producer, SEED, kafka=kafka, catalog=catalog, codec=codec)
    again = publish_directory_seed(producer, SEED, kafka=kafka, catalog=catalog, codec=codec)
    assert (first.published, first.already) == (len(events), 0)
    assert (again.published, again.already) == (0, len(events))
    with TopicReader(kafka, catalog, [DIRECTORY], name="count") as reader:
        seen: list[object] = []
        reader.catch_up(seen.append, 30)
    assert len(seen) == len(events)
    with live(kafka, catalog, codec) as directory:
        assert directory.wait_ready(30)
        assert directory.current().model_dump() == seed.model_dump()


def _tree(scope: CallTreeScope, scope_id: str, *steps: CallTreeStep) -> CallTree:
    return CallTree(
        id=f"ct-{scope_id}",
        scope=scope,
        scope_id=scope_id,
        timezone="America/Chicago",
        steps=list(steps),
    )


def test_the_call_chain_walks_school_district_state_with_rotations() -> None:
    seed = Directory.load(SEED)
    night = OnDuty(person_id="night-admin", weekdays=[0, 1, 2, 3, 4], start="18:00", end="07:00")
    day = OnDuty(person_id="day-admin", weekdays=[0, 1, 2, 3, 4], start="07:00", end="18:00")
    directory = seed.model_copy(
        update={
            "call_trees": [
                _tree(
                    CallTreeScope.SCHOOL,
                    LINCOLN,
                    CallTreeStep(
                        name="on duty", person_ids=["weekend-admin"], rotation=[day, night]
                    ),
                    CallTreeStep(name="second", ack_within_seconds=30, person_ids=["sro"]),
                ),
                _tree(
                    CallTreeScope.DISTRICT, NORTH, CallTreeStep(name="desk", person_ids=["desk"])
                ),
                _tree(
                    CallTreeScope.STATE, seed.state, CallTreeStep(name="centre", person_ids=["ssc"])
                ),
                _tree(
                    CallTreeScope.DISTRICT,
                    "dist-south-isd",
                    CallTreeStep(name="x", person_ids=["x"]),
                ),
            ]
        }
    )
    # Tuesday 2026-12-01 23:30 in Chicago (UTC-6) is 05:30 UTC on Wednesday.
    chain = directory.call_chain(LINCOLN, datetime(2026, 12, 2, 5, 30, tzinfo=UTC))
    assert [(c.scope, c.person_ids) for c in chain] == [
        (CallTreeScope.SCHOOL, ("night-admin",)),
        (CallTreeScope.SCHOOL, ("sro",)),
        (CallTreeScope.DISTRICT, ("desk",)),
        (CallTreeScope.STATE, ("ssc",)),
    ]
    assert [c.step for c in chain] == [0, 1, 2, 3] and chain[1].ack_within_seconds == 30
    # Wednesday 10:00 local: the day shift.
    assert directory.call_chain(LINCOLN, datetime(2026, 12, 2, 16, 0, tzinfo=UTC))[
        0
    ].person_ids == ("day-admin",)
    # Saturday 02:00 local: Friday's night shift still covers it (it started on a weekday).
    assert directory.call_chain(LINCOLN, datetime(2026, 12, 5, 8, 0, tzinfo=UTC))[0].person_ids == (
        "night-admin",
    )
    # Saturday noon: no rotation covers it, the step's fallback is called, never nobody.
    assert directory.call_chain(LINCOLN, datetime(2026, 12, 5, 18, 0, tzinfo=UTC))[
        0
    ].person_ids == ("weekend-admin",)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"steps": []}, "steps"),
        ({"steps": [{"name": "nobody"}]}, "names nobody"),
        (
            {
                "steps": [
                    {
                        "name": "s",
                        "person_ids": ["a"],
                        "rotation": [{"person_id": "a", "start": "25:00"}],
                    }
                ]
            },
            "start",
        ),
    ],
)
def test_a_bad_call_tree_is_refused_naming_what(change: dict[str, object], problem: str) -> None:
    base = {
        "id": "ct",
        "scope": "SCHOOL",
        "scope_id": LINCOLN,
        "steps": [{"name": "s", "person_ids": ["a"]}],
    }
    with pytest.raises(ValueError, match=problem):
        CallTree.model_validate(base | change)
