"""The notify service as a real process, against a real broker, a real SMTP server (aiosmtpd)
and the Twilio-compatible provider simulator (a real process speaking Twilio's wire format).

Covers: an SRP action reaching every staff member of the school and nobody else (email and
SMS, PA and signage commands, CAP), fallback from a failed SMS to email, escalation of an
unacknowledged message on schedule (surviving a kill -9), acknowledgements recorded once,
drills marked in every message, ALL CLEAR to the same audience, malformed requests
dead-lettered with the reason, and no contact details in any event or log line.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from safehub.kernel.bus import EventProducer
from safehub.kernel.codec import Codec
from safehub.kernel.directory import Directory
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import TopicCatalog
from services.notify.cap import Scope, Status, parse
from services.notify.dispatcher import stable_id
from services.notify.store import DeliveryRow, NotificationRow, RecipientRow, Store
from tests.support.kafka import read_all
from tests.support.notify import (
    NotifyProcess,
    SmtpSink,
    directory,
    incident,
    new_incident_id,
    notification_request,
)
from tests.support.sms import ProviderSimProcess
from tests.support.waiting import wait_until

LINCOLN = "sch-lincoln-hs"
WASHINGTON = "sch-washington-ms"
RIVERSIDE = "sch-riverside-es"
NOTIFICATIONS = "safehub.notifications.v1"
ANNOUNCEMENTS = "safehub.announcements.v1"


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[ProviderSimProcess]:
    (tmp_path / "sim").mkdir()
    with ProviderSimProcess(tmp_path / "sim") as process:
        yield process


@pytest.fixture
def producer(kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog) -> Iterator[EventProducer]:
    with EventProducer(kafka, codec, catalog) as p:
        yield p


def new_notify(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    tmp_path: Path,
    smtp: SmtpSink,
    sim: ProviderSimProcess | None,
    **env: str,
) -> NotifyProcess:
    return NotifyProcess(kafka, catalog, tmp_path / "notify", smtp=smtp, sim=sim, **env)


def events(kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec, topic: str) -> list[Any]:
    return [codec.decode(r.value()) for r in read_all(kafka, catalog.name(topic))]


def of_type(found: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in found if e["envelope"]["event_type"] == f"safehub.events.{name}"]


def people(school: str, kinds: tuple[str, ...] = ("staff",)) -> list[Any]:
    s = directory().school(school)
    found: list[Any] = []
    if "staff" in kinds:
        found += s.staff
    if "responders" in kinds:
        found += s.responders
    return found


def emails_of(persons: list[Any]) -> set[str]:
    return {p.contact.email for p in persons if p.contact.email}


def phones_of(persons: list[Any]) -> set[str]:
    return {p.contact.phone for p in persons if p.contact.phone}


def other_schools_contacts(school: str) -> set[str]:
    """Contacts of other schools' staff and guardians (district responders may be shared)."""
    d: Directory = directory()
    found: set[str] = set()
    for district in d.districts:
        for s in district.schools:
            if s.id == school:
                continue
            for p in [*s.staff, *s.guardians]:
                found |= {v for v in (p.contact.email, p.contact.phone) if v}
    return found


def only_notification(notify: NotifyProcess, incident_id: str, count: int = 1) -> list[str]:
    found = wait_until(
        lambda: (
            [n for n in notify.notifications(incident_id)]
            if len(notify.notifications(incident_id)) >= count
            else None
        ),
        timeout=30,
        what=f"{count} notification(s) for {incident_id}",
    )
    return [n["notification_id"] for n in found]


# -- the lockdown ------------------------------------------------------------------------------


