"""The FERPA gate's rules: properties over generated requests, and one example per denial.

Scenarios start lawful (a request the policy must grant) and then take up to three of the
mutations below, each of which breaks one rule or stretches one edge (partial grants, a court
order across districts, a case that has closed), so the properties are checked on both sides
of every boundary, not only on requests that fail at the first check.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safehub.contracts.registry import event_schemas
from safehub.kernel.errors import ConfigError
from safehub.standards.ferpa import (
    LEGAL_BASIS,
    Basis,
    BasisKind,
    Consent,
    Decision,
    Denial,
    DenialCode,
    DenialRecord,
    DisclosureRecord,
    FerpaError,
    Grant,
    HealthOrSafetyEmergency,
    LegalProcess,
    Policy,
    Recipient,
    RecordRequest,
    Requester,
    Role,
    SchoolOfficial,
    decide,
    denial_fields,
    is_active,
    record_fields,
)

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

NOW = datetime(2026, 12, 4, 15, 0, tzinfo=UTC)
HOME, OTHER = "d-north", "d-south"
STUDENT, SCHOOL = "stu-1001", "sch-east"
KNOWN = (
    "name",
    "date_of_birth",
    "attendance",
    "grades",
    "discipline",
    "iep",
    "health",
    "counseling_notes",
    "threat_assessment",
    "tip_contents",
)
UNKNOWN = ("ssn", "photo_archive")
THREAT = (
    "Student posted a photo of a handgun with the caption that Friday's assembly "
    "will be the last one; a classmate reports he has access to his father's gun."
)
CASES = ("case-7", "case-8")
INCIDENTS = ("inc-3",)


@dataclass(frozen=True)
class Scenario:
    request: RecordRequest
    policy: Policy
    open_ids: frozenset[str]
    pass_still_open: bool = True
    mutations: tuple[str, ...] = ()

    def still_open(self) -> Callable[[str], bool] | None:
        return (lambda i: i in self.open_ids) if self.pass_still_open else None

    def decide(self) -> Decision:
        return decide(self.request, self.policy, now=NOW, still_open=self.still_open())


# ---------------------------------------------------------------------------------------
# Strategies


KINDS = st.sampled_from(list(BasisKind))
ROLES = st.sampled_from(list(Role))
FIELD_SETS = st.frozensets(st.sampled_from(KNOWN))
FEW_FIELDS = st.frozensets(st.sampled_from(KNOWN), max_size=3)
SCOPES = st.dictionaries(KINDS, st.dictionaries(ROLES, FIELD_SETS, max_size=4), max_size=3)
INVOKERS = st.dictionaries(KINDS, st.frozensets(ROLES), max_size=3)
CONSENT_FIELDS = st.frozensets(st.sampled_from(KNOWN + UNKNOWN))
WINDOWS = st.dictionaries(KINDS, st.integers(1, 96), max_size=3)


@st.composite
def lawful(draw: st.DrawFn, kind: BasisKind | None = None) -> Scenario:
    """A request the generated policy must grant in full."""
    kind = kind or draw(KINDS)
    asked = draw(st.frozensets(st.sampled_from(KNOWN), min_size=1))
    known = asked | draw(FIELD_SETS)
    never = draw(FIELD_SETS) & (known - asked)
    requester_role = draw(ROLES)
    requester = Requester(
        id="usr-" + draw(st.sampled_from(("a", "b", "c"))),
        role=requester_role,
        district_id=HOME,
        school_ids=frozenset({SCHOOL}) | ({"sch-west"} if draw(st.booleans()) else set()),
        school_official=True,
        name="Pat Official",
        organisation="North USD",
    )
    if kind is BasisKind.SCHOOL_OFFICIAL:
        recipient = Recipient.of(requester)
    else:
        recipient = Recipient(
            id="rcp-" + draw(st.sampled_from(("x", "y"))),
            name="Recipient",
            organisation="County",
            role=draw(ROLES),
        )
    scope = asked | (draw(FEW_FIELDS) & known)
    scopes: dict[BasisKind, dict[Role, frozenset[str]]] = {
        b: {r: f & known for r, f in roles.items()} for b, roles in draw(SCOPES).items()
    }
    scopes.setdefault(kind, {})[recipient.role] = scope
    may = dict(draw(INVOKERS))
    may[kind] = may.get(kind, frozenset()) | {requester_role}
    windows = {b: timedelta(hours=h) for b, h in draw(WINDOWS).items()}
    windows[kind] = timedelta(hours=draw(st.integers(1, 96)))
    policy = Policy(
        district_id=HOME,
        known_fields=known,
        scopes=scopes,
        may_invoke=may,
        windows=windows,
        never_disclosed=frozenset(never),
        min_threat_chars=40,
        min_threat_words=6,
        partial_grants=draw(st.booleans()),
        own_schools_only=draw(st.booleans()),
        court_order_crosses_districts=draw(st.booleans()),
    )
    open_ids: frozenset[str] = frozenset()
    later = NOW + timedelta(minutes=draw(st.integers(1, 60 * 24 * 30)))
    basis: Basis
    if kind is BasisKind.CONSENT:
        basis = Consent(
            consent_id="cns-1",
            student_id=STUDENT,
            fields=asked | draw(CONSENT_FIELDS),
            party_ids=frozenset({recipient.id}),
            expires_at=later,
        )
    elif kind is BasisKind.SCHOOL_OFFICIAL:
        basis = SchoolOfficial("reviewing attendance for the student's support plan")
    elif kind is BasisKind.HEALTH_OR_SAFETY_EMERGENCY:
        case_id = draw(st.sampled_from((None, *CASES)))
        incident_id = draw(st.sampled_from(INCIDENTS)) if case_id is None else None
        basis = HealthOrSafetyEmergency(THREAT, case_id=case_id, incident_id=incident_id)
        open_ids = frozenset(basis.emergency_ids) | draw(st.frozensets(st.sampled_from(CASES)))
    else:
        notified = draw(st.booleans())
        basis = LegalProcess(
            kind=kind,
            reference="CV-2026-0042",
            issuer="Superior Court, North County",
            student_id=STUDENT,
            district_id=HOME,
            fields=asked | draw(FIELD_SETS),
            parent_notified=notified,
            notice_forbidden=not notified,
            expires_at=draw(st.sampled_from((None, later))),
        )
    request = RecordRequest(
        requester=requester,
        recipient=recipient,
        purpose="threat assessment safety plan",
        basis=basis,
        student_id=STUDENT,
        student_district_id=HOME,
        fields=asked,
        at=NOW - timedelta(minutes=draw(st.integers(0, 600))),
        student_school_id=SCHOOL,
        request_id=draw(st.sampled_from(("", "req-1"))),
    )
    return Scenario(request=request, policy=policy, open_ids=open_ids)


def _req(s: Scenario, **changes: Any) -> Scenario:
    return replace(s, request=replace(s.request, **changes))


def _pol(s: Scenario, **changes: Any) -> Scenario:
    return replace(s, policy=replace(s.policy, **changes))


def _basis(s: Scenario, **changes: Any) -> Scenario:
    basis = s.request.basis
    if basis is None or not any(f.name in changes for f in dataclasses.fields(basis)):
        return s
    return _req(s, basis=replace(basis, **{k: v for k, v in changes.items() if hasattr(basis, k)}))


def _without(mapping: Any, key: Any) -> dict[Any, Any]:
    return {k: v for k, v in mapping.items() if k != key}


def _kind(s: Scenario) -> BasisKind | None:
    return s.request.basis.kind if s.request.basis else None


MUTATIONS: dict[str, Callable[[Scenario], Scenario]] = {
    "no_basis": lambda s: _req(s, basis=None),
    "no_purpose": lambda s: _req(s, purpose="  "),
    "no_fields": lambda s: _req(s, fields=frozenset()),
    "future_request": lambda s: _req(s, at=NOW + timedelta(minutes=5)),
    "requester_elsewhere": lambda s: _req(
        s, requester=replace(s.request.requester, district_id=OTHER)
    ),
    "student_elsewhere": lambda s: _req(s, student_district_id=OTHER),
    "court_order_crosses": lambda s: _pol(s, court_order_crosses_districts=True),
    "not_official": lambda s: _req(
        s, requester=replace(s.request.requester, school_official=False)
    ),
    "parent_requester": lambda s: _req(
        s, requester=replace(s.request.requester, role=Role.PARENT, school_official=False)
    ),
    "role_may_not_invoke": lambda s: _pol(
        s,
        may_invoke={b: r - {s.request.requester.role} for b, r in s.policy.may_invoke.items()},
    ),
    "recipient_role_changed": lambda s: _req(
        s, recipient=replace(s.request.recipient, role=Role.OTHER)
    ),
    "no_window": lambda s: _pol(s, windows=_without(s.policy.windows, _kind(s))),
    "unknown_field": lambda s: _req(s, fields=s.request.fields | {"ssn"}),
    "state_rule_field": lambda s: _pol(
        s, never_disclosed=s.policy.never_disclosed | {min(s.request.fields, default="name")}
    ),
    "beyond_scope": lambda s: _req(s, fields=s.request.fields | set(KNOWN)),
    "partial_grants": lambda s: _pol(s, partial_grants=not s.policy.partial_grants),
    "case_closed": lambda s: replace(s, open_ids=frozenset()),
    "no_still_open": lambda s: replace(s, pass_still_open=False),
    "short_threat": lambda s: _basis(s, threat="he is dangerous"),
    "no_threat": lambda s: _basis(s, threat=""),
    "no_case": lambda s: _basis(s, case_id=None, incident_id=None),
    "expired": lambda s: _basis(s, expires_at=NOW - timedelta(seconds=1)),
    "consent_other_party": lambda s: _basis(s, party_ids=frozenset({"rcp-nobody"})),
    "basis_other_student": lambda s: _basis(s, student_id="stu-9999"),
    "basis_fields_narrow": lambda s: _basis(s, fields=frozenset({"name"})),
    "no_parent_notice": lambda s: _basis(s, parent_notified=False, notice_forbidden=False),
    "subpoena_not_order": lambda s: _basis(s, kind=BasisKind.SUBPOENA),
    "order_not_subpoena": lambda s: _basis(s, kind=BasisKind.COURT_ORDER),
    "other_school": lambda s: _req(s, student_school_id="sch-elsewhere"),
    "no_interest": lambda s: _basis(s, legitimate_interest=""),
    "recipient_not_requester": lambda s: _req(
        s, recipient=replace(s.request.recipient, id="rcp-else")
    ),
}


@st.composite
def scenarios(
    draw: st.DrawFn, kind: BasisKind | None = None, mutation: str | None = None
) -> Scenario:
    base = draw(lawful(kind))
    if mutation is not None:
        return replace(MUTATIONS[mutation](base), mutations=(mutation,))
    # The two edges that matter most get half the examples each, not 1 in 30; they come
    # first, so a later mutation (e.g. "no_fields") still has its effect.
    edges = [n for n in ("requester_elsewhere", "beyond_scope") if draw(st.booleans())]
    more = draw(st.lists(st.sampled_from(sorted(MUTATIONS)), max_size=3, unique=True))
    names = edges + [n for n in more if n not in edges]
    s = base
    for name in names:
        s = MUTATIONS[name](s)
    return replace(s, mutations=tuple(names))


# ---------------------------------------------------------------------------------------
# Properties


_DISCLOSURE = event_schemas()["safehub.events.RecordDisclosure"]
_DISCLOSURE_BODY = fastavro.parse_schema(
    {**_DISCLOSURE, "fields": [f for f in _DISCLOSURE["fields"] if f["name"] != "envelope"]}
)


def _normal(text: str) -> str:
    return " ".join(text.split())


def check_invariants(s: Scenario, decision: Decision) -> None:
    request, policy = s.request, s.policy
    assert decision.request == request
    if isinstance(decision, Denial):
        # Every denial: at least one reason, and exactly one denial record carrying them.
        assert decision.reasons
        assert len(decision.records) == 1
        assert isinstance(decision.records[0], DenialRecord)
        assert decision.denial_record.reasons == decision.reasons
        assert decision.denial_record.decided_at == NOW
        with pytest.raises(FerpaError):
            record_fields(decision)
        for reason in decision.reasons:  # reasons never echo the threat or the student
            assert STUDENT not in reason.message
            assert "handgun" not in reason.message
        return

    assert isinstance(decision, Grant)
    basis = request.basis
    # No grant without a recorded basis, ever.
    assert basis is not None
    record = decision.disclosure_record
    assert len(decision.records) == 1
    assert isinstance(decision.records[0], DisclosureRecord)
    assert record.basis is basis.kind
    assert record.legal_basis == LEGAL_BASIS[basis.kind]
    assert record.student_id == request.student_id == STUDENT
    assert record.disclosed_by == request.requester.id
    assert record.disclosed_at == NOW
    assert record.parties and record.parties[0].name
    assert "99.33" in record.redisclosure_notice
    assert request.requester.school_official
    assert request.requester.role in policy.may_invoke[basis.kind]
    assert request.purpose.strip()
    assert request.at <= NOW

    # No field outside the request, the policy's scope for this role and basis, the catalogue,
    # or a state rule; none outside a consent's or an order's own list.
    fields = decision.fields
    assert fields
    assert fields <= request.fields
    assert fields <= policy.scope(basis.kind, request.recipient.role)
    assert fields <= policy.known_fields
    assert not fields & policy.never_disclosed
    assert not fields & set(UNKNOWN)
    if isinstance(basis, (Consent, LegalProcess)):
        assert fields <= basis.fields
    assert record.records_disclosed == tuple(sorted(fields))
    if not policy.partial_grants:
        assert fields == request.fields
        assert record.withheld == ()
    else:
        withheld = {f for r in record.withheld for f in r.fields}
        assert withheld == request.fields - fields

    # No grant outliving its window.
    assert NOW < decision.expires_at <= NOW + policy.windows[basis.kind]
    assert record.expires_at == decision.expires_at
    assert not is_active(decision, now=decision.expires_at, still_open=lambda _: True)
    if isinstance(basis, Consent):
        assert decision.expires_at <= basis.expires_at
        assert basis.student_id == request.student_id
        assert request.recipient.id in basis.party_ids
    if isinstance(basis, LegalProcess):
        assert basis.student_id == request.student_id
        assert basis.parent_notified or basis.notice_forbidden
        assert record.parent_may_inspect is not basis.notice_forbidden
        if basis.expires_at is not None:
            assert decision.expires_at <= basis.expires_at
    if isinstance(basis, HealthOrSafetyEmergency):
        # The emergency was stated and open; the grant ends when its case/incident closes.
        ids = basis.emergency_ids
        assert ids and all(i in s.open_ids for i in ids)
        assert s.pass_still_open
        assert len(_normal(record.threat)) >= policy.min_threat_chars
        assert _normal(record.threat) == _normal(basis.threat)
        assert is_active(decision, now=NOW, still_open=lambda i: i in s.open_ids)
        assert not is_active(decision, now=NOW, still_open=lambda _: False)
    else:
        assert record.threat == ""
    if isinstance(basis, SchoolOfficial):
        assert request.recipient.id == request.requester.id
        assert basis.legitimate_interest.strip()

    # Another district's student never goes out without a court order naming it.
    if request.requester.district_id != request.student_district_id:
        assert isinstance(basis, LegalProcess)
        assert basis.kind is BasisKind.COURT_ORDER
        assert basis.district_id == request.student_district_id
        assert policy.court_order_crosses_districts
    assert policy.district_id == request.student_district_id

    # The 99.32 record fits the RecordDisclosure contract.
    assert fastavro.validate(record_fields(decision), _DISCLOSURE_BODY, raise_errors=True)


@pytest.mark.parametrize("kind", list(BasisKind))
@settings(PROPERTY, max_examples=40)
@given(data=st.data())
def test_the_lawful_path_is_granted_in_full(kind: BasisKind, data: st.DataObject) -> None:
    s = data.draw(lawful(kind))
    decision = s.decide()
    assert isinstance(decision, Grant), getattr(decision, "reasons", None)
    assert decision.fields == s.request.fields
    check_invariants(s, decision)


def _breaks_a_rule(s: Scenario) -> bool:
    """Whether one of the scenario's mutations alone must deny it."""
    breaking = {
        "no_basis",
        "no_purpose",
        "no_fields",
        "future_request",
        "student_elsewhere",
        "not_official",
        "parent_requester",
        "role_may_not_invoke",
        "no_window",
    }
    kind = _kind(s)
    if kind is BasisKind.HEALTH_OR_SAFETY_EMERGENCY:
        breaking |= {"case_closed", "no_still_open", "short_threat", "no_threat", "no_case"}
    if kind in (BasisKind.CONSENT, BasisKind.COURT_ORDER, BasisKind.SUBPOENA):
        breaking |= {"expired", "basis_other_student"}
    if kind is BasisKind.CONSENT:
        breaking |= {"consent_other_party"}
    if kind in (BasisKind.COURT_ORDER, BasisKind.SUBPOENA):
        breaking |= {"no_parent_notice"}
    if kind is BasisKind.SCHOOL_OFFICIAL:
        breaking |= {"no_interest", "recipient_not_requester"}
        if s.policy.own_schools_only:
            breaking |= {"other_school"}
    if not s.policy.partial_grants:
        breaking |= {"unknown_field", "state_rule_field"}
    if not (s.policy.court_order_crosses_districts and kind is BasisKind.COURT_ORDER):
        breaking |= {"requester_elsewhere"}
    return bool(set(s.mutations) & breaking)


