"""The demo's notification part: who was told of the lockdown, on which path, who confirmed.

Talks to the hub's stand-ins the way the real world would: the SMS provider simulator's
control API scripts a phone that cannot be reached and makes a few staff reply "1"; one
teacher clicks the acknowledgement link in the e-mail the local mail server received.
Then it reads notify's status API (who was reached, who acknowledged, who has not) with the
token ``safehub up`` issued to the school's administrator.
"""

from __future__ import annotations

import json
import mailbox
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from email.message import Message
from typing import Any

from rich.console import Console
from rich.table import Table

from safehub.devstack.hub import Hub
from safehub.kernel.directory import Directory, default_directory_file
from safehub.kernel.errors import SafeHubError
from safehub.kernel.people import People, StaffMember, StaffRole

ACK_LINK = re.compile(r"(https?://\S+/ack/[A-Za-z0-9._~-]+)")


def _call(
    url: str, body: dict[str, Any] | None = None, *, method: str = "GET", token: str | None = None
) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(  # noqa: S310 - loopback URLs of the hub's own parts
        url, data=data, method=method, headers=headers
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        raw = response.read()
    return json.loads(raw) if raw else None


class PeopleDemo:
    """Staff of one school, the stand-ins' control APIs and notify's status API."""

    def __init__(self, hub: Hub, school_id: str) -> None:
        self.hub = hub
        self.directory = Directory.load(default_directory_file())
        self.school = self.directory.school(school_id)
        self.people = People.load(default_directory_file())
        self.roster = self.people.school(school_id)
        self.staff = {m.id: m for m in self.roster.staff}
        self.other_addresses = {
            m.contact.email for s in self.people.schools if s.id != school_id for m in s.staff
        }
        with_phone = [m for m in self.roster.staff if m.contact.phone]
        self.admin = self.people.administrators(school_id)[0]
        #: The token safehub up issued to the school's administrator (notify's API).
        self.token = hub.notify_tokens[self.admin.id]
        self.other_admin = next(
            (hub.notify_tokens[i] for i in hub.notify_tokens if i not in self.staff), None
        )
        self.unreachable_phone: StaffMember = with_phone[5]
        self.sms_repliers: list[StaffMember] = with_phone[:3]

    def script_unreachable_phone(self) -> None:
        """One teacher's phone is off the network: the SMS fails and notify falls back."""
        _call(
            f"{self.hub.sms_simulator_url}/_sim/script",
            {
                "number": self.unreachable_phone.contact.phone,
                "outcome": "undelivered",
                "error_code": 30003,
            },
            method="POST",
        )

    def notification(self, incident_id: str, srp_action: str, timeout: float = 30) -> Any:
        """notify's status of the incident's ``srp_action`` notification, once all handed over."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            url = f"{self.hub.notify_url}/notifications?incident_id={incident_id}"
            for row in _call(url, token=self.token):
                if row["srp_action"] != srp_action:
                    continue
                status = _call(
                    f"{self.hub.notify_url}/notifications/{row['notification_id']}",
                    token=self.token,
                )
                people = [r for r in status["recipients"] if r["kind"] == "staff"]
                if len(people) == len(self.staff) and all(r["reached"] for r in people):
                    return status
            time.sleep(0.1)
        raise SafeHubError(f"demo: {srp_action} notification not delivered within {timeout} s")

    def acknowledge_some(self) -> list[str]:
        """Three staff reply "1" by SMS; one clicks the link in the e-mail."""
        acked = []
        for member in self.sms_repliers:
            self._wait_sms_to(member.contact.phone or "")  # a reply answers a received SMS
            _call(
                f"{self.hub.sms_simulator_url}/_sim/reply",
                {"from": member.contact.phone, "body": "1"},
                method="POST",
            )
            acked.append(member.id)
        clicker = next(
            m
            for m in self.people.staff(self.school.id, role=StaffRole.TEACHER)
            if m.contact.email and m.id not in acked
        )
        link = self._ack_link(clicker.contact.email or "")
        click = urllib.request.Request(link, data=b"", method="POST")  # noqa: S310 - our notify
        urllib.request.urlopen(click, timeout=10).close()  # noqa: S310
        acked.append(clicker.id)
        return acked

    def _wait_sms_to(self, phone: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while phone not in self.sms_recipients():
            if time.monotonic() > deadline:
                raise SafeHubError("demo: the SMS to reply to never reached the simulator")
            time.sleep(0.1)

    def _ack_link(self, address: str) -> str:
        """The link in the newest real (not drill) alert e-mail to ``address``."""
        newest: tuple[float, str] | None = None
        for message in mailbox.Maildir(self.hub.maildir, create=False):
            subject = str(message["Subject"])
            if address not in str(message["To"]) or "DRILL" in subject or "SIMULACRO" in subject:
                continue
            found = ACK_LINK.search(_text(message))
            if found and (newest is None or message.get_date() > newest[0]):
                newest = (message.get_date(), found.group(1))
        if newest is None:
            raise SafeHubError("demo: no e-mail with an acknowledgement link for the teacher")
        return newest[1]

    def release_family_message(self, srp_action: str, console: Console) -> dict[str, bool]:
        """The school's administrator approves the held message to families; without a
        token, or with another school's administrator's, the same request is refused."""
        held = self._held(srp_action)
        url = f"{self.hub.notify_url}/notifications/{held['notification_id']}/decision"
        # Without a token, then with another school's administrator's: both refused.
        refusals = []
        for token in (None, self.other_admin):
            try:
                _call(url, {"decision": "APPROVED"}, method="POST", token=token)
                refusals.append(202)
            except urllib.error.HTTPError as exc:
                refusals.append(exc.code)
        refused = refusals == [401, 403]
        _call(url, {"decision": "APPROVED"}, method="POST", token=self.token)
        guardians = len(self.roster.guardians)
        status = self._wait_reached(held["notification_id"], guardians)
        feed = urllib.request.urlopen(  # noqa: S310 - the hub's own notify endpoint
            f"{self.hub.notify_url}/cap/feed.atom", timeout=10
        ).read()
        console.print(
            f"family message ({srp_action}) held until {self.admin.id} (administrator) "
            f"released it (without a token: {refusals[0]}, another school's administrator: "
            f"{refusals[1]}): {status['totals']['reached']}/{guardians} guardians reached; "
            f"public CAP feed {feed.count(b'<entry')} alert(s)"
        )
        return {
            f"{srp_action} family message held until an administrator released it": refused
            and status["totals"]["reached"] == guardians,
            f"{srp_action} public CAP alert on the feed": b"<entry" in feed,
        }

    def _held(self, srp_action: str, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        url = f"{self.hub.notify_url}/notifications/held?school={self.school.id}"
        while time.monotonic() < deadline:
            rows = _call(url, token=self.token)
            rows = rows["held"] if isinstance(rows, dict) else rows
            for row in rows:
                if row.get("srp_action") == srp_action:
                    return row
            time.sleep(0.1)
        raise SafeHubError(f"demo: no held family message for {srp_action}")

    def _wait_reached(self, notification_id: str, count: int, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        url = f"{self.hub.notify_url}/notifications/{notification_id}"
        while time.monotonic() < deadline:
            try:
                status = _call(url, token=self.token)
            except urllib.error.HTTPError:
                status = None  # not published yet: the release is on its way through the bus
            if status and status["totals"]["reached"] >= count:
                return status
            time.sleep(0.1)
        raise SafeHubError("demo: the released family message did not reach every guardian")

    def mail_recipients(self) -> Counter[str]:
        """How many messages each address received at the local mail server."""
        return Counter(
            str(m["To"]).split("<")[-1].rstrip(">").strip()
            for m in mailbox.Maildir(self.hub.maildir, create=False)
        )

    def sms_recipients(self) -> Counter[str]:
        """How many SMS each number received at the provider simulator."""
        data = _call(f"{self.hub.sms_simulator_url}/_sim/messages")
        rows = data["messages"] if isinstance(data, dict) else data
        return Counter(str(m["to"]) for m in rows)

    def wait_acknowledged(self, status: Any, ids: list[str], timeout: float = 20) -> Any:
        """The notification's status once every one of ``ids`` is recorded as acknowledged."""
        deadline = time.monotonic() + timeout
        url = f"{self.hub.notify_url}/notifications/{status['notification_id']}"
        while time.monotonic() < deadline:
            status = _call(url, token=self.token)
            done = {r["recipient_id"] for r in status["recipients"] if r["acknowledged"]}
            if set(ids) <= done:
                return status
            time.sleep(0.1)
        raise SafeHubError("demo: acknowledgements were not recorded in time")

    def report(self, status: Any, console: Console) -> dict[str, bool]:
        """Print who was reached on which path and who has not acknowledged; return checks."""
        mail, sms = self.mail_recipients(), self.sms_recipients()
        table = Table(title=f"LOCKDOWN notification to the staff of {self.school.name}")
        for column in ("staff", "role", "lang", "paths", "acknowledged"):
            table.add_column(column)
        staff_rows = [r for r in status["recipients"] if r["kind"] == "staff"]
        # The acknowledged, anyone with a failed path, and a few others: the rest look alike.
        shown = [
            r
            for i, r in enumerate(staff_rows)
            if r["acknowledged"] or i < 4 or any(d["status"] == "FAILED" for d in r["deliveries"])
        ]
        table.caption = f"{len(staff_rows) - len(shown)} more staff not shown"
        for row in shown:
            member = self.staff[row["recipient_id"]]
            paths = ", ".join(
                f"{d['channel']} {d['status']}" + (f" ({d['error']})" if d["error"] else "")
                for d in row["deliveries"]
            )
            ack = f"{_clock(row['acknowledged_at'])} via {row['ack_channel']}"
            table.add_row(
                member.id,
                member.role.value,
                member.contact.language.value,
                paths,
                ack if row["acknowledged"] else "[yellow]not yet[/yellow]",
            )
        console.print(table)
        pending = status["not_acknowledged"]
        console.print(
            f"{status['totals']['reached']}/{status['totals']['recipients']} people "
            "(staff and responders) reached "
            f"({sum(mail.values())} e-mails at the local mail server, {sum(sms.values())} SMS at "
            f"the provider simulator); {status['totals']['acknowledged']} acknowledged; "
            f"[yellow]{len(pending)} not yet acknowledged[/yellow]: "
            + ", ".join(pending[:8])
            + (f" … and {len(pending) - 8} more" if len(pending) > 8 else "")
        )
        failed = self.unreachable_phone
        failed_row = next(r for r in staff_rows if r["recipient_id"] == failed.id)
        return {
            "every staff member of the school reached": all(r["reached"] for r in staff_rows)
            and len(staff_rows) == len(self.staff),
            "nobody of another school notified": not (set(mail) & self.other_addresses),
            "failed SMS fell back to e-mail": any(
                d["channel"] == "SMS" and d["status"] == "FAILED" for d in failed_row["deliveries"]
            )
            and any(
                d["channel"] == "EMAIL" and d["status"] in ("SENT", "DELIVERED")
                for d in failed_row["deliveries"]
            ),
        }


def _clock(epoch_s: float | None) -> str:
    if epoch_s is None:
        return ""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%H:%M:%S.%f")[:-3]


def _text(message: Message) -> str:
    if message.is_multipart():
        return "\n".join(_text(part) for part in message.get_payload())  # type: ignore[arg-type]
    payload = message.get_payload(decode=True)
    if isinstance(payload, bytes):
        return payload.decode(message.get_content_charset() or "utf-8", "replace")
    return str(message.get_payload())
