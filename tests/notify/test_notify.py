"""The notify service as a real process, against a real broker, a real SMTP server (aiosmtpd)
and the Twilio-compatible provider simulator (a real process speaking Twilio's wire format).

Covers: an SRP action reaching every staff member of the school and nobody else (email and
SMS, PA and signage commands, CAP), fallback from a failed SMS to email, escalation of an
unacknowledged message on schedule (surviving a kill -9), acknowledgements recorded once,
drills marked in every message, ALL CLEAR to the same audience, malformed requests
dead-lettered with the reason, and no contact details in any event or log line.

Families and the public: a real incident's message to guardians is held until an
administrator of the school approves it (then it reaches every guardian of that school in
their language and becomes the Public CAP alert on the Atom feed and at the CAP endpoint);
a rejection, a drill, a refused or a repeated decision send nothing.
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
from safehub.kernel.envelope import new_event
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import TopicCatalog
from safehub.standards.cap import Scope, Status, parse
from services.notify.dispatcher import notify_id
from services.notify.store import DeliveryRow, NotificationRow, RecipientRow, Store
from tests.support.kafka import read_all
from tests.support.notify import (
    CapSink,
    NotifyProcess,
    PushGateway,
    SmtpSink,
    directory,
    incident,
    new_incident_id,
    notification_decided,
    notification_request,
)
from tests.support.notify import people as load_people
from tests.support.sms import ProviderSimProcess
from tests.support.waiting import wait_until

LINCOLN = "sch-lincoln-hs"
WASHINGTON = "sch-washington-ms"
RIVERSIDE = "sch-riverside-es"
NOTIFICATIONS = "safehub.notifications.v1"
ANNOUNCEMENTS = "safehub.announcements.v1"


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
    s = load_people().school(school)
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
    found: set[str] = set()
    for s in load_people().schools:
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
    found = [m for m in load_people().school(school).staff if m.contact.phone and m.contact.email]
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
    staff = [
        m for m in load_people().school(WASHINGTON).staff if m.contact.phone and m.contact.email
    ]
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
    # A reply answers an SMS the phone received: the simulator must have delivered it first.
    for member in staff[1:3]:
        wait_until(lambda m=member: sim.messages(to=m.contact.phone), what="the SMS to reply to")
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
    for school in load_people().schools:
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
        # The ALL CLEAR was handled after the action's hook call: a family message would be here.
        held = notify.held(RIVERSIDE)
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
    assert held == []  # a drill prepares no family or public message
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
    staff = [m for m in load_people().school(WASHINGTON).staff if m.contact.email]
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
                notify_id(notification_id, m.id, "EMAIL", "1"),
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
    nurses = [m for m in load_people().school(LINCOLN).staff if m.role.value == "nurse"]
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


def test_records_notify_cannot_process_are_dead_lettered_at_once_with_the_reason(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    producer: EventProducer,
    smtp: SmtpSink,
    tmp_path: Path,
) -> None:
    """Issue 17 item 15: nothing is passed over in silence, nothing is retried in vain."""
    lost = incident("IncidentOpened", incident_id=new_incident_id(), srp_action="LOCKDOWN")
    lost["envelope"]["tenant"]["school"] = "sch-nowhere"
    unknown_kind = notification_decided(
        "ntf-held-somewhere", decision="UNKNOWN", decided_by="stf-lincoln-000", incident_id=None
    )
    stray = new_event(
        "DeliveryReceipt",
        source="gateway",
        tenant=directory().tenant(LINCOLN),
        payload={
            "notification_id": "ntf-never-made",
            "recipient_id": f"pa:{LINCOLN}",
            "channel": "PUBLIC_ADDRESS",
            "status": "DELIVERED",
            "attempt": 1,
            "provider_message_id": None,
            "error": None,
        },
    )
    with new_notify(kafka, catalog, tmp_path, smtp, None):
        for record in (lost, unknown_kind, stray):
            producer.publish(record)
        dead = wait_until(
            lambda: (
                len(found := read_all(kafka, catalog.name("safehub.deadletter.v1"))) >= 3 and found
            ),
            timeout=60,
            what="three dead letters",
        )
    letters = {h["safehub-event-id"].decode(): h for h in (dict(r.headers()) for r in dead)}
    expected = {
        lost["envelope"]["event_id"]: (
            "notify-incidents",
            f"incident '{lost['incident_id']}': unknown school 'sch-nowhere'",
        ),
        unknown_kind["envelope"]["event_id"]: ("notify-requests", "'UNKNOWN', not APPROVED"),
        stray["envelope"]["event_id"]: (
            "notify-requests",
            "receipt for unknown notification 'ntf-never-made'",
        ),
    }
    for event_id, (group, reason) in expected.items():
        headers = letters[event_id]
        assert headers["safehub-dlq-group"].decode().endswith(group)
        assert reason in headers["safehub-dlq-reason"].decode(), headers["safehub-dlq-reason"]
        assert headers["safehub-dlq-error-type"] == b"HandlerError"
        assert headers["safehub-dlq-attempts"] == b"1"  # permanent: not retried


# -- families and the public: held until an administrator approves ----------------------------

#: Text that must never come back in an error answer.
NOT_ECHOED = "TEXT-THAT-MUST-NOT-BE-ECHOED"


@pytest.fixture
def cap_sink() -> Iterator[CapSink]:
    with CapSink() as sink:
        yield sink


def guardians_of(school: str) -> list[Any]:
    return list(load_people().school(school).guardians)


def family_contacts(school: str | None = None) -> set[str]:
    """Guardians' emails and phones (of one school, or of every school)."""
    found: set[str] = set()
    for s in load_people().schools:
        if school is None or s.id == school:
            for g in s.guardians:
                found |= {v for v in (g.contact.email, g.contact.phone) if v}
    return found


