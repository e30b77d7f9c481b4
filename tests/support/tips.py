"""Running the tips service for tests (in this process) and talking to it like its users.

    with running_tips(kafka, catalog.prefix, tmp_path) as tips:
        tips.stub_for("tips-app-north").SubmitTip(...)     # a tip-app vendor, mTLS
        tips.http.post("/tip", ...)                        # the public form
        tips.api.get("/api/tips")                          # an analyst (bearer token)
        tips.sms("+15550001111", "…")                      # Twilio's signed inbound webhook

Every call-tree step of the test directory waits 5 s for an answer (the least the directory
allows), so an escalation walks its chain in seconds. Every contact string a test gives is in
``CONTACTS``: the privacy scan looks for each in every topic, header and log line.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx

from safehub.devstack.pki import DevPki
from safehub.gen.safehub.tips.v1 import tips_pb2_grpc
from safehub.kernel.directory import Directory, default_directory_file
from safehub.kernel.runtime import Runtime
from safehub.kernel.settings import KafkaSettings
from safehub.standards import twilio
from services.tips.analysts import token_sha256
from services.tips.service import setup
from services.tips.settings import TipsSection, TipsSettings
from services.tips.web import SMS_PATH
from tests.support.processes import Component

HOST = "127.0.0.1"
ANALYST_TOKEN = "analyst-token-north-0123456789"
STATE_ANALYST_TOKEN = "analyst-token-state-0123456789"
TWILIO_TOKEN = "twilio-test-token"
TIP_LINE = "+15557770100"  # Lincoln High School's tip number in these tests
TIP_ADDRESS = "tips-lincoln@tips.example"  # and its tip-line e-mail address
#: Contact details tipsters give in the tests (none may appear outside the tips store).
CONTACTS = {
    "name": "Jordan Whistleblower",
    "phone": "+15550199876",
    "email": "jordan.tipster@example.org",
    "sms": "+15550144321",
}


def short_call_trees(tmp_path: Path, ack_within_seconds: int = 5) -> Path:
    """The demo directory with a state centre's call tree, every step answering within
    ``ack_within_seconds``."""
    data = json.loads(default_directory_file().read_text())
    # The state centre's step (the demo directory has none: its staff have no home among the
    # people yet); a responder of Lincoln stands in, so notify can reach them.
    data["call_trees"].append(
        {
            "id": "ct-state",
            "scope": "STATE",
            "scope_id": data["state"],
            "timezone": "America/Chicago",
            "steps": [
                {
                    "name": "state safety centre",
                    "ack_within_seconds": 5,
                    "person_ids": ["rsp-lincoln-sro-sup"],
                }
            ],
        }
    )
    for tree in data["call_trees"]:
        for step in tree["steps"]:
            step["ack_within_seconds"] = ack_within_seconds
    path = tmp_path / "directory.json"
    path.write_text(json.dumps(data))
    return path


@dataclass
class TipsHandle:
    """An in-process tips service and clients for each of its users."""

    runtime: Runtime[TipsSettings] | None
    http_port: int
    grpc_port: int
    pki: DevPki
    directory: Directory
    workdir: Path
    _closers: list[Any] = field(default_factory=list)

    @property
    def smtp_port(self) -> int:
        """The SMTP listener's port (the tip line's e-mail)."""
        return int((self.workdir / "tips-smtp.port").read_text().strip())

    @property
    def base_url(self) -> str:
        """The HTTP base URL."""
        return f"http://{HOST}:{self.http_port}"

    @property
    def http(self) -> httpx.Client:
        """A browser-like client (no credentials)."""
        client = httpx.Client(base_url=self.base_url, timeout=30)
        self._closers.append(client.close)
        return client

    def api(self, token: str = ANALYST_TOKEN) -> httpx.Client:
        """An analyst's client."""
        client = httpx.Client(
            base_url=self.base_url, timeout=30, headers={"Authorization": f"Bearer {token}"}
        )
        self._closers.append(client.close)
        return client

    def stub_for(self, client_id: str) -> tips_pb2_grpc.TipServiceStub:
        """A TipService stub authenticated as ``client_id``."""
        pair = self.pki.client(client_id)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.pki.ca.cert.read_bytes(),
            private_key=pair.key.read_bytes(),
            certificate_chain=pair.cert.read_bytes(),
        )
        channel = grpc.secure_channel(f"{HOST}:{self.grpc_port}", credentials)
        self._closers.append(channel.close)
        return tips_pb2_grpc.TipServiceStub(channel)

    def sms(
        self,
        from_number: str,
        body: str,
        *,
        to: str = TIP_LINE,
        sid: str | None = None,
        token: str = TWILIO_TOKEN,
    ) -> httpx.Response:
        """POST Twilio's inbound-message webhook, signed as Twilio signs it."""
        params = {
            "MessageSid": sid or "SM" + os.urandom(16).hex(),
            "AccountSid": "AC" + "0" * 32,
            "From": from_number,
            "To": to,
            "Body": body,
            "NumMedia": "0",
            "NumSegments": "1",
            "SmsStatus": "received",
            "ApiVersion": "2010-04-01",
        }
        signature = twilio.sign(token, self.base_url + SMS_PATH, params)
        return self.http.post(SMS_PATH, data=params, headers={twilio.SIGNATURE_HEADER: signature})

    def close(self) -> None:
        """Close every client opened through the handle."""
        for closer in self._closers:
            closer()
        self._closers.clear()