#: Every basis gets its own share of the examples, and every mutation alone its own.
PER_KIND = settings(PROPERTY, max_examples=60)
PER_MUTATION = settings(PROPERTY, max_examples=6)


@pytest.mark.parametrize("kind", list(BasisKind))
@PER_KIND
@given(data=st.data())
def test_every_decision_keeps_the_invariants(kind: BasisKind, data: st.DataObject) -> None:
    s = data.draw(scenarios(kind))
    decision = s.decide()
    check_invariants(s, decision)
    # Each rule-breaking mutation alone is enough to deny (partial mode aside for fields).
    if _breaks_a_rule(s):
        assert isinstance(decision, Denial)
    # Pure: the same inputs, the same decision and the same record ids.
    assert s.decide() == decision


_E, _C, _S = (
    BasisKind.HEALTH_OR_SAFETY_EMERGENCY,
    BasisKind.CONSENT,
    BasisKind.SCHOOL_OFFICIAL,
)
_ORDERS = {BasisKind.COURT_ORDER, BasisKind.SUBPOENA}
#: The bases a mutation means something for (the others: every basis).
MUTATION_KINDS: dict[str, set[BasisKind]] = {
    "case_closed": {_E},
    "no_still_open": {_E},
    "short_threat": {_E},
    "no_threat": {_E},
    "no_case": {_E},
    "expired": {_C} | _ORDERS,
    "consent_other_party": {_C},
    "basis_other_student": {_C} | _ORDERS,
    "basis_fields_narrow": {_C} | _ORDERS,
    "no_parent_notice": _ORDERS,
    "subpoena_not_order": {BasisKind.COURT_ORDER},
    "order_not_subpoena": {BasisKind.SUBPOENA},
    "other_school": {_S},
    "no_interest": {_S},
    "recipient_not_requester": {_S},
}
PAIRS = [
    (m, k)
    for m in sorted(MUTATIONS)
    for k in BasisKind
    if k in MUTATION_KINDS.get(m, set(BasisKind))
]


