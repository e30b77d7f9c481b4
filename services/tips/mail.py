"""Inbound e-mail tips: an SMTP listener (aiosmtpd) whose recipients are the tip lines.

Each tip-line address (``tips-lincoln@tips.example``) names a school; any other recipient is
refused at RCPT (550), so the listener never relays. At DATA the message is parsed (stdlib
``email``, ``policy.default``), its words taken from the text/plain body (or the text/html
one with scripts and styles dropped), the subject put first, the signature cut off (in a
reply also the quoted earlier message; a new tip keeps what it quotes or forwards, since a
forwarded threat is the tip), the sender's own address and name blanked, and its JPEG, PNG
and WebP images
taken as attachments (``attachment[0]`` …, at most ``max_attachments``). A message from an
address with an open tip of the same school is the next TIPSTER message of that thread;
anything else is a new anonymous tip (channel EMAIL, category OTHER: screening sets
life-safety from the words). The client key is a hash of the Message-ID, so a sending server
that retries gets the same tip.

The answer is given at DATA time, after the tip is stored: 250 once it is, 550 naming the
field intake refused (never echoing the body or the sender), 451 when it cannot be stored
now (the sending server keeps the message and retries: an accepted tip is never lost, and a
refused one stays with its sender), 552 over ``max_bytes``.

The sender's address, name, HELO and peer are sealed with the tip (``network``), never
logged: aiosmtpd's own ``mail.log`` logger writes every command line (the sender) and, at
DEBUG, every line of the message, so it is silenced here.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import logging
import re
import socket
import ssl
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from email.headerregistry import Address
from email.message import EmailMessage, Message
from html.parser import HTMLParser

import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session

from safehub.kernel.errors import ConfigError, SafeHubError
from safehub.kernel.lifecycle import Closing, write_port_file
from safehub.kernel.settings import ListenSettings
from services.tips.intake import Intake, IntakeError, Receipt, TipRequest, Upload
from services.tips.model import Category, Channel
from services.tips.store import TipStore

__all__ = ["IMAGE_TYPES", "MailIntake", "html_to_text", "message_text", "own_words"]

log = structlog.get_logger(__name__)

# aiosmtpd logs each command line at INFO ("MAIL FROM:<tipster@…>") and each line of DATA
# at DEBUG: nothing of it may reach the service's logs (it never logs at CRITICAL).
logging.getLogger("mail.log").setLevel(logging.CRITICAL)

#: Declared types of the parts taken as photos (photos.py decides the type from the bytes).
IMAGE_TYPES = frozenset({"image/jpeg", "image/jpg", "image/pjpeg", "image/png", "image/webp"})
IDENT = "SafeHub tips"
#: Message keys remembered in memory, so a sending server's retry of a reply posts it once.
REMEMBERED = 10_000

_SKIPPED_ELEMENTS = frozenset({"script", "style", "head", "title", "noscript", "template"})
_BLOCK_ELEMENTS = frozenset(
    {
        "br",
        "p",
        "div",
        "li",
        "tr",
        "table",
        "blockquote",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "hr",
        "pre",
        "ul",
        "ol",
        "section",
        "article",
    }
)
#: Where a reply quotes the earlier message in full (Outlook): the rest is the tipster's own.
_EARLIER_MESSAGE = re.compile(r"^(?:-{2,}\s*original message\s*-{2,}|_{10,})$", re.IGNORECASE)
#: The line introducing a quotation ("On … wrote:", "El … escribió:").
_ATTRIBUTION = re.compile(r"^(?:on|el) .{1,300}(?:wrote|escribi[oó]):$", re.IGNORECASE)
#: A forwarded message (kept: a forwarded threat is the tip).
_FORWARDED = re.compile(r"^-{2,}\s*(?:forwarded message|mensaje reenviado)", re.IGNORECASE)
#: Lines after a signature delimiter taken as the signature (beyond: the tipster's again).
SIGNATURE_LINES = 8
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")


class _TextOfHtml(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED_ELEMENTS:
            self._skipping.append(tag)
        elif tag in _BLOCK_ELEMENTS:
            self.parts.append("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK_ELEMENTS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if self._skipping and tag == self._skipping[-1]:
            self._skipping.pop()
        elif tag in _BLOCK_ELEMENTS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """The words of an HTML body: no script, style or head, block elements as line breaks,
    entities decoded (so ``&lt;script&gt;`` a tipster typed is still refused as markup)."""
    parser = _TextOfHtml()
    parser.feed(html)
    parser.close()
    return _tidy("".join(parser.parts))


def _tidy(text: str) -> str:
    lines = [_SPACES.sub(" ", line).strip() for line in text.replace("\r\n", "\n").split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def own_words(text: str, *, reply: bool) -> str:
    """The tipster's own words: without their signature ("-- " and the few lines after it,
    up to a forwarded message) and, in a reply, without the quoted earlier message. A new
    tip keeps what it quotes or forwards: the threat someone received is the tip."""
    lines = text.split("\n")
    kept: list[str] = []
    signature = 0
    for i, line in enumerate(lines):
        bare = line.strip()
        if signature and (_FORWARDED.match(bare) or signature > SIGNATURE_LINES):
            signature = 0
        if bare == "--":
            signature = 1
            continue
        if signature:
            signature += 1
            continue
        if reply:
            if _EARLIER_MESSAGE.match(bare):
                break
            if bare.startswith(">"):
                continue
            after = next((n.strip() for n in lines[i + 1 :] if n.strip()), "")
            if _ATTRIBUTION.match(bare) and after.startswith(">"):
                continue
        kept.append(line)
    return "\n".join(kept)


def _part_text(part: Message) -> str:
    try:
        content = part.get_content() if isinstance(part, EmailMessage) else None
    except (LookupError, UnicodeError, ValueError, AssertionError):
        content = None
    if isinstance(content, str):
        return content
    payload = part.get_payload(decode=True)
    return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""


def message_text(message: EmailMessage) -> str:
    """The body's words: text/plain, else text/html converted to text; empty if neither."""
    body = message.get_body(preferencelist=("plain", "html"))
    if body is None:
        return ""
    text = _part_text(body)
    if body.get_content_subtype() == "html":
        return html_to_text(text)
    return _tidy(text)


