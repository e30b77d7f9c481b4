"""Every notification channel keeps the channel contract, each against its real stand-in."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.notify.channels.base import ChannelAdapter
from services.notify.channels.email import SmtpEmailAdapter
from services.notify.channels.push import WebhookPushAdapter
from services.notify.channels.sms import TwilioSmsAdapter
from tests.support.channel_contract import ChannelContract
from tests.support.notify import REFUSED_DOMAIN, PushGateway, SmtpSink
from tests.support.sms import ProviderSimProcess


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class TestEmailChannel(ChannelContract):
    refused_address = f"nobody@{REFUSED_DOMAIN}"

    @pytest.fixture(autouse=True)
    def _sink(self) -> Iterator[None]:
        with SmtpSink() as sink:
            self.sink = sink
            yield

    def _adapter(self, port: int) -> SmtpEmailAdapter:
        return SmtpEmailAdapter(
            host="127.0.0.1",
            port=port,
            sender="SafeHub Alerts <alerts@safehub.local>",
            starttls=False,
            timeout_s=5.0,
        )

    @pytest.fixture
    def adapter(self) -> Iterator[ChannelAdapter]:
        adapter = self._adapter(self.sink.port)
        yield adapter
        adapter.close()

    @pytest.fixture
    def unreachable(self) -> Iterator[ChannelAdapter]:
        adapter = self._adapter(_closed_port())
        yield adapter
        adapter.close()

    def new_address(self) -> str:
        return f"staff-{uuid.uuid4().hex[:8]}@lincoln.example.org"

    def received(self, address: str) -> list[str]:
        return [f"{m.subject}\n{m.body}" for m in self.sink.to(address)]


class TestSmsChannel(ChannelContract):
    refused_address = "+0123"  # not E.164: Twilio answers 21211

    @pytest.fixture(autouse=True)
    def _sim(self, tmp_path: Path) -> Iterator[None]:
        with ProviderSimProcess(tmp_path) as sim:
            self.sim = sim
            yield

    @pytest.fixture
    def adapter(self) -> Iterator[ChannelAdapter]:
        adapter = TwilioSmsAdapter(self.sim.config(), status_callback_url=None)
        yield adapter
        adapter.close()

    @pytest.fixture
    def unreachable(self) -> Iterator[ChannelAdapter]:
        config = self.sim.config(api_base_url=f"http://127.0.0.1:{_closed_port()}")
        adapter = TwilioSmsAdapter(config, status_callback_url=None)
        yield adapter
        adapter.close()

    def new_address(self) -> str:
        return f"+1555{uuid.uuid4().int % 10**7:07d}"

    def received(self, address: str) -> list[str]:
        return [str(m["body"]) for m in self.sim.messages(to=address)]


class TestPushChannel(ChannelContract):
    refused_address = f"{PushGateway.GONE_PREFIX}device-token"

    @pytest.fixture(autouse=True)
    def _gateway(self) -> Iterator[None]:
        self.gateway = PushGateway()
        with self.gateway as url:
            self.url = url
            yield

    @pytest.fixture
    def adapter(self) -> Iterator[ChannelAdapter]:
        adapter = WebhookPushAdapter(self.url, timeout_s=5.0)
        yield adapter
        adapter.close()

    @pytest.fixture
    def unreachable(self) -> Iterator[ChannelAdapter]:
        adapter = WebhookPushAdapter(f"http://127.0.0.1:{_closed_port()}/push", timeout_s=5.0)
        yield adapter
        adapter.close()

    def new_address(self) -> str:
        return f"device-{uuid.uuid4().hex}"

    def received(self, address: str) -> list[str]:
        return [
            f"{payload['title']}\n{payload['body']}"
            for _, payload in list(self.gateway.received)
            if payload["token"] == address
        ]