@pytest.mark.parametrize(("mutation", "kind"), PAIRS)
@PER_MUTATION
@given(data=st.data())
def test_each_mutation_alone_keeps_the_invariants(
    mutation: str, kind: BasisKind, data: st.DataObject
) -> None:
    s = data.draw(scenarios(kind, mutation=mutation))
    decision = s.decide()
    check_invariants(s, decision)
    if _breaks_a_rule(s):
        assert isinstance(decision, Denial)


@PROPERTY
@given(lawful(BasisKind.HEALTH_OR_SAFETY_EMERGENCY), st.integers(0, 200))
def test_an_emergency_grant_ends_when_its_case_closes(s: Scenario, minutes: int) -> None:
    grant = s.decide()
    assert isinstance(grant, Grant)
    later = NOW + timedelta(minutes=minutes)
    open_now = s.open_ids
    closed = open_now - set(grant.request.basis.emergency_ids)  # type: ignore[union-attr]
    assert not is_active(grant, now=later, still_open=lambda i: i in closed)
    assert is_active(grant, now=later, still_open=lambda i: i in open_now) == (
        later < grant.expires_at
    )


# ---------------------------------------------------------------------------------------
# Examples: each denial names what is missing or wrong


def _policy(**changes: Any) -> Policy:
    base = Policy(
        district_id=HOME,
        known_fields=frozenset(KNOWN),
        scopes={
            BasisKind.HEALTH_OR_SAFETY_EMERGENCY: {
                Role.SRO: frozenset({"name", "attendance", "discipline", "threat_assessment"}),
                Role.MENTAL_HEALTH_PARTNER: frozenset({"name", "counseling_notes"}),
            },
            BasisKind.SCHOOL_OFFICIAL: {Role.COUNSELOR: frozenset({"name", "grades", "iep"})},
            BasisKind.CONSENT: {Role.MENTAL_HEALTH_PARTNER: frozenset({"name", "health"})},
            BasisKind.COURT_ORDER: {Role.LAW_ENFORCEMENT: frozenset(KNOWN)},
            BasisKind.SUBPOENA: {Role.LAW_ENFORCEMENT: frozenset(KNOWN)},
        },
        may_invoke={
            BasisKind.HEALTH_OR_SAFETY_EMERGENCY: frozenset({Role.ADMINISTRATOR}),
            BasisKind.SCHOOL_OFFICIAL: frozenset({Role.COUNSELOR}),
            BasisKind.CONSENT: frozenset({Role.ADMINISTRATOR, Role.COUNSELOR}),
            BasisKind.COURT_ORDER: frozenset({Role.ADMINISTRATOR}),
            BasisKind.SUBPOENA: frozenset({Role.ADMINISTRATOR}),
        },
        windows={
            BasisKind.HEALTH_OR_SAFETY_EMERGENCY: timedelta(hours=24),
            BasisKind.SCHOOL_OFFICIAL: timedelta(days=30),
            BasisKind.CONSENT: timedelta(days=90),
            BasisKind.COURT_ORDER: timedelta(days=7),
            BasisKind.SUBPOENA: timedelta(days=7),
        },
        never_disclosed=frozenset({"tip_contents"}),
    )
    return replace(base, **changes)


