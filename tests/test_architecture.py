"""Layering rules, enforced by import-linter (configured in pyproject.toml)."""

import shutil
import subprocess
from pathlib import Path


def test_planning_code_imports_neither_kopf_nor_kubernetes():
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([shutil.which("lint-imports"), "--config", str(root / "pyproject.toml")],
                            capture_output=True, text=True, cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 1 kept, 0 broken." in result.stdout


def test_an_engine_is_one_adapter_and_one_simulated_server():
    """SGLang, the engine added last, is named nowhere in the operator's code but its own two modules:
    everything else (API enum, CRD, renderers, readiness, gateway, sim-runtime) reaches it through the
    registries."""
    package = Path(__file__).resolve().parents[1] / "operator" / "tidal"
    naming = sorted(str(p.relative_to(package)) for p in package.rglob("*.py") if "sglang" in p.read_text().lower())
    assert naming == ["engines/sglang.py", "simserver/sglang.py"], naming
