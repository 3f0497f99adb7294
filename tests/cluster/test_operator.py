"""The operator end to end: `kubectl apply` of the examples on the local GPU cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.cluster.test_smoke import wait_for
from tests.conftest import wait_for_resyncs

pytestmark = pytest.mark.cluster
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def get(kubectl, namespace, *what):
    return json.loads(kubectl("get", *what, "-n", namespace, "-o", "json").stdout)


def condition(obj, type_):
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == type_), None)


def wait_condition(kubectl, namespace, name, type_, status, reason=None, timeout=60):
    def check():
        obj = get(kubectl, namespace, "tis", name)
        c = condition(obj, type_)
        return obj if c and c["status"] == status and (reason is None or c["reason"] == reason) else None
    return wait_for(check, timeout=timeout, interval=0.3, what=f"{name} {type_}={status} {reason or ''}")


def events(kubectl, namespace, name):
    items = get(kubectl, namespace, "events", "--field-selector", f"involvedObject.name={name}")["items"]
    return [(e["type"], e["reason"], e["message"]) for e in items if e["involvedObject"]["kind"] == "InferenceService"]


def apply_example(kubectl, namespace, filename, secrets=()):
    for secret, keys in secrets:
        kubectl("create", "secret", "generic", secret, "-n", namespace,
                *[f"--from-literal={k}=not-a-real-credential" for k in keys])
    kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / filename))
    return yaml.safe_load((EXAMPLES / filename).read_text())


@pytest.mark.parametrize("filename,secrets,pool,gpus", [
    ("vllm-llama-h100.yaml", [("hf-token", ["HF_TOKEN"])], "h100", "1"),
    ("triton-a100.yaml", [("s3-credentials", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])], "a100", "1"),
])
def test_example_runs_on_its_pool_and_becomes_ready(operator, kubectl, namespace, filename, secrets, pool, gpus):
    example = apply_example(kubectl, namespace, filename, secrets)
    name = example["metadata"]["name"]
    obj = wait_condition(kubectl, namespace, name, "Ready", "True", "ModelReady")
    assert condition(obj, "Valid")["status"] == "True"
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    assert obj["status"]["readyReplicas"] >= 1 and obj["status"]["url"] == f"http://{name}.{namespace}.svc.cluster.local"
    deployment = get(kubectl, namespace, "deployment", name)
    assert deployment["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    get(kubectl, namespace, "service", name)
    pods = get(kubectl, namespace, "pods", "-l", f"tidal.dev/inferenceservice={name}")["items"]
    assert pods
    for pod in pods:
        node = json.loads(kubectl("get", "node", pod["spec"]["nodeName"], "-o", "json").stdout)
        assert node["metadata"]["labels"]["tidal.dev/pool"] == pool
        assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == gpus
    wait_for(lambda: ("Normal", "ModelReady") in [(t, r) for t, r, _ in events(kubectl, namespace, name)],
             timeout=10, what="a ModelReady event")
    printed = kubectl("get", "tis", name, "-n", namespace).stdout
    assert "ModelReady" in printed and example["spec"]["engine"]["type"] in printed


def test_spec_edit_rolls_out_and_delete_removes_children(operator, kubectl, namespace):
    apply_example(kubectl, namespace, "vllm-llama-h100.yaml", [("hf-token", ["HF_TOKEN"])])
    wait_condition(kubectl, namespace, "llama-8b", "Ready", "True")
    kubectl("patch", "tis", "llama-8b", "-n", namespace, "--type=merge",
            "-p", '{"spec": {"engine": {"args": ["--max-model-len=4096"]}}}')

    def rolled_out():
        pods = get(kubectl, namespace, "pods", "-l", "tidal.dev/inferenceservice=llama-8b")["items"]
        new = [p for p in pods if "--max-model-len=4096" in p["spec"]["containers"][0]["args"]
               and p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
        old = [p for p in pods if "--max-model-len=8192" in p["spec"]["containers"][0]["args"]]
        return new and not old
    wait_for(rolled_out, timeout=60, what="rollout to the new args")
    obj = wait_condition(kubectl, namespace, "llama-8b", "Ready", "True")
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 2
    kubectl("delete", "tis", "llama-8b", "-n", namespace)

    def children_gone():
        return (kubectl("get", "deployment", "llama-8b", "-n", namespace, check=False).returncode != 0 and
                kubectl("get", "service", "llama-8b", "-n", namespace, check=False).returncode != 0)
    wait_for(children_gone, timeout=60, what="garbage collection of the Deployment and Service")


def test_replicas_owned_by_the_autoscaler_survive_a_spec_change(operator, kubectl, namespace):
    apply_example(kubectl, namespace, "vllm-llama-h100.yaml", [("hf-token", ["HF_TOKEN"])])
    wait_condition(kubectl, namespace, "llama-8b", "Ready", "True")
    # What the autoscaler does: apply spec.replicas under its own field manager.
    patch = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "llama-8b"}, "spec": {"replicas": 3}}
    kubectl("apply", "--server-side", "--field-manager=tidal-autoscaler", "--force-conflicts", "-n", namespace,
            "-f", "-", input=json.dumps(patch))
    kubectl("patch", "tis", "llama-8b", "-n", namespace, "--type=merge",
            "-p", '{"spec": {"engine": {"args": ["--enforce-eager"]}}}')
    wait_for(lambda: "--enforce-eager" in get(kubectl, namespace, "deployment", "llama-8b")
             ["spec"]["template"]["spec"]["containers"][0]["args"], what="the spec change applied")
    wait_for_resyncs(operator, 2)  # two whole resyncs later (one may have begun before the change), untouched
    assert get(kubectl, namespace, "deployment", "llama-8b")["spec"]["replicas"] == 3


def test_nothing_changes_means_nothing_is_written(operator, kubectl, namespace):
    apply_example(kubectl, namespace, "triton-a100.yaml",
                  [("s3-credentials", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])])
    wait_condition(kubectl, namespace, "resnet", "Ready", "True")
    wait_condition(kubectl, namespace, "resnet", "ScalingActive", "True")  # the autoscaler has seen it too
    wait_for_resyncs(operator, 1)  # settled: whatever the first passes had to write is written
    before = {k: get(kubectl, namespace, k, "resnet")["metadata"]["resourceVersion"]
              for k in ("tis", "deployment", "service")}
    wait_for_resyncs(operator, 2)  # two whole resyncs of every service
    after = {k: get(kubectl, namespace, k, "resnet")["metadata"]["resourceVersion"] for k in before}
    assert after == before, (json.dumps(get(kubectl, namespace, "tis", "resnet")["status"], indent=1),
                             events(kubectl, namespace, "resnet"))


def test_invalid_objects_are_rejected_at_apply_with_the_field_named(operator, kubectl, namespace):
    def apply(spec):
        bad = {"apiVersion": "tidal.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": "bad"},
               "spec": spec}
        result = kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(bad), check=False)
        assert result.returncode != 0
        return result.stderr

    schema = apply({"engine": {"type": "tgi"}, "model": {"uri": "ftp://x/y"}, "scaling": {"minReplicas": -1}})
    assert 'spec.engine.type: Unsupported value: "tgi": supported values: "sglang", "triton", "vllm"' in schema
    assert 'spec.model.uri: Invalid value: "ftp://x/y"' in schema
    assert "spec.scaling.minReplicas: Invalid value: -1" in schema
    # cross-field rules (CEL) run once the fields themselves are well-formed
    cel = apply({"engine": {"type": "vllm"}, "model": {"uri": "s3://b/m", "revision": "main"},
                 "scaling": {"minReplicas": 3, "maxReplicas": 1}})
    assert "spec.scaling.minReplicas: Invalid value" in cel and "must be less than or equal to" in cel
    assert "spec.model.revision: Invalid value" in cel and "only meaningful for hf://" in cel
    unknown = apply({"engine": {"type": "vllm", "imageTag": "x"}, "model": {"uri": "hf://o/m"}})
    assert 'unknown field "spec.engine.imageTag"' in unknown
    assert kubectl("get", "tis", "bad", "-n", namespace, check=False).returncode != 0


@pytest.mark.parametrize("patch,reason,words", [
    ({"placement": {"nodePool": "h200"}}, "UnknownNodePool", ["spec.placement.nodePool 'h200'", "a100, cpu, h100"]),
    ({"placement": {"nodePool": "h100"}, "resources": {"gpus": 16}}, "InsufficientGPUCapacity",
     ["spec.resources.gpus 16", "8 allocatable"]),
    ({"model": {"uri": "hf://o/m", "credentials": {"secretName": "absent"}}}, "SecretNotFound", ["'absent'"]),
])
def test_problems_only_the_operator_sees_become_a_false_condition_and_an_event(
        operator, kubectl, namespace, patch, reason, words):
    good = {"apiVersion": "tidal.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": "good"},
            "spec": {"engine": {"type": "vllm"}, "model": {"uri": "hf://o/m"}, "placement": {"nodePool": "h100"}}}
    bad = {**good, "metadata": {"name": "bad"}, "spec": {**good["spec"], **patch}}
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                  "items": [bad, good]}))
    obj = wait_condition(kubectl, namespace, "bad", "Valid", "False", reason)
    message = condition(obj, "Valid")["message"]
    assert all(w in message for w in words), message
    assert condition(obj, "Ready")["status"] == "False"
    # the Event follows the status write
    wait_for(lambda: ("Warning", reason) in [(t, r) for t, r, _ in events(kubectl, namespace, "bad")],
             timeout=10, what=f"a Warning {reason} event")
    assert kubectl("get", "deployment", "bad", "-n", namespace, check=False).returncode != 0
    # the other service in the namespace is unaffected
    wait_condition(kubectl, namespace, "good", "Ready", "True")
    # fixing the spec recovers
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(good | {"metadata": {"name": "bad"}}))
    wait_condition(kubectl, namespace, "bad", "Ready", "True")
