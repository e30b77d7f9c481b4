"""The OneRoster SIS simulator as a real process, with helpers for its control API.

``OneRosterSimProcess`` runs ``python -m simulators.oneroster`` on a free port over a sample
CSV set, with the credentials in its environment as the dev hub passes them.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from connectors.sis_roster.rest_client import OneRosterRestSettings
from tests.support.processes import SimulatorProcess

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT.parent / "shared" / "standards" / "oneroster" / "samples"
FULL_V1P1 = SAMPLES / "v1p1-bulk-catalyst-Test_full_data_set"
DELTA_V1P2 = SAMPLES / "v1p2-delta-catalyst-oneroster_test_data"


def csv_ids(folder: Path, name: str) -> list[str]:
    """The sourcedIds of ``name``.csv in ``folder``, read independently of the simulator."""
    with (folder / f"{name}.csv").open(encoding="utf-8-sig", newline="") as handle:
        return [row["sourcedId"] for row in csv.DictReader(handle) if row.get("sourcedId")]


class OneRosterSimProcess(SimulatorProcess):
    """``python -m simulators.oneroster`` with one client; control API helpers."""

    def __init__(
        self,
        workdir: Path,
        *,
        data: Path = FULL_V1P1,
        key: str = "safehub-roster-client",
        secret: str = "sim-oneroster-secret-0123456789abcdef",
    ) -> None:
        super().__init__(workdir, "oneroster_sim")
        self.data = data
        self.key = key
        self.secret = secret

    module = "simulators.oneroster"

    def args(self) -> list[str]:
        """The CSV set it serves."""
        return ["--data", str(self.data)]

    def env(self) -> dict[str, str]:
        """The client's key and secret go by environment, as the dev hub passes them."""
        return {"SAFEHUB_SIM_ONEROSTER_KEY": self.key, "SAFEHUB_SIM_ONEROSTER_SECRET": self.secret}

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

    def reset(self) -> None:
        """Data as on disk; no tokens, failures or request log."""
        self.post("/_sim/reset", {})

    def touch(self, ids: list[str], collection: str = "users", **changes: str) -> Any:
        """Change records now (CSV columns in ``changes``), so a delta returns them."""
        return self.post(
            "/_sim/touch", {"collection": collection, "sourcedIds": ids, "set": changes}
        )

    def fail(self, count: int, status: int = 500, retry_after: int | None = None) -> Any:
        """The next ``count`` API requests fail."""
        return self.post(
            "/_sim/fail", {"count": count, "status": status, "retry_after": retry_after}
        )

    def revoke(self) -> Any:
        """Every issued token stops working."""
        return self.post("/_sim/revoke", {})

    def requests(self, path_suffix: str | None = None) -> list[dict[str, Any]]:
        """GET /_sim/requests (those whose path ends with ``path_suffix``)."""
        found: list[dict[str, Any]] = self.control.get("/_sim/requests").json()
        return [r for r in found if path_suffix is None or r["path"].endswith(path_suffix)]