def test_lockdown_reaches_every_staff_member_of_the_school_and_nobody_else(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    codec: Codec,
    producer: EventProducer,
    smtp: SmtpSink,
    sim: ProviderSimProcess,
    tmp_path: Path,
) -> None:
    notify = new_notify(kafka, catalog, tmp_path, smtp, sim).start()
    try:
        incident_id = new_incident_id()
        producer.publish(incident("IncidentOpened", incident_id=incident_id, srp_action="LOCKDOWN"))
        audience = people(LINCOLN, ("staff", "responders"))  # a real incident: responders too
        want_emails, want_phones = emails_of(audience), phones_of(audience)
        wait_until(
            lambda: {a for m in smtp.messages for a in m.to} >= want_emails,
            timeout=60,
            what="an email to every staff member and responder",
        )
        wait_until(
            lambda: {m["to"] for m in sim.messages()} >= want_phones,
            timeout=60,
            what="an SMS to every staff member and responder with a phone",
        )
        [notification_id] = only_notification(notify, incident_id)
        status = wait_until(
            lambda: (
                (s := notify.status(notification_id))["totals"]["reached"] == len(audience) and s
            ),
            timeout=30,
            what="every recipient reached in the status report",
        )
        assert notify.http is not None
        restricted = notify.http.get(f"/cap/alerts/safehub-{notification_id}.xml")
        anonymous = httpx.get(f"{notify.base_url}/cap/alerts/safehub-{notification_id}.xml")
    finally:
        notify.stop()
    # Exactly the school's staff and responders, one message each per channel, nobody else.
    got_emails = [a for m in smtp.messages for a in m.to]
    got_phones = [m["to"] for m in sim.messages()]
    assert sorted(got_emails) == sorted(want_emails)
    assert sorted(got_phones) == sorted(want_phones)
    assert not (set(got_emails) | set(got_phones)) & other_schools_contacts(LINCOLN)
    for mail in smtp.messages:
        assert "LOCKDOWN" in mail.subject or "CIERRE" in mail.subject
        assert "/ack/" in mail.body and "DRILL" not in mail.body
    spanish = {p.contact.email for p in audience if p.contact.language.value == "es"}
    assert spanish and all(
        "CIERRE DE EMERGENCIA" in m.subject for m in smtp.messages if m.to[0] in spanish
    )
    assert status["not_acknowledged"] and not status["never_reached"]
    assert {r["recipient_id"] for r in status["recipients"] if r["kind"] != "endpoint"} == {
        p.id for p in audience
    }
    # PA and signage through AnnouncementCommand; receipts per step on the topic.
    commands = of_type(events(kafka, catalog, codec, ANNOUNCEMENTS), "AnnouncementCommand")
    assert sorted(c["channel"] for c in commands) == ["DIGITAL_SIGNAGE", "PUBLIC_ADDRESS"]
    assert {c["recipient_id"] for c in commands} == {f"pa:{LINCOLN}", f"signage:{LINCOLN}"}
    topic = events(kafka, catalog, codec, NOTIFICATIONS)
    [request] = of_type(topic, "NotificationRequested")
    assert request["priority"] == "LIFE_SAFETY" and request["require_ack"]
    assert request["envelope"]["incident_id"] == incident_id
    receipts = of_type(topic, "DeliveryReceipt")
    email_receipts = {(r["recipient_id"], r["status"]) for r in receipts if r["channel"] == "EMAIL"}
    for person in audience:
        assert {(person.id, s) for s in ("QUEUED", "SENT", "DELIVERED")} <= email_receipts
    # The CAP document: valid CAP 1.2 (parse validates), Restricted, Actual, SRP event code.
    assert restricted.status_code == 200 and anonymous.status_code == 401
    alert = parse(restricted.content)
    assert alert.scope is Scope.RESTRICTED and alert.status is Status.ACTUAL
    assert alert.incidents == (incident_id,)
    assert {i.language for i in alert.infos} == {"en-US", "es-US"}
    assert all(c.value == "LOCKDOWN" for i in alert.infos for c in i.event_codes)


# -- fallback and escalation -------------------------------------------------------------------


def _staff_with_phone_and_email(school: str, index: int = 0) -> Any:
    found = [m for m in directory().school(school).staff if m.contact.phone and m.contact.email]
    return found[index]


def _delivery(status: dict[str, Any], recipient_id: str, channel: str, attempt: int = 1) -> Any:
    recipient = next(r for r in status["recipients"] if r["recipient_id"] == recipient_id)
    return next(
        (d for d in recipient["deliveries"] if d["channel"] == channel and d["attempt"] == attempt),
        None,
    )


