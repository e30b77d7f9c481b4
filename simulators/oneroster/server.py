"""A simulator of a SIS's OneRoster rostering REST API (1.1 and 1.2), for tests and the demo.

It stands in for the student information system and speaks the 1EdTech REST/JSON binding,
so any OneRoster consumer works against it (only the base URL differs). Its data is a
OneRoster CSV folder read at start with the stdlib ``csv`` module (never SafeHub's codec, so
a mistake there is caught rather than mirrored); 1.1 and 1.2 CSV sets are both accepted and
both are served through both API versions.

Read endpoints, under ``/ims/oneroster/v1p1`` (OAuth 1.0a request signatures, HMAC-SHA256 or
HMAC-SHA1) and ``/ims/oneroster/rostering/v1p2`` (OAuth 2 bearer tokens)::

    GET /orgs  /schools  /academicSessions  /terms  /gradingPeriods  /classes  /courses
        /users  /students  /teachers  /enrollments  /demographics      {"users": [...]}
    GET /<collection>/{sourcedId}                                     {"user": {...}}

    query: limit (default 100) and offset; filter (``field op 'value'`` with = != > >= < <=
    ~, joined by AND or OR; dotted fields reach into GUIDRefs and roles); sort + orderBy
    (asc|desc); fields (comma-separated selection). Answers carry ``X-Total-Count`` and an
    RFC 8288 ``Link`` header (first, prev, next, last).

    errors: the 1EdTech imsx_StatusInfo shape ``{"imsx_codeMajor": "failure",
    "imsx_severity": "error", "imsx_description": …, "imsx_CodeMinor": {"imsx_codeMinorField":
    [{"imsx_codeMinorFieldName": "TargetEndSystem", "imsx_codeMinorFieldValue": …}]}}`` with
    400 invalid_filter_field / invalid_sort_field / invalid_selection_field / invaliddata,
    401 unauthorisedrequest, 403 forbidden (scope), 404 unknownobject, 429 server_busy, 500
    internal_server_error.

OAuth 2 (1.2): ``POST /oauth/token`` with HTTP Basic client authentication,
``grant_type=client_credentials`` and scopes of ``https://purl.imsglobal.org/spec/or/v1p2/
scope/``: roster-core.readonly (everything but demographics), roster.readonly (everything),
roster-demographics.readonly (demographics). Errors in RFC 6749's ``{"error": …}`` shape.

Control API (no auth; for tests and the demo)::

    POST /_sim/touch   {"collection": "users", "sourcedIds": [...], "set": {csv column: value},
                        "at": ISO-8601 (default now)}  → dateLastModified moves, so deltas see it
    POST /_sim/fail    {"count": N, "status": 500|429|503, "retry_after": s}  the next N API
                        requests fail (before authentication, as a proxy in front would)
    POST /_sim/revoke  forget every issued bearer token
    POST /_sim/config  {"token_ttl_s": N}
    POST /_sim/load    {"data": FOLDER}  serve another CSV set from now on (as a SIS whose
                        records were added, changed or hard-deleted since: a record it lacks is
                        simply no longer listed, a record left as it was keeps its
                        dateLastModified, one changed without one gets the load time); tokens,
                        failures and the log are kept
    POST /_sim/reset   reload the data the simulator started with, forget tokens, failures
                        and the request log
    GET  /_sim/requests  every API and token request: method, path, query, status, auth, at

Passwords in users.csv and userProfiles.csv are never served.

Run: ``python -m simulators.oneroster --port 8795 [--port-file F] [--data FOLDER]``; the
consumer key / client id and its secret come from ``SAFEHUB_SIM_ONEROSTER_KEY`` and
``SAFEHUB_SIM_ONEROSTER_SECRET`` (not argv: they would show in ``ps``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import csv
import hmac
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import structlog
from aiohttp import web
from oauthlib.common import Request as OAuthRequest
from oauthlib.oauth1.rfc5849 import signature as oauth1

from safehub.kernel.errors import SafeHubError
from safehub.kernel.http_server import serve_until_signalled
from safehub.kernel.logging import configure_logging
from safehub.kernel.settings import ListenSettings

log = structlog.get_logger(__name__)

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT.parent / "shared" / "standards" / "oneroster" / "samples"
DEFAULT_DATA = SAMPLES / "v1p1-bulk-catalyst-Test_full_data_set"
DEFAULT_PORT = 8795
KEY_VARIABLE = "SAFEHUB_SIM_ONEROSTER_KEY"
SECRET_VARIABLE = "SAFEHUB_SIM_ONEROSTER_SECRET"  # noqa: S105 - a variable name

V1P1 = "/ims/oneroster/v1p1"
V1P2 = "/ims/oneroster/rostering/v1p2"
TOKEN_PATH = "/oauth/token"  # noqa: S105 - a path
SCOPE_BASE = "https://purl.imsglobal.org/spec/or/v1p2/scope/"
SCOPE_CORE = SCOPE_BASE + "roster-core.readonly"
SCOPE_ROSTER = SCOPE_BASE + "roster.readonly"
SCOPE_DEMOGRAPHICS = SCOPE_BASE + "roster-demographics.readonly"
KNOWN_SCOPES = frozenset({SCOPE_CORE, SCOPE_ROSTER, SCOPE_DEMOGRAPHICS})
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
DEFAULT_TOKEN_TTL_S = 3600
#: RFC 5849 leaves the window to the server; five minutes either way is the common choice.
TIMESTAMP_WINDOW_S = 300
SIGNATURE_METHODS = {"HMAC-SHA256": oauth1.verify_hmac_sha256, "HMAC-SHA1": oauth1.verify_hmac_sha1}
NEVER_SERVED = frozenset({"password"})


class OneRosterApiError(SafeHubError):
    """An error answer in the 1EdTech imsx_StatusInfo shape."""

    def __init__(
        self, status: int, code_minor: str, description: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(description)
        self.status = status
        self.code_minor = code_minor
        self.description = description
        self.headers = headers or {}

    def response(self) -> web.Response:
        """The HTTP answer."""
        return web.json_response(
            {
                "imsx_codeMajor": "failure",
                "imsx_severity": "error",
                "imsx_description": self.description,
                "imsx_CodeMinor": {
                    "imsx_codeMinorField": [
                        {
                            "imsx_codeMinorFieldName": "TargetEndSystem",
                            "imsx_codeMinorFieldValue": self.code_minor,
                        }
                    ]
                },
            },
            status=self.status,
            headers=self.headers,
        )


# -- data ------------------------------------------------------------------------------------

CSV_FILES = (
    "orgs", "academicSessions", "courses", "classes", "users", "roles", "userProfiles",
    "enrollments", "demographics",
)  # fmt: skip


def _read_csv(path: Path) -> list[dict[str, str]]:
    # utf-8-sig: SIS exports often start with a byte-order mark.
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return [
            {key.strip(): (value or "").strip() for key, value in row.items() if key}
            for row in csv.DictReader(handle)
        ]


def _parse_instant(text: str) -> datetime:
    """An ISO-8601 date or date-time as an aware UTC datetime (ValueError if it is neither)."""
    value = datetime.fromisoformat(text.strip())
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _instant_text(value: datetime) -> str:
    """The binding's DateTime: UTC with milliseconds and ``Z``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class Row:
    """One CSV record, with its modification instant kept at full precision."""

    values: dict[str, str]
    modified: datetime

    @property
    def sourced_id(self) -> str:
        """The record's sourcedId."""
        return self.values["sourcedId"]


