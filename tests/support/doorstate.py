"""The doorstate service as a real process: start, query, SIGTERM, kill -9, restart."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from safehub.kernel.settings import KafkaSettings
from tests.support.processes import Component
from tests.support.waiting import wait_until


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DoorstateHandle:
    """A running ``python -m services.doorstate`` and its query API."""

    def __init__(self, kafka: KafkaSettings, prefix: str, workdir: Path, **settings: Any) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            "SAFEHUB_DOORSTATE__WEB_PORT": str(self.port),
            "SAFEHUB_DOORSTATE__DATA_DIR": str(workdir / "faust-data"),
            "SAFEHUB_KAFKA__FETCH_WAIT_MAX_MS": str(kafka.fetch_wait_max_ms),
            # A restarted worker joins twice (the old member must expire first): keep it short.
            "SAFEHUB_KAFKA__SESSION_TIMEOUT_MS": "3000",
            "SAFEHUB_KAFKA__HEARTBEAT_INTERVAL_MS": "500",
            **{
                f"SAFEHUB_DOORSTATE__{name.upper()}": str(value) for name, value in settings.items()
            },
        }
        self.component = Component("services.doorstate", kafka, prefix, workdir, env=env)

    def start(self, timeout: float = 60.0) -> DoorstateHandle:
        """Start and wait until tables are recovered and the API answers."""
        self.component.start(timeout=timeout)
        return self

    def stop(self) -> int | None:
        """SIGTERM: faust commits, flushes and leaves the group."""
        return self.component.stop()

    def kill(self) -> None:
        """kill -9: nothing is flushed or committed."""
        self.component.kill()

    def restart(self, *, kill: bool = False, timeout: float = 60.0) -> DoorstateHandle:
        """Stop (or kill) and start again on the same prefix and port."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start(timeout)

    def get(self, path: str) -> Any:
        """GET a JSON document from the query API."""
        response = httpx.get(self.url + path, timeout=10)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        """``GET /stats``."""
        stats: dict[str, Any] = self.get("/stats")
        return stats

    def doors(self, school: str) -> dict[str, dict[str, Any]]:
        """``GET /doors/{school}``: door id → latest report."""
        doors: dict[str, dict[str, Any]] = self.get(f"/doors/{school}")["doors"]
        return doors

    def wait_processed(self, count: int, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until the worker handled at least ``count`` events since it started."""
        return wait_until(
            lambda: (s := self.stats())["events_processed"] >= count and s,
            timeout=timeout,
            what=f"doorstate processed {count} events",
        )

    def tail(self) -> str:
        """The end of the worker's log (for assertion messages)."""
        return self.component.tail()


@contextmanager
def running_doorstate(
    kafka: KafkaSettings, prefix: str, tmp_path: Path, **settings: Any
) -> Iterator[DoorstateHandle]:
    """A doorstate worker on ``prefix``; ``settings`` become ``SAFEHUB_DOORSTATE__<NAME>``."""
    handle = DoorstateHandle(kafka, prefix, tmp_path, **settings).start()
    try:
        yield handle
    finally:
        handle.stop()
