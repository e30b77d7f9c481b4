"""Who may use notify's HTTP API, and what a provider callback must look like (issue 17,
items 13 and 14), against the notify service as a real process, a real broker, a real SMTP
server and the Twilio-compatible provider simulator.

* Every route that reads people or decides (status, notification list, held messages,
  Restricted CAP, the decision) answers 401 without a known bearer token and 403 for a
  teacher's or another school's administrator's; a decision without credentials releases
  nothing. The approver is the token's holder, never a typed ``decided_by``.
* Public routes stay public: the Atom feed, Public CAP documents, acknowledgement links.
* A provider callback that is not UTF-8 form data is refused with 400 before anything
  decodes it, and no phone number reaches the log or any topic.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from safehub.kernel.bus import EventProducer
from safehub.kernel.codec import Codec
from safehub.kernel.errors import ConfigError
from safehub.kernel.live_people import LivePeople
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import TopicCatalog
from services.notify.auth import ApiAuth, AuthError, Operator, OperatorsFile, token_sha256
from services.notify.dispatcher import notify_id
from tests.directory.helpers import person_changed
from tests.support.kafka import read_all
from tests.support.notify import (
    STATUS_TOKEN,
    NotifyProcess,
    SmtpSink,
    incident,
    new_incident_id,
    notification_request,
    people,
)
from tests.support.sms import ProviderSimProcess
from tests.support.waiting import wait_until

LINCOLN = "sch-lincoln-hs"
WASHINGTON = "sch-washington-ms"
NOTIFICATIONS = "safehub.notifications.v1"
TOPICS = (NOTIFICATIONS, "safehub.announcements.v1", "safehub.deadletter.v1")


def staff_with(school: str, role: str, index: int = 0) -> str:
    return [m.id for m in people().school(school).staff if m.role.value == role][index]


def family_contacts() -> set[str]:
    return {
        v
        for s in people().schools
        for g in s.guardians
        for v in (g.contact.email, g.contact.phone)
        if v
    }


def sent_to_families(smtp: SmtpSink, sim: ProviderSimProcess) -> list[str]:
    families = family_contacts()
    return [a for m in smtp.messages for a in m.to if a in families] + [
        m["to"] for m in sim.messages() if m["to"] in families
    ]


def phones() -> set[str]:
    """Every phone number of the directory, as written, without "+" and form-encoded."""
    found: set[str] = set()
    for school in people().schools:
        for person in [*school.staff, *school.guardians, *school.responders]:
            if person.contact.phone:
                digits = person.contact.phone.lstrip("+")
                found |= {person.contact.phone, digits, "%2B" + digits}
    return found


# -- every route that reads people or decides ---------------------------------------------------


def test_status_and_approval_routes_need_an_administrator_of_the_school(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    codec: Codec,
    producer: EventProducer,
    smtp: SmtpSink,
    sim: ProviderSimProcess,
    tmp_path: Path,
) -> None:
    admin, other_admin = (
        staff_with(LINCOLN, "administrator"),
        staff_with(LINCOLN, "administrator", 1),
    )
    tokens: dict[str, str | None] = {}
    # As `safehub up` ran it when the hole was found: no status token configured.
    notify = NotifyProcess(
        kafka, catalog, tmp_path / "notify", smtp=smtp, sim=sim, SAFEHUB_NOTIFY__STATUS_TOKEN=""
    ).start()
    try:
        tokens = {
            "nobody": None,
            "unknown": "not-a-token-of-anyone",
            "teacher": notify.tokens[staff_with(LINCOLN, "teacher")],
            "other school": notify.tokens[staff_with(WASHINGTON, "administrator")],
            "the old status token": STATUS_TOKEN,
            "administrator": notify.tokens[admin],
        }
        incident_id = new_incident_id()
        producer.publish(incident("IncidentOpened", incident_id=incident_id, school=LINCOLN))
        staff_nid = notify_id("incident", incident_id, "1")
        with httpx.Client(base_url=notify.base_url, timeout=15) as client:

            def call(method: str, path: str, who: str, body: Any = None) -> httpx.Response:
                token = tokens[who]
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                return client.request(method, path, headers=headers, json=body)

            [held] = wait_until(
                lambda: (
                    call("GET", f"/notifications/held?school={LINCOLN}", "administrator")
                    .raise_for_status()
                    .json()
                ),
                timeout=60,
                what="the held family message",
            )
            nid = held["notification_id"]
            restricted = f"/cap/alerts/safehub-{staff_nid}.xml"
            wait_until(
                lambda: call("GET", restricted, "administrator").status_code == 200,
                timeout=60,
                what="the staff alert's CAP document",
            )
            reads = [
                f"/notifications?incident_id={incident_id}",
                f"/notifications/{staff_nid}",
                f"/notifications/held?school={LINCOLN}",
                restricted,
            ]
            answers = {(path, who): call("GET", path, who) for path in reads for who in tokens}
            decision = f"/notifications/{nid}/decision"
            # Each would release the families' message if it were taken.
            attempts = {
                who: call("POST", decision, who, {"decision": "APPROVED", "decided_by": admin})
                for who in ("nobody", "unknown", "teacher", "other school", "the old status token")
            }
            impersonating = call(
                "POST",
                decision,
                "administrator",
                {"decision": "APPROVED", "decided_by": other_admin},
            )
            # A request on the incident's partition, handled after anything published before.
            member = next(m for m in people().school(LINCOLN).staff if m.contact.email)
            marker = notification_request(
                school=LINCOLN,
                recipients=[{"recipient_id": member.id, "channels": ["EMAIL"]}],
                headline=f"marker {new_incident_id()}",
                require_ack=False,
            )
            marker["envelope"]["incident_id"] = incident_id
            producer.publish(marker)
            wait_until(
                lambda: any(m.subject == marker["headline"] for m in smtp.to(member.contact.email)),
                timeout=60,
                what="the marker message",
            )
            families_before = sent_to_families(smtp, sim)
            still_held = call("GET", f"/notifications/held?school={LINCOLN}", "administrator")
            approved = call("POST", decision, "administrator", {"decision": "APPROVED"})
            wants = {
                v
                for g in people().school(LINCOLN).guardians
                for v in (g.contact.email, g.contact.phone)
                if v
            }
            wait_until(
                lambda: set(sent_to_families(smtp, sim)) == wants,
                timeout=60,
                what="the released message at every guardian",
            )
            # Public routes need nothing: the feed, the Public CAP document, an ack link.
            feed = httpx.get(f"{notify.base_url}/cap/feed.atom", timeout=15)
            public = wait_until(
                lambda: (
                    (r := httpx.get(f"{notify.base_url}/cap/alerts/safehub-{nid}.xml")).is_success
                    and r
                ),
                timeout=30,
                what="the public CAP document",
            )
            mail = next(m for m in smtp.messages if "/ack/" in m.body)
            link = re.search(r"https?://\S+/ack/\S+", mail.body)
            assert link is not None
            ack_page = httpx.get(link.group(0), timeout=15)
    finally:
        notify.stop()
    for (path, who), answer in answers.items():
        expected = {
            "nobody": 401,
            "unknown": 401,
            "teacher": 403,
            "other school": 403,
            "the old status token": 401,  # not configured: nobody's token
            "administrator": 200,
        }[who]
        assert answer.status_code == expected, (path, who, answer.text)
        if expected == 401:
            assert "Authorization: Bearer" in answer.json()["error"], answer.text
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert "is a teacher" in answers[(reads[0], "teacher")].json()["error"]
    assert f"not of {LINCOLN}" in answers[(reads[1], "other school")].json()["error"]
    assert answers[(reads[1], "administrator")].json()["school_id"] == LINCOLN
    assert answers[(reads[0], "administrator")].headers["Cache-Control"] == "no-store"
    # No decision without an administrator's own token, and none in someone else's name.
    assert {who: a.status_code for who, a in attempts.items()} == {
        "nobody": 401,
        "unknown": 401,
        "teacher": 403,
        "other school": 403,
        "the old status token": 401,
    }
    assert impersonating.status_code == 403
    assert "decided_by names someone else" in impersonating.json()["error"]
    assert families_before == []
    assert [h["notification_id"] for h in still_held.json()] == [nid]
    # The administrator's decision: taken in the token holder's name.
    assert approved.status_code == 202, approved.text
    assert approved.json()["decided_by"] == admin
    decided = [
        codec.decode(r.value())
        for r in read_all(kafka, catalog.name(NOTIFICATIONS))
        if dict(r.headers())["safehub-event-type"] == b"safehub.events.NotificationDecided"
    ]
    assert [(d["notification_id"], d["decided_by"]) for d in decided] == [(nid, admin)]
    assert feed.status_code == 200 and f"safehub-{nid}" in feed.text
    assert public.status_code == 200
    assert ack_page.status_code == 200 and "<form method=post" in ack_page.text


# -- provider callbacks -------------------------------------------------------------------------


def test_a_malformed_provider_callback_is_refused_before_decoding_and_no_phone_is_logged(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    smtp: SmtpSink,
    sim: ProviderSimProcess,
    tmp_path: Path,
) -> None:
    guardian = people().school(LINCOLN).guardians[0]
    phone = guardian.contact.phone
    assert phone is not None
    encoded = "%2B" + phone.lstrip("+")
    form = "application/x-www-form-urlencoded"
    bodies = {
        "not UTF-8": (f"From={encoded}&Body=1\xff&MessageSid=SM1".encode("latin-1"), form),
        "not UTF-8, number as is": (f"From={phone}&Body=\xc3\x28".encode("latin-1"), form),
        "percent-encoded not UTF-8": (f"From={encoded}&Body=%FF%FE".encode(), form),
        "not a form": (f"From={encoded}&Body".encode(), form),
        "not form-encoded": (json.dumps({"From": phone}).encode(), "application/json"),
    }
    paths = ("/providers/twilio/inbound", "/providers/twilio/status", "/providers/twilio/voice-ack")
    with NotifyProcess(kafka, catalog, tmp_path / "notify", smtp=smtp, sim=sim) as notify:
        with httpx.Client(base_url=notify.base_url, timeout=15) as client:
            answers = {
                (path, name): client.post(path, content=body, headers={"Content-Type": kind})
                for path in paths
                for name, (body, kind) in bodies.items()
            }
            unsigned = client.post(paths[0], data={"From": phone, "Body": "1", "MessageSid": "SM2"})
            still_up = client.get("/healthz")
    for (path, name), answer in answers.items():
        assert answer.status_code == 400, (path, name, answer.status_code, answer.text)
        assert len(answer.text) < 120 and not [p for p in phones() if p in answer.text]
    assert "not UTF-8" in answers[(paths[0], "not UTF-8")].text
    assert "not form data" in answers[(paths[0], "not a form")].text
    assert "x-www-form-urlencoded" in answers[(paths[0], "not form-encoded")].text
    assert unsigned.status_code == 403 and still_up.status_code == 200
    log_text = notify.log_file.read_text(errors="replace")
    assert "malformed provider callback refused" in log_text  # the log is there
    assert "UnicodeDecodeError" not in log_text and "Traceback" not in log_text
    assert sorted(p for p in phones() if p in log_text) == []
    for topic in TOPICS:
        raw = b"".join(
            (r.value() or b"") + b"".join(v for _, v in (r.headers() or []) if v)
            for r in read_all(kafka, catalog.name(topic))
        )
        assert sorted(p for p in phones() if p.encode() in raw) == [], topic


# -- the credentials themselves -------------------------------------------------------------------


def _auth(status_token: str = "", **tokens: str) -> ApiAuth:
    operators = [Operator(staff_id=i, token_sha256=token_sha256(t)) for i, t in tokens.items()]
    return ApiAuth(people(), operators, SecretStr(status_token))


def test_nothing_configured_lets_nobody_in() -> None:
    auth = _auth()
    assert not auth.configured
    for header in (None, "", "Bearer", "Bearer anything", "Basic YWRtaW46YWRtaW4="):
        with pytest.raises(AuthError) as refused:
            auth.authenticate(header)
        assert refused.value.status == 401 and "Authorization: Bearer" in str(refused.value)


def test_a_token_is_its_holder_and_only_an_administrator_of_that_school_may_act() -> None:
    admin, teacher = staff_with(LINCOLN, "administrator"), staff_with(LINCOLN, "teacher")
    auth = _auth("monitoring-token", **{admin: "admin-token", teacher: "teacher-token"})
    caller = auth.authenticate("Bearer admin-token")
    assert (caller.id, caller.school_id) == (admin, LINCOLN)
    auth.authorise(caller, LINCOLN, decide=True)
    for school, decide in ((WASHINGTON, False), (WASHINGTON, True)):
        with pytest.raises(AuthError, match=f"not of {WASHINGTON}") as refused:
            auth.authorise(caller, school, decide=decide)
        assert refused.value.status == 403
    with pytest.raises(AuthError, match="is a teacher") as refused:
        auth.authorise(auth.authenticate("bearer teacher-token"), LINCOLN, decide=False)
    assert refused.value.status == 403
    # The monitoring system's token reads every school's status, and never decides.
    reader = auth.authenticate("Bearer monitoring-token")
    auth.authorise(reader, WASHINGTON, decide=False)
    with pytest.raises(AuthError, match="administrator's own token") as refused:
        auth.authorise(reader, LINCOLN, decide=True)
    assert refused.value.status == 403


def test_a_holder_is_judged_on_the_people_as_they_are_at_each_request(codec: Codec) -> None:
    """With the live people, a token's holder gets their school and role per request: an
    administrator the roster makes a teacher, then removes, loses the API at once."""
    live = LivePeople(people(), KafkaSettings(), TopicCatalog(), codec, name="test-auth")
    admin = staff_with(LINCOLN, "administrator")
    auth = ApiAuth(live, [Operator(staff_id=admin, token_sha256=token_sha256("t"))], SecretStr(""))
    auth.authorise(auth.authenticate("Bearer t"), LINCOLN, decide=True)
    member = live.current().staff_member(LINCOLN, admin)
    assert member is not None
    live.apply(
        [person_changed(admin, version=1, kind="STAFF", name=member.name, staff_role="teacher")]
    )
    with pytest.raises(AuthError, match="is a teacher") as demoted:
        auth.authorise(auth.authenticate("Bearer t"), LINCOLN, decide=False)
    assert demoted.value.status == 403
    live.apply([person_changed(admin, version=2, kind="STAFF", change="DELETED")])
    with pytest.raises(AuthError, match="no longer a staff member") as gone:
        auth.authenticate("Bearer t")
    assert gone.value.status == 401


def test_the_operators_file_names_directory_staff_and_never_echoes_a_digest(
    tmp_path: Path,
) -> None:
    digest = token_sha256("a")
    with pytest.raises(ConfigError, match="'stf-nobody' is not a staff member"):
        ApiAuth(people(), [Operator(staff_id="stf-nobody", token_sha256=digest)], SecretStr(""))
    twice = [
        Operator(staff_id=staff_with(LINCOLN, "administrator", i), token_sha256=digest)
        for i in (0, 1)
    ]
    with pytest.raises(ConfigError, match="give every person their own token"):
        ApiAuth(people(), twice, SecretStr(""))
    bad = tmp_path / "operators.json"
    bad.write_text(json.dumps({"operators": [{"staff_id": "x", "token_sha256": "AB" + digest}]}))
    with pytest.raises(ConfigError, match="OPERATORS_FILE") as invalid:
        OperatorsFile.load(bad)
    assert digest not in str(invalid.value)
    with pytest.raises(ConfigError, match="cannot be read"):
        OperatorsFile.load(tmp_path / "missing.json")
