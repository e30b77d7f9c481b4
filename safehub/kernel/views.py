"""The one way a service reads the live directory: ``follow_directory`` and ``follow_people``.

Each loads its seed (the directory file every deployable is given), starts following the
topic (:mod:`safehub.kernel.live_directory`, :mod:`safehub.kernel.live_people`), waits until
the topic was read to its end, at most ``ready_timeout`` seconds, and returns the view. A
view not ready in time is returned anyway, serving the seed (and what it read so far) while
it keeps following: the emergency path starts even when the broker is slow; a warning says
so. The caller closes the view on shutdown (``runtime.on_close(view.close)``).

A service holds the view as a source (:class:`~safehub.kernel.directory.DirectorySource`,
:class:`PeopleSource`) and calls ``current()`` once per decision, per request or per
event, never keeping a snapshot across decisions; ``current()`` is an attribute read, so the
hot path pays nothing. :class:`Fixed` (or a plain :class:`Directory`, which is its own
``current()``) stands for a view in tests and tools.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import structlog

from safehub.kernel.codec import Codec
from safehub.kernel.directory import Directory
from safehub.kernel.live import LiveView
from safehub.kernel.live_directory import LiveDirectory
from safehub.kernel.live_people import LivePeople
from safehub.kernel.people import People
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import TopicCatalog

log = structlog.get_logger(__name__)

S = TypeVar("S")
V = TypeVar("V", bound=LiveView[Any])

#: How long a service's start waits for a view by default (then it serves the seed).
READY_TIMEOUT_S = 30.0


class PeopleSource(Protocol):
    """Where a service reads people: a :class:`LivePeople` or a :class:`Fixed` snapshot.
    Call :meth:`current` once per decision and use that snapshot throughout it."""

    def current(self) -> People:
        """The people now (an immutable snapshot)."""
        ...


class Fixed(Generic[S]):
    """A view that never changes (a loaded file, in tests and tools)."""

    def __init__(self, snapshot: S) -> None:
        self._snapshot = snapshot

    def current(self) -> S:
        """The snapshot it was given."""
        return self._snapshot


def people_source(people: People | PeopleSource) -> PeopleSource:
    """``people`` as a source: a plain :class:`People` becomes a fixed view."""
    return Fixed(people) if isinstance(people, People) else people


def _started(view: V, ready_timeout: float) -> V:
    started = time.monotonic()
    view.start()
    if view.wait_ready(ready_timeout):
        log.info(
            f"{view.noun} view ready",
            reader=view.name,
            applied=view.applied,
            ms=round((time.monotonic() - started) * 1000),
        )
    else:
        log.warning(
            f"{view.noun} topic not read to its end yet; serving the seed and following it",
            reader=view.name,
            waited_s=ready_timeout,
            applied=view.applied,
        )
    return view


def follow_directory(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    codec: Codec,
    seed_file: Path,
    *,
    name: str,
    ready_timeout: float = READY_TIMEOUT_S,
) -> LiveDirectory:
    """The seed file's places and systems, then every DirectoryChanged, already following
    (ready, or serving the seed after ``ready_timeout``). The caller closes it."""
    seed = Directory.load(seed_file)
    return _started(LiveDirectory(seed, kafka, catalog, codec, name=name), ready_timeout)


def follow_people(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    codec: Codec,
    seed_file: Path,
    *,
    name: str,
    ready_timeout: float = READY_TIMEOUT_S,
) -> LivePeople:
    """The seed file's people, then every PersonChanged, already following (ready, or
    serving the seed after ``ready_timeout``). The caller closes it."""
    seed = People.load(seed_file)
    return _started(LivePeople(seed, kafka, catalog, codec, name=name), ready_timeout)
