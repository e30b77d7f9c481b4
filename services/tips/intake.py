"""Intake and the anonymous thread: one path for every channel, one transaction per change.

:meth:`Intake.submit` checks a tip (school, category, text, attachments), screens it
(:mod:`services.tips.screening`), folds it into an earlier one if it repeats it
(:mod:`services.tips.duplicates`), seals the tipster's identity, the passcode and the
request's network metadata (:mod:`services.tips.sealing`), cleans photos
(:mod:`services.tips.photos`), and writes the tip, its events and, for a life-safety tip,
the first escalation call, in one transaction. Only then does the caller get the code and
passcode: an accepted tip is never lost. A retry with the same client key gets the same
answer (the passcode is recovered from the sealed blob, never stored in clear).

The thread: a tipster proves a tip is theirs with code + passcode (Argon2id; throttled per
code and per source; "code or passcode wrong" either way, in the same time), or by writing
again from the same phone or address (matched by an HMAC of it, never the contact itself).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from safehub.kernel.codec import Event
from safehub.kernel.directory import DirectorySource, UnknownPlaceError
from safehub.kernel.errors import SafeHubError
from safehub.kernel.outbox import OutboxRelay
from services.tips import events
from services.tips.codes import (
    AttemptThrottle,
    PasscodeHasher,
    TipCodeError,
    new_passcode,
    new_tip_code,
    normalise_code,
)
from services.tips.duplicates import Candidate, Match, find_primary
from services.tips.escalation import Escalator
from services.tips.model import CLOSED, Category, Channel, Status
from services.tips.photos import PhotoRejectedError, clean_image
from services.tips.screening import Screening, TextRejectedError, clean_text, screen
from services.tips.sealing import IdentitySeal
from services.tips.settings import TipsSection
from services.tips.store import MessageRow, TipRow, TipStore

log = structlog.get_logger(__name__)

MAX_PIXELS = 40_000_000
LANGUAGES = ("en", "es")


class IntakeError(SafeHubError):
    """A request intake refuses. ``kind``: invalid (``field`` names it), not_found, denied,
    throttled (``retry_after`` seconds). Messages never echo what the caller wrote."""

    def __init__(
        self, kind: str, message: str, *, field: str | None = None, retry_after: float = 0.0
    ) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.kind = kind
        self.field = field
        self.reason = message
        self.retry_after = retry_after

    @classmethod
    def invalid(cls, field: str, message: str) -> IntakeError:
        """A field that is wrong."""
        return cls("invalid", message, field=field)


#: What a tipster hears for a wrong code or a wrong passcode alike.
WRONG_CODE = "tip code or passcode is wrong"


@dataclass(frozen=True)
class Contact:
    """What a tipster chose to give (all optional), or a channel's own address."""

    name: str = ""
    phone: str = ""
    email: str = ""

    def given(self) -> bool:
        """Whether anything was given."""
        return bool(self.name or self.phone or self.email)


@dataclass(frozen=True)
class Upload:
    """An attachment as received."""

    data: bytes
    mime: str | None
    field: str


@dataclass(frozen=True)
class TipRequest:
    """A tip from any channel."""

    channel: Channel
    school_id: str
    category: Category
    text: str
    anonymous: bool = True
    contact: Contact = field(default_factory=Contact)
    attachments: Sequence[Upload] = ()
    language: str = "en"
    #: Idempotency: the same key (a client's tip id, an SMS's MessageSid) creates one tip.
    client_key: str | None = None
    #: Request metadata (address, user agent): sealed with the identity, never elsewhere.
    network: Mapping[str, str] = field(default_factory=dict)
    #: The address replies come from (SMS number, e-mail sender), for the thread.
    reply_address: str | None = None
    subject_ids: Sequence[str] = ()
    #: Set for tips typed by an analyst (phone tips): who typed it.
    entered_by: str | None = None
    #: Where it came from (an address, a number, an app): the per-source limit and flood
    #: detection count it by an HMAC, never keep it.
    source: str | None = None


@dataclass(frozen=True)
class Receipt:
    """What the tipster is told."""

    tip_id: str
    code: str
    passcode: str
    life_safety: bool
    imminent: bool
    duplicate_of: str | None
    retry: bool = False


def parse_category(value: str, *, field: str = "category") -> Category:
    """A category by name (case-insensitive), or IntakeError listing the names."""
    try:
        return Category(value.strip().upper())
    except ValueError:
        names = ", ".join(c.value for c in Category)
        raise IntakeError.invalid(field, f"must be one of {names}") from None


