"""The demo's tips part: a life-safety tip by SMS at night, escalated until someone confirms.

1. When the demo starts, the district shortens Lincoln High School's call tree to 15 s a
   step (a live directory change: no restart), so the act does not wait a minute per step.
2. A student texts the school's tip line, as the SMS provider posts it (Twilio's signed
   inbound webhook): "he said he'll bring a gun tomorrow". The answer gives a tip code
   and passcode; the tip is life-safety at once.
3. The on-duty administrator is called and does not answer; 15 s later the next step is
   called and confirms by replying "1" to the SMS (notify's acknowledgement reaches tips).
4. The state-centre analyst asks the tipster a question through the thread; the tipster
   answers on the web page with code and passcode; neither sees who the other is.
5. A second student texts nearly the same words: folded into the first tip.
6. The analyst closes the tip as referred to law enforcement, and the month's report (the
   whole state, HTML with charts) is written to the run directory.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import UTC, datetime
from typing import Any

from rich.console import Console

from safehub.devstack.hub import TIP_LINE, TIPS_ANALYST, Hub
from safehub.kernel.bus import EventProducer
from safehub.kernel.codec import Codec
from safehub.kernel.directory import Directory, default_directory_file
from safehub.kernel.errors import SafeHubError
from safehub.kernel.live_directory import change_event
from safehub.kernel.people import People
from safehub.standards import twilio

SCHOOL = "sch-lincoln-hs"
TIP_TEXT = "he said he'll bring a gun tomorrow. it's Marcus in 10th grade"
DUPLICATE_TEXT = "He said he'll bring a gun tomorrow!! it's Marcus, 10th grade"
TIPSTER_PHONE = "+15550107001"  # the students' numbers: never printed, never outside tips
SECOND_TIPSTER_PHONE = "+15550107002"
STEP_S = 15


def _request(
    url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    request = urllib.request.Request(  # noqa: S310 - loopback URLs of the hub's own parts
        url, data=data, method="POST" if data is not None else "GET", headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:  # noqa: S310
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class TipsDemo:
    """The tips act against a running hub."""

    def __init__(self, hub: Hub, codec: Codec, console: Console) -> None:
        self.hub = hub
        self.codec = codec
        self.console = console
        self.directory = Directory.load(default_directory_file())
        self.people = People.load(default_directory_file())

    # -- the parts the demo plays -------------------------------------------------------

    def _api(self, path: str, body: dict[str, Any] | None = None) -> Any:
        status, text = _request(
            self.hub.tips_url + path,
            data=json.dumps(body).encode() if body is not None else None,
            headers={
                "Authorization": f"Bearer {self.hub.tips_analyst_token}",
                "Content-Type": "application/json",
            },
        )
        if status >= 300:
            raise SafeHubError(f"demo: tips API {path} answered {status}: {text[:200]}")
        return json.loads(text)

    def _text_tip_line(self, phone: str, body: str) -> str:
        params = {
            "MessageSid": "SM" + uuid.uuid4().hex,
            "AccountSid": "AC" + "0" * 32,
            "From": phone,
            "To": TIP_LINE,
            "Body": body,
            "NumMedia": "0",
            "SmsStatus": "received",
            "ApiVersion": "2010-04-01",
        }
        url = self.hub.tips_url + "/sms/inbound"
        status, twiml = _request(
            url,
            data=urllib.parse.urlencode(params).encode(),
            headers={
                "Content-Type": twilio.FORM_MEDIA_TYPE,
                twilio.SIGNATURE_HEADER: twilio.sign(self.hub.sms_auth_token, url, params),
            },
        )
        if status != 200:
            raise SafeHubError(f"demo: the tip line answered {status}")
        return twiml

    def prepare(self) -> None:
        """Shorten Lincoln's call tree now, minutes before the tip, so every service has
        applied the change by then (a live directory change: no restart)."""
        tree = next(t for t in self.directory.call_trees if t.scope_id == SCHOOL)
        shorter = tree.model_copy(
            update={
                "steps": [s.model_copy(update={"ack_within_seconds": STEP_S}) for s in tree.steps]
            }
        )
        event = change_event(
            self.directory,
            "CALL_TREE",
            shorter,
            version=2,
            changed_by="demo:district-admin",
            district_id=self.directory.district_of(SCHOOL).id,
        )
        with EventProducer(self.hub.settings.kafka, self.codec, self.hub.catalog) as producer:
            producer.publish(event)

    def _tip(self, tip_id: str) -> Any:
        return self._api(f"/api/tips/{tip_id}")

    def _wait(self, what: str, check: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = check()
            if found:
                return found
            time.sleep(0.2)
        raise SafeHubError(f"demo: {what} did not happen within {timeout} s")

    def _phone_of(self, person_id: str) -> str:
        for school in self.people.schools:
            member = self.people.staff_member(school.id, person_id)
            phone = member.contact.phone if member else None
            phone = phone or next(
                (r.contact.phone for r in school.responders if r.id == person_id), None
            )
            if phone:
                return str(phone)
        raise SafeHubError(f"demo: {person_id} has no phone to reply from")

    def _reply_one(self, person_id: str) -> None:
        """``person_id`` replies "1" to the escalation SMS they were sent."""
        phone = self._phone_of(person_id)
        query = urllib.parse.urlencode({"to": phone})
        self._wait(
            "the escalation SMS at the second person's phone",
            lambda: any(
                "safety tip" in str(m.get("body", "")).lower()
                for m in json.loads(
                    _request(f"{self.hub.sms_simulator_url}/_sim/messages?{query}")[1]
                )
            ),
            30,
        )
        status, _ = _request(
            f"{self.hub.sms_simulator_url}/_sim/reply",
            data=json.dumps({"from": phone, "body": "1"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        if status >= 300:
            raise SafeHubError(f"demo: the SMS simulator refused the reply ({status})")

    # -- the act ------------------------------------------------------------------------

    def run(self) -> dict[str, bool]:
        """Play the act; the checks that must hold."""
        console = self.console
        console.print(
            f"district: Lincoln's call tree waits {STEP_S} s per step (changed in the live "
            "directory when the demo started, no restart)"
        )
        started = time.monotonic()
        twiml = self._text_tip_line(TIPSTER_PHONE, TIP_TEXT)
        code = twiml.split("Code ")[1].split(",")[0]
        passcode = twiml.split("passcode ")[1].split(".")[0]
        console.print(f"tip by SMS: answered with tip code {code} (and a passcode)")
        listing = self._api("/api/tips")["tips"]
        tip = next(t for t in listing if t["tip_code"] == code)
        tip_id = tip["tip_id"]
        chain = self._wait(
            "the first escalation call",
            lambda: (t := self._tip(tip_id))["escalation"] and t["escalation"]["steps"],
            10,
        )
        console.print(f"life-safety: {tip['life_safety']}; call chain: {' → '.join(chain)}")
        detail = self._wait(
            "the second step called",
            lambda: (t := self._tip(tip_id))["escalation"]["call"] >= 1 and t,
            STEP_S + 20,
        )
        console.print(
            f"nobody confirmed within {STEP_S} s: '{chain[1]}' called "
            f"({time.monotonic() - started:.0f} s after the tip)"
        )
        second = self._second_person()
        self._reply_one(second)
        detail = self._wait(
            "the acknowledgement",
            # The API reads the tip and its escalation one after the other: wait for both.
            lambda: (
                (t := self._tip(tip_id))["escalation"]["acknowledged_by"]
                and t["first_human_at"] is not None
                and t
            ),
            30,
        )
        to_human = detail["first_human_at"] - detail["created_at"]
        console.print(
            f"{detail['escalation']['acknowledged_by']} confirmed by SMS: a human has it "
            f"{to_human:.0f} s after it came in"
        )
        self._api(
            f"/api/tips/{tip_id}/messages",
            {"text": "Thank you. Do you know if he has access to a gun at home?"},
        )
        status, page = _request(
            self.hub.tips_url + "/thread",
            data=urllib.parse.urlencode(
                {"code": code, "passcode": passcode, "text": "yes, his dad keeps one in the truck"}
            ).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        answered = status == 200 and "access to a gun" in page
        thread = self._tip(tip_id)["thread"]
        console.print(
            f"thread: analyst asked, the tipster answered on the web page ({len(thread)} "
            "messages; neither side saw the other's identity)"
        )
        dup_twiml = self._text_tip_line(SECOND_TIPSTER_PHONE, DUPLICATE_TEXT)
        dup_code = dup_twiml.split("Code ")[1].split(",")[0]
        dup = next(t for t in self._api("/api/tips")["tips"] if t["tip_code"] == dup_code)
        console.print(f"a second student texted the same threat: folded into {dup['folded_into']}")
        closed = self._api(
            f"/api/tips/{tip_id}/close",
            {"disposition": "REFERRED_TO_LAW_ENFORCEMENT", "note": "SRO and police notified"},
        )
        console.print(f"closed as {closed['disposition']} by {TIPS_ANALYST}")
        month = time.strftime("%Y-%m", time.gmtime())
        status, page = _request(
            f"{self.hub.tips_url}/api/reports?period={month}&format=html",
            headers={"Authorization": f"Bearer {self.hub.tips_analyst_token}"},
        )
        report_file = self.hub.run_dir / f"tips-report-{month}.html"
        report_file.write_text(page, encoding="utf-8")
        console.print(f"monthly report ({month}, the whole state): {report_file}")
        return {
            "tip: life-safety at intake": bool(tip["life_safety"]),
            "tip: the second step was called when the first did not answer": detail["escalation"][
                "call"
            ]
            >= 1,
            "tip: a human confirmed (acknowledged by SMS)": detail["escalation"]["acknowledged_by"]
            == second,
            "tip: the thread worked both ways": answered
            and [m["author"] for m in thread] == ["ANALYST", "TIPSTER"],
            "tip: the duplicate folded": dup["folded_into"] == tip_id,
            "tip: closed with a disposition": closed["status"] == "CLOSED_RESOLVED",
            "tip: the tipsters' numbers never left the tips service": TIPSTER_PHONE
            not in json.dumps(thread),
            "tip: the monthly report written (statistics, no tip's words)": status == 200
            and "<svg" in page
            and "Marcus" not in page,
        }

    def _second_person(self) -> str:
        """Who the second call goes to (the chain's second step with someone on duty)."""
        chain = self.directory.call_chain(SCHOOL, datetime.now(UTC))
        return [s for s in chain if s.person_ids][1].person_ids[0]
