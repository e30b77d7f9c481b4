"""Helpers for tests that involve 911 CAD: the CAD simulator over TLS, the psap_cad connector
in-process or as a subprocess, and incident / alert events to feed it.

Typical use::

    pki = DevPki(tmp_path / "pki")
    with running_simulator(pki) as cad:
        settings = connector_settings(kafka, catalog, pki, tmp_path, cad_url=cad.intake_url)
        with running_connector(settings, codec) as connector:
            cad.set_callback(connector_callback_url(connector), settings)
            producer.publish(incident_event(incident_id="inc-1"))
            wait_until(lambda: cad.incident("inc-1"))
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from connectors.psap_cad.service import PsapCadConnector, start_connector
from connectors.psap_cad.settings import DEFAULT_EIDO_RULES, PsapCadConfig, PsapCadSettings
from safehub.devstack.pki import DevPki
from safehub.kernel.bus import EventConsumer
from safehub.kernel.codec import Codec
from safehub.kernel.directory import Directory
from safehub.kernel.envelope import new_event
from safehub.kernel.runtime import Runtime
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import TopicCatalog
from simulators.cad.server import SimulatorConfig, SimulatorServer
from tests.support.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_DIRECTORY = REPO_ROOT / "deploy/directory/demo.json"
EIDO_RULES = DEFAULT_EIDO_RULES
INBOUND_TOKEN = "test-inbound-token"
CONNECTOR_CLIENT_ID = "safehub-psap-cad"


class CadAdmin:
    """An HTTPS client for a CAD simulator's admin endpoints (in-process or a process)."""

    def __init__(self, base_url: str, pki: DevPki) -> None:
        context = ssl.create_default_context(cafile=str(pki.ca.cert))
        # The admin client always presents a certificate: CAD may require one (mTLS).
        admin = pki.client("cad-admin")
        context.load_cert_chain(str(admin.cert), str(admin.key))
        self.http = httpx.Client(base_url=base_url, verify=context, timeout=15)

    def incidents(self) -> list[dict[str, Any]]:
        """GET /sim/incidents."""
        answer: list[dict[str, Any]] = self.http.get("/sim/incidents").raise_for_status().json()
        return answer

    def incident(self, tracking_id: str) -> dict[str, Any] | None:
        """The CAD incident for a SafeHub incident id, if CAD has one."""
        return next((i for i in self.incidents() if i["trackingId"] == tracking_id), None)

    def wait_incident(
        self,
        tracking_id: str,
        *,
        until: Callable[[dict[str, Any]], bool] = lambda _incident: True,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Wait until CAD has the incident (and ``until`` holds for it); return it."""

        def ready() -> dict[str, Any] | None:
            incident = self.incident(tracking_id)
            return incident if incident is not None and until(incident) else None

        found = wait_until(ready, timeout=timeout, what=f"{tracking_id} at CAD")
        assert found is not None
        return found

    def deliveries(self) -> list[dict[str, Any]]:
        """GET /sim/deliveries (every intake request, in arrival order)."""
        answer: list[dict[str, Any]] = self.http.get("/sim/deliveries").raise_for_status().json()
        return answer

    def stats(self) -> dict[str, Any]:
        """GET /sim/stats."""
        answer: dict[str, Any] = self.http.get("/sim/stats").raise_for_status().json()
        return answer

    def outage(self, *, seconds: float | None = None, down: bool | None = None) -> None:
        """POST /sim/outage."""
        body: dict[str, Any] = {}
        if seconds is not None:
            body["seconds"] = seconds
        if down is not None:
            body["down"] = down
        self.http.post("/sim/outage", json=body).raise_for_status()

    def latency(self, ms: float) -> None:
        """POST /sim/latency."""
        self.http.post("/sim/latency", json={"ms": ms}).raise_for_status()

    def post_status(
        self,
        cad_id: str,
        status: str,
        units: Iterable[Any] = (),
        disposition: str | None = None,
    ) -> dict[str, Any]:
        """POST /sim/incidents/{cad_id}/status: CAD sends a status update to the hub."""
        response = self.http.post(
            f"/sim/incidents/{cad_id}/status",
            json={"status": status, "units": list(units), "disposition": disposition},
        )
        answer: dict[str, Any] = response.json()
        return answer

    def close(self) -> None:
        """Close the admin client."""
        self.http.close()


class SimulatorHandle(CadAdmin):
    """A CAD simulator running in this process, with its admin client."""

    def __init__(self, server: SimulatorServer, pki: DevPki) -> None:
        super().__init__(server.base_url, pki)
        self.server = server

    @property
    def intake_url(self) -> str:
        """Where the connector POSTs EIDOs."""
        return self.server.intake_url

    def set_callback(self, url: str, token: str = INBOUND_TOKEN) -> None:
        """Point CAD's status updates at the hub (known once the connector listens)."""
        self.server.simulator.config.callback_url = url
        self.server.simulator.config.callback_token = token


@contextlib.contextmanager
def running_simulator(
    pki: DevPki,
    *,
    auto: bool = False,
    require_client_cert: bool = False,
    rules_file: Path = EIDO_RULES,
) -> Iterator[SimulatorHandle]:
    """The CAD simulator on a free port with TLS (dev CA), in this process."""
    server_pair = pki.server("cad-simulator")
    config = SimulatorConfig(rules_file=rules_file, callback_ca=pki.ca.cert, auto=auto)
    server = SimulatorServer(
        config,
        cert=server_pair.cert,
        key=server_pair.key,
        client_ca=pki.ca.cert if require_client_cert else None,
    )
    server.start()
    handle = SimulatorHandle(server, pki)
    try:
        yield handle
    finally:
        handle.close()
        server.close()


def connector_settings(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    pki: DevPki,
    workdir: Path,
    *,
    cad_url: str,
    client_cert: bool = True,
    **overrides: Any,
) -> PsapCadSettings:
    """Connector settings for a test: the catalog's prefix, dev TLS, a ledger under workdir."""
    server_pair = pki.server("psap-cad-inbound")
    client_pair = pki.client(CONNECTOR_CLIENT_ID)
    config: dict[str, Any] = {
        "hub_id": "safehub.test",
        "cad_url": cad_url,
        "ca_bundle": pki.ca.cert,
        "client_cert": client_pair.cert if client_cert else None,
        "client_key": client_pair.key if client_cert else None,
        "listen_port": 0,
        "port_file": workdir / "psap_cad.port",
        "listen_cert": server_pair.cert,
        "listen_key": server_pair.key,
        "inbound_token": INBOUND_TOKEN,
        "ledger_url": f"sqlite:///{workdir / 'ledger.sqlite3'}",
        "directory_file": DEMO_DIRECTORY,
        "eido_rules_file": EIDO_RULES,
        "retry_initial_s": 0.05,
        "retry_cap_s": 0.5,
        **overrides,
    }
    return PsapCadSettings(
        kafka=kafka.model_copy(update={"topic_prefix": catalog.prefix}),
        psap_cad=PsapCadConfig.model_validate(config),
    )


@contextlib.contextmanager
def running_connector(
    settings: PsapCadSettings, codec: Codec, *, wait_assigned: bool = True
) -> Iterator[PsapCadConnector]:
    """The connector in this process (its own Runtime), consumers joined before yielding."""
    runtime = Runtime("psap_cad", settings, codec=codec)
    try:
        connector = start_connector(runtime)
        if wait_assigned:
            for consumer in (connector.incident_consumer, connector.signal_consumer):
                assert consumer is not None
                wait_until(_assigned(consumer), what="connector partitions")
        yield connector
    finally:
        runtime.close()


def _assigned(consumer: EventConsumer) -> Callable[[], bool]:
    return lambda: bool(consumer.stats.assigned)


def connector_callback_url(connector: PsapCadConnector) -> str:
    """The in-process connector's inbound status URL."""
    assert connector.inbound is not None
    return f"https://127.0.0.1:{connector.inbound.port}/eido/v1/status"


def settings_env(settings: PsapCadSettings) -> dict[str, str]:
    """``SAFEHUB_*`` variables that reproduce ``settings`` in a subprocess."""
    env: dict[str, str] = {}
    kafka = settings.kafka
    for name in (
        "bootstrap_servers",
        "topic_prefix",
        "session_timeout_ms",
        "heartbeat_interval_ms",
        "fetch_wait_max_ms",
    ):
        value = getattr(kafka, name)
        if value is not None:
            env[f"SAFEHUB_KAFKA__{name.upper()}"] = str(value)
    config = settings.psap_cad
    for name in PsapCadConfig.model_fields:
        value = getattr(config, name)
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        elif isinstance(value, dict | list):
            value = json.dumps(value)
        env[f"SAFEHUB_PSAP_CAD__{name.upper()}"] = str(value)
    return env


def start_connector_process(settings: PsapCadSettings, log_file: Path) -> subprocess.Popen[bytes]:
    """``python -m connectors.psap_cad`` with ``settings``; returns once it listens.

    The port file is removed first, so its appearance means this process is up.
    """
    port_file = settings.psap_cad.port_file
    assert port_file is not None, "set psap_cad.port_file to know when the process is up"
    port_file.unlink(missing_ok=True)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SAFEHUB_")},
        **settings_env(settings),
        "SAFEHUB_LOG__FORMAT": "json",
    }
    with log_file.open("ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "connectors.psap_cad"],
            cwd=REPO_ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: port_file.exists() or process.poll() is not None,
            timeout=60,
            what="connector process listening",
        )
    except AssertionError:
        process.kill()
        raise
    if process.poll() is not None:
        raise AssertionError(f"connector exited with {process.returncode}; see {log_file}")
    return process


