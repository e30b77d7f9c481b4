"""The OneRoster SIS simulator as a real process, with helpers for its control API.

``OneRosterSimProcess`` runs ``python -m simulators.oneroster`` on a free port over a sample
CSV set, with the credentials in its environment as the dev hub passes them.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from connectors.sis_roster.rest_client import OneRosterRestSettings
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT.parent / "shared" / "standards" / "oneroster" / "samples"
FULL_V1P1 = SAMPLES / "v1p1-bulk-catalyst-Test_full_data_set"
DELTA_V1P2 = SAMPLES / "v1p2-delta-catalyst-oneroster_test_data"


def csv_ids(folder: Path, name: str) -> list[str]:
    """The sourcedIds of ``name``.csv in ``folder``, read independently of the simulator."""
    with (folder / f"{name}.csv").open(encoding="utf-8-sig", newline="") as handle:
        return [row["sourcedId"] for row in csv.DictReader(handle) if row.get("sourcedId")]


class OneRosterSimProcess:
    """``python -m simulators.oneroster`` with one client; control API helpers."""

    def __init__(
        self,
        workdir: Path,
        *,
        data: Path = FULL_V1P1,
        key: str = "safehub-roster-client",
        secret: str = "sim-oneroster-secret-0123456789abcdef",
    ) -> None:
        self.workdir = workdir
        self.data = data
        self.key = key
        self.secret = secret
        self.port_file = workdir / "oneroster_sim.port"
        self.log_file = workdir / "oneroster_sim.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._control: httpx.Client | None = None

    def start(self) -> OneRosterSimProcess:
        """Start and wait until it listens."""
        self.port_file.unlink(missing_ok=True)
        args = [
            sys.executable,
            "-m",
            "simulators.oneroster",
            "--port",
            "0",
            "--port-file",
            str(self.port_file),
            "--data",
            str(self.data),
        ]
        env = {
            **os.environ,
            "SAFEHUB_SIM_ONEROSTER_KEY": self.key,
            "SAFEHUB_SIM_ONEROSTER_SECRET": self.secret,
        }
        with self.log_file.open("ab") as sink:
            self.process = subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT
            )
        wait_until(self._listening, timeout=30, what="OneRoster simulator listening")
        self.port = int(self.port_file.read_text())
        self._control = httpx.Client(base_url=self.base_url, timeout=30)
        return self

    def _listening(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"OneRoster simulator exited with {self.process.returncode}: "
                f"{self.log_file.read_text(errors='replace')[-2000:]}"
            )
        return self.port_file.exists()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``: the provider's root."""
        return f"http://127.0.0.1:{self.port}"

    def settings(self, version: str, **overrides: Any) -> OneRosterRestSettings:
        """Client settings for this simulator (fast backoff: tests do not wait on it)."""
        values: dict[str, Any] = {
            "base_url": self.base_url,
            "version": version,
            "client_id": self.key,
            "client_secret": self.secret,
            "backoff_initial_s": 0.01,
            "backoff_max_s": 0.05,
            **overrides,
        }
        return OneRosterRestSettings.model_validate(values)

    # -- control API -----------------------------------------------------------------------

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        assert self._control is not None, "start() first"
        response = self._control.post(path, json=body)
        assert response.status_code == 200, f"{path}: HTTP {response.status_code} {response.text}"
        return response.json()

    def reset(self) -> None:
        """Data as on disk; no tokens, failures or request log."""
        self._post("/_sim/reset", {})

    def touch(self, ids: list[str], collection: str = "users", **changes: str) -> Any:
        """Change records now (CSV columns in ``changes``), so a delta returns them."""
        return self._post(
            "/_sim/touch", {"collection": collection, "sourcedIds": ids, "set": changes}
        )

    def fail(self, count: int, status: int = 500, retry_after: int | None = None) -> Any:
        """The next ``count`` API requests fail."""
        return self._post(
            "/_sim/fail", {"count": count, "status": status, "retry_after": retry_after}
        )

    def revoke(self) -> Any:
        """Every issued token stops working."""
        return self._post("/_sim/revoke", {})

    def requests(self, path_suffix: str | None = None) -> list[dict[str, Any]]:
        """GET /_sim/requests (those whose path ends with ``path_suffix``)."""
        assert self._control is not None, "start() first"
        found: list[dict[str, Any]] = self._control.get("/_sim/requests").json()
        return [r for r in found if path_suffix is None or r["path"].endswith(path_suffix)]

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self._control is not None:
            self._control.close()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def __enter__(self) -> OneRosterSimProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
