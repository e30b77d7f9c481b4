"""Settings of the PA / signage simulator (``SAFEHUB_PA_SIGNAGE_SIM__*``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from safehub.kernel.directory import default_directory_file
from safehub.kernel.errors import ConfigError
from safehub.kernel.settings import HubSettings

#: The demo directory of a source checkout.
DEMO_DIRECTORY = default_directory_file()

Output = Literal["PA_ANNOUNCEMENT", "INTERCOM", "SIGNAGE"]


def _default_outputs() -> list[Output]:
    return ["PA_ANNOUNCEMENT", "SIGNAGE"]


class PaSignageSimSection(BaseModel):
    """Who the simulator is, where the gateway is, and how its endpoints behave."""

    client_id: str = Field(
        default="pa-signage-north", description="client certificate CN and connector id"
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
    outputs: list[Output] = Field(
        default_factory=_default_outputs,
        min_length=1,
        description="announcement capabilities declared; one endpoint per school and output",
    )
    vendor: str = "SafeHub PA and signage simulator"
    play_delay_ms: int = Field(default=50, ge=0, le=60_000, description="time to play or show")
    failing_endpoints: list[str] = Field(
        default_factory=list,
        description="endpoint ids (<school>/<output>, e.g. sch-lincoln-hs/pa) that fail",
    )
    played_file: Path | None = Field(
        default=None, description="append every played announcement here as a JSON line"
    )
    reconnect_initial_s: float = Field(default=0.2, gt=0, le=60)
    reconnect_max_s: float = Field(default=5.0, gt=0, le=600)

    def resolved_directory_file(self) -> Path:
        """The directory file; ConfigError naming the variable if there is none."""
        path = self.directory_file or DEMO_DIRECTORY
        if not path.is_file():
            raise ConfigError(
                f"directory file {path} does not exist: set SAFEHUB_PA_SIGNAGE_SIM__DIRECTORY_FILE"
            )
        return path


class PaSignageSimSettings(HubSettings):
    """The simulator's settings."""

    pa_signage_sim: PaSignageSimSection = Field(default_factory=PaSignageSimSection)
