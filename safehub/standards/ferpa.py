"""The FERPA gate's rules (34 CFR Part 99): who may receive which education records, on which basis.

The one place where FERPA is decided. The records connector (``connectors/records/``) and the
cases service call :func:`decide` for every request and only ever act on its answer; nothing
here does I/O, reads a clock or publishes anything.

A :class:`RecordRequest` names the official making the disclosure (:class:`Requester`), the party
receiving it (:class:`Recipient`), the purpose, the legal :data:`Basis`, the student and the
fields wanted. :func:`decide` returns either a :class:`Grant` (the fields allowed, a time box and
the 99.32 record with the 99.33 redisclosure notice) or a :class:`Denial` (every reason, each
naming what is missing or wrong, and the denial's own record). Nothing is disclosed by default:

* no basis, no grant; a basis must fit the requester (``Policy.may_invoke``) and the recipient
  (``Policy.scopes``: fields per basis and recipient role; a role the policy does not name gets
  nothing);
* only fields the district's catalogue knows (``Policy.known_fields``) can be granted, never one a
  stricter state rule keeps in (``Policy.never_disclosed``, e.g. a tip line's contents);
* a field beyond the scope denies the whole request, unless the district chose
  ``partial_grants`` (then the rest is granted and the refused fields are listed, with the
  reason, in the grant's record);
* the requester must be a school official of the student's district. Another district's
  student is always refused, with one exception the district must opt in to
  (``court_order_crosses_districts``): a **court order** (not a subpoena, which need not come
  from a judge) that names this student and this district;
* consent (99.30) must be on file for this student and this recipient and not have expired;
  school-official access (99.31(a)(1)) goes to the requesting official only, for a student of
  one of their schools, with the legitimate educational interest stated;
* a health-or-safety emergency (99.31(a)(10), 99.36) must state the articulable and significant
  threat in words (at least ``Policy.min_threat_words`` words and ``min_threat_chars``
  characters) and name an open threat case or incident; the grant ends when that case or
  incident closes or at the policy's window, whichever is first (:func:`is_active`);
* a court order or subpoena (99.31(a)(9)) is recorded with its reference and issuer, must name
  the student, and the parent must have been notified first unless the order forbids it.

Every grant is time-boxed: ``expires_at`` is at most ``now + Policy.windows[basis]`` and never
after the consent's or order's own end. Every grant carries exactly one :class:`DisclosureRecord`
(the 99.32(a) record, 99.32(a)(5) for emergencies; kept for every basis, also where 99.32(d)
would not require it) and every denial exactly one :class:`DenialRecord`. :func:`record_fields`
shapes a grant's record as the ``RecordDisclosure`` event's fields (without its envelope).

Reasons and notices name rules, roles and field names, never a threat's words or a student id, so
they can be returned to a requester or logged.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any, ClassVar

from safehub.kernel.errors import ConfigError, SafeHubError

__all__ = [
    "LEGAL_BASIS",
    "Basis",
    "BasisKind",
    "Consent",
    "Decision",
    "Denial",
    "DenialCode",
    "DenialRecord",
    "DisclosureParty",
    "DisclosureRecord",
    "FerpaError",
    "Grant",
    "HealthOrSafetyEmergency",
    "LegalProcess",
    "Policy",
    "Reason",
    "Recipient",
    "RecordRequest",
    "Requester",
    "Role",
    "SchoolOfficial",
    "decide",
    "denial_fields",
    "is_active",
    "record_fields",
    "redisclosure_notice",
]

_ID_NAMESPACE = uuid.UUID("6f1c1d0e-5a3b-4c1e-9a57-9b1f0f3e7d21")


class FerpaError(SafeHubError):
    """The gate was used wrongly (e.g. a denial asked for a disclosure record)."""


class Role(StrEnum):
    """What a requester or recipient is, for the district's policy."""

    ADMINISTRATOR = "ADMINISTRATOR"
    COUNSELOR = "COUNSELOR"
    PSYCHOLOGIST = "PSYCHOLOGIST"
    TEACHER = "TEACHER"
    SRO = "SRO"
    LAW_ENFORCEMENT = "LAW_ENFORCEMENT"
    MENTAL_HEALTH_PARTNER = "MENTAL_HEALTH_PARTNER"
    PARENT = "PARENT"
    OTHER = "OTHER"


