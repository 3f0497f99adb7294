"""`make demo` as a newcomer runs it, in its short mode: what the user sees at the end."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest

from tests.exposition import sample_sum

pytestmark = pytest.mark.cluster


def test_demo_scales_zero_to_many_to_zero_and_fails_no_request(tmp_path, dev_cluster):
    # dev_cluster: the binaries are built; the demo brings up its own cluster in its own state directory.
    state_dir = tmp_path / "demo"
    try:
        proc = subprocess.run([sys.executable, "-m", "tidal_dev", "demo", "up", "--short", "--state-dir",
                               str(state_dir)], capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        summary = json.loads((state_dir / "demo" / "summary.json").read_text())
        assert summary["scaled_up_from_zero"] and summary["max_replicas"] > 1 and summary["back_to_zero"], summary
        assert summary["failed"] == 0 and summary["served"] == summary["requests_sent"] > 0
        assert (state_dir / "demo" / "demo.png").read_bytes()[:4] == b"\x89PNG"
        assert "| max_replicas |" in proc.stdout and "make demo-down" in proc.stdout
        # Not only the demo's own word: the cluster's Events and the gateway's own counters say the same.
        state = json.loads((state_dir / "state.json").read_text())
        kubectl = [dev_cluster.kubectl(), "--kubeconfig", str(state_dir / "kubeconfig")]
        items = json.loads(subprocess.run([*kubectl, "get", "events", "-n", "default", "-o", "json",
                                           "--field-selector", "involvedObject.name=demo,reason=Scaled"],
                                          capture_output=True, text=True, check=True).stdout)["items"]
        scaled = [e["message"] for e in items]
        assert any(m.startswith("0 -> ") for m in scaled) and any(" -> 0 replicas" in m for m in scaled), scaled
        most = max(int(m.split(" -> ")[1].split(" ")[0]) for m in scaled)
        assert most == summary["max_replicas"] > 1, (most, scaled)
        metrics = urllib.request.urlopen(state["gateway_metrics_url"] + "/metrics", timeout=5).read().decode()
        demo = {"tidal_dev_inferenceservice": "demo"}
        assert sample_sum(metrics, "tidal_activator_responses_total", code="2xx", **demo) >= summary["served"]
        assert sample_sum(metrics, "tidal_activator_responses_total", code="5xx", **demo) == 0
    finally:
        down = subprocess.run([sys.executable, "-m", "tidal_dev", "demo", "down", "--state-dir", str(state_dir)],
                              capture_output=True, text=True, timeout=300)
        assert down.returncode == 0, down.stderr