def test_failed_sms_falls_back_to_email(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    codec: Codec,
    producer: EventProducer,
    smtp: SmtpSink,
    sim: ProviderSimProcess,
    tmp_path: Path,
) -> None:
    person = _staff_with_phone_and_email(WASHINGTON)
    sim.script(person.contact.phone, "undelivered", error_code=30003)
    request = notification_request(
        school=WASHINGTON,
        recipients=[{"recipient_id": person.id, "channels": ["SMS", "EMAIL"]}],
        priority="ROUTINE",  # one path at a time: email only after the SMS failed
    )
    with new_notify(kafka, catalog, tmp_path, smtp, sim) as notify:
        producer.publish(request)
        [mail] = wait_until(
            lambda: smtp.to(person.contact.email), timeout=60, what="the fallback email"
        )
        status = wait_until(
            lambda: (
                (s := notify.status(request["notification_id"]))
                and (_delivery(s, person.id, "EMAIL") or {}).get("status") == "DELIVERED"
                and s
            ),
            timeout=30,
            what="the email delivery recorded",
        )
    sms = _delivery(status, person.id, "SMS")
    email_delivery = _delivery(status, person.id, "EMAIL")
    assert sms["status"] == "FAILED" and sms["error"] == "30003 Unreachable destination handset"
    assert email_delivery["reason"] == "fallback"
    assert [m["to"] for m in sim.messages()] == [person.contact.phone]  # SMS was tried first
    assert mail.subject == request["headline"] and "/ack/" in mail.body
    receipts = of_type(events(kafka, catalog, codec, NOTIFICATIONS), "DeliveryReceipt")
    failed = [r for r in receipts if r["status"] == "FAILED"]
    assert [(r["channel"], r["error"]) for r in failed] == [
        ("SMS", "30003 Unreachable destination handset")
    ]


def test_unacknowledged_message_escalates_on_schedule_across_a_restart(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    codec: Codec,
    producer: EventProducer,
    smtp: SmtpSink,
    sim: ProviderSimProcess,
    tmp_path: Path,
) -> None:
    person = _staff_with_phone_and_email(LINCOLN, 3)
    phone = person.contact.phone
    request = notification_request(
        recipients=[{"recipient_id": person.id, "channels": []}],
        priority="LIFE_SAFETY",
        srp_action="SECURE",
    )
    nid = request["notification_id"]
    policy = {
        "SAFEHUB_NOTIFY__ACK_TIMEOUT_S": "1.0",
        "SAFEHUB_NOTIFY__ESCALATION_CAP_S": "1.5",
        "SAFEHUB_NOTIFY__MAX_ESCALATIONS": "2",
    }
    notify = new_notify(kafka, catalog, tmp_path, smtp, sim, **policy).start()
    try:
        producer.publish(request)
        wait_until(lambda: smtp.to(person.contact.email), timeout=60, what="first email")
        # Not acknowledged within ack_timeout_s: the first escalation is a voice call.
        [call] = wait_until(lambda: sim.calls(phone), timeout=30, what="escalation voice call")
        level1 = notify.status(nid)["recipients"][0]
        assert level1["escalation_level"] == 1 and level1["next_escalation_at"] is not None
        notify.kill()  # kill -9: the schedule lives in the store, not in memory
        notify.start()
        calls = wait_until(
            lambda: len(found := sim.calls(phone)) >= 2 and found,
            timeout=30,
            what="second escalation after the restart",
        )
        final = notify.status(nid)["recipients"][0]
        # The limit: two escalations, then no further schedule.
        assert final["escalation_level"] == 2 and final["next_escalation_at"] is None
        # The callee presses 1 on the second call: acknowledged through VOICE.
        pressed = sim.press(calls[-1]["sid"], "1")
        assert pressed["http_status"] == 200 and "Confirmed" in pressed["response"]
        acked = wait_until(
            lambda: (r := notify.status(nid)["recipients"][0])["acknowledged"] and r,
            timeout=15,
            what="acknowledged by keypress",
        )
    finally:
        notify.stop()
    assert acked["ack_channel"] == "VOICE"
    assert [d["reason"] for d in acked["deliveries"]] == [
        "initial",
        "initial",
        "escalation-1",
        "escalation-2",
    ]
    assert [d["channel"] for d in acked["deliveries"]][2:] == ["VOICE", "VOICE"]
    assert call["to"] == phone
    assert "SECURE" in str(call["said"]) or "ASEGURAR" in str(call["said"])
    acks = of_type(events(kafka, catalog, codec, NOTIFICATIONS), "NotificationAcknowledged")
    assert [(a["recipient_id"], a["channel"]) for a in acks] == [(person.id, "VOICE")]


# -- acknowledgements ---------------------------------------------------------------------------


