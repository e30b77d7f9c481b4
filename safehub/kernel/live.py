"""A snapshot kept current from a compacted-style topic of full versioned records.

The live directory's two views (:mod:`safehub.kernel.live_people`,
:mod:`safehub.kernel.live_directory`) work the same way, so the following is here once:

* a process starts from a seed snapshot (the hub still knows its schools and people with an
  empty topic), then reads every partition of one topic from offset 0 with a
  :class:`~safehub.kernel.reader.TopicReader` (no group: every replica sees every change),
  first to the end (:meth:`LiveView.wait_ready`), then following;
* each record is the full entity at a version; a subclass's :meth:`LiveView._accept` applies
  it when the version is newer than the one held and ignores it otherwise, so replays and
  redeliveries change nothing and a remembered deletion cannot be undone by an older upsert;
* readers call :meth:`LiveView.current` for every decision: an immutable snapshot replaced as
  a whole (one reference assignment) after each applied poll batch, so a reader never sees
  half a change;
* records that do not decode or are invalid are logged by event id (never their contents)
  and skipped; the broker being away keeps the last snapshot serving and retries.
"""

from __future__ import annotations

import contextlib
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, Generic, Self, TypeVar

import structlog
from confluent_kafka import Message

from safehub.kernel.bus import H_EVENT_ID, EventProducer, Record, header
from safehub.kernel.codec import Codec, Event
from safehub.kernel.errors import SafeHubError
from safehub.kernel.lifecycle import Closing
from safehub.kernel.reader import TopicReader
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import TopicCatalog

log = structlog.get_logger(__name__)

S = TypeVar("S")


class InvalidRecordError(SafeHubError):
    """A record that is not a valid entity (the message names fields, never values)."""


