"""SafeHub's alert policy in CAP 1.2: how an SRP action reads as a CAP alert.

Category ``Security``, the SRP action as ``event`` and as ``eventCode`` (valueName ``SRP``,
value = the action symbol), ``responseType`` per :data:`SRP_PROFILES` — CAP has no
"Lockdown" response, see there why each action maps as it does —, the school as the area,
drills as status Exercise. The standard itself (model, XML, validation, safe parsing) is
:mod:`safehub.standards.cap`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from safehub.kernel.directory import School
from safehub.standards.cap import (
    CapAlert,
    CapArea,
    CapError,
    CapInfo,
    Category,
    Certainty,
    Circle,
    MsgType,
    NamedValue,
    Reference,
    ResponseType,
    Scope,
    Severity,
    Status,
    Urgency,
)

#: eventCode valueName carrying the SRP action symbol.
SRP_VALUE_NAME = "SRP"
#: Radius of the circle drawn around a school's coordinates: the campus and its approaches.
SCHOOL_RADIUS_KM = 0.5
LANGUAGE_EN = "en-US"
LANGUAGE_ES = "es-US"
#: Default ``restriction`` text of staff (scope Restricted) messages.
STAFF_RESTRICTION = (
    "Staff of the school named in the area and responding agencies only; do not redistribute."
)
#: ``note`` of every Exercise message (CAP: an exercise identifier SHOULD appear in note).
EXERCISE_NOTE = "SafeHub drill: exercise only, not a real emergency."


@dataclass(frozen=True)
class SrpProfile:
    """How one SRP action reads in CAP."""

    response_types: tuple[ResponseType, ...]
    urgency: Urgency
    severity: Severity
    events: Mapping[str, str]  # language → event text


#: SRP action symbol → CAP profile. Why these responseTypes (CAP has no "Lockdown"):
#:
#: - LOCKDOWN ("locks, lights, out of sight"): Shelter — stay hidden where you are — plus
#:   Avoid, because everyone outside must keep away from the school.
#: - SECURE ("get inside, lock outside doors"): Shelter — inside the building, business as usual.
#: - HOLD ("in your room or area, clear the halls"): Execute — CAP's "execute a pre-planned
#:   activity identified in instruction". Monitor would say no action is needed, which is wrong.
#: - EVACUATE: Evacuate. SHELTER (hazard-specific, e.g. tornado): Shelter.
#: - ALL_CLEAR: AllClear with urgency Past ("responsive action is no longer required") and
#:   severity Minor; send it as an Update referencing the action it ends (Cancel means the
#:   earlier message was withdrawn, e.g. issued in error).
#:
#: HOLD and SECURE are Moderate (a threat kept away from the classrooms); the others Severe.
#: Spanish event texts keep the SRP term in parentheses: staff are trained on those words.
SRP_PROFILES: Mapping[str, SrpProfile] = {
    "LOCKDOWN": SrpProfile(
        (ResponseType.SHELTER, ResponseType.AVOID),
        Urgency.IMMEDIATE,
        Severity.SEVERE,
        {LANGUAGE_EN: "Lockdown", LANGUAGE_ES: "Confinamiento (Lockdown)"},
    ),
    "SECURE": SrpProfile(
        (ResponseType.SHELTER,),
        Urgency.IMMEDIATE,
        Severity.MODERATE,
        {LANGUAGE_EN: "Secure", LANGUAGE_ES: "Asegurar (Secure)"},
    ),
    "HOLD": SrpProfile(
        (ResponseType.EXECUTE,),
        Urgency.IMMEDIATE,
        Severity.MODERATE,
        {LANGUAGE_EN: "Hold", LANGUAGE_ES: "Permanecer en el aula (Hold)"},
    ),
    "EVACUATE": SrpProfile(
        (ResponseType.EVACUATE,),
        Urgency.IMMEDIATE,
        Severity.SEVERE,
        {LANGUAGE_EN: "Evacuate", LANGUAGE_ES: "Evacuar (Evacuate)"},
    ),
    "SHELTER": SrpProfile(
        (ResponseType.SHELTER,),
        Urgency.IMMEDIATE,
        Severity.SEVERE,
        {LANGUAGE_EN: "Shelter", LANGUAGE_ES: "Refugio (Shelter)"},
    ),
    "ALL_CLEAR": SrpProfile(
        (ResponseType.ALL_CLEAR,),
        Urgency.PAST,
        Severity.MINOR,
        {LANGUAGE_EN: "All Clear", LANGUAGE_ES: "Fin de la alerta (All Clear)"},
    ),
}


@dataclass(frozen=True)
class CapText:
    """The words of one language block, from the notification templates."""

    language: str
    headline: str
    description: str
    instruction: str | None  # None: the description says it all (text written by a person)


def school_area(school: School, *, radius_km: float = SCHOOL_RADIUS_KM) -> CapArea:
    """The school as a CAP area: name and address; a circle when its coordinates are known."""
    description = f"{school.name}, {school.address}" if school.address else school.name
    circles: tuple[Circle, ...] = ()
    if school.latitude is not None and school.longitude is not None:
        circles = (Circle(school.latitude, school.longitude, radius_km),)
    return CapArea(description, circles=circles)


def srp_info(
    action: str,
    text: CapText,
    *,
    sender_name: str,
    area: CapArea,
    audience: str | None = None,
) -> CapInfo:
    """One ``info`` block for an SRP action in ``text.language`` (see :data:`SRP_PROFILES`)."""
    profile = SRP_PROFILES.get(action)
    if profile is None:
        raise CapError(f"info/event: no CAP mapping for SRP action {action[:32]!r}")
    return CapInfo(
        event=profile.events.get(text.language, profile.events[LANGUAGE_EN]),
        language=text.language,
        categories=(Category.SECURITY,),
        response_types=profile.response_types,
        urgency=profile.urgency,
        severity=profile.severity,
        certainty=Certainty.OBSERVED,
        audience=audience,
        event_codes=(NamedValue(SRP_VALUE_NAME, action),),
        sender_name=sender_name,
        headline=text.headline,
        description=text.description,
        instruction=text.instruction,
        areas=(area,),
    )


def srp_alert(
    *,
    identifier: str,
    hub_id: str,
    sent: datetime,
    action: str,
    exercise: bool,
    scope: Scope,
    texts: Sequence[CapText],
    area: CapArea,
    sender_name: str,
    msg_type: MsgType = MsgType.ALERT,
    references: Sequence[Reference] = (),
    incident_id: str | None = None,
    restriction: str = STAFF_RESTRICTION,
    audience: str | None = None,
) -> CapAlert:
    """A SafeHub notification as CAP: one info per text, drills as status Exercise.

    ``scope`` Restricted is for staff (``restriction`` says who may see it), Public for the
    public; Update and Cancel need ``references`` (see :func:`references_for`). ``audience``
    is each info's ``audience`` text.
    """
    return CapAlert(
        identifier=identifier,
        sender=hub_id,
        sent=sent,
        status=Status.EXERCISE if exercise else Status.ACTUAL,
        msg_type=msg_type,
        scope=scope,
        restriction=restriction if scope is Scope.RESTRICTED else None,
        note=EXERCISE_NOTE if exercise else None,
        references=tuple(references),
        incidents=(incident_id,) if incident_id else (),
        infos=tuple(
            srp_info(action, t, sender_name=sender_name, area=area, audience=audience)
            for t in texts
        ),
    )
