"""The import contracts of pyproject.toml hold, and would catch a deliberate violation."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The probes write into the tree itself: under xdist the suite is spread by file
# (``--dist loadfile``), so they never show in this file's other lint runs.
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_tree_keeps_every_contract() -> None:
    result = _lint_imports()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("home", "import_line", "contract"),
    [
        ("services/gateway", "import services.incidents.model", "Deployables never import"),
        ("connectors/psap_cad", "import services.notify.cap", "Deployables never import"),
        ("safehub/kernel", "import safehub.devstack.pki", "knows nothing of the dev stack"),
        ("safehub/kernel", "import services.gateway.rpc", "Kernel does not depend"),
        ("vendors/pa_signage_sim", "import services.gateway.rpc", "Deployables never import"),
        ("simulators/cad", "import connectors.psap_cad.eido", "Deployables never import"),
        ("safehub/kernel", "import safehub.standards.eido", "Layers"),
        ("safehub/sdk", "import safehub.devstack.hub", "Layers"),
        ("safehub/gen", "import safehub.contracts.registry", "Layers"),
    ],
)
def test_a_deliberate_violation_is_caught(home: str, import_line: str, contract: str) -> None:
    probe = ROOT / home / f"_contract_probe_{uuid.uuid4().hex[:8]}.py"
    probe.write_text(f'"""A deliberate violation (test)."""\n\n{import_line}  # noqa: F401\n')
    try:
        result = _lint_imports()
    finally:
        probe.unlink()
    assert result.returncode != 0
    broken = [line for line in result.stdout.splitlines() if "BROKEN" in line]
    assert any(contract in line for line in broken) or contract in result.stdout, result.stdout
    assert probe.stem in result.stdout
