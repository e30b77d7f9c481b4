"""The sis_roster deployable as a process: each source synced on its schedule, a package
dropped in between picked up at the next interval, nothing published twice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safehub.kernel.codec import Codec
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import TopicCatalog
from tests.roster.roster_support import FULL, MINIMAL, duplicates, people, roster
from tests.support.processes import Component
from tests.support.waiting import wait_until


def test_the_service_syncs_each_source_on_its_schedule(
    kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, tmp_path: Path
) -> None:
    drop = tmp_path / "drop"
    shutil.copytree(MINIMAL, drop)
    feed = tmp_path / "custody.csv"
    feed.write_text(
        "student_sourced_id,guardian_sourced_id,guardian_name,relationship,has_custody,"
        "may_pick_up,court_order_restriction,email,phone,language\n"
        "usr-222-66778899,usr-222-1234561,,parent,false,false,true,,,en\n",
        encoding="utf-8",
    )
    sources = [
        {
            "name": "north",
            "district": "dist-1",
            "path": str(drop),
            "custody_path": str(feed),
            "interval_s": 0.5,
        },
        {"name": "south", "district": "dist-2", "path": str(FULL), "interval_s": 0.5},
    ]
    env = {
        "SAFEHUB_SIS_ROSTER__SOURCES": json.dumps(sources),
        "SAFEHUB_SIS_ROSTER__STATE_URL": f"sqlite:///{tmp_path / 'state.sqlite3'}",
    }
    with Component("connectors.sis_roster", kafka, catalog.prefix, tmp_path, env) as service:
        first = wait_until(
            lambda: (
                {e["roster_source"] for e in people(kafka, codec, catalog)} == {"north", "south"}
            ),
            timeout=60,
            what="both sources synced",
        )
        assert first
        guardian = wait_until(
            lambda: [
                p
                for p in people(kafka, codec, catalog)
                if p["person_id"] == "usr-222-1234561"
                and p["roster_source"] == "north"
                and p["guardianship"]
            ],
            timeout=60,
            what="the custody feed applied",
        )
        assert guardian[-1]["guardianship"]["restricted"] is True
        wait_until(
            lambda: service.log_file.read_text().count('"roster sync done"') >= 6,
            timeout=60,
            what="several intervals of each source",
        )
        before = roster(kafka, codec, catalog)
        assert not duplicates(before)  # re-syncing an unchanged package publishes nothing
        # A new export replaces the drop: the next interval imports it.
        users = drop / "users.csv"
        users.write_text(users.read_text().replace("Anna,Brown", "Annie,Brown"))
        wait_until(
            lambda: any(
                e["sourced_id"] == "usr-222-567891" and e["attributes"].get("givenName") == "Annie"
                for e in roster(kafka, codec, catalog)
            ),
            timeout=60,
            what="the changed package imported",
        )
        assert service.stop() == 0
    changes = roster(kafka, codec, catalog)
    assert not duplicates(changes)
    assert len(changes) == len(before) + 1
