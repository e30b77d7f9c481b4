"""The SMS/voice provider simulator as a real process, and a webhook receiver for tests.

``ProviderSimProcess`` runs ``python -m simulators.sms`` on a free port and
drives its control API; ``WebhookReceiver`` is a real aiohttp server (own thread and loop)
that records every form POST it gets and answers TwiML, standing in for notify's web
endpoints where a test talks to the provider directly.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from services.notify.channels.sms import TwilioConfig
from simulators.sms.server import DEFAULT_ACCOUNT_SID
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
FROM_NUMBER = "+15550009999"


class ProviderSimProcess:
    """``python -m simulators.sms`` with one account; control API helpers."""

    def __init__(
        self,
        workdir: Path,
        *,
        auth_token: str = "sim-auth-token-0123456789abcdef",
        account_sid: str = DEFAULT_ACCOUNT_SID,
        inbound_url: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.auth_token = auth_token
        self.account_sid = account_sid
        self.inbound_url = inbound_url
        self.port_file = workdir / "provider_sim.port"
        self.log_file = workdir / "provider_sim.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._control: httpx.Client | None = None

    def start(self) -> ProviderSimProcess:
        """Start and wait until it listens."""
        self.port_file.unlink(missing_ok=True)
        args = [
            sys.executable,
            "-m",
            "simulators.sms",
            "--port",
            "0",
            "--port-file",
            str(self.port_file),
            "--account-sid",
            self.account_sid,
        ]
        if self.inbound_url:
            args += ["--inbound-url", self.inbound_url]
        env = {**os.environ, "SAFEHUB_SIM_TWILIO_AUTH_TOKEN": self.auth_token}
        with self.log_file.open("ab") as sink:
            self.process = subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT
            )
        wait_until(self._listening, timeout=30, what="provider simulator listening")
        self.port = int(self.port_file.read_text())
        self._control = httpx.Client(base_url=self.base_url, timeout=30)
        return self

    def _listening(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"provider simulator exited with {self.process.returncode}: "
                f"{self.log_file.read_text(errors='replace')[-2000:]}"
            )
        return self.port_file.exists()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``: the API base URL (Twilio's is https://api.twilio.com)."""
        return f"http://127.0.0.1:{self.port}"

    def config(self, **overrides: Any) -> TwilioConfig:
        """A TwilioConfig for this simulator's account."""
        values: dict[str, Any] = {
            "api_base_url": self.base_url,
            "account_sid": self.account_sid,
            "auth_token": self.auth_token,
            "from_number": FROM_NUMBER,
            **overrides,
        }
        return TwilioConfig.model_validate(values)

    # -- control API -----------------------------------------------------------------------

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        assert self._control is not None, "start() first"
        response = self._control.post(path, json=body)
        assert response.status_code == 200, f"{path}: HTTP {response.status_code} {response.text}"
        return response.json()

    def script(self, number: str, outcome: str, **extra: Any) -> Any:
        """Script what happens to messages/calls to ``number``."""
        return self._post("/_sim/script", {"number": number, "outcome": outcome, **extra})

    def reply(self, from_number: str, body: str, **extra: Any) -> Any:
        """The recipient texts ``body`` back (the inbound webhook is posted before this returns)."""
        return self._post("/_sim/reply", {"from": from_number, "body": body, **extra})

    def press(self, call_sid: str, digits: str) -> Any:
        """The callee presses ``digits`` (the Gather action is posted before this returns)."""
        return self._post("/_sim/press", {"call_sid": call_sid, "digits": digits})

    def configure(self, **settings: Any) -> Any:
        """POST /_sim/config."""
        return self._post("/_sim/config", settings)

    def messages(self, to: str | None = None) -> list[dict[str, Any]]:
        """GET /_sim/messages."""
        assert self._control is not None, "start() first"
        result: list[dict[str, Any]] = self._control.get(
            "/_sim/messages", params={"to": to} if to else None
        ).json()
        return result

    def calls(self, to: str | None = None) -> list[dict[str, Any]]:
        """GET /_sim/calls."""
        assert self._control is not None, "start() first"
        result: list[dict[str, Any]] = self._control.get(
            "/_sim/calls", params={"to": to} if to else None
        ).json()
        return result

    def message(self, sid: str) -> dict[str, Any] | None:
        """One message of /_sim/messages by sid."""
        return next((m for m in self.messages() if m["sid"] == sid), None)

    def call(self, sid: str) -> dict[str, Any] | None:
        """One call of /_sim/calls by sid."""
        return next((c for c in self.calls() if c["sid"] == sid), None)

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

    def __enter__(self) -> ProviderSimProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Received:
    """One webhook request as the receiver got it."""

    path: str
    url: str  # as called: http://host:port/path?query
    query: dict[str, str]
    headers: dict[str, str]
    form: dict[str, str]


class WebhookReceiver:
    """An aiohttp server recording every POST; answers ``<Response/>`` unless told otherwise."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.answers: dict[str, str] = {}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    def start(self) -> WebhookReceiver:
        """Listen on a free port."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def _handle(self, request: web.Request) -> web.Response:
        form = {key: str(value) for key, value in (await request.post()).items()}
        with self._lock:
            self.received.append(
                Received(
                    path=request.path,
                    url=f"{self.base_url}{request.path_qs}",
                    query=dict(request.query),
                    headers=dict(request.headers),
                    form=form,
                )
            )
        answer = self.answers.get(request.path, '<?xml version="1.0" encoding="UTF-8"?><Response/>')
        return web.Response(text=answer, content_type="text/xml")

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def at(self, path: str) -> list[Received]:
        """Requests received at ``path``, in arrival order."""
        with self._lock:
            return [r for r in self.received if r.path == path]

    def close(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
