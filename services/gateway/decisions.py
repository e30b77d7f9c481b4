"""The incident service's decisions on SRP requests and cancellations, for the gateway's answer.

The gateway does not decide SRP transitions or who may cancel a panic: the incident service
does, from its book, and publishes a ``SignalDecided`` on the incidents topic. This follower
reads every partition of that topic from its end (no consumer group: every gateway replica
sees every decision), decodes only ``SignalDecided`` records (chosen by header) and hands each
to the RPC waiting for it. A decision that arrives before its waiter registers is kept for a
while, so the order of the two never matters.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeAlias

import grpc
import structlog

from safehub.contracts.names import EventType
from safehub.gen.safehub.ingest.v1 import ingest_pb2
from safehub.kernel.bus import H_EVENT_TYPE
from safehub.kernel.codec import Codec, Event
from safehub.kernel.errors import BusError, CodecError
from safehub.kernel.reader import TopicReader
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import INCIDENTS, TopicCatalog
from services.gateway.rpc import RejectionError

log = structlog.get_logger(__name__)

DECIDED = EventType.SIGNAL_DECIDED
_DECIDED_BYTES = DECIDED.encode()
_KEEP = 10_000  # recent decisions kept for waiters that register late

#: Refusal → the status the caller gets.
REFUSAL_CODES = {
    "INVALID_TRANSITION": grpc.StatusCode.FAILED_PRECONDITION,
    "NOT_PERMITTED": grpc.StatusCode.PERMISSION_DENIED,
    "NO_SUCH_PANIC": grpc.StatusCode.NOT_FOUND,
    "NOT_ACTIVE": grpc.StatusCode.FAILED_PRECONDITION,
    "CANCEL_WINDOW_PASSED": grpc.StatusCode.FAILED_PRECONDITION,
    "EXERCISE_MISMATCH": grpc.StatusCode.FAILED_PRECONDITION,
}
Outcome: TypeAlias = ingest_pb2.SignalOutcome.ValueType

OUTCOMES: dict[str, Outcome] = {
    "APPLIED": ingest_pb2.SIGNAL_OUTCOME_APPLIED,
    "UNCHANGED": ingest_pb2.SIGNAL_OUTCOME_UNCHANGED,
}


class Decisions:
    """Follows the incidents topic and resolves one future per decided signal."""

    def __init__(self, kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog) -> None:
        self._codec = codec
        self._lock = threading.Lock()
        self._waiting: dict[str, Future[Event]] = {}
        self._recent: OrderedDict[str, Event] = OrderedDict()
        # From the end: earlier decisions have no waiter. (tansu may place "end" a few
        # records early; those are only kept as recent decisions.) A staff member is waiting
        # for the answer: the 911-path fetch wait.
        self._reader = TopicReader(
            kafka, catalog, [INCIDENTS], name="gateway-decisions", start="end", fetch_wait_ms=10
        )

    def expect(self, signal_event_id: str) -> Future[Event]:
        """A future resolved with the SignalDecided of ``signal_event_id``."""
        with self._lock:
            future = self._waiting.get(signal_event_id)
            if future is None:
                future = Future()
                known = self._recent.get(signal_event_id)
                if known is not None:
                    future.set_result(known)
                else:
                    self._waiting[signal_event_id] = future
            return future

    def forget(self, signal_event_id: str) -> None:
        """Stop waiting for ``signal_event_id`` (the RPC was answered)."""
        with self._lock:
            self._waiting.pop(signal_event_id, None)

    def run(self, stop: threading.Event) -> None:
        """Follow decisions until ``stop`` is set; closes the consumer on this thread."""
        try:
            while not stop.is_set():
                self.poll_once(0.1)
        finally:
            self._reader.close()

    def poll_once(self, timeout: float) -> None:
        """Handle whatever the next poll brings."""
        try:
            messages = self._reader.poll(timeout)
        except BusError as exc:
            log.warning("decision follower poll failed", error=str(exc))
            time.sleep(0.1)  # the broker is away; do not spin
            return
        for message in messages:
            headers: list[tuple[str, Any]] = list(message.headers() or [])  # type: ignore[arg-type]
            if (H_EVENT_TYPE, _DECIDED_BYTES) not in headers:
                continue
            try:
                event = self._codec.decode(message.value() or b"")
            except CodecError:
                # Not ours to dead-letter (no consumer group here); the incident service's
                # own consumers and the timeline see the same record.
                log.error("undecodable SignalDecided", offset=message.offset())
                continue
            self._resolve(event)

    def _resolve(self, event: Event) -> None:
        signal_id = str(event["signal_event_id"])
        with self._lock:
            self._recent[signal_id] = event
            while len(self._recent) > _KEEP:
                self._recent.popitem(last=False)
            future = self._waiting.pop(signal_id, None)
        if future is not None and not future.done():
            future.set_result(event)


def answer(future: Future[Event], timeout: float) -> tuple[Outcome, str | None]:
    """(SignalOutcome, incident id) of a decision; RejectionError for a refusal.

    PENDING when no decision came within ``timeout``: the signal is durably recorded and
    the incident service decides it in order once it is back.
    """
    try:
        decided: dict[str, Any] = future.result(timeout=timeout)
    except FutureTimeout:
        return ingest_pb2.SIGNAL_OUTCOME_PENDING, None
    incident_id = decided["envelope"].get("incident_id")
    if decided["outcome"] == "REFUSED":
        code = REFUSAL_CODES.get(str(decided.get("refusal")), grpc.StatusCode.FAILED_PRECONDITION)
        raise RejectionError(code, str(decided["reason"]))
    return OUTCOMES.get(str(decided["outcome"]), ingest_pb2.SIGNAL_OUTCOME_UNSPECIFIED), (
        str(incident_id) if incident_id else None
    )