#: How a role reads in a disclosure record's ``parties[].role`` (why the party needed it).
ROLE_LABELS: Mapping[Role, str] = MappingProxyType(
    {
        Role.ADMINISTRATOR: "school administrator",
        Role.COUNSELOR: "school counselor",
        Role.PSYCHOLOGIST: "school psychologist",
        Role.TEACHER: "teacher",
        Role.SRO: "school resource officer (law enforcement)",
        Role.LAW_ENFORCEMENT: "law enforcement",
        Role.MENTAL_HEALTH_PARTNER: "mental-health partner (treating clinician)",
        Role.PARENT: "parent",
        Role.OTHER: "other party",
    }
)


class BasisKind(StrEnum):
    """The legal basis a disclosure rests on."""

    CONSENT = "CONSENT"
    SCHOOL_OFFICIAL = "SCHOOL_OFFICIAL"
    HEALTH_OR_SAFETY_EMERGENCY = "HEALTH_OR_SAFETY_EMERGENCY"
    COURT_ORDER = "COURT_ORDER"
    SUBPOENA = "SUBPOENA"


#: The citation written into every record, per basis.
LEGAL_BASIS: Mapping[BasisKind, str] = MappingProxyType(
    {
        BasisKind.CONSENT: "34 CFR 99.30 (prior written consent)",
        BasisKind.SCHOOL_OFFICIAL: (
            "34 CFR 99.31(a)(1)(i)(A) (school official with legitimate educational interest)"
        ),
        BasisKind.HEALTH_OR_SAFETY_EMERGENCY: (
            "34 CFR 99.31(a)(10), 99.36 (health or safety emergency)"
        ),
        BasisKind.COURT_ORDER: "34 CFR 99.31(a)(9)(i) (judicial order)",
        BasisKind.SUBPOENA: "34 CFR 99.31(a)(9)(i) (lawfully issued subpoena)",
    }
)


@dataclass(frozen=True)
class Requester:
    """The official asking the gate to disclose (recorded as ``disclosed_by``)."""

    id: str
    role: Role
    district_id: str
    school_ids: frozenset[str] = frozenset()
    #: A school official of ``district_id`` under its annual notification (99.7(a)(3)(iii)).
    school_official: bool = False
    name: str = ""
    organisation: str = ""


@dataclass(frozen=True)
class Recipient:
    """The party the records go to; the policy scopes fields by its ``role``."""

    id: str
    name: str
    organisation: str
    role: Role

    @classmethod
    def of(cls, requester: Requester) -> Recipient:
        """The requesting official as recipient (school-official access)."""
        return cls(requester.id, requester.name, requester.organisation, requester.role)


@dataclass(frozen=True)
class Consent:
    """Written consent on file (99.30): which records, to which parties, until when."""

    consent_id: str
    student_id: str
    fields: frozenset[str]
    #: Recipient ids the consent names (99.30(b)(3)).
    party_ids: frozenset[str]
    expires_at: datetime

    kind: ClassVar[BasisKind] = BasisKind.CONSENT

    @property
    def reference(self) -> str:
        return self.consent_id


@dataclass(frozen=True)
class SchoolOfficial:
    """Access by a school official with a legitimate educational interest (99.31(a)(1))."""

    legitimate_interest: str

    kind: ClassVar[BasisKind] = BasisKind.SCHOOL_OFFICIAL

    @property
    def reference(self) -> str:
        return ""


@dataclass(frozen=True)
class HealthOrSafetyEmergency:
    """The emergency exception (99.31(a)(10), 99.36), tied to an open case and/or incident."""

    #: The articulable and significant threat, in words (recorded: 99.32(a)(5)(i)).
    threat: str
    case_id: str | None = None
    incident_id: str | None = None

    kind: ClassVar[BasisKind] = BasisKind.HEALTH_OR_SAFETY_EMERGENCY

    @property
    def emergency_ids(self) -> tuple[str, ...]:
        """The case and incident ids the emergency is tied to (blank ones left out)."""
        return tuple(i for i in (self.case_id, self.incident_id) if i and i.strip())

    @property
    def reference(self) -> str:
        return " ".join(self.emergency_ids)


@dataclass(frozen=True)
class LegalProcess:
    """A court order or subpoena (99.31(a)(9)), recorded as such."""

    kind: BasisKind  # COURT_ORDER or SUBPOENA
    reference: str
    issuer: str
    #: The student the order or subpoena names.
    student_id: str
    #: The district it is addressed to.
    district_id: str
    fields: frozenset[str]
    #: The parent was notified in advance (99.31(a)(9)(ii)) ...
    parent_notified: bool = False
    #: ... or the order/subpoena forbids disclosing its existence (99.31(a)(9)(ii)(A)-(B)).
    notice_forbidden: bool = False
    expires_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.kind not in (BasisKind.COURT_ORDER, BasisKind.SUBPOENA):
            raise FerpaError("LegalProcess.kind must be COURT_ORDER or SUBPOENA")