# -- events -----------------------------------------------------------------------------------

_DIRECTORY: Directory | None = None


def directory() -> Directory:
    """The demo directory (cached)."""
    global _DIRECTORY  # noqa: PLW0603 - a read-only cache
    if _DIRECTORY is None:
        _DIRECTORY = Directory.load(DEMO_DIRECTORY)
    return _DIRECTORY


def new_incident_id() -> str:
    """A fresh incident id."""
    return f"inc-{uuid.uuid4().hex[:12]}"


def incident_event(
    event_type: str = "IncidentOpened",
    *,
    incident_id: str,
    version: int = 1,
    school: str = "sch-lincoln-hs",
    building: str | None = "B",
    room: str | None = "214",
    incident_type: str = "OTHER",
    state: str = "UNCONFIRMED",
    srp_action: str | None = None,
    dispatchable: bool = True,
    exercise: bool = False,
    correlated: Iterable[str] = (),
    summary: str = "Silent panic alarm, Building B room 214",
    causation_id: str | None = None,
    change_reason: str = "changed",
    changed_by: str = "incidents",
    occurred_at: datetime | None = None,
) -> dict[str, Any]:
    """An IncidentOpened or IncidentChanged event as the incidents service publishes it."""
    payload: dict[str, Any] = {
        "incident_id": incident_id,
        "version": version,
        "incident_type": incident_type,
        "state": state,
        "srp_action": srp_action,
        "correlated_event_ids": list(correlated),
        "dispatchable": dispatchable and not exercise,
        "summary": summary,
    }
    if event_type == "IncidentChanged":
        payload |= {"change_reason": change_reason, "changed_by": changed_by}
    return new_event(
        event_type,
        source="incidents",
        tenant=directory().tenant(school),
        building=building,
        room=room,
        incident_id=incident_id,
        causation_id=causation_id,
        exercise=exercise,
        occurred_at=occurred_at,
        payload=payload,
    )


