"""ThreatReported signals as the tips service publishes them (for the incidents and psap_cad
tests): a stable event id from the tip id, INTERNAL only, the school as the tenant."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from safehub.contracts.names import DataClass, EventType
from safehub.kernel.envelope import new_event, stable_id

#: The namespace the tests' "tips service" derives ThreatReported event ids in.
_IDS = uuid.UUID("3c0f5b1e-7d4a-4f0e-8a61-b2d9c4e5f601")

LINCOLN = {"state": "US-TX", "district": "dist-north-isd", "school": "sch-lincoln-hs"}

SUMMARY = (
    "Imminent weapon threat reported by an anonymous tip; nobody at the school or district "
    "confirmed within the call chain"
)


def threat_reported(
    report_id: str | None = None,
    *,
    at: datetime | None = None,
    tenant: dict[str, str | None] | None = None,
    building: str | None = None,
    category: str = "WEAPON",
    imminent: bool = True,
    exercise: bool = False,
    event_id: str | None = None,
    summary: str = SUMMARY,
    tip_link: str | None = "https://tips.example.org/api/tips/",
) -> dict[str, Any]:
    """A ThreatReported for tip ``report_id`` (a fresh one by default), recorded at ``at``."""
    report_id = report_id or f"tip-{uuid.uuid4().hex[:12]}"
    when = at or datetime.now(UTC)
    event = new_event(
        EventType.THREAT_REPORTED,
        source="tips",
        tenant=tenant or LINCOLN,
        building=building,
        occurred_at=when,
        exercise=exercise,
        classification=[DataClass.INTERNAL.value],
        event_id=event_id or stable_id(_IDS, "threat-reported", report_id),
        payload={
            "report_id": report_id,
            "source": "TIP",
            "category": category,
            "imminent": imminent,
            "summary": summary,
            "tip_link": tip_link + report_id if tip_link else None,
            "reported_at": when,
        },
    )
    event["envelope"]["recorded_at"] = when
    return event
