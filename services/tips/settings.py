"""Settings of the tips service (section ``tips``, variables ``SAFEHUB_TIPS__*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from safehub.kernel.directory import default_directory_file
from safehub.kernel.settings import (
    HubSettings,
    ListenSettings,
    TlsFileSettings,
    directory_ready_field,
)
from safehub.kernel.tls import TlsFiles, tls_files


def _default_close_within() -> dict[str, float]:
    """Hours within which a tip of each category must be closed before the district is told."""
    return {
        "WEAPON": 72.0,
        "THREAT_OF_VIOLENCE": 72.0,
        "SELF_HARM": 72.0,
        "ABUSE": 7 * 24.0,
        "BULLYING": 14 * 24.0,
        "DRUGS": 14 * 24.0,
        "OTHER": 30 * 24.0,
    }


def _default_assign_within() -> dict[str, float]:
    """Hours within which a tip of each category must be assigned before it escalates."""
    return {
        "WEAPON": 0.25,
        "THREAT_OF_VIOLENCE": 0.25,
        "SELF_HARM": 0.25,
        "ABUSE": 4.0,
        "BULLYING": 24.0,
        "DRUGS": 24.0,
        "OTHER": 48.0,
    }


class TipsSection(TlsFileSettings):
    """Store, key ring, endpoints, escalation and intake limits."""

    directory_file: Path = Field(default_factory=default_directory_file)
    directory_ready_s: float = directory_ready_field(30.0)
    database_url: str = Field(
        default="sqlite:///var/tips/tips.sqlite3",
        description="SQLAlchemy URL of the tips store (SQLite file or postgresql+psycopg://…)",
    )
    seal_keys: SecretStr = Field(
        default=SecretStr(""),
        description="the identity key ring, 'id:BASE64,id:BASE64' (32-byte AES keys, the "
        "first seals, every one opens: rotate by putting a new key first); required",
    )
    contact_key: SecretStr = Field(
        default=SecretStr(""),
        description="HMAC key that turns a tipster's phone or address into the pseudonymous "
        "key replies are matched and rate-limited by (never the contact itself); required",
    )
    # -- gRPC (tip-app vendors, mTLS + scope tips) ---------------------------------------
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=50071, ge=0, le=65535, description="0: any free port")
    grpc_port_file: Path | None = None
    grpc_workers: int = Field(
        default=128,
        ge=4,
        le=1024,
        description="gRPC handler threads: routine tips queue on the intake's turn, not here",
    )
    # -- HTTP (public form and thread, SMS webhook, analysts' API) ------------------------
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8475, ge=0, le=65535, description="0: any free port")
    http_port_file: Path | None = None
    public_url: str | None = Field(
        default=None, description="base URL the analysts' links point at (default: bound)"
    )
    analysts_file: Path | None = Field(
        default=None,
        description="JSON file of analysts (id, name, token SHA-256, districts); none: the "
        "analysts' API lets nobody in",
    )
    # -- inbound SMS (Twilio's webhook) ---------------------------------------------------
    twilio_auth_token: SecretStr = Field(
        default=SecretStr(""),
        description="the provider account's auth token that signs inbound webhooks; empty: "
        "every inbound SMS is refused (403)",
    )
    twilio_api_base_url: str | None = Field(
        default=None,
        description="Twilio's API (https://api.twilio.com) or the provider simulator: analysts' "
        "answers to SMS tipsters are texted through it; unset: they wait in the thread",
    )
    twilio_account_sid: str = Field(
        default="ACsafehub0000000000000000000000000", pattern=r"^AC[0-9A-Za-z]{32}$"
    )
    sms_schools: dict[str, str] = Field(
        default_factory=dict,
        description="tip-line phone number (E.164, the webhook's To) → school id",
    )
    # -- inbound e-mail (SMTP listener) ---------------------------------------------------
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=8025, ge=0, le=65535, description="0: any free port")
    smtp_port_file: Path | None = None
    email_schools: dict[str, str] = Field(
        default_factory=dict,
        description="tip-line e-mail address (the RCPT, case-insensitive) → school id; "
        "empty: no SMTP listener",
    )
    smtp_relay_host: str | None = Field(
        default=None,
        description="the mail relay answers to e-mail tipsters go through (their code and "
        "passcode, analysts' answers); unset: nothing is mailed, answers wait on the web page",
    )
    smtp_relay_port: int = Field(default=25, ge=1, le=65535)
    max_email_bytes: int = Field(
        default=25_000_000,
        ge=100_000,
        le=200_000_000,
        description="largest message taken (advertised as SIZE, 552 beyond); base64 makes "
        "photos a third larger",
    )
    # -- escalation ----------------------------------------------------------------------
    tick_s: float = Field(default=0.5, gt=0, le=60, description="escalation check interval")
    assign_within_h: dict[str, float] = Field(default_factory=_default_assign_within)
    close_within_h: dict[str, float] = Field(
        default_factory=_default_close_within,
        description="per category, hours within which a tip must be closed; past it the "
        "district is told once",
    )
    # -- intake limits -------------------------------------------------------------------
    max_text_chars: int = Field(default=5000, ge=100, le=100_000)
    max_attachments: int = Field(default=5, ge=0, le=20)
    max_attachment_bytes: int = Field(default=10_000_000, ge=10_000, le=100_000_000)
    routine_concurrency: int = Field(
        default=1,
        ge=1,
        le=64,
        description="tips that are not life-safety checked and stored at once; the rest wait "
        "their turn, while a life-safety tip never waits (a burst after a publicised threat "
        "must not slow the one that matters)",
    )
    source_limit: int = Field(
        default=200,
        ge=1,
        le=100_000,
        description="tips one source may send per source window (a school network is one "
        "address for hundreds of students: keep it high; a life-safety tip is never refused)",
    )
    source_window_s: float = Field(default=3600.0, gt=0, le=86400)
    flood_sources: int = Field(
        default=5,
        ge=2,
        le=10_000,
        description="distinct sources sending the same words within the duplicate window "
        "from which the primary tip is marked as a flood",
    )
    max_request_bytes: int = Field(default=60_000_000, ge=100_000, le=500_000_000)
    duplicate_window_h: float = Field(default=72.0, gt=0, le=24 * 30)
    acks_group: str = Field(default="tips-acks", pattern=r"^[A-Za-z0-9._-]+$")

    def tls(self) -> TlsFiles:
        """The gRPC server's mTLS files (ConfigError naming the variables still to set)."""
        return tls_files("tips", self)

    @property
    def grpc_listen(self) -> ListenSettings:
        """Where the gRPC server listens."""
        return ListenSettings(
            host=self.grpc_host, port=self.grpc_port, port_file=self.grpc_port_file
        )

    @property
    def smtp_listen(self) -> ListenSettings:
        """Where the SMTP listener listens."""
        return ListenSettings(
            host=self.smtp_host, port=self.smtp_port, port_file=self.smtp_port_file
        )

    @property
    def http_listen(self) -> ListenSettings:
        """Where the HTTP server listens."""
        return ListenSettings(
            host=self.http_host, port=self.http_port, port_file=self.http_port_file
        )


class TipsSettings(HubSettings):
    """The tips service's settings."""

    service_name: str = "tips"
    tips: TipsSection = Field(default_factory=TipsSection)