def _lockdown_with_acks(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    producer: EventProducer,
    smtp: SmtpSink,
    sim: ProviderSimProcess,
    tmp_path: Path,
) -> tuple[NotifyProcess, str, dict[str, Any]]:
    """A lockdown at Washington; staff 0 clicks twice, 1 replies "1" twice, 2 does both."""
    staff = [m for m in directory().school(WASHINGTON).staff if m.contact.phone and m.contact.email]
    notify = new_notify(kafka, catalog, tmp_path, smtp, sim).start()
    incident_id = new_incident_id()
    producer.publish(
        incident(
            "IncidentOpened", incident_id=incident_id, school=WASHINGTON, srp_action="LOCKDOWN"
        )
    )
    want = emails_of(people(WASHINGTON, ("staff", "responders")))
    wait_until(lambda: {a for m in smtp.messages for a in m.to} >= want, timeout=60, what="emails")
    [nid] = only_notification(notify, incident_id)
    link = re.search(r"https?://\S+/ack/\S+", smtp.to(staff[0].contact.email)[0].body)
    assert link is not None
    url = link.group(0)
    answers: dict[str, Any] = {}
    with httpx.Client(timeout=15) as browser:
        answers["get"] = browser.get(url)  # a mail scanner's prefetch must not acknowledge
        answers["after_get"] = notify.status(nid)["totals"]["acknowledged"]
        answers["posts"] = [browser.post(url), browser.post(url)]
        answers["forged"] = browser.post(url[:-3] + "AAA")
        answers["unsigned"] = browser.post(
            f"{notify.base_url}/providers/twilio/inbound",
            data={"From": staff[1].contact.phone, "Body": "1", "MessageSid": "SMforged"},
        )
        third = smtp.to(staff[2].contact.email)[0].body
        link3 = re.search(r"https?://\S+/ack/\S+", third)
        assert link3 is not None
        answers["both"] = [browser.post(link3.group(0))]
    answers["replies"] = [sim.reply(staff[1].contact.phone, "1") for _ in range(2)]
    answers["both"].append(sim.reply(staff[2].contact.phone, "1"))
    answers["status"] = wait_until(
        lambda: (s := notify.status(nid))["totals"]["acknowledged"] == 3 and s,
        timeout=30,
        what="three acknowledgements",
    )
    answers["staff"] = staff[:3]
    return notify, nid, answers


def test_acknowledgements_are_recorded_once(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    codec: Codec,
    producer: EventProducer,
    smtp: SmtpSink,
    sim: ProviderSimProcess,
    tmp_path: Path,
) -> None:
    notify, nid, answers = _lockdown_with_acks(kafka, catalog, producer, smtp, sim, tmp_path)
    notify.stop()
    staff = answers["staff"]
    assert answers["get"].status_code == 200 and "<form method=post" in answers["get"].text
    assert answers["after_get"] == 0
    assert [r.status_code for r in answers["posts"]] == [200, 200]
    assert "recorded" in answers["posts"][0].text and "Already" in answers["posts"][1].text
    assert answers["forged"].status_code == 404
    assert answers["unsigned"].status_code == 403
    assert "Confirmed" in answers["replies"][0]["response"]
    assert "Already confirmed" in answers["replies"][1]["response"]
    status = answers["status"]
    acked = {r["recipient_id"]: r for r in status["recipients"] if r["acknowledged"]}
    assert set(acked) == {s.id for s in staff}
    assert acked[staff[0].id]["ack_channel"] == "EMAIL"
    assert acked[staff[1].id]["ack_channel"] == "SMS"
    assert set(status["not_acknowledged"]) == {
        r["recipient_id"] for r in status["recipients"] if r["kind"] != "endpoint"
    } - set(acked)
    acks = of_type(events(kafka, catalog, codec, NOTIFICATIONS), "NotificationAcknowledged")
    assert sorted(a["recipient_id"] for a in acks) == sorted(s.id for s in staff)
    assert {a["notification_id"] for a in acks} == {nid}


