"""GitOps: the Argo CD health check, run by a real Lua interpreter (Lua 5.1, as Argo CD's gopher-lua)
on InferenceServices read from the apiserver while the operator works on them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cluster.test_autoscaler import apply, service
from tests.cluster.test_operator import get, wait_condition

pytestmark = pytest.mark.cluster
HEALTH_LUA = Path(__file__).resolve().parents[2] / "gitops" / "argocd" / "inferenceservice-health.lua"


def argocd_health(obj: dict) -> dict:
    """Run the script as Argo CD does: the object as the global `obj`, the returned table is the health."""
    from lupa.lua51 import LuaRuntime
    lua = LuaRuntime(unpack_returned_tuples=True)
    to_lua = lua.eval("function(s) return s end")

    def convert(value):  # JSON -> Lua tables, as Argo CD hands objects to the script
        if isinstance(value, dict):
            return lua.table_from({k: convert(v) for k, v in value.items()})
        if isinstance(value, list):
            return lua.table_from([convert(v) for v in value])
        return to_lua(value)
    lua.globals().obj = convert(obj)
    result = lua.execute(HEALTH_LUA.read_text())
    return {"status": result["status"], "message": result["message"]}


def test_argocd_health_follows_the_service_from_progressing_to_healthy_and_degraded(operator, kubectl, namespace):
    spec = service("web", minReplicas=1)
    # What Argo CD sees right after a sync, before the operator has written any status.
    fresh = json.loads(kubectl("apply", "-n", namespace, "--dry-run=server", "-o", "json", "-f", "-",
                               input=json.dumps(spec)).stdout)
    assert argocd_health(fresh)["status"] == "Progressing"
    apply(kubectl, namespace, spec)
    ready = wait_condition(kubectl, namespace, "web", "Ready", "True", "ModelReady")
    condition = next(c for c in ready["status"]["conditions"] if c["type"] == "Ready")
    assert argocd_health(ready) == {"status": "Healthy", "message": f"ModelReady: {condition['message']}"}
    # A new generation the operator has not observed yet is Progressing again (read from a server dry run).
    edited = json.loads(kubectl("patch", "tis", "web", "-n", namespace, "--type=merge", "--dry-run=server",
                                "-o", "json", "-p", '{"spec": {"engine": {"args": ["--max-num-seqs=8"]}}}').stdout)
    assert edited["metadata"]["generation"] > edited["status"]["observedGeneration"]
    assert argocd_health(edited) == {"status": "Progressing",
                                     "message": f"Waiting for the Tidal operator to observe generation "
                                                f"{edited['metadata']['generation']}"}
    # A spec that cannot run here is Degraded, with the operator's reason.
    apply(kubectl, namespace, {**service("nowhere"), "spec": {**service("nowhere")["spec"],
                                                            "placement": {"nodePool": "h200"}}})
    bad = wait_condition(kubectl, namespace, "nowhere", "Valid", "False", "UnknownNodePool")
    health = argocd_health(bad)
    assert health["status"] == "Degraded" and health["message"].startswith("UnknownNodePool: ") and "h200" in health["message"]


def test_argocd_health_calls_a_model_scaled_to_zero_healthy(operator, kubectl, namespace):
    apply(kubectl, namespace, service("idle", idleSecondsBeforeZero=1, scaleDownStabilizationSeconds=1))
    obj = wait_condition(kubectl, namespace, "idle", "Ready", "True", "ScaledToZero", timeout=60)
    assert argocd_health(obj)["status"] == "Healthy"
    assert get(kubectl, namespace, "deployment", "idle")["spec"]["replicas"] == 0
