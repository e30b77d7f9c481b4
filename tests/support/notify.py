"""Helpers for notify tests and the notify benchmark: a real SMTP server (aiosmtpd), a CAP
endpoint, the notify service as a process (with its approval API and Atom feed at hand),
incident and notification events, and directory generation.

Every NotifyProcess gets an operators file with a bearer token for every staff member of its
directory (``notify.tokens``; what each may do is the directory's role, as in production);
the status helpers read with the read-only status token, the approval helpers act as the
administrator who decides.

Typical use::

    with SmtpSink() as smtp, ProviderSimProcess(workdir) as sim:
        with NotifyProcess(kafka, catalog, workdir, smtp=smtp, sim=sim) as notify:
            producer.publish(incident("IncidentOpened", incident_id="inc-1", srp_action="LOCKDOWN"))
            wait_until(lambda: len(smtp.messages) >= 48)
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
import secrets
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from lxml import etree  # type: ignore[import-untyped]

from safehub.kernel.directory import Directory, default_directory_file
from safehub.kernel.envelope import new_event
from safehub.kernel.http_server import ServerThread
from safehub.kernel.people import People
from safehub.kernel.settings import KafkaSettings, ListenSettings
from safehub.kernel.topics import TopicCatalog
from safehub.standards.cap import CapAlert, parse
from services.notify.cap_endpoint import ATOM_NAMESPACE
from tests.support.processes import Component
from tests.support.sms import ProviderSimProcess

DEMO_DIRECTORY = default_directory_file()
ACK_SECRET = "test-ack-secret-0123456789"
STATUS_TOKEN = "test-status-token"


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Mail:
    """One message the SMTP server accepted."""

    to: tuple[str, ...]
    subject: str
    body: str
    headers: dict[str, str]
    received_at: float  # time.monotonic()


#: Recipients in this domain are refused at RCPT, echoing the address as real servers do.
REFUSED_DOMAIN = "refused.invalid"


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_RCPT(
        self, _server: SMTP, _session: Session, envelope: Envelope, address: str, _options: Any
    ) -> str:
        if address.endswith("@" + REFUSED_DOMAIN):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, _server: SMTP, _session: Session, envelope: Envelope) -> str:
        received = time.monotonic()
        raw = envelope.content if isinstance(envelope.content, bytes) else b""
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        part = parsed.get_body(preferencelist=("plain",))
        body = part.get_content() if part is not None else ""
        self._sink.add(
            Mail(
                to=tuple(str(r) for r in envelope.rcpt_tos),
                subject=str(parsed["Subject"]),
                body=str(body),
                headers={k: str(v) for k, v in parsed.items()},
                received_at=received,
            )
        )
        return "250 OK"


class SmtpSink:
    """A real SMTP server on a free port recording every accepted message."""

    def __init__(self, **server_options: Any) -> None:
        """``server_options`` go to aiosmtpd (e.g. ``tls_context``, ``require_starttls``)."""
        self.port = free_port()
        self.messages: list[Mail] = []
        self._lock = threading.Lock()
        self._controller = Controller(
            _Handler(self), hostname="127.0.0.1", port=self.port, **server_options
        )

    def add(self, mail: Mail) -> None:
        """Record one message (called by the handler)."""
        with self._lock:
            self.messages.append(mail)

    def to(self, address: str) -> list[Mail]:
        """Messages for one address."""
        with self._lock:
            return [m for m in self.messages if address in m.to]

    def start(self) -> SmtpSink:
        """Start serving."""
        self._controller.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._controller.stop()

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class CapSink:
    """A CAP endpoint (HTTP): records every document POSTed to ``/cap`` after parsing it
    with the same safe, XSD-validating parser; 400 for anything that is not valid CAP."""

    def __init__(self) -> None:
        self.alerts: list[CapAlert] = []
        self._lock = threading.Lock()
        self._server = ServerThread(ListenSettings(port=0), name="cap-sink")
        self.url = ""

    async def _intake(self, request: web.Request) -> web.Response:
        try:
            alert = parse(await request.read())
        except Exception as exc:
            return web.Response(status=400, text=str(exc))
        with self._lock:
            self.alerts.append(alert)
        return web.Response(status=201)

    def received(self) -> list[CapAlert]:
        """The documents received so far."""
        with self._lock:
            return list(self.alerts)

    def __enter__(self) -> CapSink:
        app = web.Application()
        app.router.add_post("/cap", self._intake)
        port = self._server.start(app)
        self.url = f"http://127.0.0.1:{port}/cap"
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.close()


def issue_tokens(directory_file: Path, operators_file: Path) -> dict[str, str]:
    """A fresh bearer token for every staff member of the directory (staff id → token), their
    SHA-256 written as notify's operators file."""
    staff = [m.id for s in people(directory_file).schools for m in s.staff]
    tokens = {staff_id: secrets.token_urlsafe(24) for staff_id in staff}
    operators = [
        {"staff_id": staff_id, "token_sha256": hashlib.sha256(token.encode()).hexdigest()}
        for staff_id, token in tokens.items()
    ]
    operators_file.write_text(json.dumps({"operators": operators}), encoding="utf-8")
    return tokens


