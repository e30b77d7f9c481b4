"""Email over SMTP (smtplib): STARTTLS or implicit TLS and auth configurable.

A small pool of open SMTP connections is reused across messages (one per concurrent
sender), so thousands of messages do not pay a TCP + EHLO (+ TLS + AUTH) each. A 250 from
the server is acceptance and counts as delivered (handed to the mail system; no callback
follows). 4xx answers and broken connections are transient (:class:`ChannelError`); 5xx is
a definitive refusal. Error texts carry the SMTP code and enhanced status only: servers
often quote the address in their text.
"""

from __future__ import annotations

import queue
import re
import smtplib
import ssl
import threading
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path

import structlog
from pydantic import SecretStr

from safehub.kernel.lifecycle import Closing
from services.notify.channels.base import ChannelError, OutboundMessage, SendResult

log = structlog.get_logger(__name__)

_ENHANCED = re.compile(rb"\b([245]\.\d{1,3}\.\d{1,3})\b")


def _reason(code: int, text: bytes | str) -> str:
    raw = text.encode() if isinstance(text, str) else text
    found = _ENHANCED.search(raw or b"")
    return f"SMTP {code} {found.group(1).decode()}" if found else f"SMTP {code}"


class SmtpEmailAdapter(Closing):
    """Channel "EMAIL"."""

    channel = "EMAIL"

    def __init__(
        self,
        *,
        host: str,
        port: int,
        sender: str,
        starttls: bool = False,
        implicit_tls: bool = False,
        ca_bundle: Path | None = None,
        username: str | None = None,
        password: SecretStr | None = None,
        timeout_s: float = 10.0,
        max_connections: int = 4,
    ) -> None:
        self._host = host
        self._port = port
        self._sender = sender
        self._starttls = starttls
        self._implicit_tls = implicit_tls
        self._context = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
        self._username = username
        self._password = password
        self._timeout = timeout_s
        self._idle: queue.LifoQueue[smtplib.SMTP] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._closed = False

    def _connect(self) -> smtplib.SMTP:
        try:
            if self._implicit_tls:
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    self._host, self._port, timeout=self._timeout, context=self._context
                )
            else:
                smtp = smtplib.SMTP(self._host, self._port, timeout=self._timeout)
            smtp.ehlo()
            if self._starttls:
                smtp.starttls(context=self._context)
                smtp.ehlo()
            if self._username is not None and self._password is not None:
                smtp.login(self._username, self._password.get_secret_value())
        except smtplib.SMTPAuthenticationError as exc:
            raise ChannelError(f"SMTP authentication failed ({exc.smtp_code})") from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise ChannelError(f"SMTP server unreachable: {type(exc).__name__}") from exc
        return smtp

    def _message(self, message: OutboundMessage) -> EmailMessage:
        mail = EmailMessage()
        mail["From"] = self._sender
        mail["To"] = message.address
        mail["Subject"] = message.subject
        mail["Date"] = formatdate(localtime=False)
        mail["Message-ID"] = f"<{message.delivery_id}@safehub>"
        mail["Content-Language"] = message.language
        mail["X-SafeHub-Notification"] = message.notification_id
        mail["X-SafeHub-Delivery"] = message.delivery_id
        if message.exercise:
            mail["X-SafeHub-Exercise"] = "true"
        mail.set_content(message.text)
        return mail

    def send(self, message: OutboundMessage) -> SendResult:
        """Send one message on a pooled connection (one reconnect if it went stale)."""
        mail = self._message(message)
        with self._slots:
            for attempt in (1, 2):
                try:
                    smtp = self._idle.get_nowait()
                except queue.Empty:
                    smtp = self._connect()
                try:
                    smtp.send_message(mail, from_addr=None, to_addrs=[message.address])
                except smtplib.SMTPRecipientsRefused as exc:
                    self._idle.put(smtp)
                    code, text = next(iter(exc.recipients.values()))
                    return self._refused(message, code, text)
                except smtplib.SMTPResponseException as exc:
                    self._idle.put(smtp)
                    if 400 <= exc.smtp_code < 500:
                        raise ChannelError(_reason(exc.smtp_code, exc.smtp_error)) from exc
                    return self._refused(message, exc.smtp_code, exc.smtp_error)
                except (smtplib.SMTPServerDisconnected, OSError) as exc:
                    _quit(smtp)
                    if attempt == 2:
                        raise ChannelError(f"SMTP connection lost: {type(exc).__name__}") from exc
                    continue  # a pooled connection the server closed: one fresh try
                except smtplib.SMTPException as exc:
                    _quit(smtp)
                    raise ChannelError(f"SMTP failure: {type(exc).__name__}") from exc
                self._idle.put(smtp)
                return SendResult(
                    accepted=True, provider_message_id=mail["Message-ID"], delivered=True
                )
        raise ChannelError("SMTP send did not complete")  # unreachable: the loop returns

    @staticmethod
    def _refused(message: OutboundMessage, code: int, text: bytes | str) -> SendResult:
        reason = _reason(code, text)
        if 400 <= code < 500:
            raise ChannelError(reason)
        log.warning("SMTP server refused", delivery_id=message.delivery_id, reason=reason)
        return SendResult(accepted=False, provider_message_id=None, error=reason)

    def close(self) -> None:
        """QUIT every pooled connection."""
        while True:
            try:
                _quit(self._idle.get_nowait())
            except queue.Empty:
                return


def _quit(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()