ADMIN = Requester(
    "usr-admin", Role.ADMINISTRATOR, HOME, frozenset({SCHOOL}), True, "A. Principal", "North USD"
)
COUNSELOR = Requester(
    "usr-couns", Role.COUNSELOR, HOME, frozenset({SCHOOL}), True, "C. Counselor", "North USD"
)
SRO = Recipient("usr-sro", "Officer Diaz", "North County Sheriff", Role.SRO)
CLINIC = Recipient("org-clinic", "Dr. Lee", "Harbor Behavioral Health", Role.MENTAL_HEALTH_PARTNER)
POLICE = Recipient("org-pd", "Records Unit", "State Police", Role.LAW_ENFORCEMENT)


def _emergency(**changes: Any) -> RecordRequest:
    base = RecordRequest(
        requester=ADMIN,
        recipient=SRO,
        purpose="protect the school from the threat in case-7",
        basis=HealthOrSafetyEmergency(THREAT, case_id="case-7"),
        student_id=STUDENT,
        student_district_id=HOME,
        fields=frozenset({"name", "attendance", "discipline"}),
        at=NOW - timedelta(minutes=2),
        student_school_id=SCHOOL,
        request_id="req-42",
    )
    return replace(base, **changes)


def _open(i: str) -> bool:
    return i in {"case-7", "inc-3"}


