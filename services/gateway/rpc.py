"""How the gateway refuses a call: one exception type turned into a gRPC status.

Handlers raise :class:`RejectionError`; the servicer boundary turns it into a status with, for
INVALID_ARGUMENT, a ``google.rpc.BadRequest`` detail naming every offending field. Messages
name fields and hub identifiers (school, building, room, door, client ids) and never echo
free text a caller sent: it may be personal data, and statuses end up in logs and spans.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from safehub.gen.safehub.ingest.v1 import ingest_pb2
from safehub.kernel.directory import Client, DirectorySource
from safehub.kernel.errors import SafeHubError

#: What a caller's client certificate is matched on.
CN_PROPERTY = "x509_common_name"


@dataclass(frozen=True)
class Violation:
    """One offending request field (a BadRequest field violation)."""

    field: str
    description: str
    #: The value names a place or door the hub does not know (stream items say NOT_FOUND).
    not_found: bool = False


class RejectionError(SafeHubError):
    """A call or stream item the gateway refuses."""

    def __init__(
        self, code: grpc.StatusCode, message: str, violations: Iterable[Violation] = ()
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.violations = list(violations)

    @classmethod
    def invalid(cls, violations: Iterable[Violation]) -> RejectionError:
        """INVALID_ARGUMENT listing every violation."""
        found = list(violations)
        text = "; ".join(f"{v.field}: {v.description}" for v in found)
        return cls(grpc.StatusCode.INVALID_ARGUMENT, f"invalid request: {text}", found)

    @property
    def reject_reason(self) -> ingest_pb2.RejectReason.ValueType:
        """The StreamItemError reason of this rejection."""
        if self.code == grpc.StatusCode.INVALID_ARGUMENT:
            if self.violations and all(v.not_found for v in self.violations):
                return ingest_pb2.REJECT_REASON_NOT_FOUND
            return ingest_pb2.REJECT_REASON_INVALID_ARGUMENT
        return _REASONS.get(self.code, ingest_pb2.REJECT_REASON_INTERNAL)

    def to_status(self) -> Any:
        """The grpc.Status to abort with (BadRequest details for invalid arguments)."""
        status = status_pb2.Status(code=_CODES[self.code], message=self.message)
        if self.violations:
            detail = any_pb2.Any()
            detail.Pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in self.violations
                    ]
                )
            )
            status.details.append(detail)
        return rpc_status.to_status(status)


_REASONS: dict[grpc.StatusCode, ingest_pb2.RejectReason.ValueType] = {
    grpc.StatusCode.PERMISSION_DENIED: ingest_pb2.REJECT_REASON_PERMISSION_DENIED,
    grpc.StatusCode.ALREADY_EXISTS: ingest_pb2.REJECT_REASON_IDEMPOTENCY_CONFLICT,
}

_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT: code_pb2.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED: code_pb2.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION: code_pb2.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND: code_pb2.NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED: code_pb2.UNAUTHENTICATED,
    grpc.StatusCode.ALREADY_EXISTS: code_pb2.ALREADY_EXISTS,
    grpc.StatusCode.UNAVAILABLE: code_pb2.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: code_pb2.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED: code_pb2.DEADLINE_EXCEEDED,
    grpc.StatusCode.INTERNAL: code_pb2.INTERNAL,
}


def abort(context: grpc.ServicerContext, rejection: RejectionError) -> NoReturn:
    """End the call with ``rejection``'s status; the RPC span records the code only."""
    span = trace.get_current_span()
    span.set_attribute("rpc.grpc.status_code", rejection.code.value[0])
    span.set_status(Status(StatusCode.ERROR, rejection.code.name))
    context.abort_with_status(rejection.to_status())
    raise AssertionError("abort_with_status returned")  # pragma: no cover


def caller(context: grpc.ServicerContext, directory: DirectorySource) -> Client:
    """The registered client behind the call's certificate (UNAUTHENTICATED otherwise), as
    the directory has it now: a client added or removed at run time is seen by the next call
    (pass the call's snapshot, or the live view itself)."""
    names = (context.auth_context() or {}).get(CN_PROPERTY) or []
    if len(names) != 1:
        raise RejectionError(grpc.StatusCode.UNAUTHENTICATED, "no client certificate identity")
    common_name = names[0].decode("utf-8", "replace")
    client = directory.current().client(common_name)
    if client is None:
        raise RejectionError(
            grpc.StatusCode.UNAUTHENTICATED,
            f"client certificate {common_name!r} is not registered with this hub",
        )
    return client


Handler = Callable[[Any, Any, grpc.ServicerContext], Any]


def unary(method: Handler) -> Handler:
    """Turn a RejectionError raised by a unary or client-streaming handler into its status."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except RejectionError as rejection:
            abort(context, rejection)

    return wrapper
