"""Message text per SRP action, language and channel (English and Spanish).

Staff get the SRP instruction (:data:`ACTIONS`). Families and the public get their own text
(:data:`FAMILY`): calm, what to do (stay away from the school, wait for reunification
information), never what the threat is. Every message of a drill says so in its first words
("DRILL", and in Spanish "SIMULACRO / DRILL" so the word is recognisable in both languages).
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

#: (headline, what is happening, what to do) per SRP action and primary language, for
#: guardians and the public; ``{school}`` is the school's name. Nothing about the threat.
FAMILY: dict[str, dict[str, tuple[str, str, str]]] = {
    "LOCKDOWN": {
        "en": (
            "Lockdown at {school}",
            "{school} is in a lockdown. Students and staff are inside behind locked doors, "
            "following the plan they practise.",
            "Please do not come to the school or call it: emergency services need the roads "
            "and phone lines. We will tell you where and when to pick up your child as soon "
            "as we can. Watch for our next message.",
        ),
        "es": (
            "Cierre de emergencia en {school}",
            "{school} está en cierre de emergencia. Los alumnos y el personal están adentro "
            "con las puertas cerradas con llave, siguiendo el plan que practican.",
            "Por favor, no venga a la escuela ni llame: los servicios de emergencia necesitan "
            "las calles y las líneas telefónicas. Le diremos dónde y cuándo recoger a su hijo "
            "o hija en cuanto podamos. Esté atento a nuestro próximo mensaje.",
        ),
    },
    "SECURE": {
        "en": (
            "Outside doors locked at {school}",
            "{school} has locked its outside doors as a precaution because of a situation "
            "in the area. Classes continue inside the building.",
            "Please do not come to the school for now: no one can enter or leave. We will "
            "tell you when this ends and if pickup changes.",
        ),
        "es": (
            "Puertas exteriores cerradas en {school}",
            "{school} cerró sus puertas exteriores como precaución por una situación en la "
            "zona. Las clases continúan dentro del edificio.",
            "Por favor, no venga a la escuela por ahora: nadie puede entrar ni salir. Le "
            "avisaremos cuando esto termine y si cambia la hora de recogida.",
        ),
    },
    "HOLD": {
        "en": (
            "Students staying in class at {school}",
            "Students at {school} are staying in their classrooms for a while so the halls "
            "can be kept clear.",
            "Please do not come to the school; there is no need. We will send another "
            "message when it is over.",
        ),
        "es": (
            "Los alumnos permanecen en clase en {school}",
            "Los alumnos de {school} permanecen en sus salones por un tiempo para mantener "
            "despejados los pasillos.",
            "Por favor, no venga a la escuela; no es necesario. Le enviaremos otro mensaje "
            "cuando termine.",
        ),
    },
    "EVACUATE": {
        "en": (
            "Evacuation at {school}",
            "Students and staff of {school} have left the building and are going to a safe "
            "location with their teachers.",
            "Please do not come to the school: the area must stay clear for emergency "
            "services. We will tell you where and when to pick up your child as soon as we "
            "can. Watch for our next message.",
        ),
        "es": (
            "Evacuación en {school}",
            "Los alumnos y el personal de {school} salieron del edificio y van a un lugar "
            "seguro con sus maestros.",
            "Por favor, no venga a la escuela: la zona debe quedar libre para los servicios "
            "de emergencia. Le diremos dónde y cuándo recoger a su hijo o hija en cuanto "
            "podamos. Esté atento a nuestro próximo mensaje.",
        ),
    },
    "SHELTER": {
        "en": (
            "Students sheltering at {school}",
            "Students and staff of {school} are sheltering inside the building, as they "
            "practise, until a hazard has passed.",
            "Please do not come to the school until we tell you it is safe. We will send "
            "pickup information as soon as we can.",
        ),
        "es": (
            "Alumnos refugiados en {school}",
            "Los alumnos y el personal de {school} están refugiados dentro del edificio, "
            "como lo practican, hasta que pase un peligro.",
            "Por favor, no venga a la escuela hasta que le digamos que es seguro. Le "
            "enviaremos información sobre la recogida en cuanto podamos.",
        ),
    },
    "ALL_CLEAR": {
        "en": (
            "All clear at {school}",
            "The emergency at {school} is over.",
            "Please wait for our next message about pickup and the rest of the school day "
            "before coming to the school. Thank you for staying away.",
        ),
        "es": (
            "Fin de la emergencia en {school}",
            "La emergencia en {school} terminó.",
            "Por favor, espere nuestro próximo mensaje sobre la recogida y el resto del día "
            "escolar antes de venir a la escuela. Gracias por mantenerse alejado.",
        ),
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


@dataclass(frozen=True)
class FamilyText:
    """A family/public message in one language."""

    headline: str
    description: str  # what is happening
    instruction: str  # what to do

    @property
    def text(self) -> str:
        """The message body (description, then instruction)."""
        return f"{self.description}\n{self.instruction}"


def family(srp_action: str, school_name: str, language: str) -> FamilyText | None:
    """The family/public message of an SRP action in ``language``; None without a template."""
    template = FAMILY.get(srp_action, {}).get(primary(language))
    if template is None:
        return None
    # replace, not format: a school name may contain braces.
    headline, description, instruction = (t.replace("{school}", school_name) for t in template)
    return FamilyText(headline, description, instruction)


def family_as_prepared(srp_action: str | None, school_name: str, headline: str, body: str) -> bool:
    """Whether a family message still has the prepared English text (not edited by the
    approver): then every recipient gets it in their own language; edited text is sent as
    written (nobody translates it)."""
    prepared = family(srp_action or "", school_name, "en")
    return prepared is not None and (headline, body) == (prepared.headline, prepared.text)


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
    for_family: bool = False,
) -> Rendered:
    """The subject and text for one recipient on one channel.

    ``for_family``: the recipient is a guardian, who gets :data:`FAMILY` text (or the
    approver's edited text), never the staff instruction.
    """
    lang = primary(language)
    template = ACTIONS.get(srp_action or "", {}).get(lang)
    prepared = family(srp_action or "", school_name, lang) if for_family else None
    if prepared is not None and family_as_prepared(srp_action, school_name, headline, body):
        subject = prepared.headline
        lines = [prepared.description, prepared.instruction]
    elif template is not None and not for_family:
        title, instruction = template
        subject = f"{title} - {school_name}"
        lines = [f"{title}: {school_name}.", instruction]
    else:  # free text, or a family message the approver edited: sent as written
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
