"""What intake decides from a tip's words: cleaned text, the life-safety flag, imminence.

The flag errs towards a human: a tip is life-safety when its category is (a weapon, a threat
of violence, self-harm) or its words are (a gun, a bomb, "kill", "suicide", in English or
Spanish), whatever category the tipster picked. It is imminent when it is life-safety and
names a time that is close ("today", "tomorrow", "tonight", "mañana" …); imminent tips are
the ones that may go to the PSAP. Only an analyst clears the flag, with a reason.

Text is refused, naming the field, when it is empty, too long, carries control characters
or markup that would run in a browser (a tipster's words are shown to analysts as text, but
a script in a tip is hostile input, not a tip).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from safehub.kernel.errors import SafeHubError
from services.tips.model import Category

#: Categories that are life-safety whatever the words say.
LIFE_SAFETY_CATEGORIES = frozenset(
    {Category.WEAPON, Category.THREAT_OF_VIOLENCE, Category.SELF_HARM}
)

_WORD = r"(?<![\w])(?:{})(?![\w])"
_DANGER = re.compile(
    _WORD.format(
        "|".join(
            [
                # English
                r"guns?",
                r"rifles?",
                r"pistols?",
                r"firearms?",
                r"shoot(?:ing|er|s)?",
                r"shot",
                r"bombs?",
                r"explosives?",
                r"knife|knives",
                r"stab(?:bing)?",
                r"kill(?:ing|s)?",
                r"murder",
                r"suicid(?:e|al)",
                r"hurt (?:himself|herself|myself|themselves)",
                r"end (?:his|her|my|their) life",
                r"hit ?list",
                # Spanish
                r"pistolas?",
                r"armas?",
                r"rifles?",
                r"disparar",
                r"balacera",
                r"tiroteo",
                r"bombas?",
                r"explosivos?",
                r"cuchillos?",
                r"apu[ñn]alar",
                r"matar(?:me|lo|la|los)?",
                r"suicid(?:io|arse|arme)",
            ]
        )
    ),
    re.IGNORECASE,
)
_SOON = re.compile(
    _WORD.format(
        "|".join(
            [
                r"today",
                r"tonight",
                r"tomorrow",
                r"this (?:morning|afternoon|evening|week)",
                r"right now",
                r"now",
                r"on (?:monday|tuesday|wednesday|thursday|friday)",
                r"hoy",
                r"esta noche",
                r"ma[ñn]ana",
                r"ahora",
                r"ya",
            ]
        )
    ),
    re.IGNORECASE,
)
#: Markup that would run or load something if a page ever rendered the text as HTML.
_ACTIVE = re.compile(
    r"<\s*/?\s*(?:script|iframe|object|embed|svg|img|style|link|meta|form|input)\b"
    r"|javascript\s*:|data\s*:\s*text/html|\bon[a-z]+\s*=",
    re.IGNORECASE,
)


class TextRejectedError(SafeHubError):
    """Tip or message text that intake refuses; ``field`` names the request field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


@dataclass(frozen=True)
class Screening:
    """What intake concluded from a tip."""

    life_safety: bool
    imminent: bool
    #: Why the flag is set (category, words): for the analyst, never the words themselves.
    reasons: tuple[str, ...]


def clean_text(text: str, *, field: str, max_chars: int, required: bool = True) -> str:
    """The text, NFC-normalised and trimmed, or TextRejectedError naming ``field``."""
    cleaned = unicodedata.normalize("NFC", text or "").strip()
    if not cleaned:
        if required:
            raise TextRejectedError(field, "is empty; say what is happening")
        return ""
    if len(cleaned) > max_chars:
        raise TextRejectedError(field, f"is {len(cleaned)} characters; at most {max_chars}")
    if any(unicodedata.category(c) == "Cc" and c not in "\n\r\t" for c in cleaned):
        raise TextRejectedError(field, "contains control characters")
    if _ACTIVE.search(cleaned):
        raise TextRejectedError(field, "contains markup or a script; write plain text")
    return cleaned


def screen(category: Category, text: str) -> Screening:
    """The life-safety and imminence flags of a tip (never clears what the category sets)."""
    reasons: list[str] = []
    if category in LIFE_SAFETY_CATEGORIES:
        reasons.append(f"category {category.value}")
    if _DANGER.search(text):
        reasons.append("words of a weapon, violence or self-harm")
    life_safety = bool(reasons)
    imminent = life_safety and _SOON.search(text) is not None
    if imminent:
        reasons.append("a time that is close")
    return Screening(life_safety, imminent, tuple(reasons))
