"""What the timeline reads: every event topic, never telemetry or the people topic."""

from __future__ import annotations

from safehub.kernel.topics import DEAD_LETTER, METRICS, PEOPLE, SPANS, TOPICS, TopicCatalog
from services.timeline.ingest import event_topics


def test_the_timeline_reads_every_event_topic_but_telemetry_and_people() -> None:
    read = set(event_topics(TopicCatalog("")))
    # Spans come through their own consumer; metrics are OTLP, not events; the people topic
    # carries contact details, which never reach the timeline.
    assert read.isdisjoint({SPANS, METRICS, DEAD_LETTER, PEOPLE})
    assert read == {spec.name for spec in TOPICS} - {SPANS, METRICS, DEAD_LETTER, PEOPLE}