Basis = Consent | SchoolOfficial | HealthOrSafetyEmergency | LegalProcess


@dataclass(frozen=True)
class RecordRequest:
    """One request to the gate."""

    requester: Requester
    recipient: Recipient
    purpose: str
    basis: Basis | None
    student_id: str
    student_district_id: str
    fields: frozenset[str]
    at: datetime
    #: The student's school, for school-official access limited to the official's schools.
    student_school_id: str | None = None
    #: The caller's id for this request (a retry gets the same record ids); derived if blank.
    request_id: str = ""


def _frozen_scopes(
    scopes: Mapping[BasisKind, Mapping[Role, Iterable[str]]],
) -> Mapping[BasisKind, Mapping[Role, frozenset[str]]]:
    return MappingProxyType(
        {
            BasisKind(b): MappingProxyType({Role(r): frozenset(f) for r, f in roles.items()})
            for b, roles in scopes.items()
        }
    )


@dataclass(frozen=True)
class Policy:
    """A district's FERPA policy, as data (see :meth:`from_mapping` for the file shape).

    ``scopes[basis][recipient role]`` is every field that role may receive under that basis
    (for ``SCHOOL_OFFICIAL``: the role's legitimate-interest fields); ``may_invoke[basis]`` the
    roles of officials who may disclose under it; ``windows[basis]`` the longest a grant lasts.
    A basis or role not named gets nothing.
    """

    district_id: str
    known_fields: frozenset[str]
    scopes: Mapping[BasisKind, Mapping[Role, frozenset[str]]]
    may_invoke: Mapping[BasisKind, frozenset[Role]]
    windows: Mapping[BasisKind, timedelta]
    #: Stricter state rules: fields that never leave under any basis.
    never_disclosed: frozenset[str] = frozenset()
    min_threat_chars: int = 40
    min_threat_words: int = 6
    #: Grant what is in scope and list the rest as withheld, instead of denying the request.
    partial_grants: bool = False
    #: School-official access only to students of the official's own schools.
    own_schools_only: bool = True
    #: A court order naming the student and this district may reach a requester elsewhere.
    court_order_crosses_districts: bool = False

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "known_fields", frozenset(self.known_fields))
        set_(self, "never_disclosed", frozenset(self.never_disclosed))
        set_(self, "scopes", _frozen_scopes(self.scopes))
        set_(
            self,
            "may_invoke",
            MappingProxyType(
                {BasisKind(b): frozenset(Role(r) for r in rs) for b, rs in self.may_invoke.items()}
            ),
        )
        set_(self, "windows", MappingProxyType({BasisKind(b): w for b, w in self.windows.items()}))
        if not self.district_id.strip():
            raise ConfigError("FERPA policy: district_id is empty")
        for basis, roles in self.scopes.items():
            for role, fields in roles.items():
                unknown = fields - self.known_fields
                if unknown:
                    raise ConfigError(
                        f"FERPA policy {self.district_id}: scopes.{basis}.{role} names fields "
                        f"not in known_fields: {', '.join(sorted(unknown))}"
                    )
        if self.min_threat_chars < 1 or self.min_threat_words < 1:
            raise ConfigError(f"FERPA policy {self.district_id}: threat minimums must be >= 1")

    def scope(self, basis: BasisKind, role: Role) -> frozenset[str]:
        """What ``role`` may receive under ``basis`` (empty when the policy says nothing)."""
        return self.scopes.get(basis, {}).get(role, frozenset())

    def legitimate_interest_fields(self, role: Role) -> frozenset[str]:
        """The fields an official of ``role`` has a legitimate educational interest in."""
        return self.scope(BasisKind.SCHOOL_OFFICIAL, role)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Policy:
        """A policy from its data shape (JSON/TOML), naming the key that is wrong.

        ``{"district": "d1", "known_fields": [...], "never_disclosed": [...],
        "scopes": {"HEALTH_OR_SAFETY_EMERGENCY": {"SRO": ["attendance", ...]}, ...},
        "may_invoke": {"HEALTH_OR_SAFETY_EMERGENCY": ["ADMINISTRATOR", ...], ...},
        "windows_s": {"HEALTH_OR_SAFETY_EMERGENCY": 86400, ...}, "min_threat_chars": 40,
        "min_threat_words": 6, "partial_grants": false, "own_schools_only": true,
        "court_order_crosses_districts": false}``
        """
        key = "district"
        try:
            district = str(data["district"])
            key = "known_fields"
            known = frozenset(str(f) for f in data["known_fields"])
            key = "never_disclosed"
            never = frozenset(str(f) for f in data.get("never_disclosed", ()))
            key = "scopes"
            scopes = {
                BasisKind(b): {Role(r): frozenset(str(f) for f in fs) for r, fs in roles.items()}
                for b, roles in data.get("scopes", {}).items()
            }
            key = "may_invoke"
            may = {
                BasisKind(b): frozenset(Role(r) for r in rs)
                for b, rs in data.get("may_invoke", {}).items()
            }
            key = "windows_s"
            windows = {
                BasisKind(b): timedelta(seconds=float(s))
                for b, s in data.get("windows_s", {}).items()
            }
            key = "flags"
            return cls(
                district_id=district,
                known_fields=known,
                scopes=scopes,
                may_invoke=may,
                windows=windows,
                never_disclosed=never,
                min_threat_chars=int(data.get("min_threat_chars", 40)),
                min_threat_words=int(data.get("min_threat_words", 6)),
                partial_grants=_flag(data, "partial_grants", False),
                own_schools_only=_flag(data, "own_schools_only", True),
                court_order_crosses_districts=_flag(data, "court_order_crosses_districts", False),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"FERPA policy: {key} is missing or invalid") from exc