def sent_to(smtp: SmtpSink, sim: ProviderSimProcess, contacts: set[str]) -> list[str]:
    """Every email and SMS address among ``contacts`` that got something (with repeats)."""
    return [a for m in smtp.messages for a in m.to if a in contacts] + [
        m["to"] for m in sim.messages() if m["to"] in contacts
    ]


def administrator(school: str, index: int = 0) -> Any:
    return [m for m in load_people().school(school).staff if m.role.value == "administrator"][index]


def teacher(school: str) -> Any:
    return next(m for m in load_people().school(school).staff if m.role.value == "teacher")


def lockdown_held(
    notify: NotifyProcess,
    producer: EventProducer,
    smtp: SmtpSink,
    sim: ProviderSimProcess,
    school: str,
) -> tuple[str, dict[str, Any]]:
    """A real lockdown: wait for the staff messages and the held family message."""
    incident_id = new_incident_id()
    producer.publish(
        incident("IncidentOpened", incident_id=incident_id, school=school, srp_action="LOCKDOWN")
    )
    staff = people(school, ("staff", "responders"))
    wait_until(
        lambda: (
            {a for m in smtp.messages for a in m.to} >= emails_of(staff)
            and {m["to"] for m in sim.messages()} >= phones_of(staff)
        ),
        timeout=60,
        what="the staff lockdown messages",
    )
    [held] = wait_until(lambda: notify.held(school), timeout=30, what="the held family message")
    return incident_id, held


def settle(producer: EventProducer, smtp: SmtpSink, school: str, incident_id: str) -> None:
    """A request on the incident's partition to one staff member: once its email is in, the
    requests consumer has handled every decision and request published before it."""
    member = next(m for m in load_people().school(school).staff if m.contact.email)
    request = notification_request(
        school=school,
        recipients=[{"recipient_id": member.id, "channels": ["EMAIL"]}],
        priority="ROUTINE",
        require_ack=False,
        headline=f"marker {new_incident_id()}",
    )
    request["envelope"]["incident_id"] = incident_id  # same key, same partition
    producer.publish(request)
    wait_until(
        lambda: any(m.subject == request["headline"] for m in smtp.to(member.contact.email)),
        timeout=60,
        what="the marker message",
    )


