"""Settings of the directory service (section ``directory``, variables ``SAFEHUB_DIRECTORY__*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr

from safehub.kernel.settings import HubSettings, ListenSettings


class DirectorySection(BaseModel):
    """Store, read API and consumer tuning."""

    database_url: str = Field(
        default="sqlite:///var/directory/directory.sqlite3",
        description="SQLAlchemy URL of the store (SQLite file or postgresql+psycopg://…)",
    )
    http_host: str = Field(default="127.0.0.1", description="interface of the read API")
    http_port: int = Field(default=8490, ge=0, le=65535, description="0: pick a free port")
    port_file: Path | None = Field(
        default=None, description="write the bound HTTP port here once listening"
    )
    api_token: SecretStr | None = Field(
        default=None,
        description="bearer token of the read API; None: the API refuses everyone",
    )
    group: str = Field(
        default="directory-people",
        pattern=r"^[A-Za-z0-9._-]+$",
        description="consumer group reading safehub.people.v1",
    )
    entries_group: str = Field(
        default="directory-entries",
        pattern=r"^[A-Za-z0-9._-]+$",
        description="consumer group reading safehub.directory.v1",
    )
    fetch_wait_max_ms: int = Field(default=100, ge=1, le=5000)

    @property
    def listen(self) -> ListenSettings:
        """Where its HTTP server listens (``http_host``, ``http_port``, ``port_file``)."""
        return ListenSettings(host=self.http_host, port=self.http_port, port_file=self.port_file)


class DirectorySettings(HubSettings):
    """The directory service's settings."""

    service_name: str = "directory"
    directory: DirectorySection = Field(default_factory=DirectorySection)
