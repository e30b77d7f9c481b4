"""Helpers for the timeline tests: a fresh database per test, events of an incident, the
timeline as a real process with its ports, HTTP calls with a reviewer's token."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from safehub.devstack.pki import DevPki
from safehub.kernel.envelope import new_event
from safehub.kernel.settings import KafkaSettings
from tests.support.processes import Component
from tests.support.waiting import wait_until

LINCOLN = {"state": "US-TX", "district": "dist-north-isd", "school": "sch-lincoln-hs"}
RIVERSIDE = {"state": "US-TX", "district": "dist-south-isd", "school": "sch-riverside-es"}

STATE_TOKEN = "demo-token-state-auditor"
NORTH_TOKEN = "demo-token-north-aar"  # district north, no clearance
COUNSEL_TOKEN = "demo-token-north-counsel"  # district north, STUDENT_RECORD + HEALTH
SOUTH_TOKEN = "demo-token-south-aar"


@contextmanager
def fresh_database(database_url: str) -> Iterator[str]:
    """``database_url`` itself for SQLite (a per-test file); a new database on PostgreSQL."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        yield database_url
        return
    name = f"timeline_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class Scenario:
    """Events of one incident at Lincoln HS, with controlled times and ids."""

    def __init__(self, tenant: dict[str, str] | None = None, *, exercise: bool = False) -> None:
        self.tenant = tenant or LINCOLN
        self.exercise = exercise
        self.start = datetime(2026, 3, 2, 9, 15, tzinfo=UTC) + timedelta(
            seconds=uuid.uuid4().int % 100_000
        )
        self.incident_id = f"inc-{uuid.uuid4().hex[:12]}"
        self.panic_id = str(uuid.uuid4())
        self.version = 0

    def at(self, seconds: float) -> datetime:
        return self.start + timedelta(seconds=seconds)

    def _event(self, kind: str, seconds: float, payload: dict[str, Any], **kw: Any) -> Any:
        return new_event(
            kind,
            source=kw.pop("source", "test"),
            tenant=self.tenant,
            building="B",
            room="214",
            exercise=self.exercise,
            occurred_at=self.at(seconds),
            payload=payload,
            **kw,
        )

    def panic(self) -> Any:
        return self._event(
            "PanicAlert",
            0,
            {
                "device_id": "badge-1",
                "device_kind": "WEARABLE",
                "panic_type": "ACTIVE_ASSAILANT",
                "silent": True,
                "reporter_role": "TEACHER",
                "activated_by": "stf-lincoln-001",
                "floor": None,
                "latitude": None,
                "longitude": None,
                "location_text": None,
            },
            event_id=self.panic_id,
            source="gateway",
        )

    def _incident(self, state: str, srp: str | None) -> dict[str, Any]:
        self.version += 1
        return {
            "incident_id": self.incident_id,
            "version": self.version,
            "incident_type": "ACTIVE_ASSAILANT",
            "state": state,
            "srp_action": srp,
            "evacuate_location": None,
            "shelter_hazard": None,
            "shelter_strategy": None,
            "correlated_event_ids": [self.panic_id],
            "dispatchable": not self.exercise,
            "summary": "Active assailant at Lincoln High School, building B, room 214",
        }

    def opened(self) -> Any:
        return self._event(
            "IncidentOpened",
            0.01,
            self._incident("UNCONFIRMED", None),
            incident_id=self.incident_id,
            causation_id=self.panic_id,
            source="incidents",
        )

    def changed(self, seconds: float, state: str, reason: str, srp: str | None = None) -> Any:
        return self._event(
            "IncidentChanged",
            seconds,
            {**self._incident(state, srp), "change_reason": reason, "changed_by": "staff-x"},
            incident_id=self.incident_id,
            source="incidents",
        )

    def dispatch(self, seconds: float) -> Any:
        return self._event(
            "CadDispatch",
            seconds,
            {
                "incident_id": self.incident_id,
                "incident_version": 1,
                "psap_id": "psap-north",
                "apco_incident_type": "ALRPANS",
                "status": "Active",
                "cancel": False,
                "eido_id": f"eido-{self.incident_id}",
                "eido": '{"notes": "student 12345 has asthma"}',
            },
            incident_id=self.incident_id,
            classification=("INTERNAL", "STUDENT_RECORD", "HEALTH"),
            source="psap_cad",
        )

    def receipt(self, seconds: float, recipient: str, status: str, channel: str = "SMS") -> Any:
        return self._event(
            "DeliveryReceipt",
            seconds,
            {
                "notification_id": f"n-{self.incident_id}",
                "recipient_id": recipient,
                "channel": channel,
                "status": status,
                "attempt": 1,
                "provider_message_id": None,
                "error": "carrier rejected" if status == "FAILED" else None,
            },
            incident_id=self.incident_id,
            source="notify",
        )

    def ack(self, seconds: float, recipient: str) -> Any:
        return self._event(
            "NotificationAcknowledged",
            seconds,
            {
                "notification_id": f"n-{self.incident_id}",
                "recipient_id": recipient,
                "channel": "SMS",
                "response": "ACKNOWLEDGED",
                "message": None,
            },
            incident_id=self.incident_id,
            source="notify",
        )

    def cleared(self, seconds: float) -> Any:
        self.version += 1
        return self._event(
            "IncidentCleared",
            seconds,
            {
                "incident_id": self.incident_id,
                "version": self.version,
                "outcome": "RESOLVED",
                "message": "ALL CLEAR",
                "cleared_by": "stf-lincoln-002",
            },
            incident_id=self.incident_id,
            source="incidents",
        )

    def story(self) -> list[Any]:
        """The whole incident in publishing order (panic before the incident it opens)."""
        return [
            self.panic(),
            self.opened(),
            self.dispatch(0.2),
            self.changed(1.0, "RESPONDING", "CAD cad-1: ResourcesEnroute"),
            self.receipt(1.1, "stf-lincoln-001", "SENT"),
            self.receipt(1.5, "stf-lincoln-001", "DELIVERED"),
            self.receipt(1.2, "stf-lincoln-002", "FAILED"),
            self.ack(3.0, "stf-lincoln-001"),
            self.cleared(60.0),
        ]


