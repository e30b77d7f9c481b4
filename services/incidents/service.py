"""The incidents service: school signals in, incidents (with SRP state and lock commands) out.

Three loops share one :class:`IncidentBook` under a lock:

* **journal**: reads the incidents topic from the beginning (all partitions, no group) and
  keeps following it. The book is rebuilt from it before any signal is handled, so the state
  after a restart (or on another worker) is exactly the state before it. On tansu the end of
  the topic is taken from the fetch responses' high watermark, never from ListOffsets.
* **alerts** (group ``incidents-alerts``): panics, panic cancellations, camera alerts, SRP
  actions, threats reported by tips (``ThreatReported``) and CAD status updates, with a
  short fetch wait: this is the 911 path.
* **doors** (group ``incidents-doors``): the high-volume door feed, only to fold forced or
  held-open doors into an incident under way; its own thread so it never delays a panic.

A handler publishes what the book decided (lock command first, then the incident event,
each confirmed by the broker) and only then folds it in. A crash in between leaves the
signal uncommitted; on redelivery the deterministic ids make the outcome the same.

Recovery (a replacement after a kill -9): the alerts and doors groups use a short session
(``SAFEHUB_INCIDENTS__GROUP_SESSION_TIMEOUT_MS``, 2.5 s) so the dead member is evicted fast,
and both consumers join their groups *while* the journal rebuilds the book; their handler
waits for the book before it decides anything, so the group join and the rebuild overlap
instead of adding up. The process reports ready once the book is rebuilt.

Who may cancel, and which schools exist, come from the live directory and the live people
(:func:`~safehub.kernel.views.follow_directory`, :func:`~safehub.kernel.views.follow_people`,
read to their ends while the groups join): the book reads both once per signal, so a school,
a staff app or an administrator added or removed at run time counts from the next signal.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import structlog
from confluent_kafka import Message

from safehub.kernel.bus import ConsumedEvent
from safehub.kernel.errors import CodecError, HandlerError, StopWithoutCommit
from safehub.kernel.reader import TopicReader
from safehub.kernel.runtime import Runtime, run
from safehub.kernel.topics import ALERTS, DISPATCH, DOORS, INCIDENTS
from safehub.kernel.views import follow_directory, follow_people
from services.incidents.model import IncidentBook, Rejected
from services.incidents.settings import IncidentsSettings

log = structlog.get_logger(__name__)


class Journal:
    """Follows the incidents topic (every partition, no group) and folds it into the book."""

    def __init__(
        self, runtime: Runtime[IncidentsSettings], book: IncidentBook, lock: threading.Lock
    ):
        self._runtime = runtime
        self._book = book
        self._lock = lock
        # Not on the latency path: own updates are applied directly; this only follows
        # other workers. A short wait would cost the broker CPU for nothing.
        self._reader = TopicReader(
            runtime.settings.kafka,
            runtime.catalog,
            [INCIDENTS],
            name="incidents-journal",
            fetch_wait_ms=100,
        )
        runtime.on_close(self._reader.close)

    def _apply(self, message: Message) -> None:
        try:
            event = self._runtime.codec.decode(message.value() or b"")
        except CodecError:
            # Not ours to dead-letter (we are not its consumer group); skip and say so.
            log.error("undecodable record on the incidents topic", offset=message.offset())
            return
        with self._lock:
            self._book.apply(event)

    def catch_up(self, timeout: float = 60.0) -> int:
        """Read until every partition reached its high watermark (from fetch responses)."""
        return self._reader.catch_up(self._apply, timeout)

    def follow(self) -> None:
        """Keep folding new incident events (from this and other workers) until stop."""
        while not self._runtime.stop.is_set():
            for message in self._reader.poll(0.1):
                self._apply(message)


def setup(runtime: Runtime[IncidentsSettings]) -> None:
    """Join the groups and rebuild the book at once, then start the journal's follow loop."""
    section = runtime.settings.incidents
    started = time.monotonic()
    lock = threading.Lock()
    rebuilt = threading.Event()

    def handle(consumed: ConsumedEvent) -> None:
        # Nothing is decided on a partial book: a signal fetched while the journal is still
        # being read waits here (uncommitted; a stop raises, so the next run gets it).
        while not rebuilt.wait(0.05):
            if runtime.stop.is_set():
                raise StopWithoutCommit("stopping before the incident book was rebuilt")
        with lock:
            try:
                outputs = book.decide(consumed.event)
            except Rejected as exc:
                raise HandlerError(str(exc)) from exc
            for event in outputs:
                runtime.producer.publish(event)
            for event in outputs:
                book.apply(event)
        for event in outputs:
            log.info(
                "incident event",
                type=event["envelope"]["event_type"].rsplit(".", 1)[-1],
                incident_id=event["envelope"]["incident_id"],
                version=event.get("version"),
                exercise=event["envelope"]["exercise"],
            )

    # Joining a group takes about session/2 on tansu, plus the dead member's session after a
    # kill: started before the rebuild, that wait overlaps it.
    group = section.group_config()
    runtime.consumer(
        "incidents-alerts",
        [ALERTS, DISPATCH],
        handle,
        fetch_wait_max_ms=section.alerts_fetch_wait_ms,
        extra_config=group,
    )
    runtime.consumer(
        "incidents-doors",
        [DOORS],
        handle,
        fetch_wait_max_ms=section.doors_fetch_wait_ms,
        extra_config=group,
    )
    # The live directory (schools, and which client systems are staff apps that may speak for
    # an administrator) and the live people (who a school's administrators are), both read
    # to their ends while the groups join, side by side. Every decision reads each once, so
    # a change counts from the next signal, without a restart.
    kafka, catalog, codec = runtime.settings.kafka, runtime.catalog, runtime.codec
    seed, wait = section.directory_file, section.directory_ready_s
    with ThreadPoolExecutor(2, thread_name_prefix="incidents-views") as pool:
        following_places = pool.submit(
            follow_directory,
            kafka,
            catalog,
            codec,
            seed,
            name="incidents-directory",
            ready_timeout=wait,
        )
        following_people = pool.submit(
            follow_people,
            kafka,
            catalog,
            codec,
            seed,
            name="incidents-people",
            ready_timeout=wait,
        )
        places, people = following_places.result(), following_people.result()
    runtime.on_close(places.close)
    runtime.on_close(people.close)
    book = IncidentBook(
        places,
        people,
        correlation_window=timedelta(seconds=section.correlation_window_s),
        cancel_window=timedelta(seconds=section.cancel_window_s),
        camera_min_confidence=section.camera_min_confidence,
    )
    journal = Journal(runtime, book, lock)
    rebuilding = time.monotonic()
    applied = journal.catch_up()
    rebuilt.set()
    log.info(
        "incident book rebuilt",
        events=applied,
        incidents=len(book.incidents),
        ms=round((time.monotonic() - rebuilding) * 1000),
        setup_ms=round((time.monotonic() - started) * 1000),
    )
    runtime.spawn(journal.follow, name="incidents-journal")


def main() -> None:
    """Run the incidents service until SIGTERM."""
    run("incidents", IncidentsSettings, setup)
