"""Which earlier tip a new one repeats: same school, within the window, same threat.

After a threat goes viral, dozens of tips say the same thing. A new tip folds into an open
primary tip of the same school received within ``window_s`` when they name a common student
or their words are near-identical (rapidfuzz ``token_sort_ratio`` ≥ ``threshold`` on
normalised text: word order and punctuation do not matter, length does, so a short tip is
not swallowed by a longer one that merely contains its words). The oldest matching primary
wins. A life-safety tip never folds into one that is not: it must reach a human on its own.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from rapidfuzz import fuzz

from services.tips.model import CLOSED, Status

#: Similarity (0 to 100) from which two tips' texts count as the same report.
DEFAULT_THRESHOLD = 85.0
#: Texts shorter than this (after normalising) are too short to compare by words.
MIN_CHARS = 12

_NON_WORD = re.compile(r"[^\w]+")


def normalise(text: str) -> str:
    """Lower-case words without accents or punctuation (what is compared)."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _NON_WORD.sub(" ", plain).strip()


@dataclass(frozen=True)
class Candidate:
    """An earlier tip as the finder sees it."""

    tip_id: str
    status: str
    primary_tip_id: str | None
    life_safety: bool
    text: str
    subject_ids: tuple[str, ...]
    created_at: float


@dataclass(frozen=True)
class Match:
    """The primary a new tip folds into, and why."""

    primary_tip_id: str
    score: float
    reason: str


def find_primary(
    text: str,
    subject_ids: Iterable[str],
    *,
    life_safety: bool,
    earlier: Iterable[Candidate],
    threshold: float = DEFAULT_THRESHOLD,
) -> Match | None:
    """The open primary tip a new one repeats, if any (oldest first wins)."""
    words = normalise(text)
    subjects = set(subject_ids)
    for tip in sorted(earlier, key=lambda t: t.created_at):
        if tip.primary_tip_id is not None or Status(tip.status) in CLOSED:
            continue  # fold into primaries that are still open only
        if tip.status == Status.MERGED:
            continue
        if life_safety and not tip.life_safety:
            continue
        shared = subjects & set(tip.subject_ids)
        if shared:
            return Match(tip.tip_id, 100.0, "names the same student")
        if len(words) < MIN_CHARS:
            continue
        score = fuzz.token_sort_ratio(words, normalise(tip.text))
        if score >= threshold:
            return Match(tip.tip_id, float(score), f"text {score:.0f}% alike")
    return None