def _denied(request: RecordRequest, policy: Policy | None = None, **kw: Any) -> Denial:
    decision = decide(request, policy or _policy(), now=NOW, still_open=kw.get("still_open", _open))
    assert isinstance(decision, Denial), decision
    assert len(decision.records) == 1
    return decision


def test_the_emergency_grant_writes_the_99_32_record() -> None:
    decision = decide(_emergency(), _policy(), now=NOW, still_open=_open)
    assert isinstance(decision, Grant)
    assert decision.fields == {"name", "attendance", "discipline"}
    assert decision.expires_at == NOW + timedelta(hours=24)
    fields = record_fields(decision)
    assert fields["student_id"] == STUDENT
    assert fields["legal_basis"] == "34 CFR 99.31(a)(10), 99.36 (health or safety emergency)"
    assert fields["threat"] == THREAT
    assert fields["parties"] == [
        {
            "name": "Officer Diaz",
            "organisation": "North County Sheriff",
            "role": "school resource officer (law enforcement)",
        }
    ]
    assert fields["records_disclosed"] == ["attendance", "discipline", "name"]
    assert fields["disclosed_by"] == "usr-admin"
    assert fields["disclosed_at"] == NOW
    assert "do not disclose them" in fields["redisclosure_notice"]
    assert STUDENT not in fields["redisclosure_notice"]
    names = {f["name"] for f in _DISCLOSURE["fields"]} - {"envelope"}
    assert set(fields) == names
    assert fastavro.validate(fields, _DISCLOSURE_BODY, raise_errors=True)
    assert decision.disclosure_record.basis_reference == "case-7"
    # The same request again (a retry) gets the same disclosure id.
    again = decide(_emergency(), _policy(), now=NOW, still_open=_open)
    assert isinstance(again, Grant)
    assert again.disclosure_record.disclosure_id == decision.disclosure_record.disclosure_id


