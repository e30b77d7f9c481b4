"""Settings of the gateway (section ``gateway``, variables ``SAFEHUB_GATEWAY__*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from safehub.kernel.directory import default_directory_file
from safehub.kernel.errors import ConfigError
from safehub.kernel.settings import (
    HubSettings,
    ListenSettings,
    TlsFileSettings,
    directory_ready_field,
)
from safehub.kernel.tls import TlsFiles, tls_files

#: The demo directory of a source checkout; installed deployments name their own file.
DEMO_DIRECTORY = default_directory_file()


class GatewaySection(TlsFileSettings):
    """Where the gateway listens, its TLS material, its directory and its limits."""

    host: str = Field(default="127.0.0.1", description="interface to listen on")
    port: int = Field(default=50051, ge=0, le=65535, description="0: pick a free port")
    port_file: Path | None = Field(
        default=None, description="write the bound port here once listening (for port 0)"
    )
    directory_file: Path | None = Field(
        default=None, description="the hub directory (default: the demo directory of a checkout)"
    )
    directory_ready_s: float = directory_ready_field(10.0)
    dedupe_window: int = Field(
        default=100_000, ge=1, le=10_000_000, description="accepted event ids remembered"
    )
    max_workers: int = Field(default=64, ge=4, le=1024, description="gRPC worker threads")
    max_connector_sessions: int = Field(
        default=16,
        ge=1,
        le=512,
        description="concurrent Attach streams; each holds a worker thread, so keep it well "
        "below max_workers",
    )
    grace_s: float = Field(default=5.0, ge=0, le=120, description="drain time on SIGTERM")
    decision_wait_s: float = Field(
        default=2.0,
        ge=0,
        le=30,
        description="how long an SRP request or a cancellation waits for the incident "
        "service's decision before it is answered PENDING (recorded, decided later)",
    )
    max_clock_skew_s: float = Field(
        default=300.0,
        gt=0,
        le=86_400,
        description="how far in the future a door report's occurred_at may be (a panic, "
        "camera alert or cancellation is taken with any clock from 1970 to 2100: the hub "
        "works on its own time)",
    )
    max_stream_items: int = Field(
        default=10_000, ge=1, le=1_000_000, description="items per StreamDoorStates call"
    )
    max_streams: int | None = Field(
        default=None,
        ge=1,
        le=512,
        description="concurrent streams (StreamDoorStates and Attach together) on this "
        "gateway; each holds a worker thread, so at most half of max_workers: the other "
        "workers stay reserved for unary calls (ReportPanic, CancelPanic, RequestSrpAction, "
        "ReportCameraAlert), which no device feed can take; default half of max_workers",
    )
    max_streams_per_client: int = Field(
        default=8,
        ge=1,
        le=512,
        description="concurrent streams (StreamDoorStates and Attach together) of one client "
        "certificate; more are refused with RESOURCE_EXHAUSTED",
    )
    stream_idle_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="a StreamDoorStates stream that sends no item for this long is ended "
        "with DEADLINE_EXCEEDED (items sent before it are processed), freeing its worker",
    )
    stream_window: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="door states of one batch or stream published and not yet confirmed by "
        "the broker; the next item waits, so a long stream holds bounded memory",
    )
    max_stream_errors: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="rejected items listed (the first, by index) in a batch or stream "
        "response; rejected_count counts them all",
    )
    max_message_bytes: int = Field(
        default=1_048_576, ge=4096, le=16 * 1_048_576, description="largest request message"
    )
    door_commands_group: str = Field(
        default="gateway-door-commands",
        pattern=r"^[A-Za-z0-9._-]+$",
        description="consumer group of the door-commands topic; every gateway replica that "
        "holds connector sessions needs its own",
    )
    door_commands_fetch_wait_ms: int = Field(default=50, ge=1, le=5000)
    hello_timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="time a connector has to send its Hello"
    )
    ping_interval_s: float = Field(default=15.0, gt=0, le=600)
    ping_misses: int = Field(
        default=3, ge=1, le=100, description="unanswered pings before a connector is dropped"
    )
    lock_command_deadline_s: float = Field(
        default=60.0, gt=0, le=3600, description="deadline given to connectors for a LockCommand"
    )
    pending_commands: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="forwarded commands remembered (lock commands and announcements, each)",
    )
    announcements_group: str = Field(
        default="gateway-announcements",
        pattern=r"^[A-Za-z0-9._-]+$",
        description="consumer group of the announcements topic; every gateway replica that "
        "holds connector sessions needs its own",
    )
    announcements_fetch_wait_ms: int = Field(default=50, ge=1, le=5000)
    announcement_max_age_s: float = Field(
        default=300.0,
        gt=0,
        le=86_400,
        description="an announcement without expires_at older than this is not played",
    )
    report_unattached_announcements: bool = Field(
        default=True,
        description="publish a FAILED receipt when no connector attached here can play an "
        "announcement; with several gateway replicas each holds only some sessions, so set "
        "false there (the notifier's acknowledgement timeout then covers it)",
    )

    @model_validator(mode="after")
    def _sessions_leave_workers(self) -> GatewaySection:
        if self.max_connector_sessions > self.max_workers // 2:
            raise ValueError("max_connector_sessions must be at most half of max_workers")
        if self.max_streams is not None:
            if self.max_streams > self.max_workers // 2:
                raise ValueError(
                    f"SAFEHUB_GATEWAY__MAX_STREAMS ({self.max_streams}) must be at most half of "
                    f"SAFEHUB_GATEWAY__MAX_WORKERS ({self.max_workers}): the rest are reserved "
                    "for life-safety unary calls"
                )
            if self.max_streams < self.max_connector_sessions:
                raise ValueError(
                    f"SAFEHUB_GATEWAY__MAX_STREAMS ({self.max_streams}) must be at least "
                    f"SAFEHUB_GATEWAY__MAX_CONNECTOR_SESSIONS ({self.max_connector_sessions}): "
                    "connector sessions are streams"
                )
        return self

    @property
    def stream_limit(self) -> int:
        """Concurrent streams on this gateway (``max_streams``, default half the workers)."""
        return self.max_streams if self.max_streams is not None else self.max_workers // 2

    @property
    def listen(self) -> ListenSettings:
        """Where the gRPC server listens (``host``, ``port``, ``port_file``)."""
        return ListenSettings(host=self.host, port=self.port, port_file=self.port_file)

    def tls(self) -> TlsFiles:
        """The server's checked TLS files (or the dev PKI's); ConfigError naming the variables."""
        return tls_files("gateway", self)

    def resolved_directory_file(self) -> Path:
        """The directory file to load; ConfigError naming the variable if there is none."""
        path = self.directory_file or DEMO_DIRECTORY
        if not path.is_file():
            raise ConfigError(
                f"directory file {path} does not exist: set SAFEHUB_GATEWAY__DIRECTORY_FILE"
            )
        return path


class GatewaySettings(HubSettings):
    """The gateway's settings."""

    gateway: GatewaySection = Field(default_factory=GatewaySection)
