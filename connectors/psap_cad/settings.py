"""Settings of the PSAP/CAD connector (section ``psap_cad``, ``SAFEHUB_PSAP_CAD__*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, model_validator

from safehub import standards
from safehub.kernel.settings import HubSettings, ListenSettings, directory_ready_field

#: The repository root (connectors/psap_cad/settings.py → three levels up).
_REPO_ROOT = Path(__file__).resolve().parents[2]

#: The EIDO facts file, shipped in the package (:mod:`safehub.standards`).
DEFAULT_EIDO_RULES = standards.EIDO_RULES


class PsapCadConfig(BaseModel):
    """Where CAD is, how to reach it, where CAD reaches us, and where the ledger lives."""

    hub_id: str = Field(
        default="safehub.local",
        pattern=r"^[A-Za-z0-9.-]+$",
        description="the hub's element id (EIDO issuingElementIdentification, $id domain)",
    )
    cad_url: str = Field(
        default="https://127.0.0.1:8443/eido/v1/incidents",
        description="EIDO intake URL of the CAD for PSAPs not listed in cad_endpoints",
    )
    cad_endpoints: dict[str, str] = Field(
        default_factory=dict, description="PSAP id → EIDO intake URL (JSON object in env)"
    )
    psaps: list[str] = Field(
        default_factory=list,
        description="serve only these PSAPs (empty: all); one deployment per PSAP isolates "
        "one CAD's outage from the others",
    )
    group_id: str = Field(default="psap-cad", pattern=r"^[A-Za-z0-9._-]+$")
    cad_token: SecretStr | None = Field(
        default=None, description="bearer token sent to CAD, if CAD asks for one"
    )
    ca_bundle: Path | None = Field(
        default=None, description="CA bundle that signs CAD's server certificate"
    )
    client_cert: Path | None = Field(default=None, description="client certificate for mTLS")
    client_key: Path | None = Field(default=None, description="key of client_cert")
    connect_timeout_s: float = Field(default=2.0, gt=0, le=60)
    request_timeout_s: float = Field(default=5.0, gt=0, le=120)
    retry_initial_s: float = Field(default=0.1, gt=0, le=10)
    retry_cap_s: float = Field(default=2.0, gt=0, le=60)
    signal_wait_ms: int = Field(
        default=150,
        ge=0,
        le=2000,
        description="on a first dispatch, how long to wait for the correlated alert's details "
        "(device, camera) if none has been seen yet",
    )
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8444, ge=0, le=65535, description="0: any free port")
    port_file: Path | None = Field(
        default=None, description="write the bound inbound port here once listening"
    )
    listen_cert: Path | None = Field(default=None, description="inbound server certificate")
    listen_key: Path | None = Field(default=None, description="key of listen_cert")
    listen_client_ca: Path | None = Field(
        default=None, description="require client certificates signed by this CA (mTLS)"
    )
    inbound_token: SecretStr = Field(
        default=SecretStr(""), description="bearer token CAD must present on status updates"
    )
    ledger_url: str = Field(
        default="sqlite:///var/psap_cad/ledger.sqlite3",
        description="SQLAlchemy URL of the delivery ledger (SQLite file or PostgreSQL)",
    )
    directory_file: Path = Field(default=_REPO_ROOT / "deploy/directory/demo.json")
    directory_ready_s: float = directory_ready_field(10.0)
    eido_rules_file: Path = Field(default=DEFAULT_EIDO_RULES)

    @model_validator(mode="after")
    def _pairs(self) -> PsapCadConfig:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together")
        if (self.listen_cert is None) != (self.listen_key is None):
            raise ValueError("listen_cert and listen_key go together")
        if self.retry_cap_s < self.retry_initial_s:
            raise ValueError("retry_cap_s must be at least retry_initial_s")
        return self

    def endpoint_for(self, psap_id: str) -> str:
        """The EIDO intake URL of ``psap_id``'s CAD."""
        return self.cad_endpoints.get(psap_id, self.cad_url)

    @property
    def listen(self) -> ListenSettings:
        """Where its HTTP server listens (``listen_host``, ``listen_port``, ``port_file``)."""
        return ListenSettings(
            host=self.listen_host, port=self.listen_port, port_file=self.port_file
        )


class PsapCadSettings(HubSettings):
    """Hub settings plus the ``psap_cad`` section."""

    psap_cad: PsapCadConfig = Field(default_factory=PsapCadConfig)
