"""Timeline query benchmark: one incident of 10,000 events and a list over 1,000 incidents,
on SQLite and PostgreSQL, against a raw SQL baseline measured in the same run.

The store is loaded directly through its API (``Store.apply``, batches of 500, the same path
the ingest consumer takes). Measured, each as p50/p99 over repeated calls:

* ``timeline_first_page``: ``Queries.timeline`` (2,000 entries, scoped, redacted, JSON-shaped;
  chain status from the cache, as the UI sees it within ``chain_cache_s``);
* ``timeline_first_page_body``: ``Queries.timeline_json``, the HTTP response body (the same
  answer serialised, each entry as it is built);
* ``timeline_first_page_cold``: the body with the chain recomputed (a reviewer opening it);
* ``timeline_full_walk``: every page of the 10,000 entries (5 bodies);
* ``list_first_page`` / ``list_filtered``: 50 newest of 1,000 incidents (+ district/status);
* ``verify``: a full recomputation of the 10,000-entry chain (not a target, reported);

and baselines: a raw ``SELECT`` of the same rows (``fetchall``) for each. Target: p99 < 100 ms.

Usage: ``python bench/timeline.py [--json] [--events 10000] [--incidents 1000]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.common import percentiles
from safehub.kernel.directory import Directory, default_directory_file
from safehub.kernel.envelope import new_event
from services.timeline.ingest import draft_of
from services.timeline.query import Queries, dumps
from services.timeline.store import Draft, Store

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TENANTS = [
    {"state": "US-TX", "district": "dist-north-isd", "school": "sch-lincoln-hs"},
    {"state": "US-TX", "district": "dist-north-isd", "school": "sch-washington-ms"},
    {"state": "US-TX", "district": "dist-south-isd", "school": "sch-riverside-es"},
]
START = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


def _incident(incident_id: str, version: int, state: str, at: datetime, tenant: Any) -> Any:
    kind = "IncidentOpened" if version == 1 else "IncidentChanged"
    payload: dict[str, Any] = {
        "incident_id": incident_id,
        "version": version,
        "incident_type": "ACTIVE_ASSAILANT",
        "state": state,
        "srp_action": "LOCKDOWN",
        "evacuate_location": None,
        "shelter_hazard": None,
        "shelter_strategy": None,
        "correlated_event_ids": [],
        "dispatchable": True,
        "summary": "Active assailant at Lincoln High School",
    }
    if version > 1:
        payload |= {"change_reason": f"update {version}", "changed_by": "stf-lincoln-001"}
    return new_event(
        kind,
        source="incidents",
        tenant=tenant,
        building="B",
        incident_id=incident_id,
        occurred_at=at,
        payload=payload,
    )


def _receipt(incident_id: str, n: int, at: datetime, tenant: Any) -> Any:
    return new_event(
        "DeliveryReceipt",
        source="notify",
        tenant=tenant,
        incident_id=incident_id,
        occurred_at=at,
        payload={
            "notification_id": f"n-{incident_id}",
            "recipient_id": f"stf-lincoln-{n % 48:03d}",
            "channel": "SMS",
            "status": ("QUEUED", "SENT", "DELIVERED")[n % 3],
            "attempt": 1,
            "provider_message_id": None,
            "error": None,
        },
    )


def big_incident(events: int) -> list[Draft]:
    """One incident of ``events`` events: changes and per-recipient receipts."""
    tenant = TENANTS[0]
    drafts = [draft_of(_incident("inc-big", 1, "CONFIRMED", START, tenant), [])]
    for n in range(1, events):
        at = START + timedelta(milliseconds=n * 50)
        event = (
            _incident("inc-big", n + 1, "RESPONDING", at, tenant)
            if n % 10 == 0
            else _receipt("inc-big", n, at, tenant)
        )
        drafts.append(draft_of(event, []))
    return drafts


def many_incidents(count: int) -> list[Draft]:
    """``count`` small incidents (opened, changed, a receipt) spread over schools and days."""
    drafts = []
    for i in range(count):
        tenant = TENANTS[i % len(TENANTS)]
        at = START + timedelta(hours=i)
        incident_id = f"inc-{i:05d}"
        state = "ALL_CLEAR" if i % 2 else "RESPONDING"
        drafts += [
            draft_of(_incident(incident_id, 1, "UNCONFIRMED", at, tenant), []),
            draft_of(_incident(incident_id, 2, state, at + timedelta(seconds=5), tenant), []),
            draft_of(_receipt(incident_id, i, at + timedelta(seconds=2), tenant), []),
        ]
    return drafts


def measure(action: Callable[[], Any], runs: int, warmup: int = 3) -> dict[str, float]:
    """Latency percentiles of ``action`` over ``runs`` calls."""
    for _ in range(warmup):
        action()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return percentiles(samples)


@contextmanager
def database(backend: str, workdir: Path) -> Iterator[str]:
    """A fresh SQLite file or PostgreSQL database."""
    if backend == "sqlite":
        yield f"sqlite:///{workdir / 'bench.sqlite3'}"
        return
    name = f"timeline_bench_{int(time.time())}"
    admin = create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def run_backend(backend: str, events: int, incidents: int, runs: int) -> dict[str, Any]:
    """Load and measure one backend."""
    with tempfile.TemporaryDirectory() as tmp, database(backend, Path(tmp)) as url:
        store = Store(url)
        try:
            loaded = big_incident(events) + many_incidents(incidents)
            started = time.perf_counter()
            for i in range(0, len(loaded), 500):
                store.apply(loaded[i : i + 500])
            load_s = time.perf_counter() - started
            directory = Directory.load(default_directory_file())
            auditor = directory.reviewer("rev-state-auditor")
            assert auditor is not None
            queries = Queries(store, directory, chain_cache_s=3600)
            first = queries.timeline(auditor, "inc-big", {})
            assert first["chain"]["ok"] and len(first["entries"]) == 2000

            cold = Queries(store, directory, chain_cache_s=0)
            body = queries.timeline_json(auditor, "inc-big", {})
            assert body == dumps(first)
            page_bytes = len(body.encode("utf-8"))

            def walk() -> int:
                after, pages = 0, 0
                while True:
                    body = queries.timeline_json(auditor, "inc-big", {"after_seq": str(after)})
                    pages += 1
                    # The body ends with "next_after_seq":N} (or null}).
                    tail = body[body.rindex(":") + 1 : -1]
                    if tail == "null":
                        return pages
                    after = int(tail)

            assert walk() == -(-events // 2000)
            raw = store.engine

            def raw_page(after: int = 0) -> list[Any]:
                with raw.connect() as conn:
                    return list(
                        conn.execute(
                            text(
                                "SELECT * FROM entries WHERE subject_id = :s AND seq > :a "
                                "ORDER BY seq LIMIT 2001"
                            ),
                            {"s": "inc-big", "a": after},
                        ).all()
                    )

            def raw_walk() -> int:
                return sum(len(raw_page(after)[:2000]) for after in range(0, events, 2000))

            def raw_list(where: str = "", **params: Any) -> list[Any]:
                with raw.connect() as conn:
                    return list(
                        conn.execute(
                            text(
                                f"SELECT * FROM subjects {where} "
                                "ORDER BY opened_at DESC, id DESC LIMIT 51"
                            ),
                            params,
                        ).all()
                    )

            filtered = {"district": "dist-north-isd", "status": "cleared"}
            results = {
                "timeline_first_page": measure(
                    lambda: queries.timeline(auditor, "inc-big", {}), runs
                ),
                "timeline_first_page_body": measure(
                    lambda: queries.timeline_json(auditor, "inc-big", {}), runs
                ),
                "timeline_first_page_cold": measure(
                    lambda: cold.timeline_json(auditor, "inc-big", {}), 5, warmup=1
                ),
                "baseline_first_page": measure(raw_page, runs),
                "timeline_full_walk": measure(walk, max(5, runs // 5)),
                "baseline_full_walk": measure(raw_walk, max(5, runs // 5)),
                "list_first_page": measure(lambda: queries.list_subjects(auditor, {}), runs * 4),
                "baseline_list": measure(raw_list, runs * 4),
                "list_filtered": measure(
                    lambda: queries.list_subjects(auditor, filtered), runs * 4
                ),
                "baseline_list_filtered": measure(
                    lambda: raw_list("WHERE district = :district AND status = :status", **filtered),
                    runs * 4,
                ),
                "verify_10k": measure(lambda: queries.verify(auditor, "inc-big"), 5, warmup=1),
            }
        finally:
            store.close()
    ratios = {
        name: {
            "p50": round(results[name]["p50_ms"] / results[base]["p50_ms"], 2),
            "p99": round(results[name]["p99_ms"] / results[base]["p99_ms"], 2),
        }
        for name, base in (
            ("timeline_first_page", "baseline_first_page"),
            ("timeline_first_page_body", "baseline_first_page"),
            ("timeline_full_walk", "baseline_full_walk"),
            ("list_first_page", "baseline_list"),
            ("list_filtered", "baseline_list_filtered"),
        )
    }
    targets = (
        "timeline_first_page",
        "timeline_first_page_body",
        "list_first_page",
        "list_filtered",
    )
    return {
        "load": {
            "events": len(loaded),
            "seconds": round(load_s, 2),
            "events_per_s": round(len(loaded) / load_s),
        },
        "first_page_bytes": page_bytes,
        "latency": results,
        "ratio_to_baseline": ratios,
        "target_p99_under_100ms": {name: results[name]["p99_ms"] < 100 for name in targets},
    }


def main() -> None:
    """Run both backends and print the results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--incidents", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    report = {
        "benchmark": "timeline",
        "events_in_incident": args.events,
        "incidents_listed": args.incidents,
        "backends": {
            backend: run_backend(backend, args.events, args.incidents, args.runs)
            for backend in args.backends.split(",")
        },
    }
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    for backend, result in report["backends"].items():
        print(
            f"{backend}: loaded {result['load']['events']} events at "
            f"{result['load']['events_per_s']}/s"
        )
        for name, figures in result["latency"].items():
            print(f"  {name:24} p50 {figures['p50_ms']:8.2f} ms  p99 {figures['p99_ms']:8.2f} ms")
        for name, ratio in result["ratio_to_baseline"].items():
            print(f"  {name:24} x{ratio['p50']} (p50)  x{ratio['p99']} (p99) of raw SQL")


if __name__ == "__main__":
    main()