class Dataset:
    """The CSV set as the SIS holds it: file name → sourcedId → row, in file order."""

    def __init__(self, folder: Path, *, previous: Dataset | None = None) -> None:
        self.folder = folder
        self.loaded_at = datetime.now(UTC)
        self.files: dict[str, dict[str, Row]] = {}
        for name in CSV_FILES:
            path = folder / f"{name}.csv"
            rows = _read_csv(path) if path.is_file() else []
            before = previous.files.get(name, {}) if previous is not None else {}
            table: dict[str, Row] = {}
            for values in rows:
                sourced_id = values.get("sourcedId", "")
                if not sourced_id:
                    continue
                table[sourced_id] = Row(values, self._modified(values, before.get(sourced_id)))
            self.files[name] = table
        if not self.files["users"] and not self.files["orgs"]:
            raise SafeHubError(f"{folder}: no users.csv or orgs.csv: not a OneRoster CSV set")

    def _modified(self, values: dict[str, str], before: Row | None) -> datetime:
        text = values.get("dateLastModified")
        if text:
            try:
                return _parse_instant(text)
            except ValueError:
                pass
        # A bulk file may leave dateLastModified blank; a SIS always has one: the instant the
        # record was last seen to change (a reloaded set keeps it for a record it left alone),
        # else the load time.
        if before is not None and before.values == values:
            return before.modified
        return self.loaded_at

    def roles_of(self, user: Row) -> list[dict[str, str]]:
        """The user's roles as 1.2 models them (from roles.csv, else the 1.1 columns)."""
        found = [
            row.values
            for row in self.files["roles"].values()
            if row.values.get("userSourcedId") == user.sourced_id
        ]
        if found:
            return found
        orgs = _split(user.values.get("orgSourcedIds", ""))
        role = user.values.get("role", "")
        return [
            {"roleType": "primary" if i == 0 else "secondary", "role": role, "orgSourcedId": org}
            for i, org in enumerate(orgs)
        ]


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _bool(text: str) -> str | None:
    # The binding's booleans are the strings "true"/"false"; sample files say "TRUE".
    lowered = text.strip().lower()
    return lowered if lowered in ("true", "false") else None


# -- rendering -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Collection:
    """One collection endpoint: which file, which rows, which JSON keys."""

    file: str
    kind: str  # rendering kind and GUIDRef type
    many: str  # collection key
    one: str  # single-object key
    where: Callable[[Dataset, Row], bool] = lambda _data, _row: True
    scope: str = SCOPE_CORE


def _org_type(wanted: str) -> Callable[[Dataset, Row], bool]:
    return lambda _data, row: row.values.get("type", "").lower() == wanted.lower()


def _session_type(wanted: str) -> Callable[[Dataset, Row], bool]:
    return lambda _data, row: row.values.get("type", "") == wanted


def _has_role(wanted: str) -> Callable[[Dataset, Row], bool]:
    return lambda data, row: any(r.get("role") == wanted for r in data.roles_of(row))


