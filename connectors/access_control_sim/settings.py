"""Settings of the access-control simulator (``SAFEHUB_ACCESS_CONTROL_SIM__*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from safehub.kernel.directory import default_directory_file
from safehub.kernel.errors import ConfigError
from safehub.kernel.settings import HubSettings

#: The demo directory of a source checkout.
DEMO_DIRECTORY = default_directory_file()


class AccessControlSimSection(BaseModel):
    """Who the simulator is, where the gateway is, and how its doors behave."""

    client_id: str = Field(
        default="acme-access-north", description="client certificate CN and connector id"
    )
    gateway_address: str = Field(default="127.0.0.1:50051", description="host:port")
    gateway_port_file: Path | None = Field(
        default=None, description="read the gateway's port from here on every (re)connect"
    )
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
    dev_pki_dir: Path | None = Field(
        default=None, description="development only: take a client certificate from a DevPki"
    )
    directory_file: Path | None = Field(default=None, description="default: demo directory")
    school_ids: list[str] = Field(
        default_factory=list, description="schools served; empty: every school of the client"
    )
    vendor: str = "SafeHub access-control simulator"
    report_delay_ms: int = Field(default=50, ge=0, le=60_000, description="lock/unlock time")
    jammed_doors: list[str] = Field(
        default_factory=list, description="door ids that never reach a commanded state"
    )
    reconnect_initial_s: float = Field(default=0.2, gt=0, le=60)
    reconnect_max_s: float = Field(default=5.0, gt=0, le=600)

    def resolved_directory_file(self) -> Path:
        """The directory file; ConfigError naming the variable if there is none."""
        path = self.directory_file or DEMO_DIRECTORY
        if not path.is_file():
            raise ConfigError(
                f"directory file {path} does not exist: "
                "set SAFEHUB_ACCESS_CONTROL_SIM__DIRECTORY_FILE"
            )
        return path


class AccessControlSimSettings(HubSettings):
    """The simulator's settings."""

    access_control_sim: AccessControlSimSection = Field(default_factory=AccessControlSimSection)
