"""Layering rules, enforced by import-linter (configured in pyproject.toml)."""

import shutil
import subprocess
from pathlib import Path


def test_the_layers_hold_planning_code_imports_neither_kopf_nor_kubernetes_and_the_product_no_dev_tooling():
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([shutil.which("lint-imports"), "--config", str(root / "pyproject.toml")],
                            capture_output=True, text=True, cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout


def test_an_engine_is_one_adapter_and_one_simulated_server():
    """SGLang, the engine added last, is named nowhere in the operator's code but its own two modules:
    everything else (API enum, CRD, renderers, readiness, gateway, sim-runtime) reaches it through the
    registries."""
    root = Path(__file__).resolve().parents[1]
    naming = sorted(str(p.relative_to(root)) for folder in ("operator/tidal", "dev/tidal_dev")
                    for p in (root / folder).rglob("*.py") if "sglang" in p.read_text().lower())
    assert naming == ["dev/tidal_dev/simserver/sglang.py", "operator/tidal/engines/sglang.py"], naming


def test_the_product_wheel_holds_no_dev_tooling(tmp_path):
    """The wheel (and so the image, which installs it) carries the product only: no local cluster, simulated
    engines or demo (they are the tidal_dev package, installed from a checkout by `make install`)."""
    import sys
    import zipfile
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(tmp_path), str(root)], check=True, capture_output=True)
    names = zipfile.ZipFile(next(tmp_path.glob("tidal-*.whl"))).namelist()
    assert any(n.startswith("tidal/gateway/") or n.startswith("tidal/activator/") for n in names), names[:20]
    dev = [n for n in names if n.startswith("tidal_dev/") or any(part in n for part in
                                                               ("devcluster", "simserver", "tidal/demo.py"))]
    assert dev == [], dev


def test_no_module_of_the_product_or_the_dev_tooling_is_over_400_lines():
    root = Path(__file__).resolve().parents[1]
    long = {str(p.relative_to(root)): n for folder in ("operator/tidal", "dev/tidal_dev")
            for p in (root / folder).rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}, long