COLLECTIONS: dict[str, Collection] = {
    "orgs": Collection("orgs", "org", "orgs", "org"),
    "schools": Collection("orgs", "org", "orgs", "org", _org_type("school")),
    "academicSessions": Collection(
        "academicSessions", "academicSession", "academicSessions", "academicSession"
    ),
    "terms": Collection(
        "academicSessions", "academicSession", "academicSessions", "academicSession",
        _session_type("term"),
    ),
    "gradingPeriods": Collection(
        "academicSessions", "academicSession", "academicSessions", "academicSession",
        _session_type("gradingPeriod"),
    ),
    "classes": Collection("classes", "class", "classes", "class"),
    "courses": Collection("courses", "course", "courses", "course"),
    "users": Collection("users", "user", "users", "user"),
    "students": Collection("users", "user", "users", "user", _has_role("student")),
    "teachers": Collection("users", "user", "users", "user", _has_role("teacher")),
    "enrollments": Collection("enrollments", "enrollment", "enrollments", "enrollment"),
    "demographics": Collection(
        "demographics", "demographics", "demographics", "demographics", scope=SCOPE_DEMOGRAPHICS
    ),
}  # fmt: skip

#: Where each kind's single objects live, for GUIDRef hrefs.
HREF_COLLECTION = {
    "org": "orgs", "academicSession": "academicSessions", "class": "classes",
    "course": "courses", "user": "users", "enrollment": "enrollments",
    "demographics": "demographics",
}  # fmt: skip


class Renderer:
    """JSON objects of one API version, GUIDRefs pointing back at this server."""

    def __init__(self, data: Dataset, root: str, version: str) -> None:
        self.data = data
        self.root = root  # http://host:port/ims/oneroster/…
        self.version = version

    def ref(self, kind: str, sourced_id: str) -> dict[str, str] | None:
        """A GUIDRef ``{"href", "sourcedId", "type"}`` (None for a blank id)."""
        if not sourced_id:
            return None
        return {
            "href": f"{self.root}/{HREF_COLLECTION[kind]}/{sourced_id}",
            "sourcedId": sourced_id,
            "type": kind,
        }

    def refs(self, kind: str, ids: list[str]) -> list[dict[str, str]]:
        """GUIDRefs of the non-blank ids."""
        return [ref for ref in (self.ref(kind, i) for i in ids) if ref is not None]

    def render(self, kind: str, row: Row) -> dict[str, Any]:
        """The binding's JSON object; empty optional values are left out."""
        v = row.values
        base: dict[str, Any] = {
            "sourcedId": row.sourced_id,
            "status": v.get("status") or "active",
            "dateLastModified": _instant_text(row.modified),
        }
        body = getattr(self, f"_{kind}")(row, v)
        return {k: val for k, val in {**base, **body}.items() if val not in (None, "", [])}

    def _org(self, row: Row, v: dict[str, str]) -> dict[str, Any]:
        children = [
            other.sourced_id
            for other in self.data.files["orgs"].values()
            if other.values.get("parentSourcedId") == row.sourced_id
        ]
        return {
            "name": v.get("name"),
            "type": v.get("type"),
            "identifier": v.get("identifier"),
            "parent": self.ref("org", v.get("parentSourcedId", "")),
            "children": self.refs("org", children),
        }

    def _academicSession(self, row: Row, v: dict[str, str]) -> dict[str, Any]:  # noqa: N802
        children = [
            other.sourced_id
            for other in self.data.files["academicSessions"].values()
            if other.values.get("parentSourcedId") == row.sourced_id
        ]
        return {
            "title": v.get("title"),
            "startDate": v.get("startDate"),
            "endDate": v.get("endDate"),
            "type": v.get("type"),
            "parent": self.ref("academicSession", v.get("parentSourcedId", "")),
            "children": self.refs("academicSession", children),
            "schoolYear": v.get("schoolYear"),
        }

    def _course(self, _row: Row, v: dict[str, str]) -> dict[str, Any]:
        return {
            "title": v.get("title"),
            "schoolYear": self.ref("academicSession", v.get("schoolYearSourcedId", "")),
            "courseCode": v.get("courseCode"),
            "grades": _split(v.get("grades", "")),
            "subjects": _split(v.get("subjects", "")),
            "org": self.ref("org", v.get("orgSourcedId", "")),
            "subjectCodes": _split(v.get("subjectCodes", "")),
        }

    def _class(self, _row: Row, v: dict[str, str]) -> dict[str, Any]:
        return {
            "title": v.get("title"),
            "classCode": v.get("classCode"),
            # 1.1 files say "Scheduled"; the vocabulary is lower-case.
            "classType": (v.get("classType") or "").lower() or None,
            "location": v.get("location"),
            "grades": _split(v.get("grades", "")),
            "subjects": _split(v.get("subjects", "")),
            "course": self.ref("course", v.get("courseSourcedId", "")),
            "school": self.ref("org", v.get("schoolSourcedId", "")),
            "terms": self.refs("academicSession", _split(v.get("termSourcedIds", ""))),
            "subjectCodes": _split(v.get("subjectCodes", "")),
            "periods": _split(v.get("periods", "")),
        }

    def _user(self, row: Row, v: dict[str, str]) -> dict[str, Any]:
        roles = self.data.roles_of(row)
        primary = next((r for r in roles if r.get("roleType") == "primary"), None) or (
            roles[0] if roles else None
        )
        common: dict[str, Any] = {
            "username": v.get("username"),
            "userIds": _user_ids(v.get("userIds", "")),
            "enabledUser": _bool(v.get("enabledUser", "")) or "true",
            "givenName": v.get("givenName"),
            "familyName": v.get("familyName"),
            "middleName": v.get("middleName"),
            "identifier": v.get("identifier"),
            "email": v.get("email"),
            "sms": v.get("sms"),
            "phone": v.get("phone"),
            "agents": self.refs("user", _split(v.get("agentSourcedIds", ""))),
            "grades": _split(v.get("grades", "")),
        }
        if self.version == "1.1":
            orgs = list(dict.fromkeys(r.get("orgSourcedId", "") for r in roles))
            return {
                **common,
                "role": primary.get("role") if primary else None,
                "orgs": self.refs("org", orgs),
            }
        primary_org = v.get("primaryOrgSourcedId") or (
            primary.get("orgSourcedId", "") if primary else ""
        )
        profiles = [
            self._profile(p)
            for p in self.data.files["userProfiles"].values()
            if p.values.get("userSourcedId") == row.sourced_id
        ]
        return {
            **common,
            "userMasterIdentifier": v.get("userMasterIdentifier"),
            "preferredFirstName": v.get("preferredGivenName"),
            "preferredMiddleName": v.get("preferredMiddleName"),
            "preferredLastName": v.get("preferredFamilyName"),
            "pronouns": v.get("pronouns"),
            "roles": [self._role(r) for r in roles],
            "userProfiles": profiles,
            "primaryOrg": self.ref("org", primary_org),
        }

    def _role(self, role: dict[str, str]) -> dict[str, Any]:
        body = {
            "roleType": role.get("roleType") or "primary",
            "role": role.get("role"),
            "org": self.ref("org", role.get("orgSourcedId", "")),
            "userProfile": role.get("userProfileSourcedId") or None,
            "beginDate": role.get("beginDate") or None,
            "endDate": role.get("endDate") or None,
        }
        return {k: val for k, val in body.items() if val is not None}

    def _profile(self, row: Row) -> dict[str, Any]:
        v = row.values
        body = {
            "profileId": row.sourced_id,
            "profileType": v.get("profileType"),
            "vendorId": v.get("vendorId"),
            "applicationId": v.get("applicationId") or None,
            "description": v.get("description") or None,
            "credentials": [
                {"type": v.get("credentialType"), "username": v.get("username")}
            ],  # the password column is never served
        }
        return {k: val for k, val in body.items() if val not in (None, "")}

    def _enrollment(self, _row: Row, v: dict[str, str]) -> dict[str, Any]:
        return {
            "user": self.ref("user", v.get("userSourcedId", "")),
            "class": self.ref("class", v.get("classSourcedId", "")),
            "school": self.ref("org", v.get("schoolSourcedId", "")),
            "role": v.get("role"),
            "primary": _bool(v.get("primary", "")),
            "beginDate": v.get("beginDate"),
            "endDate": v.get("endDate"),
        }

    def _demographics(self, _row: Row, v: dict[str, str]) -> dict[str, Any]:
        flags = (
            "americanIndianOrAlaskaNative", "asian", "blackOrAfricanAmerican",
            "nativeHawaiianOrOtherPacificIslander", "white", "demographicRaceTwoOrMoreRaces",
            "hispanicOrLatinoEthnicity",
        )  # fmt: skip
        return {
            "birthDate": v.get("birthDate"),
            "sex": v.get("sex"),
            **{flag: _bool(v.get(flag, "")) for flag in flags},
            "countryOfBirthCode": v.get("countryOfBirthCode"),
            "stateOfBirthAbbreviation": v.get("stateOfBirthAbbreviation"),
            "cityOfBirth": v.get("cityOfBirth"),
            "publicSchoolResidenceStatus": v.get("publicSchoolResidenceStatus"),
        }