def test_no_basis_is_denied_and_recorded() -> None:
    denial = _denied(_emergency(basis=None))
    assert DenialCode.NO_BASIS in denial.codes
    assert "no legal basis" in denial.reasons[0].message
    record = denial_fields(denial)
    assert record["basis"] is None
    assert record["reasons"][0]["code"] == "NO_BASIS"
    assert record["fields_requested"] == ["attendance", "discipline", "name"]
    with pytest.raises(FerpaError):
        record_fields(denial)


@pytest.mark.parametrize(
    ("change", "code", "words"),
    [
        ({"purpose": ""}, DenialCode.NO_PURPOSE, "purpose"),
        ({"student_id": ""}, DenialCode.NO_STUDENT, "student"),
        ({"fields": frozenset()}, DenialCode.NO_FIELDS, "no records"),
        ({"at": NOW + timedelta(hours=1)}, DenialCode.REQUEST_AFTER_DECISION, "after"),
        ({"student_district_id": OTHER}, DenialCode.OTHER_DISTRICT_STUDENT, "another district"),
        (
            {"requester": replace(ADMIN, school_official=False)},
            DenialCode.REQUESTER_NOT_SCHOOL_OFFICIAL,
            "not a school official",
        ),
        (
            {"requester": replace(ADMIN, role=Role.PARENT, school_official=False)},
            DenialCode.REQUESTER_NOT_SCHOOL_OFFICIAL,
            "parent's view",
        ),
        ({"requester": COUNSELOR}, DenialCode.BASIS_NOT_FOR_REQUESTER, "COUNSELOR"),
        ({"recipient": POLICE}, DenialCode.BASIS_NOT_FOR_RECIPIENT, "LAW_ENFORCEMENT"),
        (
            {"basis": HealthOrSafetyEmergency("", case_id="case-7")},
            DenialCode.NO_THREAT,
            "articulable and significant threat",
        ),
        (
            {"basis": HealthOrSafetyEmergency("he seems off", case_id="case-7")},
            DenialCode.THREAT_NOT_ARTICULATED,
            "6 words",
        ),
        (
            {"basis": HealthOrSafetyEmergency(THREAT)},
            DenialCode.NO_CASE_OR_INCIDENT,
            "case or incident",
        ),
        (
            {"basis": HealthOrSafetyEmergency(THREAT, case_id="case-closed")},
            DenialCode.EMERGENCY_NOT_OPEN,
            "not open",
        ),
        (
            {"basis": HealthOrSafetyEmergency(THREAT, case_id="case-7", incident_id="inc-9")},
            DenialCode.EMERGENCY_NOT_OPEN,
            "not open",
        ),
        ({"fields": frozenset({"name", "ssn"})}, DenialCode.FIELDS_UNKNOWN, "ssn"),
        (
            {"fields": frozenset({"name", "tip_contents"})},
            DenialCode.FIELDS_KEPT_BY_STATE_RULE,
            "tip_contents",
        ),
        ({"fields": frozenset({"name", "iep"})}, DenialCode.FIELDS_BEYOND_SCOPE, "iep"),
    ],
)
def test_each_denial_names_what_is_wrong(
    change: dict[str, Any], code: DenialCode, words: str
) -> None:
    denial = _denied(_emergency(**change))
    reasons = [r for r in denial.reasons if r.code is code]
    assert reasons, denial.reasons
    assert words in reasons[0].message
    assert denial.denial_record.reasons == denial.reasons