def test_a_family_message_is_held_until_an_administrator_approves_it(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    codec: Codec,
    producer: EventProducer,
    smtp: SmtpSink,
    sim: ProviderSimProcess,
    cap_sink: CapSink,
    tmp_path: Path,
) -> None:
    admin = administrator(LINCOLN)
    notify = new_notify(
        kafka, catalog, tmp_path, smtp, sim, SAFEHUB_NOTIFY__CAP_ENDPOINT_URL=cap_sink.url
    ).start()
    try:
        incident_id, held = lockdown_held(notify, producer, smtp, sim, LINCOLN)
        nid = held["notification_id"]
        forbidden = {
            "is a teacher; only an administrator of the school may": notify.decide(
                nid, decision="APPROVED", decided_by=teacher(LINCOLN).id
            ),
            f"is an administrator of {WASHINGTON}, not of {LINCOLN}": notify.decide(
                nid, decision="APPROVED", decided_by=administrator(WASHINGTON).id
            ),
        }
        refused = {
            "unknown held notification 'ntf-unknown'": notify.decide(
                "ntf-unknown", decision="APPROVED", decided_by=admin.id
            ),
            "decision must be APPROVED or REJECTED": notify.decide(
                nid, decision="MAYBE", decided_by=admin.id
            ),
            "headline and body can only be edited when approving": notify.decide(
                nid, decision="REJECTED", decided_by=admin.id, body=NOT_ECHOED
            ),
            "body is longer than 1600 characters": notify.decide(
                nid, decision="APPROVED", decided_by=admin.id, body=NOT_ECHOED * 100
            ),
        }
        anonymous = httpx.post(
            f"{notify.base_url}/notifications/{nid}/decision",
            json={"decision": "APPROVED", "decided_by": admin.id},
        )
        # Nothing reached a family before the decision (every request before this is handled).
        settle(producer, smtp, LINCOLN, incident_id)
        before = sent_to(smtp, sim, family_contacts())
        feed_before = notify.feed()
        approved = notify.decide(nid, decision="APPROVED", decided_by=admin.id)
        want = family_contacts(LINCOLN)
        wait_until(
            lambda: set(sent_to(smtp, sim, want)) == want,
            timeout=60,
            what="an email and an SMS to every guardian of the school",
        )
        [public] = wait_until(notify.feed, timeout=30, what="the public alert on the feed")
        posted = wait_until(
            lambda: [a for a in cap_sink.received() if a.scope is Scope.PUBLIC],
            timeout=30,
            what="the public alert at the CAP endpoint",
        )
        again = notify.decide(nid, decision="REJECTED", decided_by=administrator(LINCOLN, 1).id)
        still_held = notify.held(LINCOLN)
        staff_nid = next(
            n["notification_id"]
            for n in notify.notifications(incident_id)
            if n["notification_id"] != nid and n["srp_action"] == "LOCKDOWN"
        )
        family_status = notify.status(nid)
    finally:
        notify.stop()
    # The held message: the families' text, in both languages, nothing for staff.
    assert held["status"] == "held" and held["srp_action"] == "LOCKDOWN"
    assert held["audiences"] == [f"guardians:{LINCOLN}"] and held["incident_id"] == incident_id
    assert set(held["texts"]) == {"en-US", "es-US"}
    assert "do not come to the school" in held["body"] and "Locks, lights" not in held["body"]
    # Refusals name the reason and never echo the text.
    for reason, answer in refused.items():
        assert answer.status_code == 400, (reason, answer.text)
        assert reason in answer.json()["error"] and NOT_ECHOED not in answer.text
    for reason, answer in forbidden.items():
        assert answer.status_code == 403, (reason, answer.text)
        assert reason in answer.json()["error"]
    assert anonymous.status_code == 401
    assert before == [] and feed_before == []
    # Approved: every guardian of the school once per channel, nobody of another school.
    assert approved.status_code == 202, approved.text
    guardians = guardians_of(LINCOLN)
    got = sent_to(smtp, sim, family_contacts())
    assert sorted(got) == sorted(want)
    for guardian in guardians:
        [mail] = smtp.to(guardian.contact.email)
        [sms] = [m for m in sim.messages() if m["to"] == guardian.contact.phone]
        if guardian.contact.language.value == "es":
            assert mail.subject == "Cierre de emergencia en Lincoln High School"
            assert "no venga a la escuela" in mail.body and "no venga a la escuela" in sms["body"]
        else:
            assert mail.subject == "Lockdown at Lincoln High School"
            assert "do not come to the school" in mail.body
            assert "do not come to the school" in sms["body"]
        for text in (mail.body, sms["body"]):
            assert "Locks, lights" not in text and "/ack/" not in text and "Reply 1" not in text
    assert {g.contact.language.value for g in guardians} == {"en", "es"}
    recipients = {r["recipient_id"] for r in family_status["recipients"]}
    assert recipients == {g.id for g in guardians} and not family_status["require_ack"]
    # The public CAP alert: valid CAP 1.2 (parsed against the XSD), Public, Actual.
    assert public.identifier == f"safehub-{nid}" and posted[0].identifier == public.identifier
    assert public.scope is Scope.PUBLIC and public.status is Status.ACTUAL
    assert public.msg_type.value == "Alert" and public.restriction is None
    assert public.incidents == (incident_id,)
    assert {i.language for i in public.infos} == {"en-US", "es-US"}
    for info in public.infos:
        assert [(c.name, c.value) for c in info.event_codes] == [("SRP", "LOCKDOWN")]
        assert info.audience == "Parents, guardians and the public"
        assert info.instruction and "Locks, lights" not in info.instruction
    assert f"safehub-{staff_nid}" not in {a.identifier for a in cap_sink.received()} - {
        a.identifier for a in cap_sink.received() if a.scope is Scope.RESTRICTED
    }
    # The record: who released what, and when; a second decision is refused.
    assert again.status_code == 400
    assert f"already decided (approved by {admin.id})" in again.json()["error"]
    assert still_held == []
    topic = events(kafka, catalog, codec, NOTIFICATIONS)
    [decided] = of_type(topic, "NotificationDecided")
    assert (decided["notification_id"], decided["decision"], decided["decided_by"]) == (
        nid,
        "APPROVED",
        admin.id,
    )
    assert decided["envelope"]["incident_id"] == incident_id
    [released] = [r for r in of_type(topic, "NotificationRequested") if r["notification_id"] == nid]
    assert released["requested_by"] == admin.id
    assert released["envelope"]["causation_id"] == decided["envelope"]["event_id"]
    assert released["priority"] == "URGENT" and released["require_ack"] is False
    assert released["audiences"] == [f"guardians:{LINCOLN}"]
    assert released["envelope"]["incident_id"] == incident_id
    assert not released["envelope"]["exercise"]


