"""THE test of the live directory: a guardian a roster delta adds gets the next family message
for that school from a notify that keeps running (no restart), and a guardian it deletes
does not."""

from __future__ import annotations

import json
import time
from pathlib import Path

from safehub.kernel.bus import EventProducer
from safehub.kernel.codec import Codec
from safehub.kernel.live_people import publish_seed
from safehub.kernel.people import People
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import TopicCatalog
from tests.directory.helpers import LINCOLN, SEED, person_changed
from tests.support.notify import NotifyProcess, SmtpSink, notification_request
from tests.support.waiting import wait_until

NEW_EMAIL = "new.guardian.delta@families.example.org"


def _people_changes(notify: NotifyProcess) -> int:
    """Changes notify's live people applied since it caught up (from its JSON log)."""
    applied = 0
    for line in notify.log_file.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == "people changed":
            applied += int(record.get("applied", 0))
    return applied


def test_a_guardian_added_by_a_roster_delta_gets_the_next_family_message_without_a_restart(
    kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec, tmp_path: Path
) -> None:
    guardians = People.load(SEED).guardians(LINCOLN)
    leaving = guardians[1]
    staying = guardians[0]
    assert leaving.contact.email and staying.contact.email
    with SmtpSink() as smtp, EventProducer(kafka, codec, catalog) as producer:
        publish_seed(producer, SEED, kafka=kafka, catalog=catalog, codec=codec)  # as `safehub up`
        with NotifyProcess(kafka, catalog, tmp_path / "notify", smtp=smtp, sim=None) as notify:
            assert notify.process is not None
            pid = notify.process.pid

            # A roster delta: a new guardian of a Lincoln student, and one guardian removed.
            producer.publish(
                person_changed(
                    "grd-lincoln-delta",
                    version=1_764_700_000_000_000,
                    name="Nora Delta",
                    email=NEW_EMAIL,
                    student_ids=["stu-lincoln-0000"],
                    guardianship={
                        "relationship": "guardian",
                        "has_custody": True,
                        "may_pick_up": True,
                        "restricted": False,
                    },
                )
            )
            producer.publish(person_changed(leaving.id, version=2, change="DELETED"))
            published = time.monotonic()
            wait_until(
                lambda: _people_changes(notify) >= 2,
                timeout=30,
                what="notify applied the roster delta",
            )
            visible_s = time.monotonic() - published

            # The next family message for Lincoln.
            producer.publish(
                notification_request(
                    school=LINCOLN,
                    audiences=[f"guardians:{LINCOLN}"],
                    require_ack=False,
                    headline="Early dismissal at 1 pm",
                )
            )
            wait_until(lambda: smtp.to(NEW_EMAIL), timeout=60, what="mail to the new guardian")
            wait_until(lambda: smtp.to(staying.contact.email), timeout=30, what="mail to the rest")
            [mail] = smtp.to(NEW_EMAIL)
            assert "Early dismissal" in mail.subject + mail.body
            assert not smtp.to(leaving.contact.email), "a deleted guardian was still told"
            assert notify.process.pid == pid and notify.process.poll() is None  # never restarted
            assert visible_s < 10, f"the change took {visible_s:.1f} s to reach notify"
            assert NEW_EMAIL not in notify.log_file.read_text(errors="replace")