def referral(case_id: str, tenant: dict[str, str] | None = None) -> Any:
    """A Referral of a case, with STUDENT_RECORD and HEALTH fields."""
    return new_event(
        "Referral",
        source="mental_health",
        tenant=tenant or LINCOLN,
        case_id=case_id,
        classification=("INTERNAL", "STUDENT_RECORD", "HEALTH"),
        payload={
            "referral_id": f"ref-{case_id}",
            "student_id": "stu-98765",
            "partner_id": "partner-clinic",
            "service_request_id": "sr-1",
            "task_id": "task-1",
            "task_status": "REQUESTED",
            "priority": "URGENT",
            "crisis": False,
            "consent_id": None,
            "reason": "anxiety after incident",
            "outcome": None,
            "referred_by": "stf-lincoln-010",
        },
    )


class TimelineProcess:
    """``python -m services.timeline`` with its store, ports and dev PKI under ``workdir``."""

    def __init__(
        self,
        kafka: KafkaSettings,
        prefix: str,
        workdir: Path,
        database_url: str,
        *,
        grpc: bool = False,
    ) -> None:
        self.port_file = workdir / "timeline.http.port"
        self.grpc_port_file = workdir / "timeline.grpc.port"
        self.pki_dir = workdir / "pki"
        pki = DevPki(self.pki_dir)
        server = pki.server()
        env = {
            "SAFEHUB_TIMELINE__DATABASE_URL": database_url,
            "SAFEHUB_TIMELINE__HTTP_PORT": "0",
            "SAFEHUB_TIMELINE__PORT_FILE": str(self.port_file),
            "SAFEHUB_TIMELINE__GRPC_ENABLED": "true" if grpc else "false",
            "SAFEHUB_TIMELINE__GRPC_PORT": "0",
            "SAFEHUB_TIMELINE__GRPC_PORT_FILE": str(self.grpc_port_file),
            "SAFEHUB_TIMELINE__TLS_CERT_FILE": str(server.cert),
            "SAFEHUB_TIMELINE__TLS_KEY_FILE": str(server.key),
            "SAFEHUB_TIMELINE__TLS_CA_FILE": str(pki.ca.cert),
            "SAFEHUB_TIMELINE__FETCH_WAIT_MAX_MS": "20",
            "SAFEHUB_TIMELINE__CHAIN_CACHE_S": "0",
        }
        self.component = Component("services.timeline", kafka, prefix, workdir, env)

    def start(self) -> TimelineProcess:
        self.port_file.unlink(missing_ok=True)
        self.component.start()
        return self

    def kill(self) -> None:
        self.component.kill()

    def stop(self) -> None:
        self.component.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{int(self.port_file.read_text())}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{int(self.grpc_port_file.read_text())}"

    def client(self, token: str | None = STATE_TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def wait_entries(self, subject_id: str, count: int, timeout: float = 60.0) -> dict[str, Any]:
        """The timeline once it holds ``count`` entries (waits; fails at the deadline)."""
        with self.client() as client:

            def ready() -> dict[str, Any] | None:
                answer = client.get(f"/api/v1/subjects/{subject_id}/timeline")
                if answer.status_code != 200:
                    return None
                body: dict[str, Any] = answer.json()
                return body if len(body["entries"]) >= count else None

            return wait_until(ready, timeout=timeout, what=f"{count} entries of {subject_id}")