def _images(message: EmailMessage, limit: int) -> tuple[list[Upload], int]:
    """Photos of the message (``attachment[i]``, at most ``limit``) and how many were left."""
    uploads: list[Upload] = []
    left = 0
    for part in message.walk():
        if part.is_multipart() or part.get_content_type() not in IMAGE_TYPES:
            continue
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes) or not data:
            continue
        if len(uploads) >= limit:
            left += 1
            continue
        uploads.append(Upload(data, part.get_content_type(), f"attachment[{len(uploads)}]"))
    return uploads, left


def _sender(message: EmailMessage, envelope_from: str | None) -> tuple[str | None, str]:
    """``(address, display name)`` replies are matched by: the From mailbox, else the
    envelope sender; none for a bounce (null sender) without a From."""
    try:
        header = message["From"]
        addresses: tuple[Address, ...] = tuple(getattr(header, "addresses", ()) or ())
    except (ValueError, IndexError, TypeError):
        addresses = ()
    if len(addresses) == 1 and addresses[0].addr_spec and "@" in addresses[0].addr_spec:
        return addresses[0].addr_spec.casefold(), addresses[0].display_name or ""
    if envelope_from and "@" in envelope_from:
        return envelope_from.casefold(), ""
    return None, ""


def _blank(text: str, *identities: str) -> str:
    for identity in identities:
        if len(identity.strip()) >= 3:
            text = re.sub(re.escape(identity.strip()), "[sender]", text, flags=re.IGNORECASE)
    return text


def _reply(code: int, status: str, text: str) -> str:
    """One SMTP reply line in ASCII (reasons are ours, but never trust an encoding)."""
    line = " ".join(text.split()).encode("ascii", "replace").decode("ascii")
    return f"{code} {status} {line}"[:500]


