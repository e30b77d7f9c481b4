"""What one caller's streams may take from the gateway: slots, idle time, memory.

Every stream (``StreamDoorStates``, ``Attach``) holds a worker thread for as long as it is
open, and so does a unary door feed call (``ReportDoorState(s)``) while it publishes.
:class:`StreamLimits` admits one only while the caller's certificate holds fewer
than ``max_streams_per_client`` and the gateway fewer than its stream limit (at most half of
``max_workers``), so the remaining workers always serve the unary life-safety calls
(ReportPanic, CancelPanic, RequestSrpAction, ReportCameraAlert): no device feed can take them.
:func:`paced` ends a stream whose caller stops sending (DEADLINE_EXCEEDED after
``stream_idle_timeout_s``) and, reading through a small bounded buffer, keeps HTTP/2 flow
control in force: the next message is only asked for once the handler has room for it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from services.gateway.rpc import CN_PROPERTY, RejectionError

T = TypeVar("T")

#: Items read ahead of the handler on a stream (the rest wait in the transport's window).
READ_AHEAD = 16


def certificate_name(context: grpc.ServicerContext) -> str:
    """The caller's certificate CN ("" when there is none; the servicer refuses those)."""
    names = (context.auth_context() or {}).get(CN_PROPERTY) or []
    return names[0].decode("utf-8", "replace") if len(names) == 1 else ""


@dataclass
class Slot:
    """One admitted stream; :meth:`release` frees it (idempotent, any thread)."""

    limits: StreamLimits
    client: str
    _released: bool = field(default=False)

    def release(self) -> None:
        """Give the slot back."""
        self.limits._release(self)


class StreamLimits:
    """Concurrent streams per client certificate and on the whole gateway."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self._lock = threading.Lock()
        self._by_client: dict[str, int] = {}
        self._open = 0

    def admit(self, client: str, method: str) -> Slot:
        """A slot for a new stream of ``client``, or RESOURCE_EXHAUSTED naming the limit."""
        with self._lock:
            held = self._by_client.get(client, 0)
            if held >= self.per_client:
                raise RejectionError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"client {client!r} already holds {held} open streams and door-feed calls, "
                    f"the most one client may (SAFEHUB_GATEWAY__MAX_STREAMS_PER_CLIENT="
                    f"{self.per_client}); let one finish before another {method}, or retry "
                    "with backoff",
                )
            if self._open >= self.total:
                raise RejectionError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"this gateway already serves {self._open} streams and door-feed calls, "
                    "the most it allows "
                    f"(SAFEHUB_GATEWAY__MAX_STREAMS={self.total}; the other workers are kept "
                    f"for life-safety calls); retry {method} with backoff, or send batches "
                    "with ReportDoorStates",
                )
            self._by_client[client] = held + 1
            self._open += 1
        return Slot(self, client)

    def _release(self, slot: Slot) -> None:
        with self._lock:
            if slot._released:
                return
            slot._released = True
            self._open -= 1
            left = self._by_client[slot.client] - 1
            if left:
                self._by_client[slot.client] = left
            else:
                del self._by_client[slot.client]

    def open_streams(self, client: str | None = None) -> int:
        """Streams open now (of ``client`` if given)."""
        with self._lock:
            return self._open if client is None else self._by_client.get(client, 0)


_ITEM, _END, _ERROR = range(3)


def paced(items: Iterator[T], idle_timeout_s: float, what: str) -> Iterator[T]:
    """``items``, read on a helper thread; DEADLINE_EXCEEDED if none comes for ``idle_timeout_s``.

    The gRPC request iterator blocks without a timeout, so a helper thread reads it into a
    buffer of :data:`READ_AHEAD` items while the handler's thread waits on the buffer with
    one. An exception of the transport or of the request guard is re-raised on the handler's
    thread. The helper ends with the call (the transport ends a finished call's reads).
    """
    buffer: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=READ_AHEAD)
    stop = threading.Event()

    def offer(entry: tuple[int, Any]) -> bool:
        while not stop.is_set():
            try:
                buffer.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for item in items:
                if not offer((_ITEM, item)):
                    return
        except BaseException as exc:  # handed to the handler's thread
            offer((_ERROR, exc))
        else:
            offer((_END, None))

    threading.Thread(target=read, name=f"{what}-reader", daemon=True).start()
    try:
        while True:
            try:
                kind, value = buffer.get(timeout=idle_timeout_s)
            except queue.Empty:
                raise RejectionError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no item on this {what} stream for {idle_timeout_s:g} s "
                    "(SAFEHUB_GATEWAY__STREAM_IDLE_TIMEOUT_S); the stream is ended, items sent "
                    "before were processed: resend any not confirmed with the same "
                    "client_event_id",
                ) from None
            if kind == _END:
                return
            if kind == _ERROR:
                raise value
            yield value
    finally:
        stop.set()
