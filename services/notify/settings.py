"""Settings of the notify service (section ``notify``, ``SAFEHUB_NOTIFY__*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, model_validator

from safehub.kernel.directory import default_directory_file
from safehub.kernel.settings import HubSettings, ListenSettings, directory_ready_field
from safehub.standards.cap import DEFAULT_CAP_XSD
from services.notify.channels.sms import TwilioConfig


class RateLimit(BaseModel):
    """A token bucket: ``rate_per_s`` sustained, ``burst`` at once."""

    rate_per_s: float = Field(gt=0, le=100_000)
    burst: int = Field(ge=1, le=1_000_000)


def _default_rate_limits() -> dict[str, RateLimit]:
    return {
        "EMAIL": RateLimit(rate_per_s=1000, burst=2000),
        "SMS": RateLimit(rate_per_s=250, burst=500),
        "VOICE": RateLimit(rate_per_s=20, burst=50),
        "PUSH": RateLimit(rate_per_s=1000, burst=2000),
        "PUBLIC_ADDRESS": RateLimit(rate_per_s=50, burst=50),
        "DIGITAL_SIGNAGE": RateLimit(rate_per_s=50, burst=50),
    }


class NotifySection(BaseModel):
    """Channels, acknowledgement and escalation policy, stores and the web endpoint."""

    directory_file: Path = Field(default_factory=default_directory_file)
    directory_ready_s: float = directory_ready_field(30.0)
    database_url: str = Field(
        default="sqlite:///var/notify/notify.sqlite3",
        description="SQLAlchemy URL of the delivery store (SQLite file or PostgreSQL)",
    )
    # -- web (ack links, provider callbacks, CAP feed, status) ----------------------------
    listen_host: str = "127.0.0.1"
    http_port: int = Field(default=8480, ge=0, le=65535, description="0: any free port")
    port_file: Path | None = Field(default=None, description="bound port written here")
    public_url: str | None = Field(
        default=None,
        description="base URL recipients and providers reach this service at "
        "(default http://<listen_host>:<bound port>)",
    )
    ack_secret: SecretStr = Field(
        default=SecretStr(""), description="HMAC key of acknowledgement links (required)"
    )
    operators_file: Path | None = Field(
        default=None,
        description="JSON file of the staff allowed to use the status and approval API, by "
        "the SHA-256 of their bearer token (services/notify/auth.py); None: nobody",
    )
    status_token: SecretStr = Field(
        default=SecretStr(""),
        description="read-only bearer token of a monitoring system: delivery status and "
        "Restricted CAP alerts of every school, never held messages or decisions (empty: none)",
    )
    # -- policy ---------------------------------------------------------------------------
    ack_timeout_s: float = Field(default=120.0, gt=0, le=86_400)
    escalation_cap_s: float = Field(default=600.0, gt=0, le=86_400)
    max_escalations: int = Field(default=3, ge=0, le=20)
    retry_initial_s: float = Field(default=0.5, gt=0, le=60)
    retry_cap_s: float = Field(default=30.0, gt=0, le=3600)
    max_retries: int = Field(default=5, ge=0, le=100)
    notify_responders: bool = Field(
        default=True, description="real (non-drill) incidents also notify responders:<school>"
    )
    rate_limits: dict[str, RateLimit] = Field(default_factory=_default_rate_limits)
    workers: dict[str, int] = Field(
        default_factory=lambda: {"EMAIL": 4, "SMS": 8, "VOICE": 4, "PUSH": 4},
        description="concurrent senders per channel (EMAIL: one SMTP connection each)",
    )
    incidents_fetch_wait_ms: int = Field(default=10, ge=1, le=1000)
    requests_fetch_wait_ms: int = Field(default=10, ge=1, le=1000)
    # -- email ----------------------------------------------------------------------------
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=2525, ge=1, le=65535)
    smtp_starttls: bool = False
    smtp_ssl: bool = Field(default=False, description="implicit TLS (port 465 style)")
    smtp_ca_bundle: Path | None = None
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = "SafeHub Alerts <alerts@safehub.local>"
    smtp_timeout_s: float = Field(default=10.0, gt=0, le=300)
    # -- push (webhook) -------------------------------------------------------------------
    push_url: str | None = Field(default=None, description="webhook for app push; None: off")
    push_token: SecretStr | None = Field(default=None, description="bearer token for push_url")
    # -- SMS / voice (Twilio-compatible provider) -----------------------------------------
    twilio: TwilioConfig = Field(default_factory=TwilioConfig)
    sms_enabled: bool = Field(
        default=False, description="send SMS and voice through the twilio provider settings"
    )
    # -- CAP ------------------------------------------------------------------------------
    cap_xsd: Path = Field(default=DEFAULT_CAP_XSD, description="the OASIS CAP 1.2 schema")
    cap_sender: str = Field(default="safehub@safehub.local", pattern=r"^[^\s,<&]+$")
    cap_endpoint_url: str | None = Field(default=None, description="POST every CAP alert here")
    cap_endpoint_token: SecretStr | None = None

    @model_validator(mode="after")
    def _consistent(self) -> NotifySection:
        if self.retry_cap_s < self.retry_initial_s:
            raise ValueError("retry_cap_s must be at least retry_initial_s")
        if self.smtp_ssl and self.smtp_starttls:
            raise ValueError("smtp_ssl and smtp_starttls exclude each other")
        if (self.smtp_username is None) != (self.smtp_password is None):
            raise ValueError("smtp_username and smtp_password go together")
        return self

    @property
    def listen(self) -> ListenSettings:
        """Where its HTTP server listens (``listen_host``, ``http_port``, ``port_file``)."""
        return ListenSettings(host=self.listen_host, port=self.http_port, port_file=self.port_file)


class NotifySettings(HubSettings):
    """Hub settings plus the ``notify`` section."""

    service_name: str = "notify"
    notify: NotifySection = Field(default_factory=NotifySection)
