"""Message text per SRP action, language and channel (English and Spanish).

Every message of a drill says so in its first words ("DRILL", and in Spanish
"SIMULACRO / DRILL" so the word is recognisable in both languages).
"""

from __future__ import annotations

from dataclasses import dataclass

#: (headline, instruction) per SRP action and primary language (standard response protocol).
ACTIONS: dict[str, dict[str, tuple[str, str]]] = {
    "LOCKDOWN": {
        "en": (
            "LOCKDOWN",
            "Locks, lights, out of sight. Lock your room, stay silent, do not open the door.",
        ),
        "es": (
            "CIERRE DE EMERGENCIA",
            "Cierre, luces, fuera de vista. Cierre su salón, guarde silencio, no abra la puerta.",
        ),
    },
    "SECURE": {
        "en": ("SECURE", "Get inside. Lock outside doors. Business as usual inside the building."),
        "es": (
            "ASEGURAR",
            "Entren. Cierren las puertas exteriores. Actividad normal dentro del edificio.",
        ),
    },
    "HOLD": {
        "en": ("HOLD", "In your room or area. Clear the halls. Continue teaching."),
        "es": ("PERMANECER", "En su salón o área. Despejen los pasillos. Continúen la clase."),
    },
    "EVACUATE": {
        "en": ("EVACUATE", "Evacuate to the announced location. Bring your roster."),
        "es": ("EVACUAR", "Evacúen al lugar anunciado. Lleven su lista de alumnos."),
    },
    "SHELTER": {
        "en": ("SHELTER", "Shelter for the announced hazard using the announced strategy."),
        "es": ("REFUGIO", "Refúgiense ante el peligro anunciado con la estrategia anunciada."),
    },
    "ALL_CLEAR": {
        "en": ("ALL CLEAR", "The emergency is over. Resume normal activities."),
        "es": ("FIN DE LA EMERGENCIA", "La emergencia terminó. Retomen las actividades normales."),
    },
}

DRILL = {"en": "DRILL", "es": "SIMULACRO / DRILL"}
DRILL_NOTE = {
    "en": "This is a DRILL. This is only a DRILL.",
    "es": "Esto es un SIMULACRO (DRILL). Solo es un simulacro.",
}
ACK_LINK = {"en": "Confirm you received this: {url}", "es": "Confirme que lo recibió: {url}"}
ACK_REPLY = {"en": "Reply 1 to confirm.", "es": "Responda 1 para confirmar."}
ACK_PRESS = {"en": "Press 1 to confirm.", "es": "Oprima 1 para confirmar."}


@dataclass(frozen=True)
class Rendered:
    """Subject and text of one message."""

    subject: str
    text: str


def primary(language: str) -> str:
    """``es-US`` → ``es``; anything without a template falls back to English."""
    tag = language.split("-", 1)[0].lower()
    return tag if tag in DRILL else "en"


def render(
    *,
    srp_action: str | None,
    headline: str,
    body: str,
    school_name: str,
    language: str,
    channel: str,
    exercise: bool,
    ack_url: str | None,
    require_ack: bool,
) -> Rendered:
    """The subject and text for one recipient on one channel."""
    lang = primary(language)
    template = ACTIONS.get(srp_action or "", {}).get(lang)
    if template is not None:
        title, instruction = template
        subject = f"{title} - {school_name}"
        lines = [f"{title}: {school_name}.", instruction]
    else:  # a free-text notification (no SRP action): sent as written
        subject = headline
        lines = [body]
    if exercise:
        subject = f"{DRILL[lang]} - {subject}"
        lines = [DRILL_NOTE[lang], *lines, DRILL_NOTE[lang]]
    if require_ack:
        if channel == "SMS":
            lines.append(ACK_REPLY[lang])
        elif channel == "VOICE":
            lines.append(ACK_PRESS[lang])
        elif ack_url is not None:
            lines.append(ACK_LINK[lang].format(url=ack_url))
    return Rendered(subject=subject, text="\n".join(lines))


def announcement(*, srp_action: str | None, body: str, school_name: str, exercise: bool) -> str:
    """What a PA speaks or a sign shows (English; announcements carry one language)."""
    rendered = render(
        srp_action=srp_action,
        headline=body,
        body=body,
        school_name=school_name,
        language="en-US",
        channel="PUBLIC_ADDRESS",
        exercise=exercise,
        ack_url=None,
        require_ack=False,
    )
    return rendered.text.replace("\n", " ")