def _user_ids(text: str) -> list[dict[str, str]]:
    """``{LDAP:12},{LTI:15}`` → ``[{"type": "LDAP", "identifier": "12"}, …]``."""
    found = []
    for match in re.finditer(r"\{([^:}]*):([^}]*)\}", text):
        found.append({"type": match.group(1), "identifier": match.group(2)})
    return found


#: Fields each kind may be filtered, sorted or selected on, per version.
FIELDS: dict[tuple[str, str], frozenset[str]] = {}
_COMMON = ("sourcedId", "status", "dateLastModified", "metadata")
_KIND_FIELDS = {
    "org": ("name", "type", "identifier", "parent", "children"),
    "academicSession": (
        "title", "startDate", "endDate", "type", "parent", "children", "schoolYear",
    ),
    "course": ("title", "schoolYear", "courseCode", "grades", "subjects", "org", "subjectCodes"),
    "class": (
        "title", "classCode", "classType", "location", "grades", "subjects", "course", "school",
        "terms", "subjectCodes", "periods",
    ),
    "user": (
        "username", "userIds", "enabledUser", "givenName", "familyName", "middleName",
        "identifier", "email", "sms", "phone", "agents", "grades",
    ),
    "enrollment": ("user", "class", "school", "role", "primary", "beginDate", "endDate"),
    "demographics": (
        "birthDate", "sex", "americanIndianOrAlaskaNative", "asian", "blackOrAfricanAmerican",
        "nativeHawaiianOrOtherPacificIslander", "white", "demographicRaceTwoOrMoreRaces",
        "hispanicOrLatinoEthnicity", "countryOfBirthCode", "stateOfBirthAbbreviation",
        "cityOfBirth", "publicSchoolResidenceStatus",
    ),
}  # fmt: skip
for _kind, _fields in _KIND_FIELDS.items():
    for _version in ("1.1", "1.2"):
        _extra: tuple[str, ...] = ()
        if _kind == "user":
            _extra = (
                ("role", "orgs")
                if _version == "1.1"
                else (
                    "userMasterIdentifier", "preferredFirstName", "preferredMiddleName",
                    "preferredLastName", "pronouns", "roles", "userProfiles", "primaryOrg",
                )
            )  # fmt: skip
        FIELDS[(_kind, _version)] = frozenset(_COMMON + _fields + _extra)


