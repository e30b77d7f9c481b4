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
from tests.support.kafka import read_all
from tests.support.notify import (
    STATUS_TOKEN,
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


def start_notify(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    tmp_path: Path,
    smtp: SmtpSink,
    sim: ProviderSimProcess | None,
    **env: str,
) -> NotifyProcess:
    return NotifyProcess(kafka, catalog, tmp_path / "notify", smtp=smtp, sim=sim, **env).start()


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
        lambda: [n for n in notify.notifications(incident_id)] if len(
            notify.notifications(incident_id)
        ) >= count else None,
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
    notify = start_notify(kafka, catalog, tmp_path, smtp, sim)
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
            lambda: (s := notify.status(notification_id))["totals"]["reached"] == len(audience)
            and s,
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
    email_receipts = {
        (r["recipient_id"], r["status"]) for r in receipts if r["channel"] == "EMAIL"
    }
    for person in audience:
        assert {(person.id, s) for s in ("QUEUED", "SENT", "DELIVERED")} <= email_receipts
    # The CAP document: valid CAP 1.2 (parse validates), Restricted, Actual, SRP event code.
    assert restricted.status_code == 200 and anonymous.status_code == 401
    alert = parse(restricted.content)
    assert alert.scope is Scope.RESTRICTED and alert.status is Status.ACTUAL
    assert alert.incidents == (incident_id,)
    assert {i.language for i in alert.infos} == {"en-US", "es-US"}
    assert all(c.value == "LOCKDOWN" for i in alert.infos for c in i.event_codes)
