"""``safehub.ingest.v1.IngestService``: panic, camera, door and SRP reports into events.

Every call runs the same steps: who is calling (certificate CN), may it use this RPC at all
(scope), is the request well formed (every bad field named), may it act for this school
(district and school list), does the place exist, then publish once per client_event_id
and answer only after the broker confirmed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import grpc
import structlog

from safehub.contracts.names import EventType
from safehub.gen.safehub.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from safehub.kernel.codec import Event
from safehub.kernel.directory import Client, Directory, DirectorySource, Scope
from safehub.kernel.envelope import event_id_for, new_event
from services.gateway import mapping
from services.gateway.decisions import Decisions, Outcome, answer
from services.gateway.intake import Intake, Submission, fingerprint
from services.gateway.limits import paced
from services.gateway.rpc import RejectionError, caller, unary
from services.gateway.settings import GatewaySection
from services.gateway.validation import Check, known_door, known_place

log = structlog.get_logger(__name__)

_WHAT = {
    Scope.PANIC: "panic alerts",
    Scope.CAMERA: "camera alerts",
    Scope.DOORS: "door states",
    Scope.SRP: "SRP actions",
    Scope.CONNECTOR: "connector sessions",
}


def require_scope(client: Client, scope: Scope) -> None:
    """PERMISSION_DENIED unless ``client`` holds ``scope`` at all."""
    if scope not in client.scopes:
        raise RejectionError(
            grpc.StatusCode.PERMISSION_DENIED,
            f"client {client.id!r} may not send {_WHAT[scope]}",
        )


def authorised_caller(context: grpc.ServicerContext, directory: Directory, scope: Scope) -> Client:
    """The calling client system, if its certificate is known and it holds ``scope``."""
    client = caller(context, directory)
    require_scope(client, scope)
    return client


def authorize(directory: Directory, client: Client, scope: Scope, school_id: str) -> None:
    """PERMISSION_DENIED unless ``client`` may act for ``school_id``.

    Unknown schools get the same answer as schools of other districts, so a caller cannot
    probe which schools exist elsewhere.
    """
    if not directory.may(client, scope, school_id):
        raise RejectionError(
            grpc.StatusCode.PERMISSION_DENIED,
            f"school {school_id!r} is outside the scope of client {client.id!r}",
        )


class DoorReport:
    """The fields a door state report has, whether it came by RPC or from a connector."""

    def __init__(self, message: Any) -> None:
        self.message = message
        self.client_event_id: str = message.client_event_id
        self.place = message.place
        self.has_place: bool = message.HasField("place")
        self.door_id: str = message.door_id
        self.state: int = message.state
        self.exterior: bool = message.exterior
        self.occurred_at = message.occurred_at
        self.has_occurred_at: bool = message.HasField("occurred_at")
        self.exercise: bool = message.exercise


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    """The ingest RPCs."""

    def __init__(
        self,
        directory: DirectorySource,
        intake: Intake,
        settings: GatewaySection,
        decisions: Decisions | None = None,
    ) -> None:
        self._directory = directory
        self._intake = intake
        self._settings = settings
        self._decisions = decisions
        self._skew = timedelta(seconds=settings.max_clock_skew_s)

    # -- RPCs ----------------------------------------------------------------------------

    @unary
    def ReportPanic(  # noqa: N802 (gRPC method name)
        self, request: ingest_pb2.ReportPanicRequest, context: grpc.ServicerContext
    ) -> ingest_pb2.ReportPanicResponse:
        """A panic alert becomes a PanicAlert on the alerts topic."""
        directory = self._directory.current()  # one snapshot for the whole call
        client = authorised_caller(context, directory, Scope.PANIC)
        check = Check()
        client_event_id = check.ident("client_event_id", request.client_event_id)
        place = check.place(
            "place", request.place, request.HasField("place"), building_required=True
        )
        device_id = check.ident("device_id", request.device_id)
        role = check.enum(
            "reporter_role", request.reporter_role, mapping.REPORTER_ROLE, required=False
        )
        panic_type = check.enum("panic_type", request.panic_type, mapping.PANIC_TYPE)
        occurred_at = check.timestamp(
            "occurred_at",
            request.occurred_at,
            request.HasField("occurred_at"),
            required=True,
            max_skew=None,  # life-safety: any real clock; the hub works on its own
        )
        check.raise_if_any()
        assert client_event_id and place and device_id and role and panic_type and occurred_at
        school_id, building, room = place
        authorize(directory, client, Scope.PANIC, school_id)
        known_place(directory, school_id, building, room)
        event = new_event(
            EventType.PANIC_ALERT,
            source=client.id,
            tenant=directory.tenant(school_id),
            building=building,
            room=room,
            exercise=request.exercise,
            occurred_at=occurred_at,
            event_id=event_id_for(client.id, client_event_id),
            payload={
                "device_id": device_id,
                "device_kind": "OTHER",
                "panic_type": panic_type,
                "silent": request.silent,
                "reporter_role": role,
                "activated_by": None,
                "floor": None,
                "latitude": None,
                "longitude": None,
                "location_text": None,
            },
        )
        submission = self._accept("ReportPanic", client, school_id, event, request)
        return ingest_pb2.ReportPanicResponse(
            event_id=submission.event_id, duplicate=submission.duplicate
        )

    @unary
    def ReportCameraAlert(  # noqa: N802
        self, request: ingest_pb2.ReportCameraAlertRequest, context: grpc.ServicerContext
    ) -> ingest_pb2.ReportCameraAlertResponse:
        """A camera analytic's alert becomes a CameraAlert on the alerts topic."""
        directory = self._directory.current()  # one snapshot for the whole call
        client = authorised_caller(context, directory, Scope.CAMERA)
        check = Check()
        client_event_id = check.ident("client_event_id", request.client_event_id)
        place = check.place(
            "place", request.place, request.HasField("place"), building_required=False
        )
        camera_id = check.ident("camera_id", request.camera_id)
        analytic = check.enum("analytic", request.analytic, mapping.CAMERA_ANALYTIC)
        confidence = check.unit_interval("confidence", request.confidence)
        clip_url = check.url("clip_url", request.clip_url)
        occurred_at = check.timestamp(
            "occurred_at",
            request.occurred_at,
            request.HasField("occurred_at"),
            required=True,
            max_skew=None,  # life-safety: any real clock; the hub works on its own
        )
        check.raise_if_any()
        assert client_event_id and place and camera_id and analytic and occurred_at
        assert confidence is not None
        school_id, building, room = place
        authorize(directory, client, Scope.CAMERA, school_id)
        known_place(directory, school_id, building, room)
        event = new_event(
            EventType.CAMERA_ALERT,
            source=client.id,
            tenant=directory.tenant(school_id),
            building=building,
            room=room,
            exercise=request.exercise,
            occurred_at=occurred_at,
            event_id=event_id_for(client.id, client_event_id),
            payload={
                "camera_id": camera_id,
                # The caller's own id of this report is the vendor's alert id.
                "vendor_alert_id": client_event_id,
                "analytic": analytic,
                "confidence": confidence,
                "clip_url": clip_url,
                "snapshot_url": None,
            },
        )
        submission = self._accept("ReportCameraAlert", client, school_id, event, request)
        return ingest_pb2.ReportCameraAlertResponse(
            event_id=submission.event_id, duplicate=submission.duplicate
        )

    @unary
    def ReportDoorState(  # noqa: N802
        self, request: ingest_pb2.ReportDoorStateRequest, context: grpc.ServicerContext
    ) -> ingest_pb2.ReportDoorStateResponse:
        """One door state change becomes a DoorLockState on the doors topic."""
        directory = self._directory.current()  # one snapshot for the whole call
        client = authorised_caller(context, directory, Scope.DOORS)
        event = self.door_event(client, DoorReport(request), Scope.DOORS, directory)
        school_id = str(event["envelope"]["tenant"]["school"])
        submission = self._accept("ReportDoorState", client, school_id, event, request)
        return ingest_pb2.ReportDoorStateResponse(
            event_id=submission.event_id, duplicate=submission.duplicate
        )

    @unary
    def StreamDoorStates(  # noqa: N802
        self,
        request_iterator: Iterator[ingest_pb2.ReportDoorStateRequest],
        context: grpc.ServicerContext,
    ) -> ingest_pb2.StreamDoorStatesResponse:
        """Many door state changes: each item accepted or rejected on its own.

        Items are processed as they come (bounded memory however long the stream); a caller
        that sends nothing for ``stream_idle_timeout_s`` gets DEADLINE_EXCEEDED.
        """
        items = paced(request_iterator, self._settings.stream_idle_timeout_s, "StreamDoorStates")
        accepted, rejected, errors, duplicates = self._door_batch(items, context)
        return ingest_pb2.StreamDoorStatesResponse(
            accepted_count=accepted,
            rejected_count=rejected,
            duplicate_count=duplicates,
            errors=errors,
        )

    @unary
    def ReportDoorStates(  # noqa: N802
        self, request: ingest_pb2.ReportDoorStatesRequest, context: grpc.ServicerContext
    ) -> ingest_pb2.ReportDoorStatesResponse:
        """A batch of door state changes in one message (cheapest for high-volume feeds)."""
        accepted, rejected, errors, duplicates = self._door_batch(iter(request.items), context)
        return ingest_pb2.ReportDoorStatesResponse(
            accepted_count=accepted,
            rejected_count=rejected,
            duplicate_count=duplicates,
            errors=errors,
        )

    def _door_batch(
        self,
        items: Iterator[ingest_pb2.ReportDoorStateRequest],
        context: grpc.ServicerContext,
    ) -> tuple[int, int, list[ingest_pb2.StreamItemError], int]:
        """Validate and publish door states one by one; (accepted, rejected, errors, duplicates).

        At most ``stream_window`` published items wait for the broker's confirmation (the
        next waits for the oldest), and only the first ``max_stream_errors`` rejections are
        listed, so memory does not grow with the length of the stream.
        """
        client = authorised_caller(context, self._directory.current(), Scope.DOORS)
        errors = _Errors(self._settings.max_stream_errors)
        window: deque[tuple[int, str, Submission]] = deque()
        accepted = duplicates = 0
        limit = self._settings.max_stream_items
        room = self._settings.stream_window

        def settle(keep: int) -> None:
            nonlocal accepted
            while len(window) > keep or (window and _settled(window[0][2])):
                index, client_event_id, submission = window.popleft()
                try:
                    self._intake.confirm(submission)
                    accepted += 1
                except RejectionError as rejection:
                    errors.add(_item_error(index, client_event_id, rejection))

        try:
            for index, item in enumerate(items):
                if index >= limit:
                    # Keep reading so the caller gets an answer, but accept nothing more.
                    errors.add(
                        ingest_pb2.StreamItemError(
                            index=index,
                            client_event_id=item.client_event_id[:128],
                            reason=ingest_pb2.REJECT_REASON_INVALID_ARGUMENT,
                            detail=f"more than {limit} items in one batch; send bounded batches",
                        )
                    )
                    continue
                try:
                    event = self.door_event(client, DoorReport(item), Scope.DOORS)
                    submission = self._intake.submit(event, fingerprint(item))
                except RejectionError as rejection:
                    errors.add(_item_error(index, item.client_event_id, rejection))
                    continue
                if submission.duplicate:
                    duplicates += 1
                window.append((index, item.client_event_id, submission))
                settle(room)
        except RejectionError as rejection:
            # The stream itself was refused (idle, malformed item): what came before stands.
            settle(0)
            raise RejectionError(
                rejection.code,
                f"{rejection.message} ({accepted} accepted, {errors.count} rejected before)",
                rejection.violations,
            ) from rejection
        except BaseException:
            settle(0)  # the caller is gone; still confirm (or release) what was published
            raise
        settle(0)
        log.info(
            "door states received",
            client=client.id,
            accepted=accepted,
            rejected=errors.count,
            duplicates=duplicates,
        )
        return accepted, errors.count, errors.listed(), duplicates

    @unary
    def RequestSrpAction(  # noqa: N802
        self, request: ingest_pb2.RequestSrpActionRequest, context: grpc.ServicerContext
    ) -> ingest_pb2.RequestSrpActionResponse:
        """An SRP action (or ALL CLEAR) becomes an SrpActionRequested on the alerts topic."""
        directory = self._directory.current()  # one snapshot for the whole call
        client = authorised_caller(context, directory, Scope.SRP)
        check = Check()
        client_event_id = check.ident("client_event_id", request.client_event_id)
        action = check.enum("action", request.action, mapping.SRP_ACTION)
        place = check.place(
            "place",
            request.place,
            request.HasField("place"),
            building_required=False,
            room_allowed=False,
        )
        requested_by = check.ident("requested_by", request.requested_by)
        evacuate_to = check.text("evacuate_to", request.evacuate_to, max_len=200)
        hazard = strategy = None
        if action == "EVACUATE" and not request.evacuate_to.strip():
            check.add("evacuate_to", "is required for EVACUATE")
        if action != "EVACUATE" and request.evacuate_to:
            check.add("evacuate_to", "is only used with EVACUATE")
        if action == "SHELTER":
            hazard = check.enum("shelter_hazard", request.shelter_hazard, mapping.SHELTER_HAZARD)
            strategy = check.enum(
                "shelter_strategy", request.shelter_strategy, mapping.SHELTER_STRATEGY
            )
        else:
            if request.shelter_hazard:
                check.add("shelter_hazard", "is only used with SHELTER")
            if request.shelter_strategy:
                check.add("shelter_strategy", "is only used with SHELTER")
        note = check.text("note", request.note)
        check.raise_if_any()
        assert client_event_id and action and place and requested_by
        school_id, building, _ = place
        authorize(directory, client, Scope.SRP, school_id)
        known_place(directory, school_id, building, None)
        event = new_event(
            EventType.SRP_ACTION_REQUESTED,
            source=client.id,
            tenant=directory.tenant(school_id),
            building=building,
            exercise=request.exercise,
            event_id=event_id_for(client.id, client_event_id),
            payload={
                "request_id": client_event_id,
                "action": action,
                "evacuate_location": evacuate_to,
                "shelter_hazard": hazard,
                "shelter_strategy": strategy,
                "requested_by": requested_by,
                # The request does not say the requester's role.
                "requested_by_role": "UNKNOWN",
                "message": note,
            },
        )
        outcome, incident_id, submission = self._decided(
            "RequestSrpAction", client, school_id, event, request
        )
        return ingest_pb2.RequestSrpActionResponse(
            event_id=submission.event_id,
            duplicate=submission.duplicate,
            incident_hint=incident_id,
            outcome=outcome,
        )

    @unary
    def CancelPanic(  # noqa: N802
        self, request: ingest_pb2.CancelPanicRequest, context: grpc.ServicerContext
    ) -> ingest_pb2.CancelPanicResponse:
        """A cancellation becomes a PanicCancelled naming the panic's event id."""
        directory = self._directory.current()  # one snapshot for the whole call
        client = authorised_caller(context, directory, Scope.PANIC)
        check = Check()
        client_event_id = check.ident("client_event_id", request.client_event_id)
        place = check.place(
            "place", request.place, request.HasField("place"), building_required=False
        )
        panic_event_id: str | None = None
        match request.WhichOneof("panic"):
            case "panic_client_event_id":
                panic_cid = check.ident("panic_client_event_id", request.panic_client_event_id)
                if panic_cid and panic_cid == request.client_event_id:
                    check.add(
                        "client_event_id",
                        "must differ from the panic_client_event_id of the panic",
                    )
                elif panic_cid:
                    panic_event_id = event_id_for(client.id, panic_cid)
            case "panic_event_id":
                panic_event_id = check.event_uuid("panic_event_id", request.panic_event_id)
            case _:
                check.add("panic", "set panic_client_event_id or panic_event_id")
        device_id = check.ident("device_id", request.device_id)
        reason = check.text("reason", request.reason, required=True, max_len=500)
        cancelled_by = check.ident("cancelled_by", request.cancelled_by, required=False)
        occurred_at = check.timestamp(
            "occurred_at",
            request.occurred_at,
            request.HasField("occurred_at"),
            required=False,
            max_skew=None,  # life-safety: any real clock; the hub works on its own
        )
        check.raise_if_any()
        assert client_event_id and place and panic_event_id and device_id and reason
        school_id, building, room = place
        authorize(directory, client, Scope.PANIC, school_id)
        known_place(directory, school_id, building, room)
        event = new_event(
            EventType.PANIC_CANCELLED,
            source=client.id,
            tenant=directory.tenant(school_id),
            building=building,
            room=room,
            causation_id=panic_event_id,
            exercise=request.exercise,
            occurred_at=occurred_at,
            event_id=event_id_for(client.id, client_event_id),
            payload={
                "panic_event_id": panic_event_id,
                "device_id": device_id,
                "reason": reason,
                "cancelled_by": cancelled_by or client.id,
            },
        )
        outcome, _incident, submission = self._decided(
            "CancelPanic", client, school_id, event, request
        )
        return ingest_pb2.CancelPanicResponse(
            event_id=submission.event_id,
            duplicate=submission.duplicate,
            panic_event_id=panic_event_id,
            outcome=outcome,
        )

    # -- shared --------------------------------------------------------------------------

    def door_event(
        self,
        client: Client,
        report: DoorReport,
        scope: Scope,
        directory: Directory | None = None,
    ) -> Event:
        """A DoorLockState event from a door report, validated and authorised against
        ``directory`` (the call's snapshot), else the directory now (each item of a batch or a
        connector's stream is its own decision)."""
        if directory is None:
            directory = self._directory.current()
        check = Check()
        client_event_id = check.ident("client_event_id", report.client_event_id)
        place = check.place("place", report.place, report.has_place, building_required=True)
        door_id = check.ident("door_id", report.door_id)
        state = check.enum("state", report.state, mapping.DOOR_STATE)
        occurred_at = check.timestamp(
            "occurred_at",
            report.occurred_at,
            report.has_occurred_at,
            required=True,
            max_skew=self._skew,
        )
        check.raise_if_any()
        assert client_event_id and place and door_id and state and occurred_at
        school_id, building_id, room = place
        authorize(directory, client, scope, school_id)
        school, building = known_place(directory, school_id, building_id, room)
        assert building is not None
        door = known_door(school, building, door_id)
        return new_event(
            EventType.DOOR_LOCK_STATE,
            source=client.id,
            tenant=directory.tenant(school_id),
            building=building_id,
            room=room,
            exercise=report.exercise,
            occurred_at=occurred_at,
            event_id=event_id_for(client.id, client_event_id),
            payload={
                "door_id": door_id,
                "door_name": door.name or None,
                "state": state,
                # The directory, not the report, says which doors SECURE must lock.
                "exterior": door.exterior,
                "command_id": None,
            },
        )

    def _decided(
        self, rpc: str, client: Client, school_id: str, event: Event, request: Any
    ) -> tuple[Outcome, str | None, Submission]:
        """Accept, then wait for the incident service's decision (refusal → its status)."""
        if self._decisions is None:
            submission = self._accept(rpc, client, school_id, event, request)
            return ingest_pb2.SIGNAL_OUTCOME_UNSPECIFIED, None, submission
        event_id = str(event["envelope"]["event_id"])
        future = self._decisions.expect(event_id)  # before publishing: never miss it
        try:
            submission = self._accept(rpc, client, school_id, event, request)
            outcome, incident_id = answer(future, self._settings.decision_wait_s)
        except RejectionError as rejection:
            log.info(
                "refused by the incident service",
                rpc=rpc,
                client=client.id,
                school=school_id,
                event_id=event_id,
                code=rejection.code.name,
            )
            raise
        finally:
            self._decisions.forget(event_id)
        return outcome, incident_id, submission

    def _accept(
        self, rpc: str, client: Client, school_id: str, event: Event, request: Any
    ) -> Submission:
        submission = self._intake.accept(event, fingerprint(request))
        log.info(
            "accepted",
            rpc=rpc,
            client=client.id,
            school=school_id,
            event_id=submission.event_id,
            duplicate=submission.duplicate,
            exercise=bool(event["envelope"]["exercise"]),
        )
        return submission


def _settled(submission: Submission) -> bool:
    return submission.future is None or submission.future.done()


class _Errors:
    """Rejected items: all counted, the first ``cap`` by index kept."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.count = 0
        self._kept: list[ingest_pb2.StreamItemError] = []

    def add(self, error: ingest_pb2.StreamItemError) -> None:
        self.count += 1
        self._kept.append(error)
        if len(self._kept) >= 2 * self.cap:
            self._trim()

    def _trim(self) -> None:
        self._kept.sort(key=lambda e: e.index)
        del self._kept[self.cap :]

    def listed(self) -> list[ingest_pb2.StreamItemError]:
        """The first ``cap`` errors in stream order."""
        self._trim()
        return self._kept


def _item_error(
    index: int, client_event_id: str, rejection: RejectionError
) -> ingest_pb2.StreamItemError:
    return ingest_pb2.StreamItemError(
        index=index,
        client_event_id=client_event_id[:128],
        reason=rejection.reject_reason,
        detail=rejection.message,
    )
