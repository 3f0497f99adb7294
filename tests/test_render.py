"""The renderers: spec in, Kubernetes objects out, for both engines, every uri scheme, and placement."""

from __future__ import annotations

import pytest

from tidal.api.v1alpha1 import parse_spec
from tidal.render import RenderSettings, render_deployment, render_service
from tidal.render.labels import SPEC_HASH_ANNOTATION

SETTINGS = RenderSettings()


def render(**spec):
    base = {"engine": {"type": "vllm"}, "model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct"}}
    base.update(spec)
    return render_deployment("llm", "ml", "uid-1", parse_spec(base), SETTINGS)


def pod(dep):
    return dep["spec"]["template"]["spec"]


def engine_container(dep):
    return pod(dep)["containers"][0]


def test_vllm_command_port_tensor_parallel_and_extra_args():
    dep = render(resources={"gpus": 4}, engine={"type": "vllm", "args": ["--max-model-len=8192"]},
                 model={"uri": "hf://meta-llama/Llama-3.1-70B", "servedName": "llama-70b"})
    c = engine_container(dep)
    assert c["command"] == ["vllm"]
    assert c["args"][:2] == ["serve", "/models/model"]
    argv = " ".join(c["args"])
    assert "--served-model-name llama-70b" in argv and "--port 8000" in argv
    assert "--tensor-parallel-size 4" in argv and c["args"][-1] == "--max-model-len=8192"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert c["image"] == "vllm/vllm-openai:v0.32.0"
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    # the startup budget covers a slow model load: 1800 s at one probe per 10 s
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 1800


def test_triton_command_ports_and_probes():
    dep = render(engine={"type": "triton", "tag": "24.12-py3"},
                 model={"uri": "pvc://repo/triton", "servedName": "resnet50"})
    c = engine_container(dep)
    assert c["image"] == "nvcr.io/nvidia/tritonserver:24.12-py3"
    assert c["command"] == ["tritonserver"]
    assert "--model-repository=/models/triton" in c["args"] and "--load-model=resnet50" in c["args"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "8002"


def test_hf_model_is_fetched_by_an_init_container_with_the_token_from_the_secret():
    dep = render(model={"uri": "hf://meta-llama/Llama-3.1-8B", "revision": "v2", "credentials": {"secretName": "hf"}})
    init = pod(dep)["initContainers"][0]
    assert init["command"] == ["hf", "download", "meta-llama/Llama-3.1-8B", "--local-dir", "/models/model",
                               "--revision", "v2"]
    token = next(e for e in init["env"] if e["name"] == "HF_TOKEN")
    assert token == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "HF_TOKEN",
                                                                         "optional": False}}}
    assert {"name": "models", "emptyDir": {}} in pod(dep)["volumes"]


def test_s3_and_gs_fetchers_reference_their_credentials():
    s3 = pod(render(model={"uri": "s3://bucket/llama", "credentials": {"secretName": "aws"}}))["initContainers"][0]
    assert s3["command"][:4] == ["aws", "s3", "sync", "s3://bucket/llama"]
    assert {e["name"] for e in s3["env"] if "valueFrom" in e} >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    gs = render(model={"uri": "gs://bucket/llama", "credentials": {"secretName": "gcp"}})
    init = pod(gs)["initContainers"][0]
    assert init["command"][:4] == ["gcloud", "storage", "rsync", "--recursive"]
    assert {"name": "gcs-key", "secret": {"secretName": "gcp", "items": [{"key": "credentials.json",
                                                                          "path": "credentials.json"}]}} \
        in pod(gs)["volumes"]


def test_pvc_model_is_mounted_read_only_and_not_downloaded():
    dep = render(model={"uri": "pvc://weights/llama-8b"})
    assert "initContainers" not in pod(dep)
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}} in pod(dep)["volumes"]
    assert engine_container(dep)["args"][1] == "/models/llama-8b"


def test_no_secret_value_is_ever_copied():
    dep = render(engine={"type": "vllm", "env": [{"name": "API_KEY", "valueFromSecret": {"name": "s", "key": "k"}}]},
                 model={"uri": "hf://org/m", "credentials": {"secretName": "hf"}})
    env = engine_container(dep)["env"]
    assert {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}} in env


