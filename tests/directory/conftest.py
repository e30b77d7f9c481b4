"""The directory service as its own process on the test's broker (SQLite store), and a client
of its read API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import TopicCatalog
from tests.directory.helpers import TOKEN
from tests.support.processes import Component


@pytest.fixture
def directory_service(
    kafka: KafkaSettings, catalog: TopicCatalog, tmp_path: Path
) -> Iterator[httpx.Client]:
    workdir = tmp_path / "directory"
    workdir.mkdir()
    env = {
        "SAFEHUB_DIRECTORY__DATABASE_URL": f"sqlite:///{workdir / 'directory.sqlite3'}",
        "SAFEHUB_DIRECTORY__HTTP_PORT": "0",
        "SAFEHUB_DIRECTORY__PORT_FILE": str(workdir / "directory.port"),
        "SAFEHUB_DIRECTORY__API_TOKEN": TOKEN,
    }
    with Component("services.directory", kafka, catalog.prefix, workdir, env) as service:
        port = int((workdir / "directory.port").read_text())
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=10,
        ) as client:
            yield client
        assert "Traceback" not in service.tail(200)