def test_field_reasons_list_the_fields() -> None:
    denial = _denied(_emergency(fields=frozenset({"name", "iep", "ssn", "tip_contents"})))
    by_code = {r.code: r.fields for r in denial.reasons}
    assert by_code == {
        DenialCode.FIELDS_UNKNOWN: ("ssn",),
        DenialCode.FIELDS_KEPT_BY_STATE_RULE: ("tip_contents",),
        DenialCode.FIELDS_BEYOND_SCOPE: ("iep",),
    }


def test_an_emergency_without_the_open_check_is_denied() -> None:
    denial = _denied(_emergency(), still_open=None)
    assert denial.codes == {DenialCode.EMERGENCY_NOT_OPEN}


def test_a_missing_window_denies() -> None:
    policy = _policy(windows={})
    assert DenialCode.NO_WINDOW in _denied(_emergency(), policy).codes


def test_partial_grants_list_what_was_withheld() -> None:
    request = _emergency(fields=frozenset({"name", "iep", "ssn"}))
    decision = decide(request, _policy(partial_grants=True), now=NOW, still_open=_open)
    assert isinstance(decision, Grant)
    assert decision.fields == {"name"}
    assert {r.code: r.fields for r in decision.disclosure_record.withheld} == {
        DenialCode.FIELDS_UNKNOWN: ("ssn",),
        DenialCode.FIELDS_BEYOND_SCOPE: ("iep",),
    }
    # Nothing within scope at all: still a denial.
    nothing = _emergency(fields=frozenset({"iep", "ssn"}))
    assert isinstance(
        decide(nothing, _policy(partial_grants=True), now=NOW, still_open=_open), Denial
    )


def _consent(**changes: Any) -> RecordRequest:
    consent = Consent(
        "cns-9",
        STUDENT,
        frozenset({"name", "health"}),
        frozenset({"org-clinic"}),
        NOW + timedelta(days=10),
    )
    return _emergency(
        requester=COUNSELOR,
        recipient=CLINIC,
        purpose="referral to community mental-health partner",
        basis=replace(consent, **changes),
        fields=frozenset({"name", "health"}),
    )


def test_consent_grant_ends_with_the_consent() -> None:
    decision = decide(_consent(), _policy(), now=NOW)
    assert isinstance(decision, Grant)
    assert decision.expires_at == NOW + timedelta(days=10)
    assert decision.disclosure_record.basis_reference == "cns-9"
    assert decision.disclosure_record.legal_basis.startswith("34 CFR 99.30")


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"expires_at": NOW}, DenialCode.CONSENT_EXPIRED),
        ({"student_id": "stu-2"}, DenialCode.CONSENT_OTHER_STUDENT),
        ({"party_ids": frozenset({"org-other"})}, DenialCode.CONSENT_NOT_FOR_RECIPIENT),
        ({"consent_id": " "}, DenialCode.NO_CONSENT_ID),
        ({"fields": frozenset({"name"})}, DenialCode.FIELDS_NOT_IN_CONSENT),
    ],
)
def test_consent_denials(change: dict[str, Any], code: DenialCode) -> None:
    assert code in _denied(_consent(**change)).codes


def _official(**changes: Any) -> RecordRequest:
    base = _emergency(
        requester=COUNSELOR,
        recipient=Recipient.of(COUNSELOR),
        purpose="504 plan review",
        basis=SchoolOfficial("counselor preparing the student's 504 plan review"),
        fields=frozenset({"name", "grades"}),
    )
    return replace(base, **changes)


def test_school_official_access() -> None:
    decision = decide(_official(), _policy(), now=NOW)
    assert isinstance(decision, Grant)
    assert decision.expires_at == NOW + timedelta(days=30)
    assert _policy().legitimate_interest_fields(Role.COUNSELOR) == {"name", "grades", "iep"}


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"basis": SchoolOfficial("")}, DenialCode.NO_LEGITIMATE_INTEREST),
        ({"recipient": SRO}, DenialCode.RECIPIENT_NOT_REQUESTER),
        ({"student_school_id": "sch-west"}, DenialCode.NOT_OWN_SCHOOL),
        ({"student_school_id": None}, DenialCode.NOT_OWN_SCHOOL),
        (
            {"requester": ADMIN, "recipient": Recipient.of(ADMIN)},
            DenialCode.BASIS_NOT_FOR_REQUESTER,
        ),
    ],
)
def test_school_official_denials(change: dict[str, Any], code: DenialCode) -> None:
    assert code in _denied(_official(**change)).codes


def _order(
    kind: BasisKind = BasisKind.COURT_ORDER,
    requester: Requester = ADMIN,
    **changes: Any,
) -> RecordRequest:
    order = LegalProcess(
        kind=kind,
        reference="CV-2026-0042",
        issuer="Superior Court, North County",
        student_id=STUDENT,
        district_id=HOME,
        fields=frozenset({"name", "attendance"}),
        parent_notified=True,
    )
    return _emergency(
        requester=requester,
        recipient=POLICE,
        purpose="comply with the order",
        basis=replace(order, **changes),
        fields=frozenset({"name", "attendance"}),
    )