def test_pool_placement_gpu_toleration_and_product():
    dep = render(placement={"nodePool": "h100", "nodeSelector": {"zone": "a"},
                            "tolerations": [{"key": "spot", "operator": "Exists"}], "priorityClassName": "high"},
                 resources={"gpus": 2, "gpuProduct": "NVIDIA-H100-80GB-HBM3"})
    p = pod(dep)
    assert p["nodeSelector"] == {"zone": "a", "tidal.dev/pool": "h100",
                                 "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert p["tolerations"][0] == {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    assert {"key": "spot", "operator": "Exists"} in p["tolerations"]
    assert p["priorityClassName"] == "high"


def test_cpu_only_replicas_get_no_gpu_toleration_or_limit():
    dep = render(resources={"gpus": 0})
    assert "tolerations" not in pod(dep)
    assert "nvidia.com/gpu" not in engine_container(dep)["resources"]["limits"]


def test_graceful_drain_shared_memory_and_non_root():
    dep = render(engine={"type": "vllm", "drainSeconds": 300}, resources={"sharedMemory": "16Gi"})
    p, c = pod(dep), engine_container(dep)
    assert c["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    assert p["terminationGracePeriodSeconds"] == 305
    assert "--shutdown-timeout" in c["args"] and c["args"][c["args"].index("--shutdown-timeout") + 1] == "300"
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in p["volumes"]
    assert p["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert p["automountServiceAccountToken"] is False


def test_replicas_are_never_rendered_and_rollouts_keep_capacity():
    dep = render()
    assert "replicas" not in dep["spec"]
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert dep["spec"]["progressDeadlineSeconds"] > 600
    assert dep["metadata"]["ownerReferences"][0]["kind"] == "InferenceService"


def test_each_replica_announces_its_capacity_to_the_activator_when_the_engine_says_its_batch():
    annotations = lambda d: d["spec"]["template"]["metadata"]["annotations"]  # noqa: E731
    vllm = render(engine={"type": "vllm", "args": ["--max-num-seqs=48"]}, scaling={"targetQueueDepth": 4})
    assert annotations(vllm)["tidal.dev/replica-capacity"] == "52"  # 48 in the batch + 4 waiting
    default_target = parse_spec({"engine": {"type": "vllm"}, "model": {"uri": "pvc://c/m"}}).scaling.targetQueueDepth
    assert annotations(render())["tidal.dev/replica-capacity"] == str(256 + default_target)  # vLLM's default
    assert "tidal.dev/replica-capacity" not in annotations(render(engine={"type": "triton"}))


def test_hash_is_stable_and_follows_the_spec():
    assert render()["metadata"]["annotations"][SPEC_HASH_ANNOTATION] == \
        render()["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    assert render(engine={"type": "vllm", "args": ["--enforce-eager"]})["metadata"]["annotations"][SPEC_HASH_ANNOTATION] \
        != render()["metadata"]["annotations"][SPEC_HASH_ANNOTATION]


@pytest.mark.parametrize("engine,ports", [("vllm", {"http": 80}), ("triton", {"http": 80, "grpc": 8001, "metrics": 8002})])
def test_service_ports(engine, ports):
    svc = render_service("llm", "ml", "uid", parse_spec({"engine": {"type": engine}, "model": {"uri": "pvc://c/m"}}))
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == ports
    assert svc["spec"]["selector"] == {"tidal.dev/inferenceservice": "llm"}


# ---- the model cache's prefetch and locality (#30.2) ---------------------------------------------------------

def _cached_spec(**model):
    return parse_spec({"engine": {"type": "vllm"}, "model": {"uri": "s3://models/llama", **model},
                       "resources": {"gpus": 2},
                       "placement": {"nodePool": "a100", "affinity": {"nodeAffinity": {
                           "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                               {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}}}})


def test_a_cached_replica_prefers_nodes_holding_its_weights_and_keeps_the_users_affinity():
    from tidal.modelcache.layout import cache_key, node_label
    from tidal.render.settings import ModelCacheSettings
    settings = RenderSettings(model_cache=ModelCacheSettings())
    pod = render_deployment("llm", "ml", "u", _cached_spec(), settings)["spec"]["template"]["spec"]
    label = node_label(cache_key("s3://models/llama"))
    assert label.startswith("model-cache.tidal.dev/") and len(label.split("/")[1]) <= 63
    node = pod["affinity"]["nodeAffinity"]
    assert node["preferredDuringSchedulingIgnoredDuringExecution"] == [
        {"weight": 100, "preference": {"matchExpressions": [{"key": label, "operator": "Exists"}]}}]
    # a preference only: the user's requirement is kept, and nothing requires the label
    assert node["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchExpressions"][0][
        "key"] == "zone"
    assert label not in str(node["requiredDuringSchedulingIgnoredDuringExecution"])
    without = render_deployment("llm", "ml", "u", _cached_spec(), RenderSettings())["spec"]["template"]["spec"]
    assert "preferredDuringSchedulingIgnoredDuringExecution" not in without["affinity"]["nodeAffinity"]


def test_the_prefetch_daemonset_runs_on_the_pool_takes_no_gpu_and_is_not_an_endpoint():
    from tidal.render import render_prefetch, wants_prefetch
    from tidal.render.labels import SERVICE_LABEL
    from tidal.render.settings import ModelCacheSettings
    settings = RenderSettings(model_cache=ModelCacheSettings(budget="200Gi"))
    spec = _cached_spec(cache={"prefetch": True})
    assert wants_prefetch(spec, settings) and not wants_prefetch(spec, RenderSettings())
    assert not wants_prefetch(_cached_spec(), settings)
    ds = render_prefetch("llm", "ml", "uid-1", spec, settings)
    assert ds["kind"] == "DaemonSet" and ds["metadata"]["name"] == "llm-prefetch"
    assert ds["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    pod = ds["spec"]["template"]["spec"]
    deployment = render_deployment("llm", "ml", "uid-1", spec, settings)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == deployment["nodeSelector"] == {"tidal.dev/pool": "a100"}
    assert pod["tolerations"] == deployment["tolerations"]  # onto the tainted GPU nodes, like the replicas
    assert pod["initContainers"] == deployment["initContainers"]  # the same fetch, into the same cache
    assert pod["containers"][0]["command"] == deployment["initContainers"][0]["command"] + ["--hold"]
    for container in pod["initContainers"] + pod["containers"]:
        assert "nvidia.com/gpu" not in str(container["resources"])
    # The Service selects the service's label: a prefetch pod must never receive requests.
    assert SERVICE_LABEL not in ds["spec"]["template"]["metadata"]["labels"]
    assert pod["automountServiceAccountToken"] is False and "priorityClassName" not in pod