def test_decisions_count_once_and_all_clear_prepares_a_public_update(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    codec: Codec,
    producer: EventProducer,
    smtp: SmtpSink,
    sim: ProviderSimProcess,
    tmp_path: Path,
) -> None:
    first_admin, second_admin = administrator(WASHINGTON), administrator(WASHINGTON, 1)
    want = family_contacts(WASHINGTON)
    edited = {
        "headline": "All clear at Washington Middle School / Fin de la emergencia",
        "body": "Pick up at the north gate from 3 pm. / Recogida en la puerta norte desde las 3.",
    }
    with new_notify(kafka, catalog, tmp_path, smtp, sim) as notify:
        incident_id, held = lockdown_held(notify, producer, smtp, sim, WASHINGTON)
        lockdown_nid = held["notification_id"]
        accepted = notify.decide(lockdown_nid, decision="APPROVED", decided_by=first_admin.id)
        wait_until(
            lambda: set(sent_to(smtp, sim, want)) == want, timeout=60, what="the family messages"
        )
        # The same decision again (a redelivery, byte for byte) and a different later one.
        [record] = [
            r
            for r in read_all(kafka, catalog.name(NOTIFICATIONS))
            if dict(r.headers())["safehub-event-type"] == b"safehub.events.NotificationDecided"
        ]
        producer.publish_raw(record.topic(), record.key(), record.value(), record.headers())
        producer.publish(
            notification_decided(
                lockdown_nid,
                decision="REJECTED",
                decided_by=second_admin.id,
                incident_id=incident_id,
                school=WASHINGTON,
            )
        )
        settle(producer, smtp, WASHINGTON, incident_id)
        after_repeats = sorted(sent_to(smtp, sim, want))
        # ALL CLEAR of the real incident: staff at once, families once approved.
        producer.publish(
            incident("IncidentCleared", incident_id=incident_id, version=2, school=WASHINGTON)
        )
        [clear] = wait_until(
            lambda: notify.held(WASHINGTON), timeout=60, what="the held ALL CLEAR message"
        )
        released = notify.decide(
            clear["notification_id"], decision="APPROVED", decided_by=second_admin.id, **edited
        )
        wait_until(
            lambda: len(sent_to(smtp, sim, want)) == 2 * len(want),
            timeout=60,
            what="the ALL CLEAR to every guardian",
        )
        alerts = wait_until(
            lambda: len(found := notify.feed()) == 2 and found, timeout=30, what="two public alerts"
        )
    store = Store(f"sqlite:///{tmp_path / 'notify' / 'notify.sqlite3'}")
    lockdown_record = store.held_message(lockdown_nid)
    store.close()
    assert accepted.status_code == 202 and released.status_code == 202
    # Redelivered and competing decisions: nothing new (one message per guardian and channel).
    assert after_repeats == sorted(want)
    assert lockdown_record is not None
    assert (lockdown_record.status, lockdown_record.decided_by) == ("approved", first_admin.id)
    topic = events(kafka, catalog, codec, NOTIFICATIONS)
    assert len(of_type(topic, "NotificationDecided")) == 4  # approved, repeated, rejected, clear
    family_requests = [
        r
        for r in of_type(topic, "NotificationRequested")
        if r["audiences"] == [f"guardians:{WASHINGTON}"]
    ]
    assert [(r["srp_action"], r["requested_by"]) for r in family_requests] == [
        ("LOCKDOWN", first_admin.id),
        ("ALL_CLEAR", second_admin.id),
    ]
    # The edited ALL CLEAR went out as written, to every guardian in either language.
    assert clear["srp_action"] == "ALL_CLEAR" and clear["incident_id"] == incident_id
    for guardian in guardians_of(WASHINGTON):
        last = smtp.to(guardian.contact.email)[-1]
        assert (last.subject, last.body.strip()) == (edited["headline"], edited["body"])
    # The public thread: the ALL CLEAR is an Update referencing the public lockdown alert only.
    update, alert = alerts  # newest first
    assert alert.identifier == f"safehub-{lockdown_nid}" and alert.msg_type.value == "Alert"
    assert update.msg_type.value == "Update" and update.scope is Scope.PUBLIC
    assert [r.identifier for r in update.references] == [alert.identifier]
    [info] = update.infos  # edited text: one info, as written
    assert (info.headline, info.description) == (edited["headline"], edited["body"])
    assert [(c.name, c.value) for c in info.event_codes] == [("SRP", "ALL_CLEAR")]