def test_no_contact_details_in_any_event_or_log_line(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    producer: EventProducer,
    smtp: SmtpSink,
    sim: ProviderSimProcess,
    tmp_path: Path,
) -> None:
    notify, _nid, _answers = _lockdown_with_acks(kafka, catalog, producer, smtp, sim, tmp_path)
    # A refused SMS and a malformed request too: error paths must not leak either.
    producer.publish(notification_request(audiences=["staff:sch-nowhere"]))
    notify.stop()
    secrets: set[str] = set()
    for district in directory().districts:
        for school in district.schools:
            for p in [*school.staff, *school.guardians, *school.responders]:
                c = p.contact
                secrets |= {v for v in (c.email, c.phone, c.push_token) if v}
                if c.phone:
                    secrets.add(c.phone.lstrip("+"))
    log_text = notify.log_file.read_text(errors="replace")
    assert "notification fanned out" in log_text  # the log is there and was written
    leaked_log = sorted(s for s in secrets if s in log_text)
    assert leaked_log == []
    for topic in (NOTIFICATIONS, ANNOUNCEMENTS, "safehub.deadletter.v1"):
        records = read_all(kafka, catalog.name(topic))
        assert records or topic != NOTIFICATIONS
        raw = b"".join(
            (r.value() or b"") + b"".join(v for _, v in (r.headers() or []) if v) for r in records
        )
        leaked = sorted(s for s in secrets if s.encode() in raw)
        assert leaked == [], f"contact details on {topic}"


# -- drills and ALL CLEAR ----------------------------------------------------------------------


def test_drill_says_drill_in_every_message_and_all_clear_reaches_the_same_audience(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    codec: Codec,
    producer: EventProducer,
    smtp: SmtpSink,
    sim: ProviderSimProcess,
    tmp_path: Path,
) -> None:
    staff = people(RIVERSIDE)
    want_emails, want_phones = emails_of(staff), phones_of(staff)
    incident_id = new_incident_id()
    opened = incident("IncidentOpened", incident_id=incident_id, school=RIVERSIDE, exercise=True)
    with new_notify(kafka, catalog, tmp_path, smtp, sim) as notify:
        producer.publish(opened)
        wait_until(lambda: len(smtp.messages) >= len(want_emails), timeout=60, what="drill emails")
        producer.publish(opened)  # redelivered: must not notify twice
        producer.publish(
            incident(
                "IncidentCleared",
                incident_id=incident_id,
                version=2,
                school=RIVERSIDE,
                exercise=True,
            )
        )
        wait_until(
            lambda: (
                len(smtp.messages) >= 2 * len(want_emails)
                and len(sim.messages()) >= 2 * len(want_phones)
            ),
            timeout=60,
            what="ALL CLEAR to the same audience",
        )
        nids = only_notification(notify, incident_id, 2)
        assert notify.http is not None
        caps = [
            parse(notify.http.get(f"/cap/alerts/safehub-{n}.xml").raise_for_status().content)
            for n in nids
        ]
    mails, texts = list(smtp.messages), sim.messages()
    # Same people twice (action, then ALL CLEAR); no responders for a drill; no one else.
    assert sorted(a for m in mails for a in m.to) == sorted([*want_emails, *want_emails])
    assert sorted(m["to"] for m in texts) == sorted([*want_phones, *want_phones])
    for mail in mails:
        assert "DRILL" in mail.subject and "DRILL" in mail.body
    for text in texts:
        assert "DRILL" in text["body"]
    clear = [m for m in mails if "ALL CLEAR" in m.subject or "FIN DE LA EMERGENCIA" in m.subject]
    assert {a for m in clear for a in m.to} == want_emails
    found = events(kafka, catalog, codec, NOTIFICATIONS)
    commands = of_type(events(kafka, catalog, codec, ANNOUNCEMENTS), "AnnouncementCommand")
    assert len(commands) == 4 and all("DRILL" in c["text"] for c in commands)
    assert all(e["envelope"]["exercise"] for e in [*found, *commands])
    requests = of_type(found, "NotificationRequested")
    assert [r["srp_action"] for r in requests] == ["LOCKDOWN", "ALL_CLEAR"]
    assert requests[0]["audiences"] == requests[1]["audiences"]
    assert not any(a.startswith("responders:") for a in requests[0]["audiences"])
    first, second = caps
    assert first.status is Status.EXERCISE and second.status is Status.EXERCISE
    assert [r.identifier for r in second.references] == [first.identifier]
    assert second.msg_type.value == "Update" and first.msg_type.value == "Alert"


# -- a fan-out cut short ---------------------------------------------------------------------


