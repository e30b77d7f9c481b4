"""Running hub components and simulators as real processes (so tests can SIGTERM or kill -9
them, and talk to them over real sockets)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import httpx

from safehub.kernel.settings import KafkaSettings
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


class Component:
    """``python -m <module>`` with the test's broker and topic prefix."""

    #: Every component started and not yet stopped; a test that fails half-way leaves its
    #: processes here, and the suite's teardown (``tests/conftest.py``) kills them.
    running: ClassVar[list[Component]] = []

    def __init__(
        self,
        module: str,
        kafka: KafkaSettings,
        prefix: str,
        workdir: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.module = module
        self.workdir = workdir
        self.ready_file = workdir / f"{module}.ready"
        self.log_file = workdir / f"{module}.log"
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers or "",
            "SAFEHUB_KAFKA__TOPIC_PREFIX": prefix,
            "SAFEHUB_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "SAFEHUB_KAFKA__HEARTBEAT_INTERVAL_MS": "500",
            "SAFEHUB_READY_FILE": str(self.ready_file),
            "SAFEHUB_LOG__FORMAT": "json",
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, wait: bool = True, timeout: float = 60.0) -> Component:
        self.ready_file.unlink(missing_ok=True)
        Component.running.append(self)
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait:
            wait_until(self._ready, timeout=timeout, what=f"{self.module} ready")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"{self.module} exited with {self.process.returncode}:\n{self.tail()}"
            )
        return self.ready_file.exists()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """kill -9: no drain, no commit."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM: drain (commit, flush) and exit."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode if self.process else None

    def __enter__(self) -> Component:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SimulatorProcess:
    """``python -m <module> --port 0 --port-file F …`` and an HTTP client for its control API.

    Subclasses name the module and add their arguments and environment (secrets go by
    environment, never argv, as the dev hub passes them).
    """

    module: ClassVar[str]

    def __init__(self, workdir: Path, name: str) -> None:
        self.workdir = workdir
        self.port_file = workdir / f"{name}.port"
        self.log_file = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._control: httpx.Client | None = None

    def args(self) -> list[str]:
        """Arguments after ``--port 0 --port-file F``."""
        return []

    def env(self) -> dict[str, str]:
        """Variables added to this process's environment."""
        return {}

    def start(self) -> Self:
        """Start and wait until it listens."""
        self.port_file.unlink(missing_ok=True)
        argv = [
            sys.executable,
            "-m",
            self.module,
            "--port",
            "0",
            "--port-file",
            str(self.port_file),
        ]
        with self.log_file.open("ab") as sink:
            self.process = subprocess.Popen(
                [*argv, *self.args()],
                cwd=ROOT,
                env={**os.environ, **self.env()},
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._listening, timeout=30, what=f"{self.module} listening")
        self.port = int(self.port_file.read_text())
        self._control = httpx.Client(base_url=self.base_url, timeout=30)
        return self

    def _listening(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"{self.module} exited with {self.process.returncode}: "
                f"{self.log_file.read_text(errors='replace')[-2000:]}"
            )
        return self.port_file.exists()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def control(self) -> httpx.Client:
        """The HTTP client of its control API (``start()`` first)."""
        assert self._control is not None, "start() first"
        return self._control

    def post(self, path: str, body: dict[str, Any]) -> Any:
        """POST a control request; fails the test unless it answers 200."""
        response = self.control.post(path, json=body)
        assert response.status_code == 200, f"{path}: HTTP {response.status_code} {response.text}"
        return response.json()

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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