def test_a_rejected_family_message_sends_nothing_and_bad_decisions_are_dead_lettered(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    codec: Codec,
    producer: EventProducer,
    smtp: SmtpSink,
    sim: ProviderSimProcess,
    tmp_path: Path,
) -> None:
    admin = administrator(RIVERSIDE)
    with new_notify(kafka, catalog, tmp_path, smtp, sim) as notify:
        incident_id, held = lockdown_held(notify, producer, smtp, sim, RIVERSIDE)
        nid = held["notification_id"]
        # Straight on the bus, past the API's checks: refused by the consumer too.
        for decided_by, target in [(teacher(RIVERSIDE).id, nid), (admin.id, "ntf-unknown")]:
            producer.publish(
                notification_decided(
                    target,
                    decision="APPROVED",
                    decided_by=decided_by,
                    incident_id=incident_id,
                    school=RIVERSIDE,
                )
            )
        dead = wait_until(
            lambda: (
                len(found := read_all(kafka, catalog.name("safehub.deadletter.v1"))) >= 2 and found
            ),
            timeout=30,
            what="two dead-lettered decisions",
        )
        rejected = notify.decide(
            nid, decision="REJECTED", decided_by=admin.id, note="Police asked for no message yet."
        )
        wait_until(lambda: notify.held(RIVERSIDE) == [], timeout=30, what="the rejection applied")
        settle(producer, smtp, RIVERSIDE, incident_id)
        late = notify.decide(nid, decision="APPROVED", decided_by=admin.id)
        feed = notify.feed()
    reasons = [dict(r.headers())["safehub-dlq-reason"].decode() for r in dead]
    assert any(f"'{teacher(RIVERSIDE).id}' is a teacher" in r for r in reasons), reasons
    assert any("unknown held notification 'ntf-unknown'" in r for r in reasons), reasons
    assert rejected.status_code == 202
    assert sent_to(smtp, sim, family_contacts()) == [] and feed == []
    assert late.status_code == 400
    assert f"already decided (rejected by {admin.id})" in late.json()["error"]
    topic = events(kafka, catalog, codec, NOTIFICATIONS)
    assert not [r for r in of_type(topic, "NotificationRequested") if r["notification_id"] == nid]
    [decision] = [
        d for d in of_type(topic, "NotificationDecided") if d["envelope"]["source"] == "notify"
    ]
    assert (decision["decision"], decision["decided_by"], decision["note"]) == (
        "REJECTED",
        admin.id,
        "Police asked for no message yet.",
    )
    store = Store(f"sqlite:///{tmp_path / 'notify' / 'notify.sqlite3'}")
    record = store.held_message(nid)
    store.close()
    assert record is not None and record.status == "rejected" and record.released_body is None


