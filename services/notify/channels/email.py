"""Email over SMTP (smtplib): STARTTLS or implicit TLS and auth configurable.

A small pool of open SMTP connections is reused across messages (one per concurrent
sender), so thousands of messages do not pay a TCP + EHLO (+ TLS + AUTH) each. Messages are
written as MIME bytes directly (quoted-printable UTF-8 text, RFC 2047 subjects): the
``email`` package's header registry cost milliseconds of CPU per message. A 250 from
the server is acceptance and counts as delivered (handed to the mail system; no callback
follows). 4xx answers and broken connections are transient (:class:`ChannelError`); 5xx is
a definitive refusal. Error texts carry the SMTP code and enhanced status only: servers
often quote the address in their text.
"""

from __future__ import annotations

import binascii
import functools
import queue
import re
import smtplib
import ssl
import threading
from email.header import Header
from email.utils import formataddr, formatdate, parseaddr
from pathlib import Path

import structlog
from pydantic import SecretStr

from safehub.kernel.lifecycle import Closing
from services.notify.channels.base import ChannelError, OutboundMessage, SendResult

log = structlog.get_logger(__name__)

_ENHANCED = re.compile(rb"\b([245]\.\d{1,3}\.\d{1,3})\b")


def _line(value: str) -> str:
    """A header value without line breaks (no header injection)."""
    return " ".join(value.splitlines())


@functools.lru_cache(maxsize=256)
def _header(value: str) -> str:
    """A free-text header value: as is if short ASCII, else RFC 2047 encoded (folded)."""
    value = _line(value)
    if value.isascii() and len(value) <= 900:
        return value
    return Header(value, "utf-8").encode(linesep="\r\n")


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
        name, address = parseaddr(sender)
        self._envelope_from = address
        self._from_header = formataddr((name, address), charset="utf-8")
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

    def _message(self, message: OutboundMessage) -> bytes:
        headers = [
            ("From", self._from_header),
            ("To", _line(message.address)),
            ("Subject", _header(message.subject)),
            ("Date", formatdate(localtime=False)),
            ("Message-ID", self._message_id(message)),
            ("Content-Language", _line(message.language)),
            ("X-SafeHub-Notification", _line(message.notification_id)),
            ("X-SafeHub-Delivery", _line(message.delivery_id)),
            *([("X-SafeHub-Exercise", "true")] if message.exercise else []),
            ("MIME-Version", "1.0"),
            ("Content-Type", 'text/plain; charset="utf-8"'),
            ("Content-Transfer-Encoding", "quoted-printable"),
        ]
        head = "".join(f"{name}: {value}\r\n" for name, value in headers)
        text = "\n".join(message.text.splitlines()) + "\n"
        # smtplib sends bytes as they are: the wire needs CRLF (bare LF is refused by many).
        body = binascii.b2a_qp(text.encode("utf-8"), istext=True).replace(b"\n", b"\r\n")
        return head.encode("utf-8") + b"\r\n" + body

    @staticmethod
    def _message_id(message: OutboundMessage) -> str:
        return f"<{_line(message.delivery_id)}@safehub>"

    def send(self, message: OutboundMessage) -> SendResult:
        """Send one message on a pooled connection (one reconnect if it went stale)."""
        mail = self._message(message)
        # A non-ASCII address needs SMTPUTF8 (RFC 6531); smtplib refuses it if unsupported.
        options = () if message.address.isascii() else ("SMTPUTF8",)
        with self._slots:
            for attempt in (1, 2):
                try:
                    smtp = self._idle.get_nowait()
                except queue.Empty:
                    smtp = self._connect()
                try:
                    smtp.sendmail(
                        self._envelope_from, [message.address], mail, mail_options=options
                    )
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
                    accepted=True, provider_message_id=self._message_id(message), delivered=True
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
