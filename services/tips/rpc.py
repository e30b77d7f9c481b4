"""``safehub.tips.v1.TipService`` for tip-app vendors (mTLS, the ``tips`` scope) and
social-media monitoring vendors (the ``monitoring`` scope), through the one intake.

The caller is the client system its certificate names, as the live directory has it now
(a vendor added or removed at run time counts from the next call); it must hold the ``tips``
scope for the school. Refusals are gRPC statuses: INVALID_ARGUMENT with a
``google.rpc.BadRequest`` naming the field, NOT_FOUND, PERMISSION_DENIED (wrong code or
passcode, like the web page: one answer for both), RESOURCE_EXHAUSTED when guessing is
throttled. Messages never echo what the caller sent.
"""

from __future__ import annotations

import re
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import grpc
from google.protobuf import any_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

from safehub.gen.safehub.tips.v1 import tips_pb2, tips_pb2_grpc
from safehub.kernel.directory import Client, DirectorySource, Scope
from services.tips.intake import Contact, Intake, IntakeError, TipRequest, Upload
from services.tips.model import Category, Channel
from services.tips.screening import TextRejectedError, clean_text
from services.tips.store import TipStore

CN_PROPERTY = "x509_common_name"
_CODES = {
    "invalid": (grpc.StatusCode.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT),
    "not_found": (grpc.StatusCode.NOT_FOUND, code_pb2.NOT_FOUND),
    "denied": (grpc.StatusCode.PERMISSION_DENIED, code_pb2.PERMISSION_DENIED),
    "throttled": (grpc.StatusCode.RESOURCE_EXHAUSTED, code_pb2.RESOURCE_EXHAUSTED),
    "unauthenticated": (grpc.StatusCode.UNAUTHENTICATED, code_pb2.UNAUTHENTICATED),
}
_CATEGORIES = {
    tips_pb2.TIP_CATEGORY_WEAPON: Category.WEAPON,
    tips_pb2.TIP_CATEGORY_THREAT_OF_VIOLENCE: Category.THREAT_OF_VIOLENCE,
    tips_pb2.TIP_CATEGORY_SELF_HARM: Category.SELF_HARM,
    tips_pb2.TIP_CATEGORY_BULLYING: Category.BULLYING,
    tips_pb2.TIP_CATEGORY_DRUGS: Category.DRUGS,
    tips_pb2.TIP_CATEGORY_ABUSE: Category.ABUSE,
    tips_pb2.TIP_CATEGORY_OTHER: Category.OTHER,
}
_AUTHORS = {"TIPSTER": tips_pb2.AUTHOR_TIPSTER, "ANALYST": tips_pb2.AUTHOR_ANALYST}


def _abort(context: grpc.ServicerContext, error: IntakeError) -> NoReturn:
    _code, rpc_code = _CODES.get(error.kind, _CODES["invalid"])
    status = status_pb2.Status(code=rpc_code, message=str(error))
    if error.kind == "invalid" and error.field:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=error.field, description=error.reason
                    )
                ]
            )
        )
        status.details.append(detail)
    context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("abort_with_status returned")  # pragma: no cover


def _timestamp(epoch: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(epoch * 1e9))
    return stamp