def test_a_fan_out_cut_short_is_completed_when_the_request_comes_again(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    producer: EventProducer,
    smtp: SmtpSink,
    tmp_path: Path,
) -> None:
    """Recipients are stored chunk by chunk; what a crash between chunks leaves (the first
    recipients stored and sent, the request not yet committed) is completed on redelivery:
    the others get their message, the stored ones get no second one."""
    staff = [m for m in directory().school(WASHINGTON).staff if m.contact.email]
    request = notification_request(
        school=WASHINGTON, audiences=[f"staff:{WASHINGTON}"], priority="ROUTINE"
    )
    notification_id = request["notification_id"]
    done, rest = staff[:5], staff[5:]
    now = time.time()
    store = Store(f"sqlite:///{tmp_path / 'notify' / 'notify.sqlite3'}")
    stored = store.create_notification(
        NotificationRow(
            notification_id=notification_id,
            request_event_id=request["envelope"]["event_id"],
            incident_id=None,
            tenant=request["envelope"]["tenant"],
            school_id=WASHINGTON,
            building=None,
            srp_action=None,
            priority="ROUTINE",
            exercise=False,
            require_ack=True,
            headline=request["headline"],
            body=request["body"],
            audiences=request["audiences"],
            cap_identifier=None,
            created_at=now,
        ),
        [
            RecipientRow(notification_id, m.id, "staff", ["EMAIL"], None, None, 0, None)
            for m in done
        ],
        [
            DeliveryRow(
                stable_id(notification_id, m.id, "EMAIL", "1"),
                notification_id,
                m.id,
                "EMAIL",
                1,
                "SENT",
                f"<{m.id}@before-the-crash>",
                None,
                "initial",
                now,
                now,
            )
            for m in done
        ],
        [],
    )
    store.close()
    assert stored
    with new_notify(kafka, catalog, tmp_path, smtp, None) as notify:
        producer.publish(request)
        wait_until(
            lambda: {a for m in smtp.messages for a in m.to} >= emails_of(rest),
            timeout=60,
            what="the recipients not stored before the crash",
        )
        status = wait_until(
            lambda: (s := notify.status(notification_id))["totals"]["reached"] == len(staff) and s,
            timeout=30,
            what="every recipient recorded",
        )
    assert sorted(a for m in smtp.messages for a in m.to) == sorted(emails_of(rest))
    recipients = {r["recipient_id"]: r for r in status["recipients"]}
    for member in done:  # untouched: not sent again
        assert [d["status"] for d in recipients[member.id]["deliveries"]] == ["SENT"]


# -- bad input ---------------------------------------------------------------------------------


def test_malformed_requests_are_dead_lettered_with_the_reason(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    codec: Codec,
    producer: EventProducer,
    smtp: SmtpSink,
    tmp_path: Path,
) -> None:
    bad = {
        "unknown school 'sch-nowhere'": notification_request(audiences=["staff:sch-nowhere"]),
        "unknown audience 'teachers:sch-lincoln-hs'": notification_request(
            audiences=["teachers:sch-lincoln-hs"]
        ),
        "unknown role 'janitor'": notification_request(
            audiences=["staff:sch-lincoln-hs:role=janitor"]
        ),
        "unknown recipient 'stf-nobody'": notification_request(
            recipients=[{"recipient_id": "stf-nobody", "channels": ["EMAIL"]}]
        ),
        "outside the request's district": notification_request(
            audiences=["staff:sch-riverside-es"]
        ),
    }
    good = notification_request(audiences=["staff:sch-lincoln-hs:role=nurse"], require_ack=False)
    nurses = [m for m in directory().school(LINCOLN).staff if m.role.value == "nurse"]
    with new_notify(kafka, catalog, tmp_path, smtp, None) as _notify:
        for request in bad.values():
            producer.publish(request)
        producer.publish(good)  # the service carries on after bad input
        wait_until(lambda: len(smtp.messages) >= len(nurses), timeout=60, what="the good request")
        dead = wait_until(
            lambda: (
                len(found := read_all(kafka, catalog.name("safehub.deadletter.v1"))) >= len(bad)
                and found
            ),
            timeout=30,
            what="dead letters",
        )
    reasons = [dict(r.headers())["safehub-dlq-reason"].decode() for r in dead]
    for expected, request in bad.items():
        assert any(
            expected in reason and request["notification_id"] in reason for reason in reasons
        ), (expected, reasons)
    assert sorted(a for m in smtp.messages for a in m.to) == sorted(emails_of(nurses))
