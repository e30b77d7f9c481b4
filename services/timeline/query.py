"""The query layer behind both APIs (HTTP JSON and gRPC): scoped, redacted, JSON-shaped.

Every answer is scoped by the caller, a directory :class:`Reviewer`: a district reviewer
sees only that district's subjects (another district's id is "not found", exactly like an
unknown one); fields whose schema carries a ``classification`` the reviewer is not cleared
for are replaced by ``{"withheld": CLASS}`` and listed in the entry's ``withheld``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from safehub.contracts.names import EventType
from safehub.contracts.registry import event_schemas, field_classifications
from safehub.kernel import chain
from safehub.kernel.directory import Directory, DirectorySource, Reviewer
from safehub.kernel.envelope import EVENT_NAMESPACE
from safehub.kernel.errors import SafeHubError
from safehub.kernel.people import People
from services.timeline.store import Store, SubjectFilter, classes_of, entry_chain_fields

#: A database row (SQLAlchemy RowMapping) or any mapping shaped like one.
Row = Mapping[Any, Any]

MAX_PAGE = 5000
KINDS = frozenset({"incident", "case"})
STATUSES = frozenset({"open", "cleared", "closed", "cancelled"})
NOTIFICATION_TYPES = (
    EventType.NOTIFICATION_REQUESTED.short,
    EventType.DELIVERY_RECEIPT.short,
    EventType.NOTIFICATION_ACKNOWLEDGED.short,
)
#: DeliveryReceipt status → the channel field it stamps.
RECEIPT_FIELDS = {
    "QUEUED": "queued_at",
    "SENT": "sent_at",
    "DELIVERED": "delivered_at",
    "FAILED": "failed_at",
    "REJECTED": "failed_at",
    "EXPIRED": "failed_at",
}


class QueryError(SafeHubError):
    """A query that cannot be answered; ``status`` is the HTTP status it maps to."""

    status = 400


class BadRequestError(QueryError):
    """A parameter is invalid (the message names it)."""

    status = 400


class ForbiddenError(QueryError):
    """The caller asked for something outside its scope."""

    status = 403


class NotFoundError(QueryError):
    """No such subject or trace for this caller."""

    status = 404


def classified_paths() -> dict[str, list[tuple[str, str]]]:
    """Event type (short name) → [(dotted field path, data class)] from the Avro schemas."""
    return {
        name.removeprefix(EVENT_NAMESPACE): sorted(field_classifications(schema).items())
        for name, schema in event_schemas().items()
    }


def parse_time(value: str | None, name: str) -> datetime | None:
    """An ISO-8601 parameter (naive means UTC); BadRequestError naming ``name``."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequestError(f"{name}: not an ISO-8601 time") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def parse_int(value: str | None, name: str, default: int, *, low: int, high: int) -> int:
    """An integer parameter within bounds; BadRequestError naming ``name``."""
    if value in (None, ""):
        return default
    try:
        number = int(str(value))
    except ValueError:
        raise BadRequestError(f"{name}: not an integer") from None
    if not low <= number <= high:
        raise BadRequestError(f"{name}: must be between {low} and {high}")
    return number


def parse_bool(value: str | None, name: str) -> bool | None:
    """``true``/``false`` (or empty: any)."""
    if value in (None, ""):
        return None
    lowered = str(value).lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise BadRequestError(f"{name}: expected true or false")


