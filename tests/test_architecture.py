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
