"""The names generated from the contracts (``safehub/contracts/names.py``): complete, current,
used; and the drift check of ``tools/gen_names.py`` (run by ``make lint``) catches a stale file.
The stale-file test runs on a temporary copy of the schemas and the generated module.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from safehub.contracts.names import DEFAULT_DATA_CLASS, EVENT_NAMESPACE, DataClass, EventType
from safehub.contracts.registry import SCHEMA_DIR, event_schemas, load_schemas
from safehub.kernel.topics import TOPICS

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "gen_names.py"


def _check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TOOL), "--check", "--root", str(root)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_one_event_type_per_event_schema_and_the_data_classes_of_the_enum() -> None:
    assert {t.value for t in EventType} == set(event_schemas())
    assert all(t.startswith(EVENT_NAMESPACE) for t in EventType)
    assert EventType("safehub.events.PanicAlert") is EventType.PANIC_ALERT
    assert EventType.SRP_ACTION_REQUESTED.short == "SrpActionRequested"
    data_class = load_schemas()["safehub.common.DataClass"]
    assert [c.value for c in DataClass] == data_class["symbols"]
    assert data_class["default"] == DEFAULT_DATA_CLASS


def test_every_topic_names_declared_event_types_only() -> None:
    declared = [event for spec in TOPICS for event in spec.events]
    assert all(isinstance(event, EventType) for event in declared)
    assert len(declared) == len(set(declared))


def test_the_generated_module_is_current() -> None:
    proc = _check(REPO)
    assert proc.returncode == 0, proc.stderr


def test_the_drift_check_fails_when_a_schema_is_added_without_regenerating(
    tmp_path: Path,
) -> None:
    shutil.copytree(SCHEMA_DIR, tmp_path / "schemas")
    target = tmp_path / "safehub" / "contracts" / "names.py"
    target.parent.mkdir(parents=True)
    shutil.copy(REPO / "safehub" / "contracts" / "names.py", target)
    assert _check(tmp_path).returncode == 0
    added = json.loads((tmp_path / "schemas/events/Referral.avsc").read_text())
    added["name"] = "ReferralClosed"
    (tmp_path / "schemas/events/ReferralClosed.avsc").write_text(json.dumps(added))
    proc = _check(tmp_path)
    assert proc.returncode == 1
    assert "out of date" in proc.stderr and "make names" in proc.stderr
    regenerate = [sys.executable, str(TOOL), "--root", str(tmp_path)]
    subprocess.run(regenerate, check=True, capture_output=True, timeout=60)
    assert 'REFERRAL_CLOSED = "safehub.events.ReferralClosed"' in target.read_text()
    assert _check(tmp_path).returncode == 0
    target.unlink()
    assert _check(tmp_path).returncode == 1
