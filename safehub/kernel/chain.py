"""The timeline's hash chain: one algorithm, shared by the timeline service and the CLI.

Each entry of an incident's (or case's) timeline commits to the entry before it::

    hash = sha256(prev_hash || canonical_json(chained fields))

The first entry's ``prev_hash`` is 64 zeros. The payload enters the chain through its own
digest (``payload_sha256``), so an export whose classified fields are withheld can still be
checked link by link; with the payload in clear the digest is recomputed too.

Canonical JSON: sorted keys, no whitespace, UTF-8, datetimes as ISO-8601 UTC with
microseconds (``2024-05-01T13:45:12.000123Z``), bytes as base64.

:func:`verify` names the first entry that was altered (its content no longer matches its
hash), removed (a seq gap, or the link points to an entry that is not there) or reordered
(the link points to an entry that is there, but elsewhere).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64

#: The entry fields the hash covers (besides prev_hash), in no particular order.
CHAINED_FIELDS: tuple[str, ...] = (
    "seq",
    "subject_id",
    "subject_kind",
    "event_id",
    "event_type",
    "occurred_at",
    "recorded_at",
    "tenant",
    "building",
    "room",
    "exercise",
    "source",
    "actor",
    "lane",
    "summary",
    "classification",
    "trace_id",
    "span_id",
    "payload_sha256",
)


def iso(moment: datetime) -> str:
    """ISO-8601 UTC with microseconds and a ``Z`` (naive datetimes are taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_PLAIN = frozenset({str, int, float, bool})


def jsonable(value: Any) -> Any:
    """``value`` with datetimes and bytes turned into their canonical strings."""
    if value is None or type(value) in _PLAIN:  # most fields: no conversion, no ABC check
        return value
    if type(value) is dict:
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def canonical_json(value: Any) -> bytes:
    """The canonical JSON bytes of ``value``."""
    return json.dumps(
        jsonable(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def payload_digest(payload: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of an entry's payload."""
    return hashlib.sha256(canonical_json(payload)).hexdigest()


def entry_hash(prev_hash: str, entry: Mapping[str, Any]) -> str:
    """The hash of ``entry`` (its :data:`CHAINED_FIELDS`) chained after ``prev_hash``."""
    body = {name: entry.get(name) for name in CHAINED_FIELDS}
    return hashlib.sha256(prev_hash.encode("ascii") + canonical_json(body)).hexdigest()


@dataclass(frozen=True)
class Problem:
    """The first broken place in a chain."""

    seq: int
    kind: str  # altered | removed | reordered
    detail: str

    def to_json(self) -> dict[str, Any]:
        """The API shape."""
        return {"seq": self.seq, "kind": self.kind, "detail": self.detail}


@dataclass(frozen=True)
class ChainResult:
    """Outcome of a verification."""

    ok: bool
    checked: int
    problem: Problem | None
    head_hash: str
    payloads_unchecked: int = 0

    def to_json(self) -> dict[str, Any]:
        """The API shape (``chain`` object)."""
        return {
            "ok": self.ok,
            "checked": self.checked,
            "problem": None if self.problem is None else self.problem.to_json(),
            "head_hash": self.head_hash,
        }


def verify(
    entries: Iterable[Mapping[str, Any]],
    *,
    expected_count: int | None = None,
    expected_head: str | None = None,
) -> ChainResult:
    """Recompute the chain of one subject's entries (any order; sorted by seq here).

    Each entry needs the chained fields, ``prev_hash`` and ``hash``; with ``payload`` (and no
    ``withheld`` paths) its payload digest is recomputed as well. ``expected_count`` and
    ``expected_head`` (the subject index's record) reveal entries removed from the end.
    """
    ordered: Sequence[Mapping[str, Any]] = sorted(entries, key=lambda e: int(e["seq"]))
    present = {str(e["hash"]): int(e["seq"]) for e in ordered}
    prev = GENESIS
    unchecked = 0
    for position, entry in enumerate(ordered, start=1):
        seq = int(entry["seq"])
        problem = _check(entry, seq, position, prev, present)
        if problem is not None:
            return ChainResult(False, position - 1, problem, prev, unchecked)
        if "payload" in entry and not entry.get("withheld"):
            if payload_digest(entry["payload"]) != entry.get("payload_sha256"):
                detail = f"entry {seq}: payload does not match its digest"
                return ChainResult(False, position - 1, Problem(seq, "altered", detail), prev)
        else:
            unchecked += 1
        prev = str(entry["hash"])
    checked = len(ordered)
    if expected_count is not None and expected_count > checked:
        first = checked + 1
        detail = (
            f"entries {first}..{expected_count} are missing (the index counts {expected_count})"
        )
        return ChainResult(False, checked, Problem(first, "removed", detail), prev, unchecked)
    if expected_head is not None and checked and expected_head != prev:
        detail = f"entry {checked} is not the head the index recorded"
        return ChainResult(False, checked, Problem(checked, "altered", detail), prev, unchecked)
    return ChainResult(True, checked, None, prev, unchecked)


def _check(
    entry: Mapping[str, Any], seq: int, position: int, prev: str, present: Mapping[str, int]
) -> Problem | None:
    if seq > position:
        missing = f"{position}" if seq == position + 1 else f"{position}..{seq - 1}"
        return Problem(position, "removed", f"entry {missing} is missing (seq jumps to {seq})")
    if seq < position:
        return Problem(seq, "reordered", f"seq {seq} appears twice")
    linked = str(entry.get("prev_hash"))
    if linked != prev:
        elsewhere = present.get(linked)
        if elsewhere is not None:
            return Problem(
                seq,
                "reordered",
                f"entry {seq} follows entry {elsewhere} in the chain, not {seq - 1}",
            )
        return Problem(seq, "removed", f"the entry chained before entry {seq} is missing")
    if entry_hash(prev, entry) != entry.get("hash"):
        return Problem(seq, "altered", f"entry {seq} does not match its hash")
    return None
