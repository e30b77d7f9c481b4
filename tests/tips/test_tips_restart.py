"""kill -9 of the tips service in the middle of an escalation neither stops it nor repeats a
call: the store holds the call reached and its deadline, the outbox what was not confirmed."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pytest

from safehub.devstack.pki import DevPki
from safehub.gen.safehub.tips.v1 import tips_pb2
from safehub.kernel.codec import Codec
from safehub.kernel.directory import Directory
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import NOTIFICATIONS, SPANS, TopicCatalog
from services.tips.escalation import frozen_chain
from tests.support.kafka import read_all
from tests.support.tips import CONTACTS, TipsHandle, ports, short_call_trees, tips_process
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _calls(kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec) -> dict[str, set[str]]:
    """notification id → the event ids it was requested with."""
    found: dict[str, set[str]] = defaultdict(set)
    for record in read_all(kafka, catalog.name(NOTIFICATIONS)):
        event = codec.decode(record.value())
        if event["envelope"]["event_type"].endswith("NotificationRequested"):
            found[event["notification_id"]].add(event["envelope"]["event_id"])
    return found


def test_kill_9_mid_escalation_neither_stops_nor_repeats_it(
    kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec, tmp_path: Path
) -> None:
    directory = Directory.load(short_call_trees(tmp_path))
    chain = frozen_chain(directory, "sch-lincoln-hs", time.time())
    process = tips_process(kafka, catalog.prefix, tmp_path).start()
    try:
        http, grpc_port = ports(tmp_path)
        handle = TipsHandle(None, http, grpc_port, DevPki(tmp_path / "pki"), directory, tmp_path)
        answer = handle.stub_for("tips-app-north").SubmitTip(
            tips_pb2.SubmitTipRequest(
                client_tip_id="kill-1",
                school_id="sch-lincoln-hs",
                category=tips_pb2.TIP_CATEGORY_WEAPON,
                text="he showed a gun in the parking lot",
                anonymous=False,
                contact=tips_pb2.TipsterContact(
                    name=CONTACTS["name"], phone=CONTACTS["phone"], email=CONTACTS["email"]
                ),
            ),
            timeout=20,
        )
        assert answer.life_safety
        handle.close()
        wait_until(lambda: len(_calls(kafka, catalog, codec)) >= 1, what="call 0")
        process.kill()  # kill -9 while call 0 waits for an answer
        (tmp_path / "tips-http.port").unlink()
        process.start()
        wanted = len(chain) + 1
        calls = wait_until(
            lambda: len(c := _calls(kafka, catalog, codec)) >= wanted and c,
            what="every call after the restart",
            timeout=60,
        )
    finally:
        process.stop()
    ids = sorted(calls, key=lambda n: int(n.rsplit("-", 1)[1]))
    assert [int(n.rsplit("-", 1)[1]) for n in ids][:wanted] == list(range(wanted))
    # Each call was requested once: a republished outbox row keeps its event id.
    assert all(len(event_ids) == 1 for event_ids in calls.values()), calls
    # The process exported its spans and metrics to their topics: the tipster's contact is in
    # none of them, nor in any other topic, header or the process's log.
    spans = read_all(kafka, catalog.name(SPANS))
    assert spans, "the tips process exported its spans"
    needles = [CONTACTS["name"], CONTACTS["phone"], CONTACTS["email"]]
    for topic in {catalog.name(base) for base in catalog.specs} | {catalog.dead_letter}:
        for record in read_all(kafka, topic):
            blob = (record.value() or b"") + b"".join(
                k.encode() + (v or b"") for k, v in record.headers() or []
            )
            assert not [n for n in needles if n.encode() in blob], topic
    logged = process.log_file.read_text(errors="replace")
    assert not [n for n in needles if n in logged]