def cleared_event(
    *,
    incident_id: str,
    version: int,
    outcome: str = "RESOLVED",
    school: str = "sch-lincoln-hs",
    occurred_at: datetime | None = None,
) -> dict[str, Any]:
    """An IncidentCleared event."""
    return new_event(
        "IncidentCleared",
        source="incidents",
        tenant=directory().tenant(school),
        incident_id=incident_id,
        occurred_at=occurred_at,
        payload={
            "incident_id": incident_id,
            "version": version,
            "outcome": outcome,
            "message": "All clear." if outcome != "FALSE_ALARM" else "Pressed by mistake.",
            "cleared_by": "principal-1",
        },
    )


def panic_alert(
    *,
    school: str = "sch-lincoln-hs",
    building: str = "B",
    room: str = "214",
    silent: bool = True,
    panic_type: str = "OTHER",
    floor: str | None = "2",
    exercise: bool = False,
    occurred_at: datetime | None = None,
) -> dict[str, Any]:
    """A PanicAlert on the alerts topic (its event id is what incidents correlate)."""
    return new_event(
        "PanicAlert",
        source="panic-badges-north",
        tenant=directory().tenant(school),
        building=building,
        room=room,
        exercise=exercise,
        occurred_at=occurred_at,
        payload={
            "device_id": "badge-0042",
            "device_kind": "WEARABLE",
            "panic_type": panic_type,
            "silent": silent,
            "reporter_role": "TEACHER",
            "activated_by": "staff-17",
            "floor": floor,
            "latitude": 32.78125,
            "longitude": -96.80105,
            "location_text": None,
        },
    )