def analysts_file(tmp_path: Path) -> Path:
    """An analysts file: one for the north district, one for the state centre."""
    path = tmp_path / "analysts.json"
    path.write_text(
        json.dumps(
            {
                "analysts": [
                    {
                        "id": "ana-north",
                        "name": "North district analyst",
                        "token_sha256": token_sha256(ANALYST_TOKEN),
                        "districts": ["dist-north-isd"],
                    },
                    {
                        "id": "ana-state",
                        "name": "State centre analyst",
                        "token_sha256": token_sha256(STATE_ANALYST_TOKEN),
                        "districts": ["*"],
                    },
                ]
            }
        )
    )
    return path


def tips_section(tmp_path: Path, **section: Any) -> dict[str, Any]:
    """The tips section of a test service (ports 0, a dev PKI, SQLite, 5 s call-tree steps);
    the key ring is made once per ``tmp_path``, so a restarted service opens what it sealed."""
    pki = DevPki(tmp_path / "pki")
    server = pki.server()
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'tips.db'}",
        "directory_file": short_call_trees(tmp_path),
        "directory_ready_s": 10.0,
        "seal_keys": _key_ring(tmp_path),
        "contact_key": "contact-key-for-tests",
        "grpc_port": 0,
        "grpc_port_file": tmp_path / "tips-grpc.port",
        "http_port": 0,
        "http_port_file": tmp_path / "tips-http.port",
        "tls_cert_file": server.cert,
        "tls_key_file": server.key,
        "tls_ca_file": pki.ca.cert,
        "analysts_file": analysts_file(tmp_path),
        "twilio_auth_token": TWILIO_TOKEN,
        "sms_schools": {TIP_LINE: "sch-lincoln-hs"},
        "tick_s": 0.1,
        "smtp_port": 0,
        "smtp_port_file": tmp_path / "tips-smtp.port",
        "email_schools": {TIP_ADDRESS: "sch-lincoln-hs"},
        **section,
    }
    return values


def _key_ring(tmp_path: Path) -> str:
    path = tmp_path / "seal-keys"
    if not path.exists():
        path.write_text("t1:" + base64.b64encode(os.urandom(32)).decode())
    return path.read_text()


def tips_settings(
    kafka: KafkaSettings, catalog_prefix: str, tmp_path: Path, **section: Any
) -> TipsSettings:
    """Settings of an in-process test tips service (see :func:`tips_section`)."""
    return TipsSettings(
        kafka=kafka.model_copy(update={"topic_prefix": catalog_prefix}),
        tips=TipsSection(**tips_section(tmp_path, **section)),
    )


def tips_process(
    kafka: KafkaSettings, catalog_prefix: str, tmp_path: Path, **section: Any
) -> Component:
    """``python -m services.tips`` with the same section as variables (not started)."""
    env = {
        f"SAFEHUB_TIPS__{name.upper()}": json.dumps(value)
        if isinstance(value, dict)
        else str(value)
        for name, value in tips_section(tmp_path, **section).items()
    }
    return Component("services.tips", kafka, catalog_prefix, tmp_path, env=env)


def ports(tmp_path: Path) -> tuple[int, int]:
    """The (HTTP, gRPC) ports a test tips service wrote."""
    return (
        int((tmp_path / "tips-http.port").read_text().strip()),
        int((tmp_path / "tips-grpc.port").read_text().strip()),
    )


@contextlib.contextmanager
def running_tips(
    kafka: KafkaSettings, catalog_prefix: str, tmp_path: Path, **section: Any
) -> Iterator[TipsHandle]:
    """A tips service in this process until the block ends (then drained and closed)."""
    settings = tips_settings(kafka, catalog_prefix, tmp_path, **section)
    with Runtime("tips", settings) as runtime:
        setup(runtime)
        handle = TipsHandle(
            runtime=runtime,
            http_port=ports(tmp_path)[0],
            grpc_port=ports(tmp_path)[1],
            pki=DevPki(tmp_path / "pki"),
            directory=Directory.load(settings.tips.directory_file),
            workdir=tmp_path,
        )
        try:
            yield handle
        finally:
            handle.close()