def notify_env(
    workdir: Path,
    *,
    smtp_port: int,
    sim: ProviderSimProcess | None,
    directory_file: Path = DEMO_DIRECTORY,
    database_url: str | None = None,
    **overrides: str,
) -> dict[str, str]:
    """Environment of a notify process for a test or benchmark (operators file in workdir)."""
    env = {
        "SAFEHUB_NOTIFY__DIRECTORY_FILE": str(directory_file),
        "SAFEHUB_NOTIFY__OPERATORS_FILE": str(workdir / "operators.json"),
        "SAFEHUB_NOTIFY__DATABASE_URL": database_url or f"sqlite:///{workdir / 'notify.sqlite3'}",
        "SAFEHUB_NOTIFY__HTTP_PORT": "0",
        "SAFEHUB_NOTIFY__PORT_FILE": str(workdir / "notify.port"),
        "SAFEHUB_NOTIFY__ACK_SECRET": ACK_SECRET,
        "SAFEHUB_NOTIFY__STATUS_TOKEN": STATUS_TOKEN,
        "SAFEHUB_NOTIFY__SMTP_HOST": "127.0.0.1",
        "SAFEHUB_NOTIFY__SMTP_PORT": str(smtp_port),
        "SAFEHUB_NOTIFY__RETRY_INITIAL_S": "0.05",
        "SAFEHUB_NOTIFY__RETRY_CAP_S": "0.5",
    }
    if sim is not None:
        env |= {
            "SAFEHUB_NOTIFY__SMS_ENABLED": "true",
            "SAFEHUB_NOTIFY__TWILIO__API_BASE_URL": sim.base_url,
            "SAFEHUB_NOTIFY__TWILIO__ACCOUNT_SID": sim.account_sid,
            "SAFEHUB_NOTIFY__TWILIO__AUTH_TOKEN": sim.auth_token,
        }
    return env | overrides


