"""checkov, a third-party policy checker, on everything Tidal deploys: the rendered chart, and the
Deployment, Service and NetworkPolicy the operator renders for each example. What fails must be exactly
what charts/tidal/checkov-waivers.yaml waives, each with its reason: anything new fails the test."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from tests.cluster.chart_helpers import CHART, template
from tidal.api.v1alpha1 import parse_spec
from tidal.render.deployment import render_deployment
from tidal.render.network_policy import render_network_policy
from tidal.render.service import render_service
from tidal.render.settings import NetworkPolicySettings, RenderSettings

ROOT = Path(__file__).resolve().parents[1]
WAIVERS = yaml.safe_load((CHART / "checkov-waivers.yaml").read_text())


def checkov(docs: list[dict], path: Path) -> tuple[dict, set[str], list[str]]:
    path.write_text(yaml.safe_dump_all(docs))
    proc = subprocess.run([str(ROOT / "tools" / "checkov.sh"), "-f", str(path), "--framework", "kubernetes",
                           "--output", "json", "--quiet", "--compact"], capture_output=True, text=True, timeout=600)
    assert proc.stdout.strip(), proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    report = report[0] if isinstance(report, list) else report
    failed = report["results"]["failed_checks"]
    return report["summary"], {c["check_id"] for c in failed}, [f"{c['check_id']} {c['resource']}" for c in failed]


def test_the_chart_fails_only_the_checks_it_waives(tmp_path):
    summary, failed, where = checkov(template(), tmp_path / "chart.yaml")
    assert summary["parsing_errors"] == 0 and summary["passed"] > 200, summary
    assert failed == set(WAIVERS["chart"]), where


def test_what_the_operator_renders_for_each_example_fails_only_the_checks_it_waives(tmp_path):
    docs = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for obj in yaml.safe_load_all(path.read_text()):
            if obj and obj["kind"] == "InferenceService":
                name, spec = obj["metadata"]["name"], parse_spec(obj["spec"])
                docs += [render_deployment(name, "models", "uid", spec, RenderSettings()),
                         render_service(name, "models", "uid", spec),
                         render_network_policy(name, "models", "uid", spec, NetworkPolicySettings())]
    assert len(docs) >= 15
    summary, failed, where = checkov(docs, tmp_path / "workloads.yaml")
    assert summary["parsing_errors"] == 0, summary
    assert failed == set(WAIVERS["workloads"]), where


def test_every_waiver_gives_a_reason():
    for scope in ("chart", "workloads"):
        for check, reason in WAIVERS[scope].items():
            assert check.startswith(("CKV_K8S_", "CKV2_K8S_")) and len(reason) > 30, (scope, check)
