"""The tips service end to end on the real broker: each channel creates a tip, the thread
works both ways without revealing the tipster, life-safety tips escalate until someone
acknowledges, duplicates fold, bad input is refused naming the field, and no contact string
reaches any topic, header or log line."""

from __future__ import annotations

import io
import logging
import smtplib
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status
from PIL import Image

from safehub.gen.safehub.tips.v1 import tips_pb2
from safehub.kernel.codec import Codec
from safehub.kernel.envelope import new_event
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import ALERTS, NOTIFICATIONS, TIPS, TopicCatalog
from services.tips.escalation import frozen_chain
from tests.support.kafka import read_all
from tests.support.notify import SmtpSink
from tests.support.tips import (
    CONTACTS,
    STATE_ANALYST_TOKEN,
    TIP_ADDRESS,
    TipsHandle,
    running_tips,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.kafka

LINCOLN = "sch-lincoln-hs"
RIVERSIDE = "sch-riverside-es"


@pytest.fixture
def tips(kafka: KafkaSettings, catalog: TopicCatalog, tmp_path: Path) -> Iterator[TipsHandle]:
    with running_tips(kafka, catalog.prefix, tmp_path) as handle:
        yield handle


def _events(kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec, topic: str) -> list[Any]:
    return [codec.decode(r.value()) for r in read_all(kafka, catalog.name(topic))]


def _tip_events(
    kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec, tip_id: str
) -> list[Any]:
    return [e for e in _events(kafka, catalog, codec, TIPS) if e["tip_id"] == tip_id]


def _requests(kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec, tip_id: str) -> list[Any]:
    return [
        e
        for e in _events(kafka, catalog, codec, NOTIFICATIONS)
        if e["envelope"]["event_type"].endswith("NotificationRequested")
        and e["envelope"]["case_id"] == tip_id
    ]


def _threats(kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec, tip_id: str) -> list[Any]:
    return [
        e
        for e in _events(kafka, catalog, codec, ALERTS)
        if e["envelope"]["event_type"].endswith("ThreatReported") and e["report_id"] == tip_id
    ]


def _app_tip(tips: TipsHandle, text: str, **fields: Any) -> tips_pb2.SubmitTipResponse:
    request = tips_pb2.SubmitTipRequest(
        client_tip_id=fields.pop("client_tip_id", f"app-{time.monotonic_ns()}"),
        school_id=fields.pop("school_id", LINCOLN),
        category=fields.pop("category", tips_pb2.TIP_CATEGORY_OTHER),
        text=text,
        anonymous=fields.pop("anonymous", True),
        **fields,
    )
    return tips.stub_for("tips-app-north").SubmitTip(request, timeout=20)


def _tip_id(tips: TipsHandle, code: str) -> str:
    listing = tips.api(STATE_ANALYST_TOKEN).get("/api/tips").json()["tips"]
    return next(t["tip_id"] for t in listing if t["tip_code"] == code)


def _violation(error: grpc.RpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(error)
    assert status is not None
    out = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out += [(v.field, v.description) for v in bad.field_violations]
    return out


# -- channels ---------------------------------------------------------------------------


def test_a_web_form_tip_gets_a_code_and_passcode_and_its_event_names_the_tip(
    tips: TipsHandle, kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec
) -> None:
    form = tips.http.get("/")
    assert form.status_code == 200 and 'name="nonce"' in form.text
    nonce = form.text.split('name="nonce" value="')[1].split('"')[0]
    fields = {
        "nonce": nonce,
        "lang": "en",
        "school_id": LINCOLN,
        "category": "BULLYING",
        "text": "A group keeps pushing a sixth grader into lockers after lunch.",
        "name": CONTACTS["name"],
        "email": CONTACTS["email"],
    }
    answer = tips.http.post(
        "/tip", data=fields, files={"photo": ("", b"", "application/octet-stream")}
    )
    assert answer.status_code == 200, answer.text
    code = answer.text.split('id="tip-code">')[1].split("<")[0]
    passcode = answer.text.split('id="passcode">')[1].split("<")[0]
    assert len(code.replace("-", "")) == 10 and len(passcode) >= 12
    # The same form sent twice (a double tap) is one tip with the same receipt.
    again = tips.http.post(
        "/tip", data=fields, files={"photo": ("", b"", "application/octet-stream")}
    )
    assert code in again.text and passcode in again.text
    tip_id = _tip_id(tips, code)
    submitted = wait_until(
        lambda: [e for e in _tip_events(kafka, catalog, codec, tip_id) if "channel" in e],
        what="TipSubmitted",
    )
    assert len(submitted) == 1
    event = submitted[0]
    assert event["channel"] == "WEB" and event["category"] == "BULLYING"
    assert event["life_safety"] is False
    assert event["envelope"]["case_id"] == tip_id
    assert "STUDENT_RECORD" in event["envelope"]["classification"]
    assert event["tipster_contact_sealed"] is None
    # Not life-safety: the school's inbox (its first call-tree step) is told by e-mail.
    [inbox] = wait_until(lambda: _requests(kafka, catalog, codec, tip_id), what="inbox message")
    assert inbox["priority"] == "ROUTINE" and inbox["require_ack"] is False
    assert all(r["channels"] == ["EMAIL"] for r in inbox["recipients"])
    assert "lockers" not in inbox["body"]  # notifications never carry the tip's words


def test_spanish_form_and_a_bad_field_named_in_the_page(tips: TipsHandle) -> None:
    page = tips.http.get("/?lang=es")
    assert 'lang="es"' in page.text and "Enviar el reporte" in page.text
    answer = tips.http.post(
        "/tip",
        data={
            "lang": "es",
            "school_id": LINCOLN,
            "category": "OTHER",
            "text": "mira <script>alert(1)</script>",
        },
        files={"photo": ("", b"", "application/octet-stream")},
    )
    assert answer.status_code == 400
    assert "text" in answer.text and "script" in answer.text
    assert "<script>alert" not in answer.text  # escaped, never echoed as markup
    unknown = tips.http.post(
        "/tip",
        data={"school_id": "sch-nowhere", "category": "OTHER", "text": "something odd"},
        files={"photo": ("", b"", "application/octet-stream")},
    )
    assert unknown.status_code == 404 and "school_id" in unknown.text


def test_an_app_tip_over_mtls_and_the_callers_that_are_refused(tips: TipsHandle) -> None:
    answer = _app_tip(
        tips,
        "Someone posted a picture of a rifle with our school's name",
        category=tips_pb2.TIP_CATEGORY_WEAPON,
    )
    assert answer.life_safety and answer.tip_code and answer.passcode
    # A retry of the same client tip id: the same code and passcode, no second tip.
    request_id = "retry-1"
    first = _app_tip(tips, "a student said he has a knife in his bag", client_tip_id=request_id)
    second = _app_tip(tips, "a student said he has a knife in his bag", client_tip_id=request_id)
    assert (first.tip_code, first.passcode) == (second.tip_code, second.passcode)
    # The south district's app may not file tips for a north school: unknown to it.
    with pytest.raises(grpc.RpcError) as other:
        tips.stub_for("tips-app-south").SubmitTip(
            tips_pb2.SubmitTipRequest(school_id=LINCOLN, category=1, text="x" * 20), timeout=10
        )
    assert other.value.code() == grpc.StatusCode.NOT_FOUND
    # A panic-button vendor has no tips scope; an unregistered certificate is nobody.
    with pytest.raises(grpc.RpcError) as scope:
        tips.stub_for("panic-badges-north").SubmitTip(
            tips_pb2.SubmitTipRequest(school_id=LINCOLN, category=1, text="x" * 20), timeout=10
        )
    assert scope.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as stranger:
        tips.stub_for("not-registered").SubmitTip(tips_pb2.SubmitTipRequest(), timeout=10)
    assert stranger.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_bad_app_input_names_the_field(tips: TipsHandle) -> None:
    cases = [
        ({"text": ""}, "text"),
        ({"text": "y" * 6000}, "text"),
        ({"text": "see javascript:alert(1) now"}, "text"),
        ({"text": "fine words here", "category": tips_pb2.TIP_CATEGORY_UNSPECIFIED}, "category"),
        (
            {
                "text": "a photo of it",
                "attachments": [tips_pb2.Attachment(mime_type="image/png", data=b"not an image")],
            },
            "attachments[0].data",
        ),
    ]
    for fields, field in cases:
        fields.setdefault("category", tips_pb2.TIP_CATEGORY_OTHER)
        text = fields.pop("text")
        with pytest.raises(grpc.RpcError) as refused:
            _app_tip(tips, text, **fields)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert [f for f, _ in _violation(refused.value)] == [field]


def test_sms_tips_and_replies_continue_the_thread(tips: TipsHandle) -> None:
    first = tips.sms(CONTACTS["sms"], "there is a fight planned at the bus loop friday")
    assert first.status_code == 200 and "<Message>" in first.text
    assert "Tip received" in first.text and "passcode" in first.text
    code = first.text.split("Code ")[1].split(",")[0]
    tip_id = _tip_id(tips, code)
    analyst = tips.api()
    asked = analyst.post(f"/api/tips/{tip_id}/messages", json={"text": "Which bus loop?"})
    assert asked.status_code == 201, asked.text
    reply = tips.sms(CONTACTS["sms"], "the one behind the gym")
    assert "Added to your tip" in reply.text and "Which bus loop?" in reply.text
    thread = analyst.get(f"/api/tips/{tip_id}").json()["thread"]
    assert [(m["author"], m["text"]) for m in thread] == [
        ("ANALYST", "Which bus loop?"),
        ("TIPSTER", "the one behind the gym"),
    ]
    # A webhook not signed by the provider's token is refused, and creates nothing.
    forged = tips.sms("+15550000000", "forged tip", token="wrong-token")
    assert forged.status_code == 403
    # A text to a number that is no school's tip line is answered, not taken.
    stray = tips.sms("+15550000001", "hello", to="+15550009999")
    assert "not a school's tip line" in stray.text


# -- the thread ---------------------------------------------------------------------------


def test_the_thread_both_ways_and_wrong_codes_look_alike(tips: TipsHandle) -> None:
    answer = _app_tip(
        tips,
        "my friend keeps talking about not wanting to be here anymore",
        category=tips_pb2.TIP_CATEGORY_BULLYING,
    )
    stub = tips.stub_for("tips-app-north")
    tip_id = _tip_id(tips, answer.tip_code)
    analyst = tips.api()
    assert (
        analyst.post(
            f"/api/tips/{tip_id}/messages", json={"text": "Thank you. Is your friend safe tonight?"}
        ).status_code
        == 201
    )
    read = stub.ReadThread(
        tips_pb2.ReadThreadRequest(tip_code=answer.tip_code, passcode=answer.passcode), timeout=10
    )
    assert [(m.author, m.text) for m in read.messages] == [
        (tips_pb2.AUTHOR_ANALYST, "Thank you. Is your friend safe tonight?")
    ]
    stub.PostMessage(
        tips_pb2.PostMessageRequest(
            tip_code=answer.tip_code, passcode=answer.passcode, text="yes, with their mom"
        ),
        timeout=10,
    )
    detail = analyst.get(f"/api/tips/{tip_id}").json()
    assert detail["thread"][-1]["author"] == "TIPSTER"
    assert "contact" not in detail and CONTACTS["phone"] not in str(detail)
    # The web page opens the same thread with the code typed with spaces, lower case.
    page = tips.http.post(
        "/thread",
        data={"code": answer.tip_code.lower().replace("-", " "), "passcode": answer.passcode},
    )
    assert page.status_code == 200 and "yes, with their mom" in page.text
    # Wrong passcode and unknown code: the same answer.
    wrong = tips.http.post("/thread", data={"code": answer.tip_code, "passcode": "nope"})
    unknown = tips.http.post("/thread", data={"code": "ZZZZ-ZZZZ-ZZ", "passcode": "nope"})
    assert wrong.status_code == unknown.status_code == 403
    assert wrong.text.replace(answer.tip_code, "") == unknown.text.replace(answer.tip_code, "")
    # Guessing is throttled (the code's attempts, whatever the passcode).
    statuses = [
        tips.http.post(
            "/thread", data={"code": answer.tip_code, "passcode": f"guess{i}"}
        ).status_code
        for i in range(6)
    ]
    assert statuses[-1] == 429
    # ...and the right passcode from the app is throttled too while the code is locked.
    with pytest.raises(grpc.RpcError) as locked:
        stub.ReadThread(
            tips_pb2.ReadThreadRequest(tip_code=answer.tip_code, passcode=answer.passcode),
            timeout=10,
        )
    assert locked.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# -- escalation ---------------------------------------------------------------------------


def _chain(tips: TipsHandle, school: str) -> list[dict[str, Any]]:
    return frozen_chain(tips.directory, school, time.time())


def _ack(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    codec: Codec,
    producer: Any,
    notification_id: str,
    person: str,
    tips: TipsHandle,
) -> None:
    event = new_event(
        "NotificationAcknowledged",
        source="notify",
        tenant=tips.directory.tenant(LINCOLN),
        payload={
            "notification_id": notification_id,
            "recipient_id": person,
            "channel": "SMS",
            "response": "ACKNOWLEDGED",
            "message": None,
        },
    )
    producer.publish(event)


def test_escalation_reaches_the_second_step_when_the_first_does_not_answer(
    tips: TipsHandle, kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec, producer: Any
) -> None:
    chain = _chain(tips, LINCOLN)
    assert len(chain) >= 3  # school on duty, second administrator, district desk
    answer = _app_tip(
        tips,
        "he said he'll bring a gun tomorrow",
        category=tips_pb2.TIP_CATEGORY_THREAT_OF_VIOLENCE,
    )
    assert answer.life_safety
    tip_id = _tip_id(tips, answer.tip_code)
    calls = wait_until(
        lambda: (
            len(_requests(kafka, catalog, codec, tip_id)) >= 2
            and _requests(kafka, catalog, codec, tip_id)
        ),
        what="two calls",
        timeout=30,
    )
    by_id = {c["notification_id"]: c for c in calls}
    first, second = by_id[f"tip-{tip_id}-0"], by_id[f"tip-{tip_id}-1"]
    assert [r["recipient_id"] for r in first["recipients"]] == chain[0]["person_ids"]
    assert [r["recipient_id"] for r in second["recipients"]] == chain[1]["person_ids"]
    assert first["priority"] == "LIFE_SAFETY" and first["require_ack"]
    assert "gun" not in first["body"] and "gun" not in second["body"]
    # The second person confirms: the tip is theirs and nobody else is called.
    person = chain[1]["person_ids"][0]
    _ack(kafka, catalog, codec, producer, f"tip-{tip_id}-1", person, tips)
    detail = wait_until(
        lambda: (
            (d := tips.api().get(f"/api/tips/{tip_id}").json())["escalation"]["acknowledged_by"]
            and d["assigned_to"]  # the tip and its escalation are read one after the other
            and d
        ),
        what="acknowledgement recorded",
    )
    assert detail["assigned_to"] == person and detail["status"] == "ASSIGNED"
    assert detail["first_human_at"] is not None
    store_calls = detail["escalation"]["call"]

    def reported() -> list[Any] | None:
        found = _tip_events(kafka, catalog, codec, tip_id)
        called = {e["escalation_level"] for e in found if e.get("activity") == "ESCALATION_CALLED"}
        acked = [e for e in found if e.get("activity") == "ESCALATION_ACKNOWLEDGED"]
        return acked if acked and called == set(range(store_calls + 1)) else None

    acked = wait_until(reported, what="every call and the acknowledgement on the tips topic")
    assert [e["notified_person_ids"] for e in acked] == [[person]]


def test_nobody_answering_reaches_the_district_then_the_state_centre_and_keeps_calling_it(
    tips: TipsHandle, kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec
) -> None:
    chain = _chain(tips, LINCOLN)
    answer = _app_tip(
        tips,
        "there is a bomb threat written in the boys bathroom, it says it goes off tomorrow",
        category=tips_pb2.TIP_CATEGORY_OTHER,
    )
    assert answer.life_safety  # the words make it so, whatever category was picked
    tip_id = _tip_id(tips, answer.tip_code)
    wanted = len(chain) + 1  # every step once, then the last one again
    calls = wait_until(
        lambda: len(r := _requests(kafka, catalog, codec, tip_id)) >= wanted and r,
        what="the whole chain and a repeat",
        timeout=40,
    )
    ordered = sorted(calls, key=lambda c: int(c["notification_id"].rsplit("-", 1)[1]))
    recipients = [[r["recipient_id"] for r in c["recipients"]] for c in ordered[:wanted]]
    assert recipients == [s["person_ids"] for s in chain] + [chain[-1]["person_ids"]]
    assert [s["scope"] for s in chain][-2:] == ["DISTRICT", "STATE"]  # the state centre last
    exhausted = wait_until(
        lambda: [
            e
            for e in _tip_events(kafka, catalog, codec, tip_id)
            if e.get("activity") == "ESCALATION_EXHAUSTED"
        ],
        what="ESCALATION_EXHAUSTED",
    )
    assert len(exhausted) == 1
    # Imminent, and nobody anywhere in the chain confirmed: it goes to 911, once.
    reports = wait_until(lambda: _threats(kafka, catalog, codec, tip_id), what="ThreatReported")
    assert len(reports) == 1 and reports[0]["imminent"] and reports[0]["source"] == "TIP"
    assert "bomb" not in reports[0]["summary"] and "bathroom" not in reports[0]["summary"]
    assert reports[0]["envelope"]["tenant"]["school"] == LINCOLN


# -- duplicates, photos, privacy ----------------------------------------------------------


def test_duplicates_fold_into_the_first_tip_and_can_be_split(
    tips: TipsHandle, kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec
) -> None:
    first = _app_tip(
        tips,
        "Kids are saying there will be a fight at the homecoming game",
        category=tips_pb2.TIP_CATEGORY_BULLYING,
    )
    second = _app_tip(
        tips,
        "kids are saying there'll be a FIGHT at the homecoming game!!",
        category=tips_pb2.TIP_CATEGORY_BULLYING,
    )
    other = _app_tip(
        tips,
        "Someone is selling vapes in the second floor restroom",
        category=tips_pb2.TIP_CATEGORY_DRUGS,
    )
    assert not first.duplicate and second.duplicate and not other.duplicate
    primary, copy = _tip_id(tips, first.tip_code), _tip_id(tips, second.tip_code)
    analyst = tips.api()
    assert analyst.get(f"/api/tips/{copy}").json()["folded_into"] == primary
    folded = wait_until(
        lambda: [
            e for e in _tip_events(kafka, catalog, codec, copy) if e.get("activity") == "FOLDED"
        ],
        what="FOLDED event",
    )
    assert folded[0]["merged_into_tip_id"] == primary
    split = analyst.post(f"/api/tips/{copy}/split", json={"reason": "different game"})
    assert split.status_code == 200 and split.json()["folded_into"] is None
    assert split.json()["status"] == "TRIAGED"


def _photo_with_gps() -> tuple[bytes, bytes]:
    image = Image.new("RGB", (64, 48), (200, 30, 30))
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    exif[0xA431] = "SERIAL-77A9X"  # BodySerialNumber
    gps = {1: "N", 2: (32.0, 46.0, 52.3), 3: "W", 4: (96.0, 48.0, 4.1)}
    exif[0x8825] = gps
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif.tobytes())
    return out.getvalue(), b"SERIAL-77A9X"


def test_photo_metadata_is_stripped_and_no_contact_string_leaves_the_service(
    tips: TipsHandle,
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    codec: Codec,
    caplog: pytest.LogCaptureFixture,
) -> None:
    photo, serial = _photo_with_gps()
    caplog.set_level(logging.DEBUG)  # what the service logs at its most verbose
    assert serial in photo and Image.open(io.BytesIO(photo)).getexif().get_ifd(0x8825)
    answer = _app_tip(
        tips,
        "photo of the note in the locker room",
        anonymous=False,
        contact=tips_pb2.TipsterContact(
            name=CONTACTS["name"], phone=CONTACTS["phone"], email=CONTACTS["email"]
        ),
        attachments=[tips_pb2.Attachment(mime_type="image/jpeg", data=photo, file_name="x.jpg")],
    )
    tip_id = _tip_id(tips, answer.tip_code)
    analyst = tips.api()
    [link] = analyst.get(f"/api/tips/{tip_id}").json()["attachments"]
    cleaned = analyst.get(link)
    assert cleaned.status_code == 200 and cleaned.headers["content-type"] == "image/jpeg"
    assert serial not in cleaned.content
    assert not Image.open(io.BytesIO(cleaned.content)).getexif()
    tips.sms(CONTACTS["sms"], "another tip from my phone about a threat list")
    wait_until(lambda: _tip_events(kafka, catalog, codec, tip_id), what="tip events")
    needles = [c.encode() for c in CONTACTS.values()] + [serial]
    for topic in {catalog.name(base) for base in catalog.specs} | {catalog.dead_letter}:
        for record in read_all(kafka, topic):
            blob = (record.value() or b"") + b"".join(
                (k.encode() + (v or b"")) for k, v in (record.headers() or [])
            )
            for needle in needles:
                assert needle not in blob, f"{needle!r} found on {topic}"
    logged = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    for needle in needles:
        assert needle.decode() not in logged


def test_analyst_changes_follow_the_lifecycle(tips: TipsHandle) -> None:
    answer = _app_tip(
        tips, "someone wrote threats on the wall of the gym", category=tips_pb2.TIP_CATEGORY_OTHER
    )
    tip_id = _tip_id(tips, answer.tip_code)
    analyst = tips.api()
    south = tips.api(STATE_ANALYST_TOKEN)
    assert (
        analyst.post(f"/api/tips/{tip_id}/close", json={"disposition": "MAYBE"}).status_code == 400
    )
    cleared = analyst.post(f"/api/tips/{tip_id}/life-safety", json={"life_safety": False})
    assert cleared.status_code == 400 and cleared.json()["field"] == "note"
    cleared = analyst.post(
        f"/api/tips/{tip_id}/life-safety",
        json={"life_safety": False, "reason": "old graffiti, painted over"},
    )
    assert cleared.json()["life_safety"] is False
    moved = analyst.post(f"/api/tips/{tip_id}/status", json={"status": "ASSIGNED"})
    assert moved.json()["assigned_to"] == "ana-north"
    closed = south.post(
        f"/api/tips/{tip_id}/close",
        json={"disposition": "HANDLED_BY_SCHOOL", "note": "custodian cleaned it"},
    )
    assert closed.json()["status"] == "CLOSED_RESOLVED" and closed.json()["closed_at"]
    again = analyst.post(f"/api/tips/{tip_id}/status", json={"status": "FOLLOW_UP"})
    assert again.status_code == 400
    assert tips.http.get("/api/tips").status_code == 401
    riverside = _app_tip_south(tips)
    assert analyst.get(f"/api/tips/{_tip_id(tips, riverside)}").status_code == 404


def _app_tip_south(tips: TipsHandle) -> str:
    answer = tips.stub_for("tips-app-south").SubmitTip(
        tips_pb2.SubmitTipRequest(
            school_id=RIVERSIDE,
            category=tips_pb2.TIP_CATEGORY_DRUGS,
            text="vapes sold at recess by older kids",
            anonymous=True,
        ),
        timeout=10,
    )
    return str(answer.tip_code)


def test_acknowledgements_nobody_asked_for_are_dead_lettered_with_the_reason(
    tips: TipsHandle, kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec, producer: Any
) -> None:
    chain = _chain(tips, LINCOLN)
    answer = _app_tip(
        tips, "a kid said he has a gun in his car", category=tips_pb2.TIP_CATEGORY_WEAPON
    )
    tip_id = _tip_id(tips, answer.tip_code)
    wait_until(lambda: _requests(kafka, catalog, codec, tip_id), what="call 0")
    stranger = "stf-washington-000"  # staff of another school, never on this chain
    assert all(stranger not in step["person_ids"] for step in chain)
    _ack(kafka, catalog, codec, producer, f"tip-{tip_id}-0", stranger, tips)
    _ack(kafka, catalog, codec, producer, "tip-0123456789abcdef0123456789abcdef-0", stranger, tips)
    # The one who was called still confirms it after the bad answers.
    person = chain[0]["person_ids"][0]
    _ack(kafka, catalog, codec, producer, f"tip-{tip_id}-0", person, tips)
    detail = wait_until(
        lambda: (d := tips.api().get(f"/api/tips/{tip_id}").json())["assigned_to"] and d,
        what="the real acknowledgement recorded",
    )
    assert detail["escalation"]["acknowledged_by"] == person
    letters = wait_until(
        lambda: len(r := read_all(kafka, catalog.dead_letter)) >= 2 and r, what="two dead letters"
    )
    reasons = sorted(
        dict((k, (v or b"").decode()) for k, v in letter.headers() or [])["safehub-dlq-reason"]
        for letter in letters
    )
    assert "no such escalation" in reasons[0]
    assert "who was not called" in reasons[1] and stranger in reasons[1]


def _web_tip(tips: TipsHandle, text: str, category: str = "OTHER") -> Any:
    return tips.http.post(
        "/tip",
        data={"school_id": LINCOLN, "category": category, "text": text},
        files={"photo": ("", b"", "application/octet-stream")},
    )


def test_a_source_over_its_limit_is_refused_but_never_a_life_safety_tip(
    kafka: KafkaSettings, catalog: TopicCatalog, tmp_path: Path
) -> None:
    with running_tips(kafka, catalog.prefix, tmp_path, source_limit=3) as tips:
        sent = [
            _web_tip(tips, f"someone keeps tagging lockers on floor {i}").status_code
            for i in range(4)
        ]
        assert sent == [200, 200, 200, 429]
        refused = _web_tip(tips, "and the vending machine on floor 9 is broken again")
        assert refused.status_code == 429 and "too many tips from this source" in refused.text
        urgent = _web_tip(tips, "he has a knife and says he will use it today")
        assert urgent.status_code == 200 and 'id="tip-code"' in urgent.text


def test_the_same_words_from_many_sources_mark_the_primary_as_a_flood(
    kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec, tmp_path: Path
) -> None:
    with running_tips(kafka, catalog.prefix, tmp_path, flood_sources=3) as tips:
        words = "everyone is saying the school will be shut down friday because of a threat post"
        answers = [tips.sms(f"+1555010{i:04d}", words) for i in range(4)]
        assert all(a.status_code == 200 for a in answers)
        code = answers[0].text.split("Code ")[1].split(",")[0]
        primary = _tip_id(tips, code)
        floods = wait_until(
            lambda: [
                e
                for e in _tip_events(kafka, catalog, codec, primary)
                if (e.get("note") or "").startswith("flood")
            ],
            what="the flood mark",
        )
        assert len(floods) == 1 and floods[0]["note"] == "flood: 3 sources sent the same words"
        listing = tips.api().get("/api/tips").json()["tips"]
        assert sum(1 for t in listing if t["folded_into"] == primary) == 3


def test_an_email_to_the_tip_line_is_a_tip(
    tips: TipsHandle, kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec
) -> None:
    message = EmailMessage()
    message["From"] = f"{CONTACTS['name']} <{CONTACTS['email']}>"
    message["To"] = TIP_ADDRESS
    message["Subject"] = "worried"
    message["Message-ID"] = "<tip-1@mail.example.org>"
    message.set_content("a boy in my class said he is going to shoot up the school monday")
    with smtplib.SMTP("127.0.0.1", tips.smtp_port, timeout=20) as client:
        client.send_message(message)
    listing = wait_until(
        lambda: [t for t in tips.api().get("/api/tips").json()["tips"] if t["channel"] == "EMAIL"],
        what="the e-mail tip",
    )
    assert listing[0]["life_safety"] is True
    events = wait_until(
        lambda: _tip_events(kafka, catalog, codec, listing[0]["tip_id"]), what="its events"
    )
    assert all(CONTACTS["email"] not in str(e) for e in events)


def test_reports_for_the_districts_an_analyst_works(tips: TipsHandle) -> None:
    _app_tip(tips, "kids vaping in the restroom by the gym", category=tips_pb2.TIP_CATEGORY_DRUGS)
    _app_tip(tips, "he said he'll bring a gun tomorrow", category=tips_pb2.TIP_CATEGORY_WEAPON)
    period = time.strftime("%Y-%m", time.gmtime())
    state = tips.api(STATE_ANALYST_TOKEN).get("/api/reports", params={"period": period}).json()
    assert state["received"] == 2 and state["life_safety"] == 1
    north = tips.api()
    district = north.get(
        "/api/reports",
        params={"period": period, "scope": "district:dist-north-isd", "format": "csv"},
    )
    assert district.status_code == 200 and district.headers["content-type"].startswith("text/csv")
    assert "he said" not in district.text  # statistics only, never a tip's words
    assert north.get("/api/reports", params={"period": period}).status_code == 404
    other = north.get("/api/reports", params={"period": period, "scope": "district:dist-south-isd"})
    assert other.status_code == 404
    bad = north.get(
        "/api/reports", params={"period": "December", "scope": "district:dist-north-isd"}
    )
    assert bad.status_code == 400 and bad.json()["field"] == "period"
    export = north.get(
        "/api/reports/export", params={"period": period, "scope": "district:dist-north-isd"}
    )
    assert export.status_code == 200 and export.json()["cases"] == []  # nothing closed yet


def test_a_monitoring_alert_is_a_tip_without_its_author(
    tips: TipsHandle, kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec
) -> None:
    vendor = tips.stub_for("monitor-vendor-north")
    request = tips_pb2.SubmitMonitoringAlertRequest(
        alert_id="alert-77",
        school_id=LINCOLN,
        category=tips_pb2.TIP_CATEGORY_THREAT_OF_VIOLENCE,
        post_text="@jay_k2009 says dont come to lincoln tomorrow, bringing my dads gun @friend.2",
        post_url="https://social.example/p/abc123?utm_source=x&session=secret",
        platform="instagram",
    )
    answer = vendor.SubmitMonitoringAlert(request, timeout=20)
    assert answer.life_safety and answer.tip_id
    again = vendor.SubmitMonitoringAlert(request, timeout=20)
    assert again.tip_id == answer.tip_id  # a retry is the same tip
    detail = tips.api().get(f"/api/tips/{answer.tip_id}").json()
    assert detail["channel"] == "MONITORING"
    assert "jay_k2009" not in detail["text"] and "friend.2" not in detail["text"]
    assert "https://social.example/p/abc123" in detail["text"] and "secret" not in detail["text"]
    events = wait_until(lambda: _tip_events(kafka, catalog, codec, answer.tip_id), what="events")
    assert "jay_k2009" not in str(events)
    submitted = next(e for e in events if "channel" in e)
    assert submitted["channel"] == "MONITORING"
    # A tip app may not send monitoring alerts, a monitoring vendor may not send tips.
    with pytest.raises(grpc.RpcError) as app:
        tips.stub_for("tips-app-north").SubmitMonitoringAlert(request, timeout=10)
    assert app.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as vendor_tip:
        vendor.SubmitTip(tips_pb2.SubmitTipRequest(school_id=LINCOLN, text="x" * 20), timeout=10)
    assert vendor_tip.value.code() == grpc.StatusCode.PERMISSION_DENIED
    bad = tips_pb2.SubmitMonitoringAlertRequest(
        alert_id="alert-78",
        school_id=LINCOLN,
        category=1,
        post_text="a threat",
        post_url="http://social.example/p/1",
    )
    with pytest.raises(grpc.RpcError) as refused:
        vendor.SubmitMonitoringAlert(bad, timeout=10)
    assert [f for f, _ in _violation(refused.value)] == ["post_url"]


def test_an_analyst_acting_on_a_tip_ends_its_escalation(
    tips: TipsHandle, kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec
) -> None:
    answer = _app_tip(
        tips, "he has a gun in his car right now", category=tips_pb2.TIP_CATEGORY_WEAPON
    )
    tip_id = _tip_id(tips, answer.tip_code)
    analyst = tips.api()
    assert (
        analyst.post(f"/api/tips/{tip_id}/messages", json={"text": "Which car?"}).status_code == 201
    )
    detail = analyst.get(f"/api/tips/{tip_id}").json()
    assert detail["escalation"]["acknowledged_by"] == "ana-north"
    assert detail["escalation"]["call"] == 0  # nobody else is called
    acked = wait_until(
        lambda: [
            e
            for e in _tip_events(kafka, catalog, codec, tip_id)
            if e.get("activity") == "ESCALATION_ACKNOWLEDGED"
        ],
        what="the acknowledgement event",
    )
    assert acked[0]["updated_by"] == "ana-north"


def test_an_email_tipster_gets_the_code_and_the_answers_by_mail(
    kafka: KafkaSettings, catalog: TopicCatalog, tmp_path: Path
) -> None:
    with (
        SmtpSink() as relay,
        running_tips(
            kafka, catalog.prefix, tmp_path, smtp_relay_host="127.0.0.1", smtp_relay_port=relay.port
        ) as tips,
    ):
        message = EmailMessage()
        message["From"] = CONTACTS["email"]
        message["To"] = TIP_ADDRESS
        message["Subject"] = "fight"
        message["Message-ID"] = "<tip-2@mail.example.org>"
        message.set_content("a group is planning to jump a kid after the game on friday")
        with smtplib.SMTP("127.0.0.1", tips.smtp_port, timeout=20) as client:
            client.send_message(message)
        [receipt] = wait_until(lambda: relay.to(CONTACTS["email"]), what="the receipt mail")
        assert "Tip code:" in receipt.body and "Passcode:" in receipt.body
        assert receipt.headers["From"] == TIP_ADDRESS
        code = receipt.body.split("Tip code: ")[1].split()[0]
        tip_id = _tip_id(tips, code)
        tips.api().post(f"/api/tips/{tip_id}/messages", json={"text": "Which game?"})
        answers = wait_until(
            lambda: [m for m in relay.to(CONTACTS["email"]) if "Which game?" in m.body],
            what="the answer mail",
        )
        assert answers[0].subject == f"About tip {code}"


def test_an_analyst_sends_a_tip_to_911_with_a_reason(
    tips: TipsHandle, kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec
) -> None:
    answer = _app_tip(
        tips,
        "my brother says he will shoot people at the pep rally",
        category=tips_pb2.TIP_CATEGORY_THREAT_OF_VIOLENCE,
    )
    tip_id = _tip_id(tips, answer.tip_code)
    analyst = tips.api()
    refused = analyst.post(f"/api/tips/{tip_id}/psap", json={})
    assert refused.status_code == 400 and refused.json()["field"] == "note"
    assert not _threats(kafka, catalog, codec, tip_id)
    reason = {"reason": "the rally is in an hour; the brother has access to guns"}
    assert analyst.post(f"/api/tips/{tip_id}/psap", json=reason).status_code == 202
    assert analyst.post(f"/api/tips/{tip_id}/psap", json=reason).status_code == 202
    reports = wait_until(lambda: _threats(kafka, catalog, codec, tip_id), what="ThreatReported")
    assert {r["envelope"]["event_id"] for r in reports} == {reports[0]["envelope"]["event_id"]}
    assert "rally" not in reports[0]["summary"]  # the reason stays in the tip's own record
    sent = wait_until(
        lambda: [
            e
            for e in _tip_events(kafka, catalog, codec, tip_id)
            if e.get("activity") == "SENT_TO_PSAP"
        ],
        what="SENT_TO_PSAP",
    )
    assert sent[0]["updated_by"] == "ana-north" and "rally" in sent[0]["note"]


def test_a_tip_not_assigned_or_not_closed_in_time_goes_to_the_district_once(
    kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec, tmp_path: Path
) -> None:
    fast = {"BULLYING": 0.0005}  # under 2 s
    with running_tips(
        kafka, catalog.prefix, tmp_path, assign_within_h=fast, close_within_h=fast
    ) as tips:
        answer = _app_tip(
            tips,
            "older kids keep taking a sixth grader's lunch",
            category=tips_pb2.TIP_CATEGORY_BULLYING,
        )
        tip_id = _tip_id(tips, answer.tip_code)
        overdue = wait_until(
            lambda: (
                len(
                    r := [
                        e
                        for e in _requests(kafka, catalog, codec, tip_id)
                        if "-overdue-" in e["notification_id"]
                    ]
                )
                >= 2
                and r
            ),
            what="both deadlines passed",
        )
        assert sorted(e["notification_id"].rsplit("-", 1)[1] for e in overdue) == [
            "assigned",
            "closed",
        ]
        assert all(e["priority"] == "URGENT" for e in overdue)
        assert all("lunch" not in e["body"] for e in overdue)
        marks = wait_until(
            lambda: (
                len(
                    m := [
                        e
                        for e in _tip_events(kafka, catalog, codec, tip_id)
                        if e.get("activity") == "OVERDUE"
                    ]
                )
                >= 2
                and m
            ),
            what="two OVERDUE marks",
        )
        assert len({m["envelope"]["event_id"] for m in marks}) == 2


def test_malformed_api_bodies_and_webhooks_are_refused_naming_what_is_wrong(
    tips: TipsHandle,
) -> None:
    analyst = tips.api()
    answer = _app_tip(tips, "someone keeps writing insults on the lockers")
    tip_id = _tip_id(tips, answer.tip_code)
    not_json = analyst.post(
        f"/api/tips/{tip_id}/messages",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert not_json.status_code == 400 and not_json.json()["field"] == "body"
    a_list = analyst.post(f"/api/tips/{tip_id}/status", json=["ASSIGNED"])
    assert a_list.status_code == 400 and a_list.json()["field"] == "body"
    flag = analyst.post(f"/api/tips/{tip_id}/life-safety", json={"life_safety": "yes"})
    assert flag.status_code == 400 and flag.json()["field"] == "life_safety"
    unknown = analyst.post("/api/tips/no-such-tip/messages", json={"text": "hello there"})
    assert unknown.status_code == 404
    status = analyst.get("/api/tips", params={"status": "BURNING"})
    assert status.status_code == 400 and status.json()["field"] == "status"
    # Twilio's webhook: not form data, or form data without From, is a 400 with the rule.
    webhook = tips.http.post(
        "/sms/inbound", content=b"\xff\xfe", headers={"Content-Type": "application/json"}
    )
    assert webhook.status_code == 400 and "form" in webhook.text
    # The tip and its thread are as they were: nothing half-applied.
    detail = analyst.get(f"/api/tips/{tip_id}").json()
    assert detail["thread"] == [] and detail["status"] == "TRIAGED"
