"""Helpers of the sis_roster tests: packages written to tmp, the CLI as a process, topics read."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from safehub.kernel.codec import Codec
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import DEAD_LETTER, PEOPLE, ROSTER, TopicCatalog
from safehub.standards.oneroster import load_facts
from tests.support.kafka import read_all

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT.parent / "shared" / "standards" / "oneroster" / "samples"
DELTA = SAMPLES / "v1p2-delta-catalyst-oneroster_test_data"
MINIMAL = SAMPLES / "v1p1-bulk-catalyst-Test_minimal_data_set"
FULL = SAMPLES / "v1p1-bulk-catalyst-Test_full_data_set"
FACTS = load_facts()


def header(file: str, version: str = "v1.1") -> list[str]:
    return [c.name for c in FACTS[version].files[file].columns]


def csv_text(columns: list[str], rows: list[dict[str, str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    writer.writerows([row.get(c, "") for c in columns] for row in rows)
    return out.getvalue()


def write_package(root: Path, files: dict[str, list[dict[str, str]]], *, mode: str) -> Path:
    """A OneRoster 1.1 package folder with ``files`` (name → rows) in ``mode``."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["propertyName,value"]
    for prop in FACTS["v1.1"].manifest_required:
        if prop == "manifest.version":
            lines.append("manifest.version,1.0")
        elif prop == "oneroster.version":
            lines.append("oneroster.version,1.1")
        else:
            listed = prop[len("file.") :] + ".csv" in files
            lines.append(f"{prop},{mode if listed else 'absent'}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for name, rows in files.items():
        (root / name).write_text(csv_text(header(name), rows), encoding="utf-8", newline="")
    return root


def events(kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, base: str) -> list[Any]:
    """Every event on a topic now, decoded."""
    return [codec.decode(m.value()) for m in read_all(kafka, catalog.name(base))]


def roster(kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog) -> list[Any]:
    return events(kafka, codec, catalog, ROSTER)


def people(kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog) -> list[Any]:
    return events(kafka, codec, catalog, PEOPLE)


def dead_letters(kafka: KafkaSettings, catalog: TopicCatalog) -> list[Any]:
    return read_all(kafka, catalog.name(DEAD_LETTER))


def headers_of(message: Any) -> dict[str, str]:
    return {k: (v or b"").decode() for k, v in message.headers() or []}


def duplicates(found: list[Any]) -> list[str]:
    ids = Counter(e["envelope"]["event_id"] for e in found)
    return [i for i, n in ids.items() if n > 1]


def cli_env(
    kafka: KafkaSettings, catalog: TopicCatalog, state_url: str, **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAFEHUB_", "KAFKA_", "OTEL_"))}
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers or "",
            "SAFEHUB_KAFKA__TOPIC_PREFIX": catalog.prefix,
            "SAFEHUB_SIS_ROSTER__STATE_URL": state_url,
            "SAFEHUB_LOG__FORMAT": "json",
            **extra,
        }
    )
    return env


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``safehub …`` as its own process."""
    return subprocess.run(
        [sys.executable, "-c", "from safehub.cli.main import main; main()", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def json_report(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The last JSON object the CLI printed (one per report)."""
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON report: rc={result.returncode} {result.stdout} {result.stderr[-3000:]}"
    data: dict[str, Any] = json.loads(lines[-1])
    return data
