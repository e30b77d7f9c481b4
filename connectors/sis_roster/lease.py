"""The run lease of a source: a CLI import and a scheduled sync of one source never overlap.

:class:`SourceLease` takes the source's lease row in the state store on entry
(:meth:`~connectors.sis_roster.state.RosterState.acquire`: atomic, refused with
:class:`~connectors.sis_roster.state.SourceBusyError` naming the holder and since when), renews
it from a heartbeat thread every third of its time to live while the run works (a long
import, a REST provider backing off), and deletes it on exit, however the run ended. A process
that dies stops renewing, so its lease expires after ``ttl`` and the next run takes the source;
a run on the same host takes it at once if the holder's process is gone (``safehub roster
import`` re-run right after a crash resumes instead of waiting out the lease). Every
checkpoint also renews it in the checkpoint's own transaction and is rolled back if another
run took the source (a run stalled past its lease can never write over the next one).
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from datetime import timedelta
from types import TracebackType
from typing import Self

import structlog

from connectors.sis_roster.state import Lease, LeaseLostError, RosterState, SourceBusyError
from safehub.kernel.errors import SafeHubError

log = structlog.get_logger(__name__)


def holder_name(what: str) -> str:
    """Who holds a lease, as the refused caller reads it: what, process, host, and a short
    unique tag (two runs of one process are two holders)."""
    return f"{what} (pid {os.getpid()} on {socket.gethostname()}, run {uuid.uuid4().hex[:8]})"


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one we may not signal exists too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def died_here(lease: Lease) -> bool:
    """Whether ``lease``'s holder was a process of this host that is gone. Only what can be
    told for sure: another host's process, or one that is this process (another run in it),
    counts as alive until its lease expires."""
    return (
        lease.host == socket.gethostname()
        and lease.pid is not None
        and lease.pid != os.getpid()
        and not process_alive(lease.pid)
    )


class SourceLease:
    """Holds ``source`` for ``holder`` while the ``with`` block runs."""

    def __init__(self, state: RosterState, source: str, holder: str, ttl_s: float) -> None:
        self.state = state
        self.source = source
        self.holder = holder
        self.ttl = timedelta(seconds=ttl_s)
        self.lease: Lease | None = None
        self.renewals = 0
        self._lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self.lease = self._take()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.source}", daemon=True)
        self._thread.start()
        log.info("roster source taken", source=self.source, holder=self.holder)
        return self

    def _take(self) -> Lease:
        host, pid = socket.gethostname(), os.getpid()
        try:
            return self.state.acquire(self.source, self.holder, self.ttl, host=host, pid=pid)
        except SourceBusyError as busy:
            if not died_here(busy.lease):
                raise
            taken = self.state.take_over(
                self.source, busy.lease, self.holder, self.ttl, host=host, pid=pid
            )
            if taken is None:  # it changed hands meanwhile: refused naming the new holder
                return self.state.acquire(self.source, self.holder, self.ttl, host=host, pid=pid)
            log.warning(
                "roster source taken over from a process that died",
                source=self.source,
                previous_holder=busy.lease.holder,
                holder=self.holder,
            )
            return taken

    def _beat(self) -> None:
        interval = self.ttl.total_seconds() / 3
        while not self._stop.wait(interval):
            try:
                self.state.renew(self.source, self.holder, self.ttl)
                self.renewals += 1
            except LeaseLostError:
                self._lost = True
                log.error("roster source lease lost", source=self.source, holder=self.holder)
                return
            except SafeHubError as exc:  # the store is away: the next beat tries again
                log.warning("roster source lease not renewed", source=self.source, error=str(exc))

    def check(self) -> None:
        """:class:`LeaseLostError` if the heartbeat found another run holding the source."""
        if self._lost:
            raise LeaseLostError(self.source, self.holder)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.state.release(self.source, self.holder)
        except SafeHubError as error:  # it expires by itself
            log.warning("roster source lease not released", source=self.source, error=str(error))
        log.info("roster source released", source=self.source, holder=self.holder)