class TipServicer(tips_pb2_grpc.TipServiceServicer):
    """SubmitTip, ReadThread, PostMessage."""

    def __init__(self, intake: Intake, store: TipStore, directory: DirectorySource) -> None:
        self._intake = intake
        self._store = store
        self._directory = directory

    def _caller(self, context: grpc.ServicerContext, scope: Scope = Scope.TIPS) -> Client:
        names = (context.auth_context() or {}).get(CN_PROPERTY) or []
        client = None
        if len(names) == 1:
            client = self._directory.current().client(names[0].decode("utf-8", "replace"))
        if client is None:
            raise IntakeError("unauthenticated", "the client certificate is not registered")
        if scope not in client.scopes:
            raise IntakeError(
                "denied", f"client {client.id!r} does not hold the {scope.value} scope"
            )
        return client

    def SubmitTip(  # noqa: N802 - the generated servicer's name
        self, request: tips_pb2.SubmitTipRequest, context: grpc.ServicerContext
    ) -> tips_pb2.SubmitTipResponse:
        """A tip from an app; the same client_tip_id gets the same answer."""
        try:
            client = self._caller(context)
            if not self._directory.current().may(client, Scope.TIPS, request.school_id):
                raise IntakeError("not_found", "unknown school", field="school_id")
            category = _CATEGORIES.get(request.category)
            if category is None:
                raise IntakeError.invalid("category", "must be set to a TipCategory")
            if len(request.client_tip_id) > 200:
                raise IntakeError.invalid("client_tip_id", "must be at most 200 characters")
            if len(request.attachments) > self._intake.max_attachments:
                raise IntakeError.invalid(
                    "attachments", f"at most {self._intake.max_attachments} attachments"
                )
            contact = request.contact
            receipt = self._intake.submit(
                TipRequest(
                    channel=Channel.APP,
                    school_id=request.school_id,
                    category=category,
                    text=request.text,
                    anonymous=request.anonymous,
                    contact=Contact(contact.name[:200], contact.phone[:50], contact.email[:300]),
                    attachments=[
                        Upload(a.data, a.mime_type or None, f"attachments[{i}].data")
                        for i, a in enumerate(request.attachments)
                    ],
                    language=request.language or "en",
                    client_key=f"app:{client.id}:{request.client_tip_id}"
                    if request.client_tip_id
                    else None,
                    network={"client": client.id, "peer": context.peer()},
                )
            )
        except IntakeError as exc:
            _abort(context, exc)
        return tips_pb2.SubmitTipResponse(
            tip_code=receipt.code,
            passcode=receipt.passcode,
            life_safety=receipt.life_safety,
            duplicate=receipt.duplicate_of is not None,
        )

    def ReadThread(  # noqa: N802
        self, request: tips_pb2.ReadThreadRequest, context: grpc.ServicerContext
    ) -> tips_pb2.ReadThreadResponse:
        """The thread of the tip the code and passcode open."""
        try:
            client = self._caller(context)
            tip = self._intake.open_thread(
                request.tip_code, request.passcode, source=f"app:{client.id}"
            )
        except IntakeError as exc:
            _abort(context, exc)
        return tips_pb2.ReadThreadResponse(
            status=tip.status,
            messages=[
                tips_pb2.ThreadMessage(
                    author=_AUTHORS.get(m.author, tips_pb2.AUTHOR_UNSPECIFIED),
                    text=m.text,
                    sent_at=_timestamp(m.created_at),
                )
                for m in self._store.thread(tip.tip_id)
            ],
        )

    def SubmitMonitoringAlert(  # noqa: N802
        self, request: tips_pb2.SubmitMonitoringAlertRequest, context: grpc.ServicerContext
    ) -> tips_pb2.SubmitMonitoringAlertResponse:
        """A monitoring vendor's alert about a school: a tip of channel MONITORING."""
        try:
            client = self._caller(context, Scope.MONITORING)
            if not self._directory.current().may(client, Scope.MONITORING, request.school_id):
                raise IntakeError("not_found", "unknown school", field="school_id")
            category = _CATEGORIES.get(request.category)
            if category is None:
                raise IntakeError.invalid("category", "must be set to a TipCategory")
            if not request.alert_id or len(request.alert_id) > 200:
                raise IntakeError.invalid("alert_id", "must be 1 to 200 characters")
            url = _post_url(request.post_url)
            platform = "".join(c for c in request.platform if c.isalnum() or c in " .-_")[:40]
            try:
                text = without_handles(
                    clean_text(request.post_text, field="post_text", max_chars=MAX_POST_CHARS)
                )
            except TextRejectedError as exc:
                raise IntakeError.invalid(exc.field, exc.reason) from None
            receipt = self._intake.submit(
                TipRequest(
                    channel=Channel.MONITORING,
                    school_id=request.school_id,
                    category=category,
                    text=f"{text}\n\n[{platform or 'post'}] {url}",
                    anonymous=True,
                    client_key=f"monitoring:{client.id}:{request.alert_id}",
                    network={"client": client.id},
                )
            )
        except IntakeError as exc:
            _abort(context, exc)
        return tips_pb2.SubmitMonitoringAlertResponse(
            tip_id=receipt.tip_id,
            life_safety=receipt.life_safety,
            duplicate=receipt.duplicate_of is not None,
        )

    def PostMessage(  # noqa: N802
        self, request: tips_pb2.PostMessageRequest, context: grpc.ServicerContext
    ) -> tips_pb2.PostMessageResponse:
        """The tipster's next message."""
        try:
            client = self._caller(context)
            tip = self._intake.open_thread(
                request.tip_code, request.passcode, source=f"app:{client.id}"
            )
            message = self._intake.post(
                tip, request.text, author="TIPSTER", channel=Channel.APP.value
            )
        except IntakeError as exc:
            _abort(context, exc)
        return tips_pb2.PostMessageResponse(sent_at=_timestamp(message.created_at))


MAX_POST_CHARS = 4000  # the link and the platform's name fit within the tip's 5,000
_HANDLE = re.compile(r"(?<![\w@])@[A-Za-z0-9_.]{1,64}")


def without_handles(text: str) -> str:
    """A post's words with every @handle removed (the privacy rule of monitoring alerts)."""
    return _HANDLE.sub("@[removed]", text)


def _post_url(url: str) -> str:
    """The post's https link without query or fragment (trackers, session ids)."""
    parts = urlsplit(url.strip())
    if parts.scheme != "https" or not parts.netloc or len(url) > 2000:
        raise IntakeError.invalid("post_url", "must be an https link to the post")
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def register(servicer: Any, server: grpc.Server) -> None:
    """Add the servicer to a server (the kernel's GrpcServer.add registrar)."""
    tips_pb2_grpc.add_TipServiceServicer_to_server(servicer, server)
