"""The e-mail channel against a real SMTP server that requires STARTTLS and login."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword
from pydantic import SecretStr

from safehub.devstack.pki import DevPki
from services.notify.channels.base import ChannelError, OutboundMessage
from services.notify.channels.email import SmtpEmailAdapter
from tests.support.notify import SmtpSink

USER, PASSWORD = "safehub-alerts", "s3cret-mail"


class _Authenticator:
    def __call__(
        self, _server: Any, _session: Any, _envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            USER.encode(),
            PASSWORD.encode(),
        )
        return AuthResult(success=ok, handled=False)


@pytest.fixture
def secure_smtp(tmp_path: Path) -> Iterator[tuple[SmtpSink, Path]]:
    """An SMTP server on 127.0.0.1 that refuses mail before STARTTLS and login."""
    pki = DevPki(tmp_path / "pki")
    pair = pki.server("mail")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(pair.cert), str(pair.key))
    sink = SmtpSink(
        tls_context=context,
        require_starttls=True,
        auth_required=True,
        auth_require_tls=True,
        authenticator=_Authenticator(),
    )
    with sink:
        yield sink, pki.ca.cert


def _message(address: str) -> OutboundMessage:
    return OutboundMessage(
        delivery_id="d-1",
        notification_id="n-1",
        recipient_id="stf-lincoln-001",
        address=address,
        subject="LOCKDOWN - Lincoln High School",
        text="Lockdown in effect.\nConfirm: https://notify.example/ack/x",
        language="en-US",
        ack_url="https://notify.example/ack/x",
        exercise=False,
    )


def _adapter(port: int, ca: Path, **overrides: Any) -> SmtpEmailAdapter:
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "sender": "SafeHub Alerts <alerts@safehub.local>",
        "starttls": True,
        "ca_bundle": ca,
        "username": USER,
        "password": SecretStr(PASSWORD),
        "timeout_s": 5.0,
    } | overrides
    return SmtpEmailAdapter(**settings)


def test_starttls_and_login_deliver_the_message(secure_smtp: tuple[SmtpSink, Path]) -> None:
    sink, ca = secure_smtp
    adapter = _adapter(sink.port, ca)
    try:
        result = adapter.send(_message("teacher@lincoln.example.org"))
    finally:
        adapter.close()
    assert result.accepted
    [mail] = sink.messages
    assert mail.to == ("teacher@lincoln.example.org",) and "Lockdown in effect" in mail.body


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"password": SecretStr("wrong")}, "authentication failed"),
        ({"starttls": False}, "SMTP"),  # the server wants TLS before anything else
        ({"ca_bundle": None}, "unreachable"),  # the dev CA is not trusted by default
    ],
)
def test_a_refused_session_is_a_channel_error_without_secrets(
    secure_smtp: tuple[SmtpSink, Path], overrides: dict[str, Any], reason: str
) -> None:
    sink, ca = secure_smtp
    adapter = _adapter(sink.port, ca, **overrides)
    try:
        with pytest.raises(ChannelError) as refused:
            adapter.send(_message("teacher@lincoln.example.org"))
    finally:
        adapter.close()
    assert reason in str(refused.value)
    assert PASSWORD not in str(refused.value) and "teacher@" not in str(refused.value)
    assert sink.messages == []
