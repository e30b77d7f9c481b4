"""Settings of the timeline service (section ``timeline``, variables ``SAFEHUB_TIMELINE__*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from safehub.kernel.directory import default_directory_file
from safehub.kernel.settings import (
    HubSettings,
    ListenSettings,
    TlsFileSettings,
    directory_ready_field,
)
from safehub.kernel.tls import TlsFiles, tls_files


class TimelineSection(TlsFileSettings):
    """Store, HTTP and gRPC endpoints, TLS material, directory and ingest tuning."""

    database_url: str = Field(
        default="sqlite:///var/timeline/timeline.sqlite3",
        description="SQLAlchemy URL of the store (SQLite file or postgresql+psycopg://…)",
    )
    directory_file: Path = Field(default_factory=default_directory_file)
    directory_ready_s: float = directory_ready_field(10.0)
    http_host: str = Field(default="127.0.0.1", description="interface of the HTTP API and UI")
    http_port: int = Field(default=8470, ge=0, le=65535, description="0: pick a free port")
    port_file: Path | None = Field(
        default=None, description="write the bound HTTP port here once listening"
    )
    grpc_enabled: bool = Field(default=True, description="serve safehub.timeline.v1 over mTLS")
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=50053, ge=0, le=65535, description="0: pick a free port")
    grpc_port_file: Path | None = Field(
        default=None, description="write the bound gRPC port here once listening"
    )
    events_group: str = Field(default="timeline-events", pattern=r"^[A-Za-z0-9._-]+$")
    spans_group: str = Field(default="timeline-spans", pattern=r"^[A-Za-z0-9._-]+$")
    batch_size: int = Field(default=500, ge=1, le=10_000, description="messages per transaction")
    fetch_wait_max_ms: int = Field(default=100, ge=1, le=5000)
    pending_retention_s: float = Field(
        default=86_400.0,
        gt=0,
        description="how long a signal waits for an incident to name it",
    )
    chain_cache_s: float = Field(
        default=5.0, ge=0, le=3600, description="reuse a chain check this long while the head stays"
    )
    grace_s: float = Field(default=5.0, ge=0, le=120, description="drain time on SIGTERM")

    @model_validator(mode="after")
    def _tls_together(self) -> TimelineSection:
        given = [self.tls_cert_file, self.tls_key_file, self.tls_ca_file]
        if any(given) and not all(given):
            raise ValueError("tls_cert_file, tls_key_file and tls_ca_file go together")
        return self

    @property
    def http_listen(self) -> ListenSettings:
        """Where the HTTP API and the reviewer's pages listen (``http_host``, ``http_port``)."""
        return ListenSettings(host=self.http_host, port=self.http_port, port_file=self.port_file)

    @property
    def grpc_listen(self) -> ListenSettings:
        """Where the gRPC API listens (``grpc_host``, ``grpc_port``, ``grpc_port_file``)."""
        return ListenSettings(
            host=self.grpc_host, port=self.grpc_port, port_file=self.grpc_port_file
        )

    def grpc_tls(self) -> TlsFiles:
        """The gRPC server's checked TLS files (or the dev PKI's); ConfigError naming them."""
        return tls_files("timeline", self, purpose="SAFEHUB_TIMELINE__GRPC_ENABLED=false")


class TimelineSettings(HubSettings):
    """The timeline's settings."""

    service_name: str = "timeline"
    timeline: TimelineSection = Field(default_factory=TimelineSection)
