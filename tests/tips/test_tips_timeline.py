"""A tip on the timeline: its own hash-chained subject with the lanes intake, triage,
escalation, thread and disposition; its words withheld from a reviewer without STUDENT_RECORD
clearance; the tipster's contact in no entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from safehub.gen.safehub.tips.v1 import tips_pb2
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import TopicCatalog
from tests.support.timeline import COUNSEL_TOKEN, NORTH_TOKEN, TimelineProcess
from tests.support.tips import CONTACTS, STATE_ANALYST_TOKEN, running_tips
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

WORDS = "Marcus said he will bring a gun to the game tomorrow"


def test_a_tip_is_a_subject_with_its_own_lanes_and_its_words_are_withheld(
    kafka: KafkaSettings, catalog: TopicCatalog, tmp_path: Path
) -> None:
    (tmp_path / "timeline").mkdir()
    timeline = TimelineProcess(
        kafka, catalog.prefix, tmp_path / "timeline", f"sqlite:///{tmp_path / 'tl.db'}"
    ).start()
    try:
        with running_tips(kafka, catalog.prefix, tmp_path / "tips") as tips:
            answer = tips.stub_for("tips-app-north").SubmitTip(
                tips_pb2.SubmitTipRequest(
                    client_tip_id="tl-1",
                    school_id="sch-lincoln-hs",
                    category=tips_pb2.TIP_CATEGORY_WEAPON,
                    text=WORDS,
                    anonymous=False,
                    contact=tips_pb2.TipsterContact(
                        name=CONTACTS["name"], phone=CONTACTS["phone"], email=CONTACTS["email"]
                    ),
                ),
                timeout=20,
            )
            analyst = tips.api(STATE_ANALYST_TOKEN)
            tip_id = next(
                t["tip_id"]
                for t in analyst.get("/api/tips").json()["tips"]
                if t["tip_code"] == answer.tip_code
            )
            analyst.post(f"/api/tips/{tip_id}/messages", json={"text": "Which game?"})
            analyst.post(f"/api/tips/{tip_id}/status", json={"status": "ASSIGNED"})
            analyst.post(
                f"/api/tips/{tip_id}/close",
                json={"disposition": "REFERRED_TO_LAW_ENFORCEMENT", "note": "SRO informed"},
            )
            # intake, triage, call 0 (+ its request), thread, status, disposition
            body = timeline.wait_entries(tip_id, 7)
        lanes = {e["lane"] for e in body["entries"]}
        assert {"intake", "triage", "escalation", "thread", "disposition"} <= lanes
        with timeline.client(NORTH_TOKEN) as north:
            entries = wait_until(
                lambda: north.get(f"/api/v1/subjects/{tip_id}/timeline").json()["entries"],
                what="the north reviewer's view",
            )
        submitted = next(e for e in entries if e["event_type"] == "TipSubmitted")
        assert submitted["data"]["text"] == {"withheld": "STUDENT_RECORD"}
        assert "Marcus" not in str(entries) and "Which game?" not in str(entries)
        with timeline.client(COUNSEL_TOKEN) as counsel:
            cleared = counsel.get(f"/api/v1/subjects/{tip_id}/timeline").json()["entries"]
        assert "Marcus" in str(cleared)
        for contact in CONTACTS.values():
            assert contact not in str(cleared)
        # Nor anywhere in the timeline's store (the file itself, every table).
        stored = (tmp_path / "tl.db").read_bytes() + (
            (tmp_path / "tl.db-wal").read_bytes() if (tmp_path / "tl.db-wal").exists() else b""
        )
        assert not [c for c in CONTACTS.values() if c.encode() in stored]
        assert b"Marcus" in stored  # the scan reads what the store holds
        with timeline.client() as state:
            chain = state.get(f"/api/v1/subjects/{tip_id}/verify")
        assert chain.status_code == 200 and chain.json()["ok"] is True
    finally:
        timeline.stop()
