"""The SMS/voice provider simulator as a real process, and a webhook receiver for tests.

``ProviderSimProcess`` runs ``python -m simulators.sms`` on a free port and
drives its control API; ``WebhookReceiver`` is a real aiohttp server (own thread and loop)
that records every form POST it gets and answers TwiML, standing in for notify's web
endpoints where a test talks to the provider directly.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from services.notify.channels.sms import TwilioConfig
from simulators.sms.server import DEFAULT_ACCOUNT_SID
from tests.support.processes import SimulatorProcess

ROOT = Path(__file__).resolve().parents[2]
FROM_NUMBER = "+15550009999"


class ProviderSimProcess(SimulatorProcess):
    """``python -m simulators.sms`` with one account; control API helpers."""

    def __init__(
        self,
        workdir: Path,
        *,
        auth_token: str = "sim-auth-token-0123456789abcdef",
        account_sid: str = DEFAULT_ACCOUNT_SID,
        inbound_url: str | None = None,
    ) -> None:
        super().__init__(workdir, "provider_sim")
        self.auth_token = auth_token
        self.account_sid = account_sid
        self.inbound_url = inbound_url

    module = "simulators.sms"

    def args(self) -> list[str]:
        """The account, and where replies go."""
        extra = ["--account-sid", self.account_sid]
        return [*extra, "--inbound-url", self.inbound_url] if self.inbound_url else extra

    def env(self) -> dict[str, str]:
        """The auth token goes by environment, as the dev hub passes it."""
        return {"SAFEHUB_SIM_TWILIO_AUTH_TOKEN": self.auth_token}

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

    def script(self, number: str, outcome: str, **extra: Any) -> Any:
        """Script what happens to messages/calls to ``number``."""
        return self.post("/_sim/script", {"number": number, "outcome": outcome, **extra})

    def reply(self, from_number: str, body: str, **extra: Any) -> Any:
        """The recipient texts ``body`` back (the inbound webhook is posted before this returns)."""
        return self.post("/_sim/reply", {"from": from_number, "body": body, **extra})

    def press(self, call_sid: str, digits: str) -> Any:
        """The callee presses ``digits`` (the Gather action is posted before this returns)."""
        return self.post("/_sim/press", {"call_sid": call_sid, "digits": digits})

    def configure(self, **settings: Any) -> Any:
        """POST /_sim/config."""
        return self.post("/_sim/config", settings)

    def messages(self, to: str | None = None) -> list[dict[str, Any]]:
        """GET /_sim/messages."""
        result: list[dict[str, Any]] = self.control.get(
            "/_sim/messages", params={"to": to} if to else None
        ).json()
        return result

    def calls(self, to: str | None = None) -> list[dict[str, Any]]:
        """GET /_sim/calls."""
        result: list[dict[str, Any]] = self.control.get(
            "/_sim/calls", params={"to": to} if to else None
        ).json()
        return result

    def message(self, sid: str) -> dict[str, Any] | None:
        """One message of /_sim/messages by sid."""
        return next((m for m in self.messages() if m["sid"] == sid), None)

    def call(self, sid: str) -> dict[str, Any] | None:
        """One call of /_sim/calls by sid."""
        return next((c for c in self.calls() if c["sid"] == sid), None)


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