def test_app_push_goes_through_the_webhook_and_its_button_acknowledges(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    codec: Codec,
    producer: EventProducer,
    smtp: SmtpSink,
    tmp_path: Path,
) -> None:
    # Staff without a phone but with the app: a life-safety message goes by push + e-mail.
    app_only = {
        m.contact.push_token: m
        for m in load_people().school(LINCOLN).staff
        if m.contact.push_token and not m.contact.phone
    }
    assert app_only, "the demo directory has staff reachable by app only"
    gateway = PushGateway()
    with (
        gateway as push_url,
        new_notify(
            kafka, catalog, tmp_path, smtp, None, SAFEHUB_NOTIFY__PUSH_URL=push_url
        ) as notify,
    ):
        incident_id = new_incident_id()
        producer.publish(incident("IncidentOpened", incident_id=incident_id, srp_action="LOCKDOWN"))
        wait_until(
            lambda: set(app_only) <= {body["token"] for _, body in gateway.received},
            timeout=60,
            what="a push to every staff member who has only the app",
        )
        headers, body = next((h, b) for h, b in gateway.received if b["token"] in app_only)
        member = app_only[body["token"]]
        assert body["recipient_id"] == member.id and body["exercise"] is False
        assert "traceparent" in {k.lower() for k in headers}, "the webhook call is traced"
        # The app's button posts the acknowledgement link it was given.
        assert httpx.post(body["ack_url"], timeout=10).status_code == 200
        assert httpx.post(body["ack_url"], timeout=10).status_code == 200
        [nid] = only_notification(notify, incident_id)
        status = wait_until(
            lambda: (s := notify.status(nid))["totals"]["acknowledged"] >= 1 and s,
            what="the acknowledgement recorded",
        )
        mine = next(r for r in status["recipients"] if r["recipient_id"] == member.id)
        assert mine["acknowledged"] and mine["ack_channel"] == "PUSH"
    acks = [
        e
        for e in of_type(
            events(kafka, catalog, codec, "safehub.notifications.v1"), "NotificationAcknowledged"
        )
        if e["recipient_id"] == member.id
    ]
    assert len(acks) == 1