def test_court_order_and_subpoena_are_recorded_as_such() -> None:
    for kind, words in (
        (BasisKind.COURT_ORDER, "judicial order"),
        (BasisKind.SUBPOENA, "subpoena"),
    ):
        decision = decide(_order(kind), _policy(), now=NOW)
        assert isinstance(decision, Grant)
        assert words in decision.disclosure_record.legal_basis
        assert decision.disclosure_record.basis_reference == "CV-2026-0042"
        assert decision.disclosure_record.parent_may_inspect
    hidden = decide(_order(parent_notified=False, notice_forbidden=True), _policy(), now=NOW)
    assert isinstance(hidden, Grant)
    assert not hidden.disclosure_record.parent_may_inspect


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"reference": ""}, DenialCode.NO_ORDER_REFERENCE),
        ({"issuer": ""}, DenialCode.NO_ORDER_ISSUER),
        ({"student_id": "stu-2"}, DenialCode.ORDER_OTHER_STUDENT),
        ({"district_id": OTHER}, DenialCode.ORDER_OTHER_DISTRICT),
        ({"expires_at": NOW - timedelta(days=1)}, DenialCode.ORDER_EXPIRED),
        ({"parent_notified": False}, DenialCode.PARENT_NOT_NOTIFIED),
        ({"fields": frozenset({"name"})}, DenialCode.FIELDS_NOT_IN_ORDER),
    ],
)
def test_order_denials(change: dict[str, Any], code: DenialCode) -> None:
    assert code in _denied(_order(**change)).codes


def test_another_district_only_by_a_court_order_naming_the_student_and_district() -> None:
    elsewhere = replace(ADMIN, district_id=OTHER)
    crossing = _policy(court_order_crosses_districts=True)
    # Without the district's opt-in, even a court order does not reach across.
    assert DenialCode.OTHER_DISTRICT_STUDENT in _denied(_order(requester=elsewhere)).codes
    granted = decide(_order(requester=elsewhere), crossing, now=NOW)
    assert isinstance(granted, Grant)
    # A subpoena never does, nor an emergency, nor an order for another district.
    subpoena = _order(BasisKind.SUBPOENA, requester=elsewhere)
    assert DenialCode.OTHER_DISTRICT_STUDENT in _denied(subpoena, crossing).codes
    emergency = _emergency(requester=elsewhere)
    assert DenialCode.OTHER_DISTRICT_STUDENT in _denied(emergency, crossing).codes
    wrong = _order(requester=elsewhere, district_id=OTHER)
    assert DenialCode.OTHER_DISTRICT_STUDENT in _denied(wrong, crossing).codes


def test_a_policy_of_another_district_is_refused() -> None:
    assert (
        DenialCode.POLICY_OF_OTHER_DISTRICT
        in _denied(_emergency(), _policy(district_id=OTHER)).codes
    )


def test_an_empty_policy_grants_nothing() -> None:
    empty = Policy(
        district_id=HOME, known_fields=frozenset(KNOWN), scopes={}, may_invoke={}, windows={}
    )
    for request in (_emergency(), _consent(), _official(), _order()):
        denial = _denied(request, empty)
        assert {
            DenialCode.BASIS_NOT_FOR_REQUESTER,
            DenialCode.BASIS_NOT_FOR_RECIPIENT,
            DenialCode.NO_WINDOW,
            DenialCode.FIELDS_BEYOND_SCOPE,
        } <= denial.codes


def test_policy_from_data() -> None:
    data = {
        "district": HOME,
        "known_fields": list(KNOWN),
        "never_disclosed": ["tip_contents"],
        "scopes": {"HEALTH_OR_SAFETY_EMERGENCY": {"SRO": ["name", "attendance", "discipline"]}},
        "may_invoke": {"HEALTH_OR_SAFETY_EMERGENCY": ["ADMINISTRATOR"]},
        "windows_s": {"HEALTH_OR_SAFETY_EMERGENCY": 86400},
    }
    policy = Policy.from_mapping(data)
    assert policy.windows[BasisKind.HEALTH_OR_SAFETY_EMERGENCY] == timedelta(days=1)
    assert policy.scope(BasisKind.HEALTH_OR_SAFETY_EMERGENCY, Role.SRO) == {
        "name",
        "attendance",
        "discipline",
    }
    assert isinstance(decide(_emergency(), policy, now=NOW, still_open=_open), Grant)
    with pytest.raises(ConfigError, match="scopes"):
        Policy.from_mapping({**data, "scopes": {"HEALTH_OR_SAFETY_EMERGENCY": {"SRO": ["ssn"]}}})
    with pytest.raises(ConfigError, match="may_invoke"):
        Policy.from_mapping({**data, "may_invoke": {"BOGUS": ["ADMINISTRATOR"]}})
    with pytest.raises(ConfigError, match="district"):
        Policy.from_mapping({"known_fields": []})
    with pytest.raises(ConfigError, match="partial_grants"):
        Policy.from_mapping({**data, "partial_grants": "yes"})
