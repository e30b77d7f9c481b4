"""Who may call notify's API: staff members with a bearer token, authorised by the people.

Same scheme as the timeline's reviewers: the caller sends ``Authorization: Bearer <token>``
and notify keeps only the token's SHA-256 (hex), in the *operators file*
(``SAFEHUB_NOTIFY__OPERATORS_FILE``)::

    {"operators": [{"staff_id": "stf-lincoln-000", "token_sha256": "<64 hex digits>"}]}

A token names a staff member of the people file; their school and role come from there,
never from the request. Reading status or the held messages and deciding on one
are for administrators of that school. The optional ``status_token`` is a read-only
credential for a monitoring system (status and Restricted CAP alerts of every school; never
held messages or decisions). Nothing configured means nobody is let in: there is no switch
that opens the API.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from safehub.kernel.errors import ConfigError, SafeHubError
from safehub.kernel.people import People, StaffRole
from safehub.kernel.views import PeopleSource, people_source

#: Who may read status and held messages and decide on family and public messages.
ADMINISTRATOR = StaffRole.ADMINISTRATOR
#: The caller id of the monitoring system's ``status_token``.
STATUS_READER = "status-token"
BEARER_HINT = (
    "send 'Authorization: Bearer <token>' with the token of an administrator of the school "
    "(listed by SHA-256 in notify's operators file)"
)


def token_sha256(token: str) -> str:
    """The SHA-256 (hex) of a bearer token, as the operators file stores it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Operator(BaseModel):
    """A staff member allowed to use notify's API, by the digest of their bearer token."""

    model_config = ConfigDict(extra="forbid")

    staff_id: str = Field(min_length=1, max_length=200)
    token_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class OperatorsFile(BaseModel):
    """The operators file."""

    model_config = ConfigDict(extra="forbid")

    operators: list[Operator] = Field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> OperatorsFile:
        """Read and validate it (ConfigError names the file and the problem, never a digest)."""
        try:
            return cls.model_validate_json(path.read_bytes())
        except OSError as exc:
            raise ConfigError(
                f"SAFEHUB_NOTIFY__OPERATORS_FILE {path} cannot be read: {exc.strerror}"
            ) from None
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(
                f"SAFEHUB_NOTIFY__OPERATORS_FILE {path} is invalid: {problems}"
            ) from None


class AuthError(SafeHubError):
    """A request refused: 401 (who are you?) or 403 (not yours); the message says what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: a staff member of one school, or the status reader."""

    id: str
    school_id: str | None  # None: the status reader (every school, read only)
    role: StaffRole | None

    @property
    def status_reader(self) -> bool:
        """Whether this is the monitoring system's read-only status token."""
        return self.school_id is None


class ApiAuth:
    """Authenticates bearer tokens and authorises callers per school.

    ``people`` is a source (the live people, or a fixed snapshot). The operators file is
    checked against the people at start; each request then takes the holder's school and role
    from the people as they are then, so a principal who moved school, lost the role or left
    the roster at run time is judged on that from the next request.
    """

    def __init__(
        self, people: People | PeopleSource, operators: list[Operator], status_token: SecretStr
    ) -> None:
        self._people = people_source(people)
        now = self._people.current()
        staff = {
            member.id: (school.id, member.role) for school in now.schools for member in school.staff
        }
        self._operators: list[tuple[str, str]] = []
        seen: set[str] = set()
        for operator in operators:
            found = staff.get(operator.staff_id)
            if found is None:
                raise ConfigError(
                    f"operators file: staff id {operator.staff_id[:64]!r} is not a staff "
                    "member of any school in the people file; remove it or fix the id"
                )
            if operator.token_sha256 in seen:
                raise ConfigError(
                    f"operators file: the token of {operator.staff_id[:64]!r} is also another "
                    "operator's; give every person their own token"
                )
            seen.add(operator.token_sha256)
            self._operators.append((operator.token_sha256, operator.staff_id))
        self._status_token = status_token.get_secret_value()

    @property
    def configured(self) -> bool:
        """Whether anyone at all can be let in."""
        return bool(self._operators or self._status_token)

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller of an ``Authorization`` header value (AuthError 401 if none or unknown)."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError(401, f"credentials required: {BEARER_HINT}")
        if self._status_token and hmac.compare_digest(
            token.encode("utf-8"), self._status_token.encode("utf-8")
        ):
            return Caller(STATUS_READER, None, None)
        digest = token_sha256(token)
        found = None
        for known, staff_id in self._operators:  # every entry compared: constant time
            if hmac.compare_digest(known, digest):
                found = staff_id
        if found is None:
            raise AuthError(401, f"unknown bearer token: {BEARER_HINT}")
        people = self._people.current()  # the holder as the people have them now
        school_id = people.school_of(found)
        member = people.staff_member(school_id, found) if school_id else None
        if school_id is None or member is None:
            raise AuthError(
                401,
                f"the holder of this token ({found[:64]}) is no longer a staff member of any "
                "school; ask an administrator for access",
            )
        return Caller(found, school_id, member.role)

    def authorise(self, caller: Caller, school_id: str | None, *, decide: bool) -> None:
        """Refuse (AuthError 403) unless ``caller`` may read (or, with ``decide``, decide)
        for ``school_id``; with ``school_id`` None only the role is checked."""
        if caller.status_reader:
            if decide:
                raise AuthError(
                    403,
                    "the status token only reads delivery status; held family messages and "
                    "decisions need an administrator's own token",
                )
            return
        if caller.role is not ADMINISTRATOR:
            role = caller.role.value if caller.role else "staff member"
            raise AuthError(
                403,
                f"{caller.id} is a {role}; only an {ADMINISTRATOR.value} of the school may "
                "use this (ask one of them)",
            )
        if school_id is not None and school_id != caller.school_id:
            raise AuthError(
                403,
                f"{caller.id} is an {ADMINISTRATOR.value} of {caller.school_id}, not of "
                f"{school_id[:64]}; use a token of that school's administrator",
            )