# -- query language --------------------------------------------------------------------------

_PREDICATE = re.compile(
    r"\s*(?P<field>[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z][A-Za-z0-9_]*)*)\s*"
    r"(?P<op><=|>=|!=|=|<|>|~)\s*'(?P<value>[^']*)'\s*"
)
_LOGICAL = re.compile(r"(AND|OR)\b")


@dataclass(frozen=True)
class Predicate:
    """``field op 'value'``."""

    field: str
    op: str
    value: str


@dataclass(frozen=True)
class Filter:
    """Predicates joined by one logical operator (the binding allows no mixing or grouping)."""

    predicates: tuple[Predicate, ...]
    join: str  # AND | OR

    def matches(self, item: dict[str, Any]) -> bool:
        """Whether the rendered object passes."""
        results = (_holds(p, item) for p in self.predicates)
        return all(results) if self.join == "AND" else any(results)


def parse_filter(text: str, allowed: frozenset[str]) -> Filter:
    """The ``filter`` parameter; OneRosterApiError 400 invalid_filter_field if malformed."""
    predicates: list[Predicate] = []
    joins: set[str] = set()
    position = 0
    while True:
        match = _PREDICATE.match(text, position)
        if match is None:
            raise _bad_filter(f"filter is malformed at character {position}")
        predicate = Predicate(match["field"], match["op"], match["value"])
        if predicate.field.split(".")[0] not in allowed:
            raise _bad_filter(f"filter field {predicate.field!r} is not a field of this type")
        if predicate.field == "dateLastModified" and predicate.op != "~":
            try:
                _parse_instant(predicate.value)
            except ValueError:
                raise _bad_filter(
                    "dateLastModified must be compared with an ISO 8601 value"
                ) from None
        predicates.append(predicate)
        position = match.end()
        if position == len(text):
            break
        logical = _LOGICAL.match(text, position)
        if logical is None:
            raise _bad_filter(f"filter is malformed at character {position}")
        joins.add(logical.group(1))
        position = logical.end()
    if len(joins) > 1:
        raise _bad_filter("filter mixes AND and OR")
    return Filter(tuple(predicates), joins.pop() if joins else "AND")


def _bad_filter(description: str) -> OneRosterApiError:
    return OneRosterApiError(400, "invalid_filter_field", description)


def _values_at(item: Any, path: list[str]) -> Iterator[Any]:
    """Every value at a dotted path, fanning out over lists."""
    if isinstance(item, list):
        for element in item:
            yield from _values_at(element, path)
        return
    if not path:
        yield item
        return
    if isinstance(item, dict) and path[0] in item:
        yield from _values_at(item[path[0]], path[1:])


def _holds(predicate: Predicate, item: dict[str, Any]) -> bool:
    for value in _values_at(item, predicate.field.split(".")):
        if isinstance(value, dict):
            continue
        if _compare(predicate, str(value)):
            return True
    # "!=" on a missing value holds: the record has no such value.
    return predicate.op == "!=" and not any(
        True for _ in _values_at(item, predicate.field.split("."))
    )


def _compare(predicate: Predicate, actual: str) -> bool:
    op, wanted = predicate.op, predicate.value
    if op == "~":
        return wanted.lower() in actual.lower()
    left: Any = actual
    right: Any = wanted
    if predicate.field == "dateLastModified":
        left, right = _parse_instant(actual), _parse_instant(wanted)
    if op == "=":
        return bool(left == right)
    if op == "!=":
        return bool(left != right)
    if op == ">":
        return bool(left > right)
    if op == ">=":
        return bool(left >= right)
    if op == "<":
        return bool(left < right)
    return bool(left <= right)


# -- the simulator ---------------------------------------------------------------------------


@dataclass
class Token:
    """An issued bearer token."""

    scopes: frozenset[str]
    expires_at: float


@dataclass
class Failures:
    """Failures injected by ``/_sim/fail``."""

    remaining: int = 0
    status: int = 500
    retry_after: int | None = None


@dataclass
class SimulatorState:
    """Everything ``/_sim/reset`` forgets."""

    data: Dataset
    tokens: dict[str, Token] = field(default_factory=dict)
    nonces: dict[tuple[str, str], float] = field(default_factory=dict)
    failures: Failures = field(default_factory=Failures)
    requests: list[dict[str, Any]] = field(default_factory=list)


