"""Publishing accepted submissions exactly once per event id, confirmed before answering."""

from __future__ import annotations

import hashlib
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from safehub.kernel.bus import Delivered, EventProducer
from safehub.kernel.codec import Event
from safehub.kernel.errors import BusError, CodecError
from services.gateway.dedupe import Claim, Deduper
from services.gateway.rpc import RejectionError

log = structlog.get_logger(__name__)

RETRY_MESSAGE = "the hub could not store the event; retry with the same client_event_id"


def fingerprint(message: Any) -> bytes:
    """A digest of a request message (a retry sends the same bytes)."""
    return hashlib.sha256(message.SerializeToString(deterministic=True)).digest()


@dataclass(frozen=True)
class Submission:
    """An accepted submission: already known (duplicate) or being published."""

    event_id: str
    duplicate: bool
    future: Future[Delivered] | None


class Intake:
    """Deduplicates by event id and publishes through the runtime's producer."""

    def __init__(
        self, producer: EventProducer, deduper: Deduper, delivery_timeout_s: float
    ) -> None:
        self._producer = producer
        self._deduper = deduper
        self._timeout = delivery_timeout_s + 1.0

    def submit(self, event: Event, request_fingerprint: bytes) -> Submission:
        """Publish ``event`` unless its id was accepted before; does not wait for the broker."""
        event_id = str(event["envelope"]["event_id"])
        try:
            claim = self._deduper.claim(event_id, request_fingerprint, timeout=self._timeout)
        except TimeoutError as exc:
            raise RejectionError(grpc.StatusCode.UNAVAILABLE, RETRY_MESSAGE) from exc
        if claim is Claim.DUPLICATE:
            return Submission(event_id, True, None)
        if claim is Claim.CONFLICT:
            raise RejectionError(
                grpc.StatusCode.ALREADY_EXISTS,
                "client_event_id was already used for a different request",
            )
        try:
            future = self._producer.publish_nowait(event)
        except CodecError as exc:
            self._deduper.release(event_id)
            log.error("event does not encode", event_id=event_id, error=str(exc))
            raise RejectionError(
                grpc.StatusCode.INTERNAL, "the hub could not encode the event"
            ) from exc
        except BusError as exc:
            self._deduper.release(event_id)
            log.warning("publish failed", event_id=event_id, error=str(exc))
            raise RejectionError(grpc.StatusCode.UNAVAILABLE, RETRY_MESSAGE) from exc

        def settle(done: Future[Delivered]) -> None:
            # Runs on the producer's delivery-report thread.
            if done.exception() is None:
                self._deduper.commit(event_id, request_fingerprint)
            else:
                self._deduper.release(event_id)

        future.add_done_callback(settle)
        return Submission(event_id, False, future)

    def confirm(self, submission: Submission, timeout: float | None = None) -> None:
        """Wait for the broker's confirmation (UNAVAILABLE if it fails or takes too long)."""
        if submission.future is None:
            return
        try:
            submission.future.result(timeout=timeout or self._timeout)
        except (BusError, FutureTimeout) as exc:
            log.warning(
                "broker did not confirm", event_id=submission.event_id, error=type(exc).__name__
            )
            raise RejectionError(grpc.StatusCode.UNAVAILABLE, RETRY_MESSAGE) from exc

    def accept(self, event: Event, request_fingerprint: bytes) -> Submission:
        """Submit and wait: the answer to a unary call."""
        submission = self.submit(event, request_fingerprint)
        self.confirm(submission)
        return submission
