"""Audience ids → recipients, resolved from the directory (places) and the people (who), the
people as they are when each notification is resolved (the live directory).

Audience ids (``NotificationRequested.audiences``)::

    staff:<school>  staff:<school>:role=<role>  staff:<school>:building=<b>
    guardians:<school>  guardians:student=<student id>  responders:<school>
    pa:<school>  signage:<school>        (endpoints, through AnnouncementCommand)

Errors name the audience or recipient id that is wrong, never contact details.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from safehub.kernel.directory import Directory, DirectorySource, School, UnknownPlaceError
from safehub.kernel.errors import SafeHubError
from safehub.kernel.people import Contact, People, StaffRole
from safehub.kernel.views import PeopleSource, people_source

#: Endpoint audiences and the channel that reaches them.
ENDPOINT_CHANNELS = {"pa": "PUBLIC_ADDRESS", "signage": "DIGITAL_SIGNAGE"}


class AudienceError(SafeHubError):
    """An audience or recipient that cannot be resolved (the message names it)."""


@dataclass(frozen=True)
class Target:
    """One recipient: a person (with contact details, PII) or a PA/signage endpoint."""

    recipient_id: str
    kind: str  # staff | guardian | responder | endpoint
    school_id: str
    contact: Contact | None = None
    endpoint_channel: str | None = None
    requested_channels: tuple[str, ...] = ()

    @property
    def language(self) -> str:
        """BCP 47 tag of the recipient's language."""
        if self.contact is not None and self.contact.language.value == "es":
            return "es-US"
        return "en-US"

    def addresses(self) -> dict[str, str]:
        """Channel → address this target can be reached at."""
        if self.endpoint_channel is not None:
            return {self.endpoint_channel: self.recipient_id}
        contact = self.contact
        found: dict[str, str] = {}
        if contact is None:
            return found
        if contact.phone:
            found["SMS"] = contact.phone
            found["VOICE"] = contact.phone
        if contact.email:
            found["EMAIL"] = contact.email
        if contact.push_token:
            found["PUSH"] = contact.push_token
        return found


class _Index:
    """The targets of one people snapshot, by id and by phone."""

    def __init__(self, people: People) -> None:
        self.people = people
        self.targets: dict[str, Target] = {}
        self.by_phone: dict[str, list[str]] = {}
        for school in people.schools:
            for member in school.staff:
                self._add(Target(member.id, "staff", school.id, member.contact))
            for guardian in school.guardians:
                self._add(Target(guardian.id, "guardian", school.id, guardian.contact))
            for responder in school.responders:
                self._add(Target(responder.id, "responder", school.id, responder.contact))

    def _add(self, target: Target) -> None:
        if target.recipient_id in self.targets:  # a person of several schools: the first
            return
        self.targets[target.recipient_id] = target
        if target.contact is not None and target.contact.phone:
            self.by_phone.setdefault(target.contact.phone, []).append(target.recipient_id)