class _Handler:
    def __init__(self, owner: MailIntake) -> None:
        self._owner = owner

    async def handle_RCPT(  # noqa: N802 (aiosmtpd's hook name)
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        school = self._owner.school_of(address)
        if school is None:
            return _reply(550, "5.1.1", "that address is not a tip line here")
        earlier = {self._owner.school_of(a) for a in envelope.rcpt_tos}
        if earlier and school not in earlier:
            # One school per message; the sending server delivers the rest in another one.
            return _reply(452, "4.5.3", "one tip line per message; send it again")
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(  # noqa: N802 (aiosmtpd's hook name)
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        raw = envelope.original_content or envelope.content
        if not isinstance(raw, bytes):
            raw = str(raw or "").encode("utf-8", "surrogateescape")
        if len(raw) > self._owner.max_bytes:
            return _reply(552, "5.3.4", f"the message is larger than {self._owner.max_bytes} bytes")
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer or "")
        network = {"helo": str(session.host_name or ""), "peer": str(peer)}
        school = self._owner.school_of(envelope.rcpt_tos[0]) if envelope.rcpt_tos else None
        if school is None:  # pragma: no cover - aiosmtpd refuses DATA without a recipient
            return _reply(554, "5.5.1", "no tip line given")
        return await self._owner.accept(raw, school, envelope.mail_from, network)

    async def handle_exception(self, error: Exception) -> str:
        # The default answer echoes the exception, which may quote the message.
        log.error("email session failed", error_type=type(error).__name__)
        return _reply(451, "4.3.0", "the tip line cannot take the message now; try again later")


class MailIntake(Closing):
    """The tips service's SMTP listener: tip-line addresses → schools, one tip per message.

    ``addresses`` maps each tip-line address (case-insensitive) to its school id;
    ``max_bytes`` bounds a whole message (552 beyond it, also advertised as SIZE);
    ``tls_context``, when given, is offered as STARTTLS; ``store``, when given, lets a
    retried first message (its tip already stored) be told apart from a reply after a
    restart (without it, only this process's memory does). :meth:`start` binds where
    ``listen`` says (port 0: any; the port goes to ``listen.port_file``) and serves on its
    own thread and loop; :meth:`close` stops accepting, lets messages being stored finish
    (within ``grace_s``) and stops.
    """

    def __init__(
        self,
        intake: Intake,
        addresses: Mapping[str, str],
        max_bytes: int,
        max_attachments: int,
        listen: ListenSettings,
        *,
        tls_context: ssl.SSLContext | None = None,
        store: TipStore | None = None,
        server_hostname: str | None = None,
        grace_s: float = 10.0,
    ) -> None:
        self._intake = intake
        self._store = store
        #: Called with (receipt, school id, sender) for a new tip (EmailReplies.receipt).
        self.on_receipt: Callable[[Receipt, str, str], object] | None = None
        self._seen: OrderedDict[str, str] = OrderedDict()
        self._seen_lock = threading.Lock()
        self._schools = {
            address.strip().casefold(): school for address, school in addresses.items()
        }
        self.max_bytes = max_bytes
        self.max_attachments = max_attachments
        self._listen = listen
        self._tls = tls_context
        self._server_hostname = server_hostname or listen.host
        self._grace_s = grace_s
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._busy = 0
        self._idle: asyncio.Event | None = None
        self.port = 0

    # -- what a message becomes -----------------------------------------------------------

    def school_of(self, address: str) -> str | None:
        """The school a tip-line address names, if it is one."""
        return self._schools.get(address.strip().strip("<>").casefold())

    async def accept(
        self, raw: bytes, school_id: str, envelope_from: str | None, network: Mapping[str, str]
    ) -> str:
        """The SMTP answer to one message for ``school_id`` (stored before 250 is said)."""
        assert self._idle is not None
        self._busy += 1
        self._idle.clear()
        try:
            return await asyncio.to_thread(self.take, raw, school_id, envelope_from, network)
        finally:
            self._busy -= 1
            if not self._busy:
                self._idle.set()

    def take(
        self, raw: bytes, school_id: str, envelope_from: str | None, network: Mapping[str, str]
    ) -> str:
        """Parse and store one message (blocking: Argon2, photos, the write)."""
        try:
            return self._take(raw, school_id, envelope_from, network)
        except IntakeError as exc:
            if exc.kind in {"invalid", "denied"}:
                where = f"{exc.field}: " if exc.field else ""
                log.info("email tip refused", school_id=school_id, field=exc.field)
                return _reply(550, "5.6.0", f"the tip was not taken: {where}{exc.reason}")
            log.warning("email tip deferred", school_id=school_id, kind=exc.kind)
            return _reply(451, "4.7.1" if exc.kind == "throttled" else "4.3.0", exc.reason)
        except SafeHubError as exc:
            log.error("email tip not stored", school_id=school_id, error_type=type(exc).__name__)
            return _reply(451, "4.3.0", "the tip cannot be stored now; the message will be retried")

    def _take(
        self, raw: bytes, school_id: str, envelope_from: str | None, network: Mapping[str, str]
    ) -> str:
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)  # what policy.default makes
        key = _client_key(parsed, raw)
        earlier = self._earlier(key)
        if earlier is not None:  # the sending server retrying what was already taken
            log.info("email retried", tip_id=earlier)
            return "250 2.0.0 already received"
        sender, name = _sender(parsed, envelope_from)
        body = message_text(parsed)
        subject = " ".join(str(parsed.get("Subject", "") or "").split())
        uploads, left = _images(parsed, self.max_attachments)
        existing = self._intake.tip_by_reply_address(sender) if sender else None
        if existing is not None and existing.school_id == school_id:
            text = _blank(_tidy(own_words(body, reply=True)) or subject, sender or "", name)
            message = self._intake.post(existing, text, author="TIPSTER", channel=Channel.EMAIL)
            self._remember(key, existing.tip_id)
            log.info(
                "email thread message",
                tip_id=existing.tip_id,
                message_id=message.message_id,
                attachments_not_kept=len(uploads) + left,  # a thread message has none yet
            )
            return "250 2.0.0 added to your tip"
        words = own_words(body, reply=False)
        if subject and not words.startswith(subject):
            words = f"{subject}\n\n{words}"
        text = _blank(_tidy(words), sender or "", name)
        receipt = self._intake.submit(
            TipRequest(
                channel=Channel.EMAIL,
                school_id=school_id,
                category=Category.OTHER,
                text=text,
                anonymous=True,
                attachments=uploads,
                client_key=key,
                network=dict(network),
                reply_address=sender,
                source=f"email:{sender}" if sender else None,
            )
        )
        self._remember(key, receipt.tip_id)
        if self.on_receipt is not None and sender and not receipt.retry:
            self.on_receipt(receipt, school_id, sender)  # code and passcode, by mail
        log.info(
            "email tip taken",
            tip_id=receipt.tip_id,
            school_id=school_id,
            retry=receipt.retry,
            attachments=len(uploads),
            attachments_left=left,
        )
        return "250 2.0.0 tip received"

    def _earlier(self, key: str) -> str | None:
        with self._seen_lock:
            if key in self._seen:
                return self._seen[key]
        tip = self._store.tip_by_client_key(key) if self._store is not None else None
        return tip.tip_id if tip is not None else None

    def _remember(self, key: str, tip_id: str) -> None:
        with self._seen_lock:
            self._seen[key] = tip_id
            while len(self._seen) > REMEMBERED:
                self._seen.popitem(last=False)

    # -- the listener -------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> int:
        """Bind and serve; returns the bound port once it is listening."""
        if self._thread is not None:
            return self.port
        try:
            self._socket = socket.create_server((self._listen.host, self._listen.port), backlog=128)
        except OSError as exc:
            raise ConfigError(
                f"the tips SMTP listener cannot listen on {self._listen.address}: {exc}"
            ) from exc
        self.port = int(self._socket.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, name="tips-smtp", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise SafeHubError(f"the tips SMTP listener did not start in {timeout} s")
        if self._error is not None:
            raise SafeHubError(
                f"the tips SMTP listener could not serve: {self._error}"
            ) from self._error
        if self._listen.port_file is not None:
            write_port_file(self._listen.port_file, self.port)
        log.info("tips smtp listening", port=self.port, tip_lines=len(self._schools))
        return self.port

    def _smtp(self) -> SMTP:
        assert self._loop is not None
        return SMTP(
            _Handler(self),
            data_size_limit=self.max_bytes,
            enable_SMTPUTF8=True,
            hostname=self._server_hostname,
            ident=IDENT,
            tls_context=self._tls,
            timeout=120,
            loop=self._loop,
        )

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._idle = asyncio.Event()
        self._idle.set()
        assert self._socket is not None
        try:
            self._server = loop.run_until_complete(
                loop.create_server(self._smtp, sock=self._socket)
            )
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._cancel_rest(loop))
            loop.close()

    async def _drain(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._idle is not None:
            try:
                await asyncio.wait_for(self._idle.wait(), self._grace_s)
            except TimeoutError:
                log.warning("tips smtp closing with messages still being stored")
        asyncio.get_running_loop().stop()

    @staticmethod
    async def _cancel_rest(loop: asyncio.AbstractEventLoop) -> None:
        current = asyncio.current_task()
        rest = [task for task in asyncio.all_tasks(loop) if task is not current]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def close(self) -> None:
        """Stop accepting, let messages being stored finish (within the grace), stop."""
        loop = self._loop
        if loop is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(self._drain(), loop)
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=self._grace_s + 5.0)
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _client_key(message: EmailMessage, raw: bytes) -> str:
    """The idempotency key of a message: a hash of its Message-ID (which often names the
    sender's host or address, so never kept as such), else of the message itself."""
    message_id = str(message.get("Message-ID", "") or "").strip()
    seed = message_id.encode("utf-8", "replace") if message_id else raw
    return "email:" + hashlib.sha256(seed).hexdigest()
