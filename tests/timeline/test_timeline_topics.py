"""What the timeline reads: every event topic, never telemetry, the people topic or the
directory topic."""

from __future__ import annotations

from safehub.kernel.topics import (
    DEAD_LETTER,
    DIRECTORY,
    METRICS,
    PEOPLE,
    SPANS,
    TOPICS,
    TopicCatalog,
)
from services.timeline.ingest import event_topics

#: Spans come through their own consumer; metrics are OTLP, not events; the people topic
#: carries contact details and the directory topic reviewers' token hashes, neither of which
#: reach the timeline (it reads reviewers through the live directory view, not as entries).
NOT_READ = {SPANS, METRICS, DEAD_LETTER, PEOPLE, DIRECTORY}


def test_the_timeline_reads_every_event_topic_but_telemetry_people_and_directory() -> None:
    read = set(event_topics(TopicCatalog("")))
    assert read.isdisjoint(NOT_READ)
    assert read == {spec.name for spec in TOPICS} - NOT_READ
