"""``safehub.timeline.v1.TimelineService`` over mTLS: the reviewer is the client cert's CN.

The same :class:`Queries` as the HTTP API, mapped to messages: unknown reviewer →
UNAUTHENTICATED, bad parameter → INVALID_ARGUMENT, out of scope → PERMISSION_DENIED, unknown
(or another district's) subject → NOT_FOUND. Served by the kernel's
:class:`~safehub.kernel.grpc_server.GrpcServer` (health, reflection, a span per call).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, TypeVar

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from safehub.gen.safehub.timeline.v1 import timeline_pb2, timeline_pb2_grpc
from safehub.kernel import chain
from safehub.kernel.directory import Reviewer
from safehub.kernel.grpc_server import GrpcServer
from services.timeline.http_api import render_html
from services.timeline.query import Queries, QueryError, RawJson
from services.timeline.settings import TimelineSection

log = structlog.get_logger(__name__)

TIMELINE = timeline_pb2.DESCRIPTOR.services_by_name["TimelineService"]
SERVICE_NAME = TIMELINE.full_name
CN_PROPERTY = "x509_common_name"
_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 403: grpc.StatusCode.PERMISSION_DENIED}
_KINDS = {
    "incident": timeline_pb2.SUBJECT_KIND_INCIDENT,
    "case": timeline_pb2.SUBJECT_KIND_CASE,
}
_PROBLEMS = {
    "altered": timeline_pb2.PROBLEM_KIND_ALTERED,
    "removed": timeline_pb2.PROBLEM_KIND_REMOVED,
    "reordered": timeline_pb2.PROBLEM_KIND_REORDERED,
}

R = TypeVar("R")


def _stamp(value: str | None) -> Timestamp | None:
    if not value:
        return None
    stamp = Timestamp()
    stamp.FromJsonString(value)
    return stamp


def _iso(stamp: Timestamp) -> str:
    return chain.iso(stamp.ToDatetime()) if stamp.seconds or stamp.nanos else ""


def subject_message(subject: Mapping[str, Any]) -> timeline_pb2.Subject:
    """A subject (API JSON shape) as a message."""
    return timeline_pb2.Subject(
        id=subject["id"],
        kind=_KINDS.get(subject["kind"], timeline_pb2.SUBJECT_KIND_UNSPECIFIED),
        district=subject["district"],
        school=subject["school"] or "",
        building=subject["building"] or "",
        room=subject["room"] or "",
        type=subject["type"] or "",
        status=subject["status"],
        incident_state=subject["incident_state"] or "",
        srp_action=subject["srp_action"] or "",
        cad_status=subject["cad_status"] or "",
        summary=subject["summary"] or "",
        exercise=subject["exercise"],
        opened_at=_stamp(subject["opened_at"]),
        updated_at=_stamp(subject["updated_at"]),
        entry_count=subject["entry_count"],
        head_hash=subject["head_hash"],
    )


def chain_message(status: Mapping[str, Any]) -> timeline_pb2.ChainStatus:
    """A chain object as a message."""
    problem = status.get("problem")
    return timeline_pb2.ChainStatus(
        ok=status["ok"],
        checked=status["checked"],
        head_hash=status["head_hash"],
        problem=None
        if problem is None
        else timeline_pb2.ChainProblem(
            seq=problem["seq"], kind=_PROBLEMS[problem["kind"]], detail=problem["detail"]
        ),
    )


def entry_message(entry: Mapping[str, Any]) -> timeline_pb2.Entry:
    """An entry as a message (its data as JSON)."""
    return timeline_pb2.Entry(
        seq=entry["seq"],
        event_id=entry["event_id"],
        event_type=entry["event_type"],
        lane=entry["lane"],
        occurred_at=_stamp(entry["occurred_at"]),
        recorded_at=_stamp(entry["recorded_at"]),
        source=entry["source"],
        actor=entry["actor"] or "",
        summary=entry["summary"],
        trace_id=entry["trace_id"] or "",
        span_id=entry["span_id"] or "",
        exercise=entry["exercise"],
        classification=entry["classification"],
        building=entry["building"] or "",
        room=entry["room"] or "",
        data_json=_data_json(entry["data"]),
        withheld=entry["withheld"],
        payload_sha256=entry["payload_sha256"],
        hash=entry["hash"],
        prev_hash=entry["prev_hash"],
    )


def span_message(span: Mapping[str, Any]) -> timeline_pb2.Span:
    """A span as a message."""
    return timeline_pb2.Span(
        span_id=span["span_id"],
        parent_span_id=span["parent_span_id"] or "",
        name=span["name"],
        service=span["service"],
        kind=span["kind"],
        start=_stamp(span["start"]),
        end=_stamp(span["end"]),
        duration_ms=span["duration_ms"],
        status=span["status"],
        attributes_json=json.dumps(span["attributes"], sort_keys=True),
    )


def _data_json(data: Any) -> str:
    if isinstance(data, RawJson):
        return data.text
    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


class TimelineServicer(timeline_pb2_grpc.TimelineServiceServicer):
    """The RPCs, each scoped by the calling reviewer."""

    def __init__(self, queries: Queries) -> None:
        self.queries = queries

    def _call(self, context: grpc.ServicerContext, action: Callable[[Reviewer], R]) -> R:
        names = (context.auth_context() or {}).get(CN_PROPERTY) or []
        reviewer = (
            self.queries.reviewer(names[0].decode("utf-8", "replace")) if len(names) == 1 else None
        )
        if reviewer is None:
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, "not a registered reviewer")
        try:
            return action(reviewer)
        except QueryError as exc:
            _abort(context, _CODES.get(exc.status, grpc.StatusCode.NOT_FOUND), str(exc))

    def ListSubjects(  # noqa: N802 (gRPC method name)
        self, request: timeline_pb2.ListSubjectsRequest, context: grpc.ServicerContext
    ) -> timeline_pb2.ListSubjectsResponse:
        """Subjects, newest first."""
        kind = {v: k for k, v in _KINDS.items()}.get(request.kind, "")
        params = {
            "kind": kind,
            "district": request.district,
            "school": request.school,
            "from": _iso(request.opened_from),
            "to": _iso(request.opened_to),
            "type": request.type,
            "status": request.status,
            "exercise": str(request.exercise).lower() if request.HasField("exercise") else "",
            "limit": str(request.page_size) if request.page_size else "",
            "cursor": request.page_token,
        }
        answer = self._call(context, lambda r: self.queries.list_subjects(r, params))
        return timeline_pb2.ListSubjectsResponse(
            subjects=[subject_message(s) for s in answer["items"]],
            next_page_token=answer["next_cursor"] or "",
        )

    def GetTimeline(  # noqa: N802
        self, request: timeline_pb2.GetTimelineRequest, context: grpc.ServicerContext
    ) -> timeline_pb2.GetTimelineResponse:
        """One page of a timeline."""
        params = {
            "after_seq": str(request.after_seq),
            "limit": str(request.page_size) if request.page_size else "",
        }
        answer = self._call(context, lambda r: self.queries.timeline(r, request.subject_id, params))
        response = timeline_pb2.GetTimelineResponse(
            subject=subject_message(answer["subject"]),
            chain=chain_message(answer["chain"]),
            entries=[entry_message(e) for e in answer["entries"]],
        )
        if answer["next_after_seq"] is not None:
            response.next_after_seq = answer["next_after_seq"]
        return response

    def GetTrace(  # noqa: N802
        self, request: timeline_pb2.GetTraceRequest, context: grpc.ServicerContext
    ) -> timeline_pb2.GetTraceResponse:
        """The spans of one trace."""
        answer = self._call(context, lambda r: self.queries.trace(r, request.trace_id))
        return timeline_pb2.GetTraceResponse(
            trace_id=answer["trace_id"], spans=[span_message(s) for s in answer["spans"]]
        )

    def VerifyChain(  # noqa: N802
        self, request: timeline_pb2.VerifyChainRequest, context: grpc.ServicerContext
    ) -> timeline_pb2.VerifyChainResponse:
        """The chain, recomputed now."""
        answer = self._call(context, lambda r: self.queries.verify(r, request.subject_id))
        return timeline_pb2.VerifyChainResponse(chain=chain_message(answer))

    def ExportSubject(  # noqa: N802
        self, request: timeline_pb2.ExportSubjectRequest, context: grpc.ServicerContext
    ) -> timeline_pb2.ExportSubjectResponse:
        """The export document."""
        export = self._call(context, lambda r: self.queries.export(r, request.subject_id))
        if request.format == timeline_pb2.EXPORT_FORMAT_HTML:
            body, content_type, suffix = render_html(export), "text/html", "html"
        else:
            body = json.dumps(export, ensure_ascii=False)
            content_type, suffix = "application/json", "json"
        return timeline_pb2.ExportSubjectResponse(
            content=body.encode("utf-8"),
            content_type=content_type,
            filename=f"timeline-{request.subject_id}.{suffix}",
        )


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("abort returned")  # pragma: no cover


def grpc_server(queries: Queries, section: TimelineSection) -> GrpcServer:
    """The kernel gRPC server with TimelineService (mTLS, health, reflection, traces)."""
    server = GrpcServer(
        "timeline", section.grpc_listen, section.grpc_tls(), grace_s=section.grace_s
    )
    server.add(
        TIMELINE, timeline_pb2_grpc.add_TimelineServiceServicer_to_server, TimelineServicer(queries)
    )
    return server