def _encode_cursor(row: Row) -> str:
    text = f"{chain.iso(row['opened_at'])}|{row['id']}"
    return base64.urlsafe_b64encode(text.encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        opened, ident = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(opened), ident
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequestError("cursor: not a cursor this API returned") from None


def _span_time(ns: int) -> str:
    return chain.iso(datetime.fromtimestamp(ns / 1e9, UTC))


#: The key of ``data`` standing for a stored event that is not JSON (the chain check names it).
UNREADABLE = "unreadable"


def stored_event(text: str) -> Any:
    """A stored payload parsed; ``{"unreadable": reason}`` when it is not JSON (tampered)."""
    try:
        return json.loads(text)
    except ValueError:
        return {UNREADABLE: "the stored event is not JSON (see the chain status)"}


class RawJson:
    """JSON text to be embedded as it is by :func:`dumps` (a stored, canonical payload)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def value(self) -> Any:
        """The parsed value."""
        return json.loads(self.text)


_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

_RAW_MARK = re.compile(r'"\\u0000raw(\d+)\\u0000"')


def dumps(value: Any) -> str:
    """Compact JSON of an API answer, embedding :class:`RawJson` texts without re-parsing."""
    texts: list[str] = []

    def embed(obj: Any) -> str:
        if isinstance(obj, RawJson):
            texts.append(obj.text)
            return f"\x00raw{len(texts) - 1}\x00"
        raise TypeError(f"{type(obj).__name__} is not JSON serialisable")

    out = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=embed)
    return _RAW_MARK.sub(lambda m: texts[int(m.group(1))], out) if texts else out


@dataclass(frozen=True)
class _Page:
    subject: dict[str, Any]
    chain: dict[str, Any]
    rows: list[Sequence[Any]]
    next_after_seq: int | None


@dataclass
class _CachedChain:
    result: dict[str, Any]
    head: str
    count: int
    at: float


class Queries:
    """Answers for one caller at a time; shared by the HTTP and gRPC front ends."""

    def __init__(
        self,
        store: Store,
        directory: DirectorySource,
        *,
        people: People | None = None,
        chain_cache_s: float = 5.0,
    ) -> None:
        """``directory`` is where reviewers are looked up (the live view, or a fixed one),
        once per request: a reviewer added or removed at run time counts from the next one.
        ``people`` names the recipients of the people view (staff and responders, by name
        only); without it the view shows their ids."""
        self.store = store
        self._directory = directory
        self.classified = classified_paths()
        self._chain_cache_s = chain_cache_s
        self._chains: dict[str, _CachedChain] = {}
        self._redacted_types: dict[frozenset[str], frozenset[str]] = {}
        self._lock = threading.Lock()
        self._names: dict[str, str] = {}
        for school in people.schools if people else ():
            self._names.update({m.id: m.name for m in school.staff})
            self._names.update({r.id: r.name for r in school.responders})

    # -- callers -------------------------------------------------------------------------------

    @property
    def directory(self) -> Directory:
        """The directory now (a snapshot)."""
        return self._directory.current()

    def reviewer_by_token(self, token: str) -> Reviewer | None:
        """The reviewer behind a bearer token, as the directory has them now."""
        return self._directory.current().reviewer_by_token(token)

    def reviewer(self, reviewer_id: str) -> Reviewer | None:
        """The reviewer with this id (mTLS certificate CN), as the directory has them now."""
        return self._directory.current().reviewer(reviewer_id)

    @staticmethod
    def may_see(reviewer: Reviewer, subject: Row) -> bool:
        """State-wide reviewers see everything; district reviewers their district."""
        return reviewer.district is None or reviewer.district == subject["district"]

    def _subject(self, reviewer: Reviewer, subject_id: str) -> Row:
        row = self.store.subject(subject_id)
        if row is None or not self.may_see(reviewer, row):
            raise NotFoundError(f"no incident or case {subject_id!r}")
        return row

    # -- shapes --------------------------------------------------------------------------------

    @staticmethod
    def subject_json(row: Row) -> dict[str, Any]:
        """A subject index row in the API shape."""
        return {
            "id": row["id"],
            "kind": row["kind"],
            "district": row["district"],
            "school": row["school"],
            "building": row["building"],
            "room": row["room"],
            "type": row["type"],
            "status": row["status"],
            "incident_state": row["incident_state"],
            "srp_action": row["srp_action"],
            "cad_status": row["cad_status"],
            "summary": row["summary"],
            "exercise": bool(row["exercise"]),
            "opened_at": chain.iso(row["opened_at"]),
            "updated_at": chain.iso(row["updated_at"]),
            "entry_count": int(row["entry_count"]),
            "head_hash": row["head_hash"],
        }

    def redact(self, reviewer: Reviewer, event_type: str, payload: Any) -> tuple[Any, list[str]]:
        """The payload with uncleared classified fields withheld, and their paths."""
        withheld: list[str] = []
        for path, data_class in self.classified.get(event_type, []):
            if data_class in reviewer.clearances:
                continue
            parts = path.split(".")
            if _withhold(payload, parts, data_class):
                withheld.append(path)
        return payload, withheld

    def entry_json(
        self, reviewer: Reviewer, row: Row, *, pass_through: bool = False
    ) -> dict[str, Any]:
        """An entry as exported: the page shape plus its chain fields, ``data`` the whole event.

        With ``pass_through``, a payload with nothing to withhold from this reviewer stays its
        stored canonical JSON text (:class:`RawJson`, embedded as it is by :func:`dumps`).
        """
        event_type = str(row["event_type"])
        fields = entry_chain_fields(row, parse_payload=False)
        data: Any
        withheld: list[str] = []
        if pass_through and not self._uncleared(reviewer, event_type):
            data = RawJson(fields["payload"])
        else:
            data, withheld = self.redact(reviewer, event_type, stored_event(fields["payload"]))
        return {
            "seq": fields["seq"],
            "event_id": fields["event_id"],
            "event_type": fields["event_type"],
            "lane": fields["lane"],
            "occurred_at": fields["occurred_at"],
            "recorded_at": fields["recorded_at"],
            "source": fields["source"],
            "actor": fields["actor"],
            "summary": fields["summary"],
            "trace_id": fields["trace_id"],
            "span_id": fields["span_id"],
            "exercise": fields["exercise"],
            "classification": fields["classification"],
            "building": fields["building"],
            "room": fields["room"],
            "data": data,
            "withheld": withheld,
            "payload_sha256": fields["payload_sha256"],
            "hash": fields["hash"],
            "prev_hash": fields["prev_hash"],
            "subject_id": fields["subject_id"],
            "subject_kind": fields["subject_kind"],
            "tenant": fields["tenant"],
        }

    def page_entry(self, reviewer: Reviewer, row: Sequence[Any]) -> dict[str, Any]:
        """A timeline page entry from a :data:`~services.timeline.store.PAGE_COLUMNS` row.

        ``data`` is the event without the envelope fields the entry carries top-level with
        the same value (see :func:`_drop_repeats`); classified fields this reviewer is not
        cleared for are withheld.
        """
        (
            seq,
            event_id,
            event_type,
            lane,
            occurred_at,
            recorded_at,
            source,
            actor,
            summary,
            trace_id,
            span_id,
            exercise,
            classification,
            building,
            room,
            payload,
            payload_sha256,
            hash_,
            prev_hash,
        ) = row
        entry = {
            "seq": int(seq),
            "event_id": event_id,
            "event_type": event_type,
            "lane": lane,
            "occurred_at": occurred_at,
            "recorded_at": recorded_at,
            "source": source,
            "actor": actor,
            "summary": summary,
            "trace_id": trace_id,
            "span_id": span_id,
            "exercise": bool(exercise),
            "classification": classes_of(classification),
            "building": building,
            "room": room,
            "data": None,
            "withheld": [],
            "payload_sha256": payload_sha256,
            "hash": hash_,
            "prev_hash": prev_hash,
        }
        data = stored_event(payload)
        envelope = data.get("envelope") if isinstance(data, dict) else None
        if isinstance(envelope, dict):
            _drop_repeats(envelope, entry)
        if self._uncleared(reviewer, event_type):
            data, entry["withheld"] = self.redact(reviewer, event_type, data)
        entry["data"] = data
        return entry

    def _uncleared(self, reviewer: Reviewer, event_type: str) -> bool:
        """Whether this event type has classified fields the reviewer is not cleared for."""
        clearances = frozenset(reviewer.clearances)
        types = self._redacted_types.get(clearances)
        if types is None:
            types = frozenset(
                name
                for name, paths in self.classified.items()
                if any(data_class not in clearances for _, data_class in paths)
            )
            self._redacted_types[clearances] = types
        return event_type in types

    @staticmethod
    def span_json(row: Row) -> dict[str, Any]:
        """A span in the API shape."""
        return {
            "trace_id": row["trace_id"],
            "span_id": row["span_id"],
            "parent_span_id": row["parent_span_id"],
            "name": row["name"],
            "service": row["service"],
            "kind": row["kind"],
            "start": _span_time(int(row["start_ns"])),
            "end": _span_time(int(row["end_ns"])),
            "duration_ms": round((int(row["end_ns"]) - int(row["start_ns"])) / 1e6, 3),
            "status": row["status"],
            "attributes": json.loads(row["attributes"]),
        }

    # -- queries -------------------------------------------------------------------------------

    def list_subjects(self, reviewer: Reviewer, params: Mapping[str, str]) -> dict[str, Any]:
        """``GET /api/v1/subjects``."""
        kind = params.get("kind") or None
        if kind is not None and kind not in KINDS:
            raise BadRequestError("kind: expected incident or case")
        status = params.get("status") or None
        if status is not None and status not in STATUSES:
            raise BadRequestError(f"status: expected one of {', '.join(sorted(STATUSES))}")
        district = params.get("district") or None
        if reviewer.district is not None:
            if district not in (None, reviewer.district):
                raise ForbiddenError(f"district: reviewer {reviewer.id} may not read {district}")
            district = reviewer.district
        where = SubjectFilter(
            kind=kind,
            district=district,
            school=params.get("school") or None,
            opened_from=parse_time(params.get("from"), "from"),
            opened_to=parse_time(params.get("to"), "to"),
            type=params.get("type") or None,
            status=status,
            exercise=parse_bool(params.get("exercise"), "exercise"),
        )
        limit = parse_int(params.get("limit"), "limit", 50, low=1, high=500)
        cursor = params.get("cursor")
        after = _decode_cursor(cursor) if cursor else None
        rows = self.store.list_subjects(where, limit=limit + 1, after=after)
        more = len(rows) > limit
        rows = rows[:limit]
        return {
            "items": [self.subject_json(r) for r in rows],
            "next_cursor": _encode_cursor(rows[-1]) if more and rows else None,
        }

    def timeline(
        self, reviewer: Reviewer, subject_id: str, params: Mapping[str, str]
    ) -> dict[str, Any]:
        """``GET /api/v1/subjects/{id}/timeline``.

        The first page (``after_seq=0``) carries the chain status of the current head,
        recomputed when the last check is older than ``chain_cache_s`` or the head moved;
        later pages repeat the last check (the one the first page showed) instead of checking
        the whole chain again for every page. Entries' ``data`` is :class:`RawJson` (see
        :func:`dumps`).
        """
        page = self._page(reviewer, subject_id, params)
        entries = []
        for row in page.rows:
            entry = self.page_entry(reviewer, row)
            # Encoded at once: a page's parsed events never all live together (timeline_json).
            entry["data"] = RawJson(_encode(entry["data"]))
            entries.append(entry)
        return {
            "subject": page.subject,
            "chain": page.chain,
            "entries": entries,
            "next_after_seq": page.next_after_seq,
        }

    def timeline_json(self, reviewer: Reviewer, subject_id: str, params: Mapping[str, str]) -> str:
        """:meth:`timeline` as the JSON text :func:`dumps` gives, each entry encoded as soon as
        it is built: a page's 2,000 entries never live as objects all at once, which keeps
        the garbage collector's full passes (tens of ms with a large heap) off the page."""
        page = self._page(reviewer, subject_id, params)
        entries = ",".join(_encode(self.page_entry(reviewer, r)) for r in page.rows)
        return (
            f'{{"subject":{_encode(page.subject)},"chain":{_encode(page.chain)},'
            f'"entries":[{entries}],"next_after_seq":{_encode(page.next_after_seq)}}}'
        )

    def _page(self, reviewer: Reviewer, subject_id: str, params: Mapping[str, str]) -> _Page:
        after_seq = parse_int(params.get("after_seq"), "after_seq", 0, low=0, high=2**62)
        limit = parse_int(params.get("limit"), "limit", 2000, low=1, high=MAX_PAGE)
        end = after_seq + limit
        # One seq past the page: entries appended after the index row was read count too.
        subject, rows = self.store.timeline_page(subject_id, after_seq=after_seq, upto_seq=end + 1)
        if subject is None or not self.may_see(reviewer, subject):
            raise NotFoundError(f"no incident or case {subject_id!r}")
        more = end < int(subject["entry_count"]) or any(int(r[0]) > end for r in rows[-1:])
        return _Page(
            subject=self.subject_json(subject),
            chain=self._chain(subject, fresh=after_seq == 0),
            rows=[r for r in rows if int(r[0]) <= end],
            next_after_seq=end if more else None,
        )

    def _chain(self, subject: Row, *, fresh: bool) -> dict[str, Any]:
        """The chain status. ``fresh``: of the current head, checked at most ``chain_cache_s``
        ago (else recomputed now); otherwise the last check made, whatever head it covered
        (its ``head_hash`` and ``checked`` say which), recomputed only if there is none."""
        key = str(subject["id"])
        head, count = str(subject["head_hash"]), int(subject["entry_count"])
        with self._lock:
            cached = self._chains.get(key)
        if cached is not None and (
            not fresh
            or (
                cached.head == head
                and cached.count == count
                and time.monotonic() - cached.at < self._chain_cache_s
            )
        ):
            return cached.result
        return self._verify(subject)

    def _verify(self, subject: Row) -> dict[str, Any]:
        key = str(subject["id"])
        # The index row was read first and is written in the same transaction as its
        # entries: entries 1..entry_count are all visible now, later ones are not its concern.
        count = int(subject["entry_count"])
        result = chain.verify(
            _chain_entries(self.store.iter_entries(key, upto_seq=count)),
            expected_count=count,
            expected_head=str(subject["head_hash"]),
        ).to_json()
        with self._lock:
            self._chains[key] = _CachedChain(
                result, str(subject["head_hash"]), int(subject["entry_count"]), time.monotonic()
            )
        return result

    def verify(self, reviewer: Reviewer, subject_id: str) -> dict[str, Any]:
        """``GET /api/v1/subjects/{id}/verify``: the chain, recomputed now."""
        return self._verify(self._subject(reviewer, subject_id))

    def people(self, reviewer: Reviewer, subject_id: str) -> dict[str, Any]:
        """``GET /api/v1/subjects/{id}/people``: per recipient, what reached them and when."""
        self._subject(reviewer, subject_id)
        recipients: dict[str, dict[str, Any]] = {}

        def person(recipient_id: str) -> dict[str, Any]:
            if recipient_id not in recipients:
                recipients[recipient_id] = {
                    "recipient_id": recipient_id,
                    "name": self._names.get(recipient_id),
                    "channels": {},
                    "acknowledged_at": None,
                }
            return recipients[recipient_id]

        for row in self.store.entries_of_types(subject_id, NOTIFICATION_TYPES):
            payload = stored_event(row["payload"])
            if UNREADABLE in payload:
                continue
            at = chain.iso(row["occurred_at"])
            match row["event_type"]:
                case EventType.NOTIFICATION_REQUESTED.short:
                    for recipient in payload.get("recipients") or []:
                        entry = person(str(recipient["recipient_id"]))
                        for channel in recipient.get("channels") or []:
                            _channel(entry, str(channel))
                case EventType.DELIVERY_RECEIPT.short:
                    entry = person(str(payload["recipient_id"]))
                    slot = _channel(entry, str(payload["channel"]))
                    stamp = RECEIPT_FIELDS.get(str(payload["status"]))
                    if stamp and slot[stamp] is None:
                        slot[stamp] = at
                    if payload.get("error"):
                        slot["error"] = payload["error"]
                case EventType.NOTIFICATION_ACKNOWLEDGED.short:
                    entry = person(str(payload["recipient_id"]))
                    if entry["acknowledged_at"] is None or at < entry["acknowledged_at"]:
                        entry["acknowledged_at"] = at
        out = []
        never = []
        for recipient_id in sorted(recipients):
            entry = recipients[recipient_id]
            channels = list(entry["channels"].values())
            reached = entry["acknowledged_at"] or any(c["delivered_at"] for c in channels)
            if not reached:
                never.append(recipient_id)
            out.append({**entry, "channels": channels})
        return {"recipients": out, "never_reached": never}

    def trace(self, reviewer: Reviewer, trace_id: str) -> dict[str, Any]:
        """``GET /api/v1/traces/{trace_id}``: only traces of subjects the caller may see."""
        trace_id = trace_id.lower()
        if len(trace_id) != 32 or any(c not in "0123456789abcdef" for c in trace_id):
            raise BadRequestError("trace_id: expected 32 hex digits")
        owners = self.store.trace_subjects(trace_id)
        if not any(self.may_see(reviewer, s) for s in owners):
            raise NotFoundError(f"no trace {trace_id}")
        return {
            "trace_id": trace_id,
            "spans": [self.span_json(r) for r in self.store.spans([trace_id])],
        }

    def export(
        self, reviewer: Reviewer, subject_id: str, *, pass_through: bool = False
    ) -> dict[str, Any]:
        """The after-action export: subject, chain, every entry (with chain fields), spans.

        ``pass_through`` keeps unredacted payloads as their stored JSON text (for
        :func:`dumps`; the HTML report needs them parsed).
        """
        subject = self._subject(reviewer, subject_id)
        entries = [
            self.entry_json(reviewer, r, pass_through=pass_through)
            for r in self.store.iter_entries(subject_id, upto_seq=int(subject["entry_count"]))
        ]
        spans = self.store.spans(self.store.trace_ids(subject_id))
        return {
            "format": "safehub.timeline.export.v1",
            "exported_at": chain.iso(datetime.now(UTC)),
            "exported_by": reviewer.id,
            "subject": self.subject_json(subject),
            "chain": self._verify(subject),
            "entries": entries,
            "people": self.people(reviewer, subject_id),
            "spans": [self.span_json(r) for r in spans],
        }