class LiveView(Closing, Generic[S]):
    """A snapshot ``S`` that follows one topic of versioned full records.

    ``start()`` begins following in a background thread; ``wait_ready(timeout)`` until the
    topic was read to its end; ``current()`` the snapshot now; ``on_change(fn)`` is called
    (in the follower thread) with each new snapshot. ``version`` counts the snapshots
    published (0: the seed); ``applied``, ``ignored`` and ``rejected`` count records.
    """

    #: The full event type (``safehub.events.X``) this view applies; others are rejected.
    event_type: str
    #: The topic's base name in the catalog.
    topic: str
    #: What the log lines call the records ("people", "directory").
    noun: str

    def __init__(
        self,
        seed: S,
        kafka: KafkaSettings,
        catalog: TopicCatalog,
        codec: Codec,
        *,
        name: str,
        fetch_wait_ms: int = 100,
    ) -> None:
        self.name = name
        self._kafka = kafka
        self._catalog = catalog
        self._codec = codec
        self._fetch_wait_ms = fetch_wait_ms
        self._snapshot = seed
        self.version = 0
        self.applied = 0
        self.ignored = 0
        self.rejected = 0
        self._listeners: list[Callable[[S], None]] = []
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what a subclass owes -------------------------------------------------------------

    @abstractmethod
    def _accept(self, event: Mapping[str, Any]) -> bool:
        """Apply one record of :attr:`event_type`: True if it changed what is held, False if
        its version was not newer; :class:`InvalidRecordError` if it is not valid."""

    @abstractmethod
    def _build(self) -> S:
        """A new snapshot of everything held (called once per batch that changed something)."""

    # -- reading -------------------------------------------------------------------------

    def current(self) -> S:
        """The view now: an immutable snapshot (never changed after it is published)."""
        return self._snapshot

    def on_change(self, listener: Callable[[S], None]) -> None:
        """Call ``listener(snapshot)`` after each new snapshot (in the follower thread)."""
        self._listeners.append(listener)

    @property
    def ready(self) -> bool:
        """The topic was read to its end once."""
        return self._ready.is_set()

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the topic was read to its end (False if ``timeout`` passed first)."""
        return self._ready.wait(timeout)

    # -- following -----------------------------------------------------------------------

    def start(self) -> Self:
        """Follow the topic in a background thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._follow, name=self.name, daemon=True)
            self._thread.start()
        return self

    def _follow(self) -> None:
        reader: TopicReader | None = None
        try:
            while not self._stop.is_set():
                try:
                    if reader is None:
                        reader = TopicReader(
                            self._kafka,
                            self._catalog,
                            [self.topic],
                            name=self.name,
                            fetch_wait_ms=self._fetch_wait_ms,
                        )
                    self.apply_messages(reader.poll(0.2))
                    if not self._ready.is_set() and reader.at_end():
                        self._ready.set()
                        log.info(
                            f"{self.noun} caught up",
                            reader=self.name,
                            applied=self.applied,
                            ignored=self.ignored,
                            rejected=self.rejected,
                        )
                except SafeHubError as exc:  # the broker is away: keep the snapshot, retry
                    log.warning(
                        f"{self.noun} topic unreadable, retrying",
                        reader=self.name,
                        error=str(exc),
                    )
                    self._stop.wait(1.0)
        except Exception:  # a bug, not the broker: the last snapshot keeps serving
            log.exception(f"{self.noun} follower failed", reader=self.name)
        finally:
            if reader is not None:  # the polling thread closes it (librdkafka)
                reader.close()

    def apply_messages(self, messages: Iterable[Message]) -> int:
        """Decode and apply records; publish one new snapshot if any changed. Changes applied."""
        events: list[Event] = []
        for message in messages:
            record = Record.of(message)
            event_id = header(record.headers, H_EVENT_ID) or "?"
            try:
                event = self._codec.decode(record.value or b"")
            except SafeHubError as exc:
                self.rejected += 1
                log.warning(
                    f"{self.noun} record skipped: undecodable",
                    event_id=event_id,
                    error_type=type(exc).__name__,
                )
                continue
            events.append(event)
        return self.apply(events)

    def apply(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Apply decoded records; publish one new snapshot if any changed. Changes applied."""
        changed = 0
        for event in events:
            envelope = event.get("envelope") or {}
            event_id = envelope.get("event_id", "?")
            if envelope.get("event_type") != self.event_type:
                self.rejected += 1
                log.warning(
                    f"{self.noun} record skipped: not a {self.event_type}", event_id=event_id
                )
                continue
            try:
                accepted = self._accept(event)
            except InvalidRecordError as exc:
                self.rejected += 1
                log.warning(
                    f"{self.noun} record skipped: invalid", event_id=event_id, reason=str(exc)
                )
                continue
            if accepted:
                self.applied += 1
                changed += 1
            else:
                self.ignored += 1
        if changed:
            self._publish(changed)
        return changed

    def _publish(self, changed: int) -> None:
        snapshot = self._build()
        self._snapshot = snapshot  # one assignment: readers see the old or the new, whole
        self.version += 1
        if self._ready.is_set():  # once caught up: one line per applied batch, counts only
            log.info(
                f"{self.noun} changed", reader=self.name, version=self.version, applied=changed
            )
        for listener in list(self._listeners):
            try:
                listener(snapshot)
            except Exception:
                log.exception(f"{self.noun} listener failed", reader=self.name)

    def close(self) -> None:
        """Stop following (idempotent); the snapshot stays readable."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


def publish_missing(
    producer: EventProducer,
    events: Sequence[Event],
    *,
    key: Callable[[Mapping[str, Any]], Hashable],
    topic: str,
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    codec: Codec,
    name: str,
    timeout: float = 60.0,
) -> int:
    """A seed import: publish the events whose ``key`` is on ``topic`` at no version yet (so
    re-seeding publishes nothing and never brings back an entry a later change removed), each
    confirmed by the broker; how many were published."""
    present: set[Hashable] = set()

    def seen(message: Message) -> None:
        with contextlib.suppress(SafeHubError):  # not ours to judge here; the view logs it
            present.add(key(codec.decode(Record.of(message).value or b"")))

    started = time.monotonic()
    with TopicReader(kafka, catalog, [topic], name=name) as reader:
        reader.catch_up(seen, timeout)
    missing = [e for e in events if key(e) not in present]
    pending = [producer.publish_nowait(e) for e in missing]
    for future in pending:
        future.result(timeout=max(1.0, timeout - (time.monotonic() - started)))
    return len(missing)