class NotifyProcess(Component):
    """``python -m services.notify`` with its HTTP API at hand."""

    def __init__(
        self,
        kafka: KafkaSettings,
        catalog: TopicCatalog,
        workdir: Path,
        *,
        smtp: SmtpSink,
        sim: ProviderSimProcess | None,
        **env: str,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        environment = notify_env(workdir, smtp_port=smtp.port, sim=sim, **env)
        #: Staff id → bearer token of notify's API (every staff member; roles decide).
        self.tokens = issue_tokens(
            Path(environment["SAFEHUB_NOTIFY__DIRECTORY_FILE"]),
            Path(environment["SAFEHUB_NOTIFY__OPERATORS_FILE"]),
        )
        super().__init__("services.notify", kafka, catalog.prefix, workdir, environment)
        self.sim = sim
        self.http: httpx.Client | None = None

    def start(self, *, wait: bool = True, timeout: float = 60.0) -> NotifyProcess:
        (self.workdir / "notify.port").unlink(missing_ok=True)
        super().start(wait=wait, timeout=timeout)
        if wait:
            port = int((self.workdir / "notify.port").read_text())
            self.http = httpx.Client(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": f"Bearer {STATUS_TOKEN}"},
                timeout=30,
            )
            if self.sim is not None:  # replies to the simulator's numbers come to us
                self.sim.configure(inbound_url=f"{self.base_url}/providers/twilio/inbound")
        return self

    @property
    def base_url(self) -> str:
        """Where the service's HTTP API listens."""
        assert self.http is not None
        return str(self.http.base_url).rstrip("/")

    def notifications(self, incident_id: str | None = None) -> list[dict[str, Any]]:
        """GET /notifications."""
        assert self.http is not None
        params = {"incident_id": incident_id} if incident_id else None
        found: list[dict[str, Any]] = (
            self.http.get("/notifications", params=params).raise_for_status().json()
        )
        return found

    def status(self, notification_id: str) -> dict[str, Any]:
        """GET /notifications/{id}."""
        assert self.http is not None
        found: dict[str, Any] = (
            self.http.get(f"/notifications/{notification_id}").raise_for_status().json()
        )
        return found

    def bearer(self, staff_id: str | None) -> dict[str, str]:
        """The Authorization header of a staff member's token (none for None)."""
        return {"Authorization": f"Bearer {self.tokens[staff_id]}"} if staff_id else {}

    def held(self, school: str) -> list[dict[str, Any]]:
        """GET /notifications/held?school=… as the school's first administrator."""
        assert self.http is not None
        admin = next(m.id for m in people().school(school).staff if m.role.value == "administrator")
        found: list[dict[str, Any]] = (
            self.http.get(
                "/notifications/held", params={"school": school}, headers=self.bearer(admin)
            )
            .raise_for_status()
            .json()
        )
        return found

    def decide(self, notification_id: str, *, decided_by: str, **body: Any) -> httpx.Response:
        """POST /notifications/{id}/decision with ``body`` as JSON, authenticated with the
        token of ``decided_by`` (who is not named in the body: the token says who decides).
        Returns the answer, unchecked."""
        assert self.http is not None
        return self.http.post(
            f"/notifications/{notification_id}/decision",
            json=body,
            headers=self.bearer(decided_by),
        )

    def feed(self) -> list[CapAlert]:
        """The public Atom feed's alerts, each fetched without a token and parsed (validated)."""
        with httpx.Client(timeout=30) as anonymous:
            atom = anonymous.get(f"{self.base_url}/cap/feed.atom").raise_for_status()
            root = etree.fromstring(atom.content, etree.XMLParser(resolve_entities=False))
            links = root.findall("atom:entry/atom:link[@rel='alternate']", {"atom": ATOM_NAMESPACE})
            return [
                parse(anonymous.get(link.get("href")).raise_for_status().content) for link in links
            ]

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.http is not None:
            self.http.close()
            self.http = None
        return super().stop(timeout)


# -- events ------------------------------------------------------------------------------------


def directory(path: Path = DEMO_DIRECTORY) -> Directory:
    """A directory file, loaded."""
    return Directory.load(path)


def people(path: Path = DEMO_DIRECTORY) -> People:
    """The people of a directory file, loaded."""
    return People.load(path)


def new_incident_id() -> str:
    """A fresh incident id."""
    return f"inc-{uuid.uuid4().hex[:12]}"


def incident(
    event_type: str,
    *,
    incident_id: str,
    version: int = 1,
    school: str = "sch-lincoln-hs",
    srp_action: str | None = "LOCKDOWN",
    exercise: bool = False,
    directory_file: Path = DEMO_DIRECTORY,
) -> dict[str, Any]:
    """An IncidentOpened / IncidentChanged / IncidentCleared as the incidents service makes it."""
    tenant = directory(directory_file).tenant(school)
    if event_type == "IncidentCleared":
        payload: dict[str, Any] = {
            "incident_id": incident_id,
            "version": version,
            "outcome": "DRILL_COMPLETE" if exercise else "RESOLVED",
            "message": "ALL CLEAR. Resume normal activities.",
            "cleared_by": "principal-1",
        }
    else:
        payload = {
            "incident_id": incident_id,
            "version": version,
            "incident_type": "OTHER",
            "state": "CONFIRMED",
            "srp_action": srp_action,
            "correlated_event_ids": [],
            "dispatchable": not exercise,
            "summary": f"Incident at {school}; SRP {srp_action} in force",
        }
        if event_type == "IncidentChanged":
            payload |= {"change_reason": "SRP action", "changed_by": "principal-1"}
    return new_event(
        event_type,
        source="incidents",
        tenant=tenant,
        building="B",
        incident_id=incident_id,
        exercise=exercise,
        payload=payload,
    )


def notification_request(
    *,
    school: str = "sch-lincoln-hs",
    audiences: list[str] | None = None,
    recipients: list[dict[str, Any]] | None = None,
    srp_action: str | None = None,
    priority: str = "URGENT",
    require_ack: bool = True,
    exercise: bool = False,
    notification_id: str | None = None,
    headline: str = "Early dismissal at 1 pm",
    body: str = "School closes at 1 pm today because of a water main break.",
) -> dict[str, Any]:
    """A NotificationRequested from some other producer (e.g. an administrator's console)."""
    return new_event(
        "NotificationRequested",
        source="console",
        tenant=directory().tenant(school),
        exercise=exercise,
        payload={
            "notification_id": notification_id or f"ntf-{uuid.uuid4().hex[:12]}",
            "priority": priority,
            "srp_action": srp_action,
            "headline": headline,
            "body": body,
            "audiences": audiences or [],
            "recipients": recipients or [],
            "require_ack": require_ack,
            "requested_by": "stf-lincoln-000",
        },
    )


def notification_decided(
    notification_id: str,
    *,
    decision: str,
    decided_by: str,
    incident_id: str | None,
    school: str = "sch-lincoln-hs",
    source: str = "console",
) -> dict[str, Any]:
    """A NotificationDecided published straight on the bus (not through notify's API)."""
    return new_event(
        "NotificationDecided",
        source=source,
        tenant=directory().tenant(school),
        incident_id=incident_id,
        payload={
            "notification_id": notification_id,
            "decision": decision,
            "decided_by": decided_by,
            "headline": None,
            "body": None,
            "note": None,
        },
    )


class PushGateway:
    """A real HTTP push gateway (the app vendor's webhook): records each JSON POST."""

    #: Device tokens with this prefix are unregistered: the gateway answers 410 Gone.
    GONE_PREFIX = "gone-"

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], dict[str, Any]]] = []
        self._server = ServerThread(ListenSettings(port=0), name="push-gateway")

    async def _post(self, request: web.Request) -> web.Response:
        payload = await request.json()
        if str(payload.get("token", "")).startswith(self.GONE_PREFIX):
            return web.json_response({"error": "unregistered"}, status=410)
        self.received.append((dict(request.headers), payload))
        return web.json_response({"id": f"push-{len(self.received)}"}, status=201)

    def __enter__(self) -> str:
        app = web.Application()
        app.router.add_post("/push", self._post)
        return f"http://127.0.0.1:{self._server.start(app)}/push"

    def __exit__(self, *exc: object) -> None:
        self._server.close()