class OneRosterSimulator:
    """State and handlers of the simulated SIS (one aiohttp application)."""

    def __init__(self, data_folder: Path, key: str, secret: str) -> None:
        self.data_folder = data_folder
        self.key = key
        self.secret = secret
        self.token_ttl_s = DEFAULT_TOKEN_TTL_S
        self.state = SimulatorState(Dataset(data_folder))

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(client_max_size=64 * 1024)
        for root, version in ((V1P1, "1.1"), (V1P2, "1.2")):
            app.router.add_get(f"{root}/{{collection}}", self._api(version, self.collection))
            app.router.add_get(f"{root}/{{collection}}/{{id}}", self._api(version, self.single))
        app.router.add_post(TOKEN_PATH, self.token)
        app.router.add_post("/_sim/touch", self.touch)
        app.router.add_post("/_sim/fail", self.fail)
        app.router.add_post("/_sim/revoke", self.revoke)
        app.router.add_post("/_sim/config", self.configure)
        app.router.add_post("/_sim/load", self.load)
        app.router.add_post("/_sim/reset", self.reset)
        app.router.add_get("/_sim/requests", self.list_requests)
        return app

    # -- REST API --------------------------------------------------------------------------

    def _api(
        self,
        version: str,
        handler: Callable[[web.Request, str, Collection], Awaitable[web.Response]],
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def wrapped(request: web.Request) -> web.Response:
            entry: dict[str, Any] = {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "at": time.time(),
                "auth": _auth_scheme(request),
                "status": None,
            }
            self.state.requests.append(entry)
            try:
                self._injected_failure()
                scopes = self._authenticate(request, version)
                collection = COLLECTIONS.get(request.match_info["collection"])
                if collection is None:
                    raise OneRosterApiError(404, "unknownobject", "no such endpoint")
                if version == "1.2" and not scopes & {collection.scope, SCOPE_ROSTER}:
                    raise OneRosterApiError(
                        403, "forbidden", "the token's scope does not cover this"
                    )
                response = await handler(request, version, collection)
            except OneRosterApiError as exc:
                response = exc.response()
                entry["code_minor"] = exc.code_minor
            entry["status"] = response.status
            return response

        return wrapped

    def _injected_failure(self) -> None:
        failures = self.state.failures
        if failures.remaining <= 0:
            return
        failures.remaining -= 1
        headers = {} if failures.retry_after is None else {"Retry-After": str(failures.retry_after)}
        code_minor = "server_busy" if failures.status in (429, 503) else "internal_server_error"
        raise OneRosterApiError(failures.status, code_minor, "injected failure", headers)

    def _authenticate(self, request: web.Request, version: str) -> frozenset[str]:
        if version == "1.1":
            self._check_signature(request)
            return frozenset(KNOWN_SCOPES)
        return self._check_bearer(request)

    def _check_signature(self, request: web.Request) -> None:
        """OAuth 1.0a (RFC 5849) one-legged: a consumer key, no token; verified by oauthlib."""
        challenge = {"WWW-Authenticate": 'OAuth realm="OneRoster"'}
        try:
            params = oauth1.collect_parameters(
                uri_query=request.rel_url.raw_query_string,
                headers=dict(request.headers),
                exclude_oauth_signature=False,
            )
        except ValueError:
            raise _unauthorised("the OAuth parameters do not parse", challenge) from None
        oauth = {k: v for k, v in params if k.startswith("oauth_")}
        method = oauth.get("oauth_signature_method", "")
        if "oauth_signature" not in oauth or oauth.get("oauth_consumer_key") != self.key:
            raise _unauthorised("no valid OAuth 1.0a signature", challenge)
        if method not in SIGNATURE_METHODS or oauth.get("oauth_version", "1.0") != "1.0":
            raise _unauthorised(f"unsupported signature method {method!r}", challenge)
        try:
            timestamp = int(oauth.get("oauth_timestamp", ""))
        except ValueError:
            raise _unauthorised("oauth_timestamp is not a number", challenge) from None
        now = time.time()
        if abs(now - timestamp) > TIMESTAMP_WINDOW_S:
            raise _unauthorised("oauth_timestamp is outside the accepted window", challenge)
        nonce = (oauth.get("oauth_nonce", ""), str(timestamp))
        if not nonce[0] or nonce in self.state.nonces:
            raise _unauthorised("oauth_nonce is missing or was used before", challenge)
        signed = OAuthRequest(str(request.url), request.method, headers=dict(request.headers))
        signed.params = [(k, v) for k, v in params if k != "oauth_signature"]
        signed.signature = oauth["oauth_signature"]
        if not SIGNATURE_METHODS[method](signed, client_secret=self.secret):
            raise _unauthorised("the OAuth signature does not verify", challenge)
        # Only a verified request uses up its nonce: a forger cannot burn a client's nonces.
        self.state.nonces[nonce] = now
        cutoff = now - 2 * TIMESTAMP_WINDOW_S
        if len(self.state.nonces) > 10_000:
            self.state.nonces = {k: t for k, t in self.state.nonces.items() if t > cutoff}

    def _check_bearer(self, request: web.Request) -> frozenset[str]:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise _unauthorised(
                "a bearer token is required", {"WWW-Authenticate": 'Bearer realm="OneRoster"'}
            )
        token = self.state.tokens.get(value.strip())
        if token is None or token.expires_at <= time.time():
            raise _unauthorised(
                "the access token is invalid or has expired",
                {"WWW-Authenticate": 'Bearer realm="OneRoster", error="invalid_token"'},
            )
        return token.scopes

    def _renderer(self, request: web.Request, version: str) -> Renderer:
        root = V1P1 if version == "1.1" else V1P2
        return Renderer(self.state.data, f"{request.scheme}://{request.host}{root}", version)

    async def collection(
        self, request: web.Request, version: str, collection: Collection
    ) -> web.Response:
        """GET /<collection>: filtered, sorted, paged, selected."""
        query = request.query
        allowed = FIELDS[(collection.kind, version)]
        limit = _int_param(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        offset = _int_param(query, "offset", 0, 0, 10**9)
        selection = _selection(query.get("fields"), allowed)
        where = parse_filter(query["filter"], allowed) if query.get("filter") else None
        sort = query.get("sort")
        if sort is not None and sort not in allowed:
            raise OneRosterApiError(400, "invalid_sort_field", f"cannot sort by {sort!r}")
        order = query.get("orderBy", "asc")
        if order not in ("asc", "desc"):
            raise OneRosterApiError(400, "invaliddata", "orderBy must be asc or desc")
        renderer = self._renderer(request, version)
        data = self.state.data
        items = [
            renderer.render(collection.kind, row)
            for row in data.files[collection.file].values()
            if collection.where(data, row)
        ]
        if where is not None:
            items = [
                item
                for item, row in zip(items, self._rows(collection), strict=True)
                if _row_passes(where, item, row)
            ]
        if sort is not None:
            items.sort(key=lambda item: str(item.get(sort, "")), reverse=order == "desc")
        total = len(items)
        page = items[offset : offset + limit]
        if selection is not None:
            page = [{k: v for k, v in item.items() if k in selection} for item in page]
        headers = {"X-Total-Count": str(total)}
        links = _links(request, limit, offset, total)
        if links:
            headers["Link"] = links
        return web.json_response({collection.many: page}, headers=headers)

    def _rows(self, collection: Collection) -> list[Row]:
        data = self.state.data
        return [row for row in data.files[collection.file].values() if collection.where(data, row)]

    async def single(
        self, request: web.Request, version: str, collection: Collection
    ) -> web.Response:
        """GET /<collection>/{sourcedId}."""
        data = self.state.data
        row = data.files[collection.file].get(request.match_info["id"])
        if row is None or not collection.where(data, row):
            raise OneRosterApiError(404, "unknownobject", f"no such {collection.one}")
        item = self._renderer(request, version).render(collection.kind, row)
        selection = _selection(request.query.get("fields"), FIELDS[(collection.kind, version)])
        if selection is not None:
            item = {k: v for k, v in item.items() if k in selection}
        return web.json_response({collection.one: item})

    async def token(self, request: web.Request) -> web.Response:
        """POST /oauth/token: client credentials grant, HTTP Basic client authentication."""
        form = await request.post()
        entry: dict[str, Any] = {
            "method": "POST",
            "path": request.path,
            "query": {},
            "at": time.time(),
            "auth": _auth_scheme(request),
            "grant_type": str(form.get("grant_type", "")),
            "scope": str(form.get("scope", "")),
        }
        self.state.requests.append(entry)
        response = self._token_answer(request, str(form.get("grant_type", "")), form.get("scope"))
        entry["status"] = response.status
        return response

    def _token_answer(self, request: web.Request, grant: str, scope: object) -> web.Response:
        client = _basic_credentials(request.headers.get("Authorization", ""))
        if client is None or not (
            hmac.compare_digest(client[0].encode(), self.key.encode())
            and hmac.compare_digest(client[1].encode(), self.secret.encode())
        ):
            return web.json_response(
                {"error": "invalid_client"},
                status=401,
                headers={"WWW-Authenticate": 'Basic realm="OneRoster"'},
            )
        if grant != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        requested = frozenset(str(scope).split()) if scope else frozenset({SCOPE_CORE})
        if not requested or not requested <= KNOWN_SCOPES:
            return web.json_response({"error": "invalid_scope"}, status=400)
        access_token = secrets.token_urlsafe(32)
        self.state.tokens[access_token] = Token(requested, time.time() + self.token_ttl_s)
        return web.json_response(
            {
                "access_token": access_token,
                "token_type": "bearer",
                "expires_in": self.token_ttl_s,
                "scope": " ".join(sorted(requested)),
            },
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    # -- control API -----------------------------------------------------------------------

    async def touch(self, request: web.Request) -> web.Response:
        """POST /_sim/touch: records change now, so a delta read returns them."""
        body = await _json_object(request)
        name = body.get("collection", "users")
        table = self.state.data.files.get(str(name))
        ids = body.get("sourcedIds")
        if table is None:
            raise web.HTTPBadRequest(text=f"unknown collection {name!r}")
        if not isinstance(ids, list) or not all(isinstance(i, str) and i in table for i in ids):
            raise web.HTTPBadRequest(text="'sourcedIds' must list sourcedIds of the collection")
        changes = body.get("set", {})
        if not isinstance(changes, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in changes.items()
        ):
            raise web.HTTPBadRequest(text="'set' must map CSV columns to strings")
        try:
            at = _parse_instant(str(body["at"])) if body.get("at") else datetime.now(UTC)
        except ValueError:
            raise web.HTTPBadRequest(text="'at' must be ISO 8601") from None
        for sourced_id in ids:
            row = table[sourced_id]
            row.values.update({k: v for k, v in changes.items() if k != "sourcedId"})
            row.modified = at
        log.info("records touched", collection=name, count=len(ids))
        return web.json_response({"sourcedIds": ids, "dateLastModified": _instant_text(at)})

    async def fail(self, request: web.Request) -> web.Response:
        """POST /_sim/fail: the next ``count`` API requests fail with ``status``."""
        body = await _json_object(request)
        count, status, retry_after = body.get("count", 1), body.get("status", 500), None
        if not isinstance(count, int) or not 0 <= count <= 1000:
            raise web.HTTPBadRequest(text="'count' must be an integer from 0 to 1000")
        if status not in (429, 500, 502, 503, 504):
            raise web.HTTPBadRequest(text="'status' must be 429, 500, 502, 503 or 504")
        if body.get("retry_after") is not None:
            retry_after = body["retry_after"]
            if not isinstance(retry_after, int) or not 0 <= retry_after <= 3600:
                raise web.HTTPBadRequest(text="'retry_after' must be seconds from 0 to 3600")
        self.state.failures = Failures(count, status, retry_after)
        return web.json_response({"count": count, "status": status, "retry_after": retry_after})

    async def revoke(self, _request: web.Request) -> web.Response:
        """POST /_sim/revoke: every issued token stops working."""
        revoked = len(self.state.tokens)
        self.state.tokens.clear()
        return web.json_response({"revoked": revoked})

    async def configure(self, request: web.Request) -> web.Response:
        """POST /_sim/config."""
        body = await _json_object(request)
        if "token_ttl_s" in body:
            ttl = body["token_ttl_s"]
            if not isinstance(ttl, int) or not 1 <= ttl <= 86_400:
                raise web.HTTPBadRequest(text="'token_ttl_s' must be an integer from 1 to 86400")
            self.token_ttl_s = ttl
        return web.json_response({"token_ttl_s": self.token_ttl_s})

    async def load(self, request: web.Request) -> web.Response:
        """POST /_sim/load: serve the CSV set in ``data`` (a folder) from now on."""
        body = await _json_object(request)
        folder = body.get("data")
        if not isinstance(folder, str):
            raise web.HTTPBadRequest(text="'data' must name a folder of OneRoster CSV files")

        def read() -> Dataset:
            if not Path(folder).is_dir():
                raise SafeHubError(f"{folder}: not a folder")
            return Dataset(Path(folder), previous=self.state.data)

        try:
            self.state.data = await asyncio.to_thread(read)
        except SafeHubError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        counts = {name: len(rows) for name, rows in self.state.data.files.items() if rows}
        log.info("data set loaded", records=sum(counts.values()))
        return web.json_response({"loaded": counts})

    async def reset(self, _request: web.Request) -> web.Response:
        """POST /_sim/reset: the data as loaded from disk, no tokens, failures or log."""
        self.state = SimulatorState(Dataset(self.data_folder))
        self.token_ttl_s = DEFAULT_TOKEN_TTL_S
        return web.json_response({"reset": True})

    async def list_requests(self, _request: web.Request) -> web.Response:
        """GET /_sim/requests: every API and token request, in arrival order."""
        return web.json_response(self.state.requests)


def _row_passes(where: Filter, item: dict[str, Any], row: Row) -> bool:
    # dateLastModified is compared at full precision, not at the rendered milliseconds, so a
    # change made just after the delta's instant is never lost to rounding.
    exact = {**item, "dateLastModified": row.modified.isoformat()}
    return where.matches(exact)


def _unauthorised(description: str, headers: dict[str, str]) -> OneRosterApiError:
    return OneRosterApiError(401, "unauthorisedrequest", description, headers)


def _auth_scheme(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header:
        return header.split(" ", 1)[0]
    return "OAuth-query" if "oauth_signature" in request.query else None


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def _int_param(query: Any, name: str, default: int, low: int, high: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise OneRosterApiError(
            400, "invaliddata", f"{name} must be an integer from {low} to {high}"
        )
    return value


def _selection(text: str | None, allowed: frozenset[str]) -> frozenset[str] | None:
    if text is None:
        return None
    wanted = frozenset(_split(text))
    unknown = sorted(wanted - allowed)
    if unknown or not wanted:
        raise OneRosterApiError(
            400, "invalid_selection_field", f"cannot select {', '.join(unknown) or 'nothing'}"
        )
    return wanted


def _links(request: web.Request, limit: int, offset: int, total: int) -> str:
    """RFC 8288 ``Link`` relations for paging through the collection."""
    base = f"{request.scheme}://{request.host}{request.path}"
    kept = [(k, v) for k, v in request.query.items() if k not in ("limit", "offset")]

    def link(at: int, rel: str) -> str:
        return f'<{base}?{urlencode([*kept, ("limit", limit), ("offset", at)])}>; rel="{rel}"'

    last = max(0, (total - 1) // limit * limit)
    relations = [link(0, "first")]
    if offset > 0:
        relations.append(link(max(0, offset - limit), "prev"))
    if offset + limit < total:
        relations.append(link(offset + limit, "next"))
    relations.append(link(last, "last"))
    return ", ".join(relations)


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text="body is not valid JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return body


async def serve(
    simulator: OneRosterSimulator, *, host: str, port: int, port_file: Path | None
) -> None:
    """Serve until SIGTERM or SIGINT; the bound port goes to ``port_file`` once listening."""

    def listening(bound: int) -> None:
        data = simulator.state.data
        log.info(
            "OneRoster simulator listening",
            url=f"http://{host}:{bound}",
            data=str(simulator.data_folder),
            counts={name: len(rows) for name, rows in data.files.items() if rows},
        )

    await serve_until_signalled(
        simulator.app(),
        ListenSettings(host=host, port=port, port_file=port_file),
        on_listening=listening,
    )


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Simulator of a SIS's OneRoster REST API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0: any free port")
    parser.add_argument("--port-file", type=Path, help="write the bound port here")
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="a OneRoster CSV folder to serve"
    )
    args = parser.parse_args(argv)
    args.key = os.environ.get(KEY_VARIABLE, "")
    args.secret = os.environ.get(SECRET_VARIABLE, "")
    if not args.key or not args.secret:
        parser.error(f"{KEY_VARIABLE} and {SECRET_VARIABLE} must be set")
    if not args.data.is_dir():
        parser.error(f"--data {args.data} is not a folder")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the simulator until SIGTERM/SIGINT."""
    args = _parse_args(argv)
    configure_logging()
    try:
        simulator = OneRosterSimulator(args.data, args.key, args.secret)
    except (SafeHubError, OSError, csv.Error) as exc:
        raise SystemExit(f"cannot serve {args.data}: {exc}") from exc
    asyncio.run(serve(simulator, host=args.host, port=args.port, port_file=args.port_file))


if __name__ == "__main__":
    main()