def _channel(entry: dict[str, Any], channel: str) -> dict[str, Any]:
    channels: dict[str, dict[str, Any]] = entry["channels"]
    if channel not in channels:
        channels[channel] = {
            "channel": channel,
            "queued_at": None,
            "sent_at": None,
            "delivered_at": None,
            "failed_at": None,
            "error": None,
        }
    return channels[channel]


#: Envelope fields a page entry also carries top-level, under the same name.
ON_TOP = (
    "event_id",
    "occurred_at",
    "recorded_at",
    "source",
    "building",
    "room",
    "classification",
    "exercise",
)


def _drop_repeats(envelope: dict[str, Any], entry: Mapping[str, Any]) -> None:
    """Remove the envelope fields the entry carries top-level with the same JSON value (and
    ``event_type``, top-level without its namespace). Nothing is lost: the event is ``data``
    with its envelope completed from the entry; a field that differs stays where it is."""
    for name in ON_TOP:
        if name in envelope:
            value = envelope[name]
            if type(value) is type(entry[name]) and value == entry[name]:
                del envelope[name]
    if envelope.get("event_type") == EVENT_NAMESPACE + entry["event_type"]:
        del envelope["event_type"]


def _chain_entries(rows: Iterable[Row]) -> Iterator[dict[str, Any]]:
    """Entries for :func:`chain.verify`. A payload whose stored bytes hash to its digest is
    the canonical JSON that was hashed (SHA-256), so its content needs no re-parsing and
    re-hashing; any other payload goes to the chain check parsed (or as the bad text)."""
    for row in rows:
        fields = entry_chain_fields(row, parse_payload=False)
        text = fields.pop("payload")
        if hashlib.sha256(text.encode("utf-8")).hexdigest() != fields["payload_sha256"]:
            try:
                fields["payload"] = json.loads(text)
            except ValueError:
                fields["payload"] = text
        yield fields


def _withhold(node: Any, parts: list[str], data_class: str) -> bool:
    """Replace the value at ``parts`` (through lists) by a marker; True if anything was there."""
    if isinstance(node, list):
        hits = [_withhold(item, parts, data_class) for item in node]
        return any(hits)
    if not isinstance(node, dict) or parts[0] not in node:
        return False
    if len(parts) == 1:
        if node[parts[0]] is None:
            return False
        node[parts[0]] = {"withheld": data_class}
        return True
    return _withhold(node[parts[0]], parts[1:], data_class)
