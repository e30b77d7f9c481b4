"""A consumer that handles one event and then hangs before committing (killed by the test)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from safehub.kernel.bus import ConsumedEvent, EventConsumer, EventProducer
from safehub.kernel.codec import Codec
from safehub.kernel.settings import HubSettings, load_settings
from safehub.kernel.topics import TopicCatalog


def main() -> None:
    prefix, group_id, marker = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    settings = load_settings(HubSettings)
    kafka = settings.kafka.model_copy(update={"session_timeout_ms": 6000})
    codec = Codec.from_contracts()
    catalog = TopicCatalog(prefix)
    hang = threading.Event()

    def handler(consumed: ConsumedEvent) -> None:
        marker.write_text(consumed.event_id)
        hang.wait()  # never returns: the offset is never stored or committed

    with EventProducer(kafka, codec, catalog) as producer:
        consumer = EventConsumer(
            kafka,
            codec,
            catalog,
            group_id=group_id,
            topics=["safehub.alerts.v1"],
            handler=handler,
            dead_letter=producer,
        )
        consumer.run()


if __name__ == "__main__":
    main()