def _flag(data: Mapping[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"FERPA policy: {key} must be true or false")
    return value


class DenialCode(StrEnum):
    """Why (part of) a request was refused."""

    NO_BASIS = "NO_BASIS"
    NO_PURPOSE = "NO_PURPOSE"
    NO_STUDENT = "NO_STUDENT"
    NO_FIELDS = "NO_FIELDS"
    REQUEST_AFTER_DECISION = "REQUEST_AFTER_DECISION"
    POLICY_OF_OTHER_DISTRICT = "POLICY_OF_OTHER_DISTRICT"
    OTHER_DISTRICT_STUDENT = "OTHER_DISTRICT_STUDENT"
    REQUESTER_NOT_SCHOOL_OFFICIAL = "REQUESTER_NOT_SCHOOL_OFFICIAL"
    BASIS_NOT_FOR_REQUESTER = "BASIS_NOT_FOR_REQUESTER"
    BASIS_NOT_FOR_RECIPIENT = "BASIS_NOT_FOR_RECIPIENT"
    NO_WINDOW = "NO_WINDOW"
    CONSENT_EXPIRED = "CONSENT_EXPIRED"
    CONSENT_OTHER_STUDENT = "CONSENT_OTHER_STUDENT"
    CONSENT_NOT_FOR_RECIPIENT = "CONSENT_NOT_FOR_RECIPIENT"
    NO_CONSENT_ID = "NO_CONSENT_ID"
    NO_LEGITIMATE_INTEREST = "NO_LEGITIMATE_INTEREST"
    RECIPIENT_NOT_REQUESTER = "RECIPIENT_NOT_REQUESTER"
    NOT_OWN_SCHOOL = "NOT_OWN_SCHOOL"
    NO_THREAT = "NO_THREAT"
    THREAT_NOT_ARTICULATED = "THREAT_NOT_ARTICULATED"
    NO_CASE_OR_INCIDENT = "NO_CASE_OR_INCIDENT"
    EMERGENCY_NOT_OPEN = "EMERGENCY_NOT_OPEN"
    NO_ORDER_REFERENCE = "NO_ORDER_REFERENCE"
    NO_ORDER_ISSUER = "NO_ORDER_ISSUER"
    ORDER_OTHER_STUDENT = "ORDER_OTHER_STUDENT"
    ORDER_OTHER_DISTRICT = "ORDER_OTHER_DISTRICT"
    ORDER_EXPIRED = "ORDER_EXPIRED"
    PARENT_NOT_NOTIFIED = "PARENT_NOT_NOTIFIED"
    FIELDS_UNKNOWN = "FIELDS_UNKNOWN"
    FIELDS_KEPT_BY_STATE_RULE = "FIELDS_KEPT_BY_STATE_RULE"
    FIELDS_NOT_IN_CONSENT = "FIELDS_NOT_IN_CONSENT"
    FIELDS_NOT_IN_ORDER = "FIELDS_NOT_IN_ORDER"
    FIELDS_BEYOND_SCOPE = "FIELDS_BEYOND_SCOPE"


@dataclass(frozen=True)
class Reason:
    """One thing missing or wrong; ``fields`` are the fields it concerns, if any."""

    code: DenialCode
    message: str
    fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class DisclosureParty:
    """A recipient as the 99.32 record names it (``RecordDisclosure.parties[]``)."""

    name: str
    organisation: str
    role: str


@dataclass(frozen=True)
class DisclosureRecord:
    """The 99.32(a) record of one disclosure, kept with the student's record (99.32(a)(5))."""

    disclosure_id: str
    student_id: str
    student_district_id: str
    basis: BasisKind
    legal_basis: str
    #: The consent id, the case/incident ids, or the order's reference.
    basis_reference: str
    #: The articulable and significant threat (emergencies), else "".
    threat: str
    purpose: str
    parties: tuple[DisclosureParty, ...]
    records_disclosed: tuple[str, ...]
    disclosed_by: str
    disclosed_at: datetime
    expires_at: datetime
    redisclosure_notice: str
    #: Fields asked for and refused in a partial grant, with the reason.
    withheld: tuple[Reason, ...] = ()
    #: False only where an order forbids telling the parent (99.31(a)(9)(ii)).
    parent_may_inspect: bool = True


@dataclass(frozen=True)
class DenialRecord:
    """The record of a refused request (denials are recorded too)."""

    denial_id: str
    student_id: str
    student_district_id: str
    requester_id: str
    requester_role: Role
    recipient: DisclosureParty
    basis: BasisKind | None
    basis_reference: str
    purpose: str
    fields_requested: tuple[str, ...]
    reasons: tuple[Reason, ...]
    decided_at: datetime


@dataclass(frozen=True)
class Grant:
    """Disclose ``fields`` to the recipient until ``expires_at`` (and, for an emergency, while
    its case or incident is open: :func:`is_active`)."""

    request: RecordRequest
    fields: frozenset[str]
    expires_at: datetime
    disclosure_record: DisclosureRecord

    @property
    def records(self) -> tuple[DisclosureRecord]:
        return (self.disclosure_record,)


@dataclass(frozen=True)
class Denial:
    """Nothing disclosed; ``reasons`` name everything missing or wrong."""

    request: RecordRequest
    reasons: tuple[Reason, ...]
    denial_record: DenialRecord = field(repr=False)

    @property
    def records(self) -> tuple[DenialRecord]:
        return (self.denial_record,)

    @property
    def codes(self) -> frozenset[DenialCode]:
        return frozenset(r.code for r in self.reasons)


Decision = Grant | Denial


def redisclosure_notice(recipient: Recipient, basis: BasisKind, expires_at: datetime) -> str:
    """The 99.33(a) notice sent with the records (no student data in it)."""
    return (
        f"NOTICE under 34 CFR 99.33: the education records sent with this notice are disclosed "
        f"to {recipient.name or recipient.id} ({recipient.organisation or 'no organisation'}) "
        f"under {LEGAL_BASIS[basis]} on the condition that you do not disclose them, or any "
        f"information from them, to any other party without the prior written consent of the "
        f"parent or eligible student, except as 34 CFR 99.33(b) allows, and that you use them "
        f"only for the purpose for which they were disclosed. Access ends "
        f"{expires_at.isoformat()} or earlier if the basis ends."
    )


def _request_key(request: RecordRequest) -> str:
    if request.request_id.strip():
        return request.request_id
    basis = request.basis
    parts = [
        request.requester.id,
        request.recipient.id,
        request.student_id,
        request.student_district_id,
        request.purpose,
        request.at.isoformat(),
        ",".join(sorted(request.fields)),
        basis.kind if basis is not None else "",
        basis.reference if basis is not None else "",
    ]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _party(recipient: Recipient) -> DisclosureParty:
    return DisclosureParty(
        name=recipient.name or recipient.id,
        organisation=recipient.organisation,
        role=ROLE_LABELS[recipient.role],
    )


def _blank(text: str | None) -> bool:
    return text is None or not text.strip()


def _names(fields: Iterable[str]) -> str:
    return ", ".join(sorted(fields))


class _Reasons:
    def __init__(self) -> None:
        self.items: list[Reason] = []

    def add(self, code: DenialCode, message: str, fields: Iterable[str] = ()) -> None:
        self.items.append(Reason(code, message, tuple(sorted(fields))))


def decide(
    request: RecordRequest,
    policy: Policy,
    *,
    now: datetime,
    still_open: Callable[[str], bool] | None = None,
) -> Decision:
    """Grant or deny ``request`` under the student's district ``policy`` at ``now``.

    ``still_open(case_or_incident_id)`` says whether a threat case or incident is open; an
    emergency request is refused without it. Pure: the same inputs give the same decision and
    the same record ids.
    """
    reasons = _Reasons()
    basis = request.basis
    _check_request(request, policy, now, reasons)
    _check_requester(request, policy, reasons)
    window: timedelta | None = None
    if basis is not None:
        window = _check_fit(request, basis, policy, reasons)
        _check_basis(request, basis, policy, now=now, still_open=still_open, reasons=reasons)

    # Fields: known, not kept in by a state rule, within the basis and the role's scope.
    allowed, withheld = _fields(request, policy)
    partial = policy.partial_grants and bool(allowed) and not reasons.items
    if not partial:
        reasons.items.extend(withheld)
    if reasons.items or basis is None or window is None or not allowed:
        return _deny(request, reasons.items, now)

    expires_at = now + window
    if isinstance(basis, Consent):
        expires_at = min(expires_at, basis.expires_at)
    if isinstance(basis, LegalProcess) and basis.expires_at is not None:
        expires_at = min(expires_at, basis.expires_at)
    record = DisclosureRecord(
        disclosure_id=str(uuid.uuid5(_ID_NAMESPACE, "disclosure:" + _request_key(request))),
        student_id=request.student_id,
        student_district_id=request.student_district_id,
        basis=basis.kind,
        legal_basis=LEGAL_BASIS[basis.kind],
        basis_reference=basis.reference,
        threat=basis.threat.strip() if isinstance(basis, HealthOrSafetyEmergency) else "",
        purpose=request.purpose.strip(),
        parties=(_party(request.recipient),),
        records_disclosed=tuple(sorted(allowed)),
        disclosed_by=request.requester.id,
        disclosed_at=now,
        expires_at=expires_at,
        redisclosure_notice=redisclosure_notice(request.recipient, basis.kind, expires_at),
        withheld=tuple(withheld) if partial else (),
        parent_may_inspect=not (isinstance(basis, LegalProcess) and basis.notice_forbidden),
    )
    return Grant(request=request, fields=allowed, expires_at=expires_at, disclosure_record=record)


def _check_request(
    request: RecordRequest, policy: Policy, now: datetime, reasons: _Reasons
) -> None:
    """The request itself: a basis, a purpose, a student, some fields, the right policy."""
    if request.basis is None:
        reasons.add(DenialCode.NO_BASIS, "no legal basis given: nothing is disclosed by default")
    if _blank(request.purpose):
        reasons.add(DenialCode.NO_PURPOSE, "no purpose stated")
    if _blank(request.student_id):
        reasons.add(DenialCode.NO_STUDENT, "no student named")
    if not request.fields:
        reasons.add(DenialCode.NO_FIELDS, "no records named")
    if request.at > now:
        reasons.add(DenialCode.REQUEST_AFTER_DECISION, "the request is dated after the decision")
    if policy.district_id != request.student_district_id:
        reasons.add(
            DenialCode.POLICY_OF_OTHER_DISTRICT,
            "the policy given is not the student's district's policy",
        )


def _check_requester(request: RecordRequest, policy: Policy, reasons: _Reasons) -> None:
    """Tenancy: the student's district's officials disclose its records."""
    requester = request.requester
    if requester.district_id != request.student_district_id and not _court_order_reaches(
        request, policy
    ):
        reasons.add(
            DenialCode.OTHER_DISTRICT_STUDENT,
            "the student belongs to another district than the requester's"
            + (
                "; only a court order naming the student and the district reaches across"
                if policy.court_order_crosses_districts
                else ""
            ),
        )
    if not requester.school_official:
        reasons.add(
            DenialCode.REQUESTER_NOT_SCHOOL_OFFICIAL,
            f"requester ({requester.role}) is not a school official: only the district's "
            "officials disclose (parents inspect through the parent's view, 99.10)",
        )


def _check_fit(
    request: RecordRequest, basis: Basis, policy: Policy, reasons: _Reasons
) -> timedelta | None:
    """The basis fits the requester and the recipient, and has a window; returns the window."""
    if request.requester.role not in policy.may_invoke.get(basis.kind, frozenset()):
        reasons.add(
            DenialCode.BASIS_NOT_FOR_REQUESTER,
            f"the district's policy does not let a {request.requester.role} disclose under "
            f"{basis.kind}",
        )
    if not policy.scope(basis.kind, request.recipient.role):
        reasons.add(
            DenialCode.BASIS_NOT_FOR_RECIPIENT,
            f"the district's policy gives a {request.recipient.role} nothing under {basis.kind}",
        )
    window = policy.windows.get(basis.kind)
    if window is None or window <= timedelta(0):
        reasons.add(DenialCode.NO_WINDOW, f"the policy sets no time window for {basis.kind}")
        return None
    return window


def _court_order_reaches(request: RecordRequest, policy: Policy) -> bool:
    basis = request.basis
    return (
        policy.court_order_crosses_districts
        and isinstance(basis, LegalProcess)
        and basis.kind is BasisKind.COURT_ORDER
        and basis.student_id == request.student_id
        and basis.district_id == request.student_district_id
    )


def _check_basis(
    request: RecordRequest,
    basis: Basis,
    policy: Policy,
    *,
    now: datetime,
    still_open: Callable[[str], bool] | None,
    reasons: _Reasons,
) -> None:
    if isinstance(basis, Consent):
        _check_consent(request, basis, now, reasons)
    elif isinstance(basis, SchoolOfficial):
        _check_school_official(request, basis, policy, reasons)
    elif isinstance(basis, HealthOrSafetyEmergency):
        _check_emergency(basis, policy, still_open, reasons)
    else:
        _check_legal_process(request, basis, now, reasons)


def _check_consent(
    request: RecordRequest, basis: Consent, now: datetime, reasons: _Reasons
) -> None:
    if _blank(basis.consent_id):
        reasons.add(DenialCode.NO_CONSENT_ID, "consent names no consent on file")
    if basis.student_id != request.student_id:
        reasons.add(DenialCode.CONSENT_OTHER_STUDENT, "the consent is for another student")
    if request.recipient.id not in basis.party_ids:
        reasons.add(
            DenialCode.CONSENT_NOT_FOR_RECIPIENT, "the consent does not name this recipient"
        )
    if basis.expires_at <= now:
        reasons.add(DenialCode.CONSENT_EXPIRED, "the consent has expired")


def _check_school_official(
    request: RecordRequest, basis: SchoolOfficial, policy: Policy, reasons: _Reasons
) -> None:
    if _blank(basis.legitimate_interest):
        reasons.add(DenialCode.NO_LEGITIMATE_INTEREST, "no legitimate educational interest stated")
    if request.recipient.id != request.requester.id:
        reasons.add(
            DenialCode.RECIPIENT_NOT_REQUESTER,
            "school-official access goes to the requesting official only",
        )
    if policy.own_schools_only and (
        request.student_school_id is None
        or request.student_school_id not in request.requester.school_ids
    ):
        reasons.add(
            DenialCode.NOT_OWN_SCHOOL,
            "the student is not (or not known to be) at one of the official's schools",
        )


def _check_emergency(
    basis: HealthOrSafetyEmergency,
    policy: Policy,
    still_open: Callable[[str], bool] | None,
    reasons: _Reasons,
) -> None:
    threat = " ".join(basis.threat.split())
    if not threat:
        reasons.add(DenialCode.NO_THREAT, "no articulable and significant threat stated (99.36)")
    elif len(threat) < policy.min_threat_chars or len(threat.split()) < policy.min_threat_words:
        reasons.add(
            DenialCode.THREAT_NOT_ARTICULATED,
            f"the threat must be stated in words: at least {policy.min_threat_words} words "
            f"and {policy.min_threat_chars} characters (99.36)",
        )
    ids = basis.emergency_ids
    if not ids:
        reasons.add(
            DenialCode.NO_CASE_OR_INCIDENT, "the emergency names no threat case or incident"
        )
    elif still_open is None or not all(still_open(i) for i in ids):
        reasons.add(
            DenialCode.EMERGENCY_NOT_OPEN,
            "the emergency's case or incident is not open (or cannot be checked)",
        )


def _check_legal_process(
    request: RecordRequest, basis: LegalProcess, now: datetime, reasons: _Reasons
) -> None:
    what = "court order" if basis.kind is BasisKind.COURT_ORDER else "subpoena"
    if _blank(basis.reference):
        reasons.add(DenialCode.NO_ORDER_REFERENCE, f"the {what} has no reference")
    if _blank(basis.issuer):
        reasons.add(DenialCode.NO_ORDER_ISSUER, f"the {what} names no issuer")
    if basis.student_id != request.student_id:
        reasons.add(DenialCode.ORDER_OTHER_STUDENT, f"the {what} does not name this student")
    if basis.district_id != request.student_district_id:
        reasons.add(
            DenialCode.ORDER_OTHER_DISTRICT,
            f"the {what} is not addressed to the student's district",
        )
    if basis.expires_at is not None and basis.expires_at <= now:
        reasons.add(DenialCode.ORDER_EXPIRED, f"the {what} is no longer in force")
    if not (basis.parent_notified or basis.notice_forbidden):
        reasons.add(
            DenialCode.PARENT_NOT_NOTIFIED,
            "the parent must be notified before compliance unless the order forbids it "
            "(99.31(a)(9)(ii))",
        )


def _fields(request: RecordRequest, policy: Policy) -> tuple[frozenset[str], list[Reason]]:
    basis = request.basis
    asked = frozenset(request.fields)
    unknown = asked - policy.known_fields
    kept = (asked - unknown) & policy.never_disclosed
    rest = asked - unknown - kept
    not_in_basis: frozenset[str] = frozenset()
    basis_code = DenialCode.FIELDS_BEYOND_SCOPE
    if isinstance(basis, Consent):
        not_in_basis, basis_code = rest - basis.fields, DenialCode.FIELDS_NOT_IN_CONSENT
    elif isinstance(basis, LegalProcess):
        not_in_basis, basis_code = rest - basis.fields, DenialCode.FIELDS_NOT_IN_ORDER
    rest -= not_in_basis
    scope = policy.scope(basis.kind, request.recipient.role) if basis else frozenset()
    beyond = rest - scope
    allowed = rest & scope
    out = _Reasons()
    if unknown:
        out.add(DenialCode.FIELDS_UNKNOWN, f"unknown fields: {_names(unknown)}", unknown)
    if kept:
        out.add(
            DenialCode.FIELDS_KEPT_BY_STATE_RULE,
            f"fields a state rule keeps in: {_names(kept)}",
            kept,
        )
    if not_in_basis:
        out.add(
            basis_code, f"fields the basis does not cover: {_names(not_in_basis)}", not_in_basis
        )
    if beyond and basis is not None:
        out.add(
            DenialCode.FIELDS_BEYOND_SCOPE,
            f"fields beyond a {request.recipient.role}'s scope under {basis.kind}: "
            f"{_names(beyond)}",
            beyond,
        )
    return allowed, out.items


def _deny(request: RecordRequest, reasons: list[Reason], now: datetime) -> Denial:
    if not reasons:  # defensive: a denial always says why
        reasons = [Reason(DenialCode.NO_FIELDS, "nothing within scope to disclose")]
    basis = request.basis
    record = DenialRecord(
        denial_id=str(uuid.uuid5(_ID_NAMESPACE, "denial:" + _request_key(request))),
        student_id=request.student_id,
        student_district_id=request.student_district_id,
        requester_id=request.requester.id,
        requester_role=request.requester.role,
        recipient=_party(request.recipient),
        basis=basis.kind if basis is not None else None,
        basis_reference=basis.reference if basis is not None else "",
        purpose=request.purpose.strip(),
        fields_requested=tuple(sorted(request.fields)),
        reasons=tuple(reasons),
        decided_at=now,
    )
    return Denial(request=request, reasons=tuple(reasons), denial_record=record)


def is_active(grant: Grant, *, now: datetime, still_open: Callable[[str], bool]) -> bool:
    """Whether ``grant`` may still be acted on: before ``expires_at`` and, for an emergency,
    while every case or incident it is tied to is open (the emergency ends when they do)."""
    if now >= grant.expires_at:
        return False
    basis = grant.request.basis
    if isinstance(basis, HealthOrSafetyEmergency):
        return all(still_open(i) for i in basis.emergency_ids)
    return True


def record_fields(decision: Decision) -> dict[str, Any]:
    """A grant's 99.32 record as the ``RecordDisclosure`` event's fields (envelope aside)."""
    if not isinstance(decision, Grant):
        raise FerpaError("a denial discloses nothing: record it with denial_fields()")
    record = decision.disclosure_record
    return {
        "disclosure_id": record.disclosure_id,
        "student_id": record.student_id,
        "legal_basis": record.legal_basis,
        "threat": record.threat,
        "parties": [
            {"name": p.name, "organisation": p.organisation, "role": p.role} for p in record.parties
        ],
        "records_disclosed": list(record.records_disclosed),
        "disclosed_by": record.disclosed_by,
        "disclosed_at": record.disclosed_at,
        "redisclosure_notice": record.redisclosure_notice,
    }


def denial_fields(decision: Decision) -> dict[str, Any]:
    """A denial's record as plain data for the connector's store (no event contract yet)."""
    if not isinstance(decision, Denial):
        raise FerpaError("a grant is recorded with record_fields()")
    record = decision.denial_record
    return {
        "denial_id": record.denial_id,
        "student_id": record.student_id,
        "student_district_id": record.student_district_id,
        "requester_id": record.requester_id,
        "requester_role": str(record.requester_role),
        "recipient": {
            "name": record.recipient.name,
            "organisation": record.recipient.organisation,
            "role": record.recipient.role,
        },
        "basis": str(record.basis) if record.basis is not None else None,
        "basis_reference": record.basis_reference,
        "purpose": record.purpose,
        "fields_requested": list(record.fields_requested),
        "reasons": [
            {"code": str(r.code), "message": r.message, "fields": list(r.fields)}
            for r in record.reasons
        ],
        "decided_at": record.decided_at,
    }