class Audiences:
    """Resolves audience ids and explicit recipient ids against the directory and the people.

    ``directory`` and ``people`` are sources (the live views, or fixed snapshots): every
    resolution reads each as it is at that moment, one snapshot throughout, so a school, a
    building or a guardian added at run time is reached by the next message.
    """

    def __init__(self, directory: DirectorySource, people: People | PeopleSource) -> None:
        self._directory = directory
        self._people = people_source(people)
        self._source: Callable[[], People] = self._people.current
        self._index = _Index(self._source())

    def _current(self) -> _Index:
        snapshot = self._source()
        index = self._index
        if index.people is not snapshot:  # a new snapshot: index it once
            index = _Index(snapshot)
            self._index = index
        return index

    @property
    def people(self) -> People:
        """The people now."""
        return self._current().people

    @property
    def directory(self) -> Directory:
        """The directory now (a snapshot)."""
        return self._directory.current()

    def person(self, recipient_id: str) -> Target | None:
        """A person by id, if the people have them now."""
        return self._current().targets.get(recipient_id)

    def ids_by_phone(self, phone: str) -> list[str]:
        """Recipient ids reachable at ``phone`` (for SMS replies)."""
        return list(self._current().by_phone.get(phone, ()))

    def school(self, school_id: str, directory: Directory | None = None) -> School:
        """A school of ``directory`` (default: the directory now), or AudienceError naming it."""
        try:
            return (directory or self._directory.current()).school(school_id)
        except UnknownPlaceError as exc:
            raise AudienceError(f"unknown school {school_id!r}") from exc

    def resolve(
        self,
        audiences: Sequence[str],
        recipients: Iterable[tuple[str, Sequence[str]]] = (),
        *,
        district: str | None = None,
    ) -> list[Target]:
        """Every target of the audiences and explicit recipients, each once, in order.

        ``district``: the request's tenant; an audience of another district is refused.
        """
        index = self._current()  # one snapshot of each for the whole request
        places = self._directory.current()
        resolved: dict[str, Target] = {}
        for audience in audiences:
            for target in self._audience(index, places, audience, district):
                resolved.setdefault(target.recipient_id, target)
        for recipient_id, channels in recipients:
            target = self._explicit(index, places, recipient_id, district)
            resolved[recipient_id] = Target(
                target.recipient_id,
                target.kind,
                target.school_id,
                target.contact,
                target.endpoint_channel,
                tuple(channels),
            )
        if not resolved:
            raise AudienceError("the request names no audience and no recipient")
        return list(resolved.values())

    @staticmethod
    def _check_district(places: Directory, school: School, what: str, district: str | None) -> None:
        if district is not None and places.district_of(school.id).id != district:
            raise AudienceError(f"{what} is outside the request's district {district!r}")

    def _explicit(
        self, index: _Index, places: Directory, recipient_id: str, district: str | None
    ) -> Target:
        kind, _, rest = recipient_id.partition(":")
        if kind in ENDPOINT_CHANNELS and rest:
            return self._audience(index, places, recipient_id, district)[0]
        target = index.targets.get(recipient_id)
        if target is None:
            raise AudienceError(f"unknown recipient {recipient_id!r}")
        school = self.school(target.school_id, places)
        self._check_district(places, school, f"recipient {recipient_id!r}", district)
        return target

    def _audience(
        self, index: _Index, places: Directory, audience: str, district: str | None
    ) -> list[Target]:
        kind, _, rest = audience.partition(":")
        if not rest:
            raise AudienceError(f"audience {audience!r} is not <kind>:<school>[:filter]")
        if kind == "guardians" and rest.startswith("student="):
            student = rest.removeprefix("student=")
            found = [index.targets[g.id] for g in index.people.guardians_of(student)]
            if not found:
                raise AudienceError(f"audience {audience!r}: no guardian of that student")
            school = self.school(found[0].school_id, places)
            self._check_district(places, school, f"audience {audience!r}", district)
            return found
        school_id, _, selector = rest.partition(":")
        school = self.school(school_id, places)
        self._check_district(places, school, f"audience {audience!r}", district)
        if kind in ENDPOINT_CHANNELS and not selector:
            return [
                Target(audience, "endpoint", school.id, endpoint_channel=ENDPOINT_CHANNELS[kind])
            ]
        if kind == "staff":
            return self._staff(index, school, selector, audience)
        if kind == "guardians" and not selector:
            return [index.targets[g.id] for g in index.people.guardians(school.id)]
        if kind == "responders" and not selector:
            return [index.targets[r.id] for r in index.people.responders(school.id)]
        raise AudienceError(f"unknown audience {audience!r}")

    def _staff(self, index: _Index, school: School, selector: str, audience: str) -> list[Target]:
        if selector.startswith("role="):
            role = selector.removeprefix("role=")
            if role not in {r.value for r in StaffRole}:
                raise AudienceError(f"audience {audience!r}: unknown role {role!r}")
            members = index.people.staff(school.id, role=StaffRole(role))
        elif selector.startswith("building="):
            building = selector.removeprefix("building=")
            if school.building(building) is None:
                raise AudienceError(f"audience {audience!r}: no building {building!r}")
            members = index.people.staff(school.id, building=building)
        elif not selector:
            members = index.people.staff(school.id)
        else:
            raise AudienceError(f"audience {audience!r}: unknown filter {selector!r}")
        return [index.targets[m.id] for m in members]
