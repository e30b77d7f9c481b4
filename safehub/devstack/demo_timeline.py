"""The demo's review part: the incident as a reviewer sees it in the timeline.

Reads the timeline's HTTP API with the demo reviewers' tokens: the incident's entries by
lane, the hash chain verified, the trace of the panic joining gateway → incidents → CAD,
and another district's reviewer refused.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import datetime
from typing import Any

from rich.console import Console

from safehub.contracts.names import EventType
from safehub.devstack.hub import Hub
from safehub.kernel.errors import SafeHubError

#: Demo reviewer tokens (deploy/directory/demo.json stores only their SHA-256).
STATE_AUDITOR = "demo-token-state-auditor"
NORTH_REVIEWER = "demo-token-north-aar"
SOUTH_REVIEWER = "demo-token-south-aar"

#: The spans of the panic's trace must come from these deployables (gateway → 911 CAD).
TRACE_PATH = ("safehub-gateway", "safehub-incidents", "safehub-psap_cad")


def _get(hub: Hub, path: str, token: str) -> tuple[int, Any]:
    request = urllib.request.Request(  # noqa: S310 - loopback URL of the hub's timeline
        hub.timeline_url + path, headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, None


def _entries(hub: Hub, incident_id: str) -> tuple[Any, list[Any]]:
    entries: list[Any] = []
    after, first = 0, None
    while True:
        status, page = _get(
            hub, f"/api/v1/subjects/{incident_id}/timeline?after_seq={after}", STATE_AUDITOR
        )
        if status != 200:
            return None, []
        first = first or page
        entries.extend(page["entries"])
        if page.get("next_after_seq") is None:
            return first, entries
        after = page["next_after_seq"]


def review(hub: Hub, incident_id: str, console: Console, timeout: float = 30) -> dict[str, bool]:
    """Wait until the timeline holds the incident to its end; print it; return the checks."""
    deadline = time.monotonic() + timeout
    page: Any = None
    entries: list[Any] = []
    trace_services: set[str] = set()
    settled_count = -1
    while time.monotonic() < deadline:
        page, entries = _entries(hub, incident_id)
        types = {e["event_type"] for e in entries}
        panic = next((e for e in entries if e["event_type"] == EventType.PANIC_ALERT.short), None)
        if panic and panic.get("trace_id"):
            status, trace = _get(hub, f"/api/v1/traces/{panic['trace_id']}", STATE_AUDITOR)
            if status == 200:
                trace_services = {s["service"] for s in trace["spans"]}
        settled = len(entries) == settled_count  # receipts still arriving would change it
        settled_count = len(entries)
        if (
            EventType.INCIDENT_CLEARED.short in types
            and EventType.NOTIFICATION_ACKNOWLEDGED.short in types
            and set(TRACE_PATH) <= trace_services
            and settled
        ):
            break
        time.sleep(0.5)
    if page is None:
        raise SafeHubError("demo: the timeline never showed the incident")
    lanes = Counter(e["lane"] for e in entries)
    console.print(
        f"timeline: {len(entries)} entries — "
        + ", ".join(f"{lane} {count}" for lane, count in sorted(lanes.items()))
    )
    _, chain = _get(hub, f"/api/v1/subjects/{incident_id}/verify", STATE_AUDITOR)
    chain = chain or {}
    console.print(
        f"hash chain: {'verified' if chain.get('ok') else 'BROKEN'}, "
        f"{chain.get('checked')} entries, head {str(chain.get('head_hash'))[:16]}…"
    )
    console.print(f"panic's trace crosses: {', '.join(sorted(trace_services))}")
    north, _ = _get(hub, f"/api/v1/subjects/{incident_id}/timeline", NORTH_REVIEWER)
    south, _ = _get(hub, f"/api/v1/subjects/{incident_id}/timeline", SOUTH_REVIEWER)
    console.print(
        f"reviewer's view: {hub.timeline_url}/incidents/{incident_id}?token={NORTH_REVIEWER}"
    )
    first: dict[str, str] = {}
    for entry in entries:
        first.setdefault(entry["event_type"], entry["occurred_at"])
    # The timeline names event types without their namespace.
    steps = tuple(
        e.short
        for e in (
            EventType.PANIC_ALERT,
            EventType.INCIDENT_OPENED,
            EventType.CAD_DISPATCH,
            EventType.INCIDENT_CLEARED,
        )
    )
    happened = [datetime.fromisoformat(first[s]) for s in steps if s in first]
    return {
        "timeline holds every step in the order it happened, chain verified": bool(chain.get("ok"))
        and len(happened) == len(steps)
        and happened == sorted(happened)
        and [e["seq"] for e in entries] == list(range(1, len(entries) + 1)),
        "one trace links gateway → incidents → CAD": set(TRACE_PATH) <= trace_services,
        "district reviewer sees it, another district's does not": north == 200 and south == 404,
    }
