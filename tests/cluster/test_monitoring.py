"""Monitoring a team can install: the chart's alerts (promtool check + unit tests), its dashboards (every
panel's query answered by the local cluster's real Prometheus during 0 -> N -> 0), the cold-start
histogram against the wake-ups caused, and `helm template` with the built helm and no extra flags."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.cluster.chart_helpers import CHART, helm
from tests.cluster.test_activator import burst
from tests.cluster.test_autoscaler import apply, replicas, service
from tests.cluster.test_smoke import wait_for
from tests.exposition import metric_value

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((CHART / "files" / "dashboards").glob("*.json"))


def rendered(*flags) -> list[dict]:
    out = helm(None, "template", "tidal", str(CHART), *flags).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_helm_template_works_with_the_built_helm_and_no_extra_flags():
    # The chart requires kubeVersion >= 1.28; helm's default must be stamped at build time (it is 1.20 otherwise).
    docs = rendered()
    assert any(d["kind"] == "Deployment" for d in docs)
    version = helm(None, "version", "--template", "{{ .Version }}").stdout.strip()
    assert version.startswith("v3.")


def test_alert_rules_pass_promtool_check_and_unit_tests(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with Debian's prometheus package (installed by make install)"
    rule = next(d for d in rendered("--set", "monitoring.prometheusRule.enabled=true") if d["kind"] == "PrometheusRule")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    shutil.copy(ROOT / "tests" / "monitoring" / "alerts_test.yaml", tmp_path)
    check = subprocess.run([promtool, "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert check.returncode == 0 and "SUCCESS: 7 rules found" in check.stdout, check.stdout + check.stderr
    test = subprocess.run([promtool, "test", "rules", "alerts_test.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert test.returncode == 0, test.stdout + test.stderr
    # Each alert has a firing and a quiet case, and a runbook entry that its link points at.
    alerts = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]]
    tests = (tmp_path / "alerts_test.yaml").read_text()
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    for alert in alerts:
        assert f"alertname: {alert}" in tests
        assert f"## {alert}\n" in runbooks, f"docs/runbooks.md has no entry for {alert}"
    assert len(alerts) == 7


def test_dashboards_install_as_configmaps_for_grafanas_sidecar():
    maps = [d for d in rendered("--set", "monitoring.dashboards.enabled=true") if d["kind"] == "ConfigMap"]
    assert {m["metadata"]["name"] for m in maps} == {"tidal-dashboard-fleet", "tidal-dashboard-service"}
    for m in maps:
        assert m["metadata"]["labels"]["grafana_dashboard"] == "1"
        (name, text), = m["data"].items()
        board = json.loads(text)
        assert board["uid"].startswith("tidal-") and board["panels"]
    assert not [d for d in rendered() if d["kind"] in ("ConfigMap", "PrometheusRule")]  # off by default


def prometheus_query(info, expr: str) -> list:
    url = f"{info.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    answer = json.loads(urllib.request.urlopen(url, timeout=10).read())
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def test_every_dashboard_query_returns_data_and_cold_starts_count_the_wake_ups(
        dev_cluster, operator, activator, kubectl, namespace):
    targets = dev_cluster.state_dir / "targets" / "operator-monitoring.json"
    targets.write_text(json.dumps([{"targets": [operator.url.removeprefix("http://")], "labels": {"job": "operator"}}]))
    apply(kubectl, namespace, service("watched", idleSecondsBeforeZero=1, scaleDownStabilizationSeconds=1,
                                      maxReplicas=3))
    url = f"{activator.url}/{namespace}/watched/v1/completions"
    labels = {"namespace": namespace, "inferenceservice": "watched"}
    gw_labels = {"namespace": namespace, "tidal_dev_inferenceservice": "watched"}
    wait_for(lambda: replicas(kubectl, namespace, "watched") == 0, timeout=90, interval=0.5, what="idle to zero")
    # Wake-up 1: a burst that needs several replicas; then back to zero.
    results = asyncio.run(burst(url, 60, max_tokens=200))
    assert [s for s, _, _ in results] == [200] * 60
    wait_for(lambda: replicas(kubectl, namespace, "watched") == 0, timeout=120, interval=0.5, what="zero again")
    # Wake-up 2, and a light load while the dashboards are read.
    stop = threading.Event()

    def trickle():
        while not stop.is_set():
            asyncio.run(burst(url, 2, max_tokens=5))
    assert [s for s, _, _ in asyncio.run(burst(url, 1, max_tokens=5))] == [200]
    loader = threading.Thread(target=trickle, daemon=True)
    loader.start()
    try:
        # The operator counts a cold start when its watch sees the first replica ready; on a busy machine that
        # can come a moment after the gateway, which saw it first, has answered.
        counted = [None]

        def second_counted():
            counted[0] = metric_value(operator.url, "tidal_cold_start_seconds_count", **labels)
            return counted[0] == 2
        try:
            wait_for(second_counted, timeout=30, interval=0.5, what="the operator to count the second cold start")
        except AssertionError as err:  # what it counted, and the scalings it made: which wake-up went uncounted
            scaled = kubectl("get", "events", "-n", namespace, "--field-selector", "reason=Scaled", "-o",
                             "jsonpath={.items[*].message}").stdout
            raise AssertionError(f"{err}: it counts {counted[0]}; Scaled events: {scaled}") from None
        assert metric_value(activator.metrics_url, "tidal_gateway_cold_start_seconds_count", **gw_labels) == 2
        # Where the seconds went (#30.3): the last wake's phases in status, summing to its measured total, and
        # an Event for each cold start: the first replica's, then the two wake-ups'.
        status = json.loads(kubectl("get", "tis", "watched", "-n", namespace, "-o", "json").stdout)["status"]
        parts = status["lastColdStartPhases"]
        assert sorted(parts) == sorted(["scheduling", "image_pull", "weight_fetch", "engine_load", "ready"])
        assert abs(sum(parts.values()) - status["lastColdStartSeconds"]) <= 0.5
        events = kubectl("get", "events", "-n", namespace, "--field-selector", "reason=ColdStart", "-o",
                         "jsonpath={.items[*].message}").stdout
        assert events.count("cold start of ") == 3, events
        time.sleep(3)  # a few scrapes (1 s here) of the latest figures
        empty = []
        for path in DASHBOARDS:
            board = json.loads(path.read_text())
            for panel in board["panels"]:
                for target in panel["targets"]:
                    expr = (target["expr"].replace("$namespace", namespace).replace("$service", "watched")
                            .replace("$__rate_interval", "1m").replace("$__range", "10m"))
                    deadline = time.monotonic() + 20
                    while not (result := [r for r in prometheus_query(dev_cluster, expr)
                                          if r["value"][1] not in ("NaN", "+Inf", "-Inf")]) \
                            and time.monotonic() < deadline:
                        time.sleep(1)
                    if not result:
                        empty.append((path.name, panel["title"], expr))
        assert not empty, empty
        # The service dashboard's template variables list this service.
        found = prometheus_query(dev_cluster, f'group by (inferenceservice) (tidal_autoscaler_desired_replicas{{namespace="{namespace}"}})')
        assert [r["metric"]["inferenceservice"] for r in found] == ["watched"]
    finally:
        stop.set()
        loader.join(30)
        targets.unlink()
    peak = prometheus_query(dev_cluster, f'max_over_time(tidal_autoscaler_desired_replicas{{namespace="{namespace}", '
                                          f'inferenceservice="watched"}}[15m])')
    assert float(peak[0]["value"][1]) > 1  # 0 -> N: the first wake-up needed several replicas
    scale_ups = prometheus_query(dev_cluster, f'sum(tidal_autoscaler_scale_events_total{{namespace="{namespace}", '
                                              f'direction="up"}})')
    assert float(scale_ups[0]["value"][1]) >= 2
    gpu = prometheus_query(dev_cluster, f'sum(tidal_gpu_seconds_total{{namespace="{namespace}"}})')
    assert float(gpu[0]["value"][1]) > 0


def test_no_query_references_a_metric_nobody_exports():
    """Typos in dashboards and alerts would only show as empty panels: every tidal_* series they name is one
    the operator's or the gateway's registry really exports (read from the registries, not from strings in
    the code: a quoted name in a comment or a test helper exports nothing)."""
    from tidal.gateway.metrics import Metrics
    from tidal.controller import metrics as operator_metrics
    exported = set()
    for registry in (operator_metrics.REGISTRY, Metrics(300.0).registry):
        for family in registry.collect():
            exported |= {family.name} | {sample.name for sample in family.samples}
            exported |= {f"{family.name}_total", f"{family.name}_bucket", f"{family.name}_count", f"{family.name}_sum"}
    named = set()
    for path in [*DASHBOARDS, CHART / "files" / "alerts.yaml"]:
        named |= set(re.findall(r"\b(tidal_[a-z_]+)\b", path.read_text()))
    named -= {"tidal_dev_inferenceservice"}  # a label
    assert named <= exported, named - exported