class Intake:
    """Tips in, thread messages both ways."""

    def __init__(
        self,
        *,
        store: TipStore,
        seal: IdentitySeal,
        hasher: PasscodeHasher,
        directory: DirectorySource,
        relay: OutboxRelay,
        escalator: Escalator,
        section: TipsSection,
        contact_key: bytes,
        attachment_url: Callable[[str], str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._seal = seal
        self._hasher = hasher
        self._directory = directory
        self._relay = relay
        self._escalator = escalator
        self._section = section
        self._contact_key = contact_key
        self._attachment_url = attachment_url
        self._clock = clock
        self._routine = threading.BoundedSemaphore(section.routine_concurrency)
        #: Called after a thread message is stored (the SMS answers to SMS tipsters).
        self.on_message: Callable[[TipRow, MessageRow], object] | None = None
        self.code_throttle = AttemptThrottle(max_failures=5, backoff=60)
        self.source_throttle = AttemptThrottle(max_failures=20, backoff=60)

    @property
    def max_attachments(self) -> int:
        """How many attachments a tip may carry."""
        return self._section.max_attachments

    # -- intake -------------------------------------------------------------------------

    def reply_key(self, address: str) -> str:
        """The pseudonymous key of a phone number or address (HMAC; never the contact)."""
        normal = "".join(address.split()).casefold()
        return hmac.new(self._contact_key, normal.encode(), hashlib.sha256).hexdigest()

    def submit(self, request: TipRequest) -> Receipt:
        """Check, screen, fold, seal and store a tip with its events; the tipster's receipt."""
        if request.client_key is not None:
            earlier = self._store.tip_by_client_key(request.client_key)
            if earlier is not None:
                return self._receipt_again(earlier)
        directory = self._directory.current()
        try:
            tenant = directory.tenant(request.school_id)
        except UnknownPlaceError:
            raise IntakeError("not_found", "unknown school", field="school_id") from None
        text = self._text(request.text, "text")
        language = request.language if request.language in LANGUAGES else "en"
        screening = screen(request.category, text)
        source_key = self.reply_key(request.source) if request.source else None
        if source_key is not None and not screening.life_safety:
            self._check_source(source_key)
        # A life-safety tip never waits; the others take turns (Argon2, photos, the write),
        # so a burst of them cannot hold the CPU the one that matters needs.
        gate = contextlib.nullcontext() if screening.life_safety else self._routine
        with gate:
            return self._record(
                request,
                tenant=tenant,
                text=text,
                language=language,
                screening=screening,
                source_key=source_key,
            )

    def _check_source(self, source_key: str) -> None:
        window = self._section.source_window_s
        sent = self._store.count_from_source(source_key, self._clock() - window)
        if sent >= self._section.source_limit:
            raise IntakeError(
                "throttled",
                f"too many tips from this source in {window / 3600:g} h; try again later, or "
                "call 911 if someone is in danger now",
                retry_after=window,
            )

    def _record(
        self,
        request: TipRequest,
        *,
        tenant: Mapping[str, str | None],
        text: str,
        language: str,
        screening: Screening,
        source_key: str | None,
    ) -> Receipt:
        directory = self._directory.current()
        tip_id = uuid.uuid4().hex
        cleaned = [self._clean(upload, tip_id) for upload in request.attachments]
        now = self._clock()
        code, passcode = new_tip_code(), new_passcode()
        match = self._duplicate(request, text, screening, now)
        sealed = self._seal.seal(
            {
                "passcode": passcode,
                "contact": {} if request.anonymous else _contact_fields(request.contact),
                "reply_address": request.reply_address,
                "network": dict(request.network),
            },
            tip_id=tip_id,
        )
        attachments = [(uuid.uuid4().hex, image) for image in cleaned]
        urls = [self._attachment_url(attachment_id) for attachment_id, _ in attachments]
        status = (
            Status.MERGED
            if match
            else (Status.ESCALATED if screening.life_safety else Status.TRIAGED)
        )
        row = TipRow(
            tip_id=tip_id,
            code=code,
            passcode_hash=self._hasher.hash(passcode),
            school_id=request.school_id,
            district_id=str(tenant["district"]),
            channel=request.channel.value,
            category=request.category.value,
            language=language,
            life_safety=screening.life_safety,
            imminent=screening.imminent,
            anonymous=request.anonymous,
            status=status.value,
            disposition=None,
            assigned_to=None,
            primary_tip_id=match.primary_tip_id if match else None,
            text=text,
            subject_ids=list(request.subject_ids),
            created_at=now,
            first_human_at=now if request.entered_by else None,
            closed_at=None,
            assign_by=None if match else now + self._assign_within(request.category),
            overdue_notified=False,
        )
        out: list[Event] = [
            events.submitted(
                tip_id=tip_id,
                tenant=tenant,
                channel=row.channel,
                category=row.category,
                life_safety=row.life_safety,
                anonymous=row.anonymous,
                text=text,
                subject_ids=row.subject_ids,
                attachment_urls=urls,
            ),
            events.updated(
                tip_id=tip_id,
                tenant=tenant,
                status=Status.TRIAGED.value if not match else status.value,
                activity="FOLDED" if match else "TRIAGE",
                updated_by=request.entered_by or "tips:intake",
                key="intake",
                note=_triage_note(screening, match),
                merged_into=row.primary_tip_id,
                life_safety=row.life_safety,
            ),
        ]
        with self._store.transaction("cannot record the tip") as conn:
            reply_key = self.reply_key(request.reply_address) if request.reply_address else None
            inserted = self._store.insert_tip(
                conn,
                row,
                client_key=request.client_key,
                sealed=sealed,
                contact_key=reply_key,
                outbox=[],
                source_key=source_key,
            )
            if not inserted:  # a concurrent retry won the client key
                conn.rollback()
                earlier = self._store.tip_by_client_key(str(request.client_key))
                if earlier is None:  # pragma: no cover - the key was just seen taken
                    raise IntakeError("invalid", "the tip could not be recorded; send it again")
                return self._receipt_again(earlier)
            for attachment_id, image in attachments:
                self._store.add_attachment(
                    conn,
                    {
                        "attachment_id": attachment_id,
                        "tip_id": tip_id,
                        "mime": image[1].mime,
                        "width": image[1].width,
                        "height": image[1].height,
                        "data": image[1].data,
                        "original_sealed": image[0],
                        "created_at": now,
                    },
                )
            if not match:
                out += self._escalator.first_call(conn, row, tenant, directory, now)
            self._store.outbox.add(conn, [self._relay.item(e) for e in out])
        self._relay.publish(out)
        log.info(
            "tip received",
            tip_id=tip_id,
            channel=row.channel,
            category=row.category,
            school_id=row.school_id,
            life_safety=row.life_safety,
            imminent=row.imminent,
            folded_into=row.primary_tip_id,
            attachments=len(attachments),
        )
        if match is not None:
            self._flood_check(match.primary_tip_id, tenant)
        return Receipt(tip_id, code, passcode, row.life_safety, row.imminent, row.primary_tip_id)

    def _flood_check(self, primary_tip_id: str, tenant: Mapping[str, str | None]) -> None:
        """Mark the primary once as a flood when many sources sent the same words (a
        campaign or a hoax wave: the analysts see it on the tip, not as dozens of tips)."""
        sources = self._store.sources_folded_into(primary_tip_id)
        if sources != self._section.flood_sources:
            return
        primary = self._store.tip(primary_tip_id)
        if primary is None:
            return
        event = events.updated(
            tip_id=primary_tip_id,
            tenant=tenant,
            status=primary.status,
            activity="FOLDED",
            updated_by="tips:intake",
            key="flood",
            note=f"flood: {sources} sources sent the same words",
            assigned_to=primary.assigned_to,
            life_safety=primary.life_safety,
        )
        with self._store.transaction("cannot mark a flood") as conn:
            self._store.update_tip(
                conn, primary_tip_id, [self._relay.item(event)], updated_at=self._clock()
            )
        self._relay.publish([event])
        log.warning("tip flood", tip_id=primary_tip_id, sources=sources)

    def _receipt_again(self, tip: TipRow) -> Receipt:
        blob = self._store.sealed_identity(tip.tip_id)
        passcode = str(self._seal.open(blob, tip_id=tip.tip_id)["passcode"]) if blob else ""
        return Receipt(
            tip.tip_id,
            tip.code,
            passcode,
            tip.life_safety,
            tip.imminent,
            tip.primary_tip_id,
            retry=True,
        )

    def _text(self, text: str, field: str) -> str:
        try:
            return clean_text(text, field=field, max_chars=self._section.max_text_chars)
        except TextRejectedError as exc:
            raise IntakeError.invalid(exc.field, exc.reason) from None

    def _clean(self, upload: Upload, tip_id: str) -> tuple[bytes, Any]:
        """``(sealed original, cleaned image)`` of an attachment: the original keeps its
        metadata (GPS, device serials), so it is sealed like the identity."""
        if len(upload.data) > self._section.max_attachment_bytes:
            raise IntakeError.invalid(
                upload.field, f"must be at most {self._section.max_attachment_bytes} bytes"
            )
        try:
            image = clean_image(
                upload.data,
                max_bytes=self._section.max_attachment_bytes,
                max_pixels=MAX_PIXELS,
                declared_mime=upload.mime or None,
                field=upload.field,
                mime_field=f"{upload.field}.mime_type",
            )
        except PhotoRejectedError as exc:
            raise IntakeError.invalid(exc.field, str(exc).partition(": ")[2] or str(exc)) from None
        original = {"data": base64.b64encode(upload.data).decode("ascii")}
        return self._seal.seal(original, tip_id=tip_id), image

    def _assign_within(self, category: Category) -> float:
        hours = self._section.assign_within_h.get(category.value, 48.0)
        return hours * 3600.0

    def _duplicate(
        self, request: TipRequest, text: str, screening: Screening, now: float
    ) -> Match | None:
        since = now - self._section.duplicate_window_h * 3600.0
        earlier = [
            Candidate(
                t.tip_id,
                t.status,
                t.primary_tip_id,
                t.life_safety,
                t.text,
                tuple(t.subject_ids),
                t.created_at,
            )
            for t in self._store.open_primaries(request.school_id, since)
        ]
        return find_primary(
            text, request.subject_ids, life_safety=screening.life_safety, earlier=earlier
        )

    # -- the thread ---------------------------------------------------------------------

    def open_thread(self, code: str, passcode: str, *, source: str) -> TipRow:
        """The tip whose code and passcode these are (throttled; one answer for both wrongs)."""
        now = time.monotonic()
        source_key = hashlib.sha256(source.encode()).hexdigest()
        try:
            normal = normalise_code(code)
        except TipCodeError:
            normal = ""
        for throttle, key in ((self.source_throttle, source_key), (self.code_throttle, normal)):
            verdict = throttle.check(key, now) if key else None
            if verdict is not None and not verdict.allowed:
                raise IntakeError(
                    "throttled",
                    f"too many wrong attempts; try again in {int(verdict.retry_after) + 1} s",
                    retry_after=verdict.retry_after,
                )
        tip = self._store.tip_by_code(normal) if normal else None
        ok = self._hasher.verify_or_dummy(passcode, tip.passcode_hash if tip else None)
        if tip is None or not ok:
            self.source_throttle.failed(source_key, now)
            if normal:
                self.code_throttle.failed(normal, now)
            raise IntakeError("denied", WRONG_CODE)
        self.code_throttle.succeeded(normal)
        return tip

    def tip_by_reply_address(self, address: str) -> TipRow | None:
        """The open tip a message from this phone or address continues, if any."""
        return self._store.open_tip_by_contact(self.reply_key(address))

    def post(
        self, tip: TipRow, text: str, *, author: str, channel: str, analyst_id: str | None = None
    ) -> MessageRow:
        """Add a message to a tip's thread (TIPSTER or ANALYST) with its TipUpdated."""
        if Status(tip.status) in CLOSED:
            raise IntakeError.invalid("tip_code", "the tip is closed; send a new tip instead")
        body = self._text(text, "text")
        now = self._clock()
        message = MessageRow(uuid.uuid4().hex, tip.tip_id, author, analyst_id, body, channel, now)
        tenant = self._directory.current().tenant(tip.school_id)
        event = events.updated(
            tip_id=tip.tip_id,
            tenant=tenant,
            status=tip.status,
            activity="THREAD_MESSAGE",
            updated_by=analyst_id or "tipster",
            key=message.message_id,
            note=body,
            assigned_to=tip.assigned_to,
            thread_author=author,
        )
        out = [event]
        with self._store.transaction("cannot record the message") as conn:
            self._store.add_message(conn, message)
            values: dict[str, Any] = {"updated_at": now}
            if author == "ANALYST" and tip.first_human_at is None:
                values["first_human_at"] = now
            # An analyst writing in the thread has the tip: the escalation ends.
            if (
                author == "ANALYST"
                and analyst_id
                and self._store.acknowledge(conn, tip.tip_id, analyst_id, now)
            ):
                out.append(
                    events.updated(
                        tip_id=tip.tip_id,
                        tenant=tenant,
                        status=tip.status,
                        activity="ESCALATION_ACKNOWLEDGED",
                        updated_by=analyst_id,
                        key="analyst",
                        notified=(analyst_id,),
                        assigned_to=tip.assigned_to,
                        life_safety=tip.life_safety,
                    )
                )
            self._store.update_tip(conn, tip.tip_id, [self._relay.item(e) for e in out], **values)
        self._relay.publish(out)
        log.info("thread message", tip_id=tip.tip_id, author=author, channel=channel)
        if self.on_message is not None:
            self.on_message(tip, message)
        return message


def _contact_fields(contact: Contact) -> dict[str, str]:
    return {
        k: v
        for k, v in (("name", contact.name), ("phone", contact.phone), ("email", contact.email))
        if v
    }


def _triage_note(screening: Screening, match: Match | None) -> str | None:
    parts = []
    if screening.reasons:
        parts.append("life-safety: " + ", ".join(screening.reasons))
    if match is not None:
        parts.append(f"folded into {match.primary_tip_id}: {match.reason}")
    return "; ".join(parts) or None


def aware(epoch: float) -> datetime:
    """An epoch time as an aware UTC datetime (call trees pick who is on duty by it)."""
    return datetime.fromtimestamp(epoch, UTC)
