"""Idempotent acceptance: one event per (client, client_event_id), however often it is sent.

The gateway remembers a bounded window of accepted event ids with a fingerprint of the
request that produced them. A retry inside the window is answered from memory; a retry
racing the first attempt waits for it (one publish per id); a different request reusing a
client_event_id is a conflict. The window is an optimisation, not the guarantee: event ids
are deterministic, and every consumer deduplicates by event id, so a retry after a restart
publishes a second copy that changes nothing downstream.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from enum import Enum


class Claim(Enum):
    """What to do with a submission."""

    NEW = "new"  # publish it, then commit() or release()
    DUPLICATE = "duplicate"  # accepted before: answer duplicate=true
    CONFLICT = "conflict"  # the id was accepted for a different request


class Deduper:
    """A bounded LRU of accepted event ids, with one in-flight publisher per id."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._accepted: OrderedDict[str, bytes] = OrderedDict()
        self._inflight: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._accepted)

    def claim(self, event_id: str, fingerprint: bytes, *, timeout: float) -> Claim:
        """Classify a submission; NEW makes the caller the only publisher of ``event_id``.

        Waits up to ``timeout`` for a concurrent publisher of the same id; if that one fails
        (released), this caller becomes the publisher. TimeoutError if it never finishes.
        """
        while True:
            with self._lock:
                known = self._accepted.get(event_id)
                if known is not None:
                    self._accepted.move_to_end(event_id)
                    return Claim.DUPLICATE if known == fingerprint else Claim.CONFLICT
                waiter = self._inflight.get(event_id)
                if waiter is None:
                    self._inflight[event_id] = threading.Event()
                    return Claim.NEW
            if not waiter.wait(timeout):
                raise TimeoutError(f"event {event_id} is still being published")

    def commit(self, event_id: str, fingerprint: bytes) -> None:
        """The broker confirmed ``event_id``: remember it and wake waiting retries."""
        with self._lock:
            self._accepted[event_id] = fingerprint
            self._accepted.move_to_end(event_id)
            while len(self._accepted) > self._capacity:
                self._accepted.popitem(last=False)
            waiter = self._inflight.pop(event_id, None)
        if waiter is not None:
            waiter.set()

    def release(self, event_id: str) -> None:
        """Publishing ``event_id`` failed: a waiting retry may try again."""
        with self._lock:
            waiter = self._inflight.pop(event_id, None)
        if waiter is not None:
            waiter.set()
