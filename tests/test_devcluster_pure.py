"""The pure parts of the local cluster: node manifests, KWOK stages, pod discovery targets."""

from __future__ import annotations

import pytest

from tidal_dev.cluster.nodes import load_description, node_manifests
from tidal_dev.cluster.pod_discovery import TargetsFile, scrape_target
from tidal_dev.cluster.stages import _millis, stages


def test_default_description_has_two_gpu_pools_and_a_cpu_pool():
    desc = load_description()
    gpu_pools = [p for p in desc.pools if p.gpus_per_node]
    assert len(gpu_pools) >= 2 and any(not p.gpus_per_node for p in desc.pools)
    nodes = node_manifests(desc)
    h100 = [n for n in nodes if n["metadata"]["labels"]["tidal.dev/pool"] == "h100"]
    assert len(h100) == 4
    assert h100[0]["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert h100[0]["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert h100[0]["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    cidrs = [n["spec"]["podCIDR"] for n in nodes]
    assert len(set(cidrs)) == len(nodes) and all(c.startswith("127.") for c in cidrs)


def test_two_clusters_get_different_pod_addresses():
    from tidal_dev.cluster.nodes import cluster_octet
    desc = load_description()
    a, b = cluster_octet("/work/a/.tidal"), cluster_octet("/tmp/pytest-of-root/cluster0")
    assert a != b and 16 <= a < 255
    assert {n["spec"]["podCIDR"] for n in node_manifests(desc, a)}.isdisjoint(
        n["spec"]["podCIDR"] for n in node_manifests(desc, b))


def test_a_gpu_pool_without_a_product_is_refused(tmp_path):
    f = tmp_path / "pools.yaml"
    f.write_text("pools: [{name: x, nodes: 1, gpusPerNode: 8, cpu: '8', memory: 1Gi}]\n")
    with pytest.raises(ValueError, match="pool 'x': gpuProduct is required"):
        load_description(f)


def test_stages_carry_the_cold_start_and_its_per_pod_override():
    ready = next(s for s in stages("45s", "2s") if s["metadata"]["name"] == "pod-ready")
    assert ready["spec"]["delay"]["durationMilliseconds"] == 45_000
    assert "sim.tidal.dev/cold-start" in ready["spec"]["delay"]["durationFrom"]["expressionFrom"]
    assert _millis("500ms") == 500 and _millis("2m") == 120_000
    with pytest.raises(ValueError, match="use a number with ms, s, m or h"):
        _millis("soon")


def pod(**overrides):
    base = {"metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app.kubernetes.io/name": "llm"},
                         "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "8000"}},
            "spec": {"nodeName": "h100-0"}, "status": {"phase": "Running", "podIP": "127.17.0.4"}}
    base.update(overrides)
    return base


def test_scrape_target_has_the_labels_of_a_kubernetes_discovered_pod():
    assert scrape_target(pod()) == {"targets": ["127.17.0.4:8000"], "labels": {
        "app_kubernetes_io_name": "llm", "namespace": "ns", "pod": "p", "node": "h100-0",
        "__metrics_path__": "/metrics"}}
    assert scrape_target(pod(status={"phase": "Pending", "podIP": "127.17.0.4"})) is None
    assert scrape_target(pod(metadata={"name": "p", "annotations": {}})) is None


def test_targets_file_follows_pods(tmp_path):
    import json
    f = TargetsFile(tmp_path / "pods.json")
    f.update("u1", pod())
    assert json.loads((tmp_path / "pods.json").read_text())[0]["targets"] == ["127.17.0.4:8000"]
    f.retain(set())
    assert json.loads((tmp_path / "pods.json").read_text()) == []


def test_a_real_pods_fetch_runs_with_the_nodes_cache_and_the_secrets_values(tmp_path):
    """The sim-runtime runs a real engine pod's rendered fetch container as the kubelet would: the Secret's
    values resolved (a missing optional key left out, a missing required one refusing to start), the hostPath
    replaced by that node's directory, and the engine then loads what the fetch put there."""
    import base64

    from tidal.api.v1alpha1 import parse_spec
    from tidal.render import RenderSettings, render_deployment
    from tidal.render.settings import ModelCacheSettings
    from tidal_dev.simserver.init_fetch import fetch_container, loaded_model, node_fetch, resolve_env
    spec = parse_spec({"engine": {"type": "vllm"}, "model": {"uri": "s3://models/tiny",
                                                               "credentials": {"secretName": "s3"}}})
    pod = render_deployment("llm", "ml", "uid-1", spec, RenderSettings(
        model_cache=ModelCacheSettings(root="/var/lib/tidal/models", budget="1Gi")))["spec"]["template"]["spec"]
    init = fetch_container(pod)
    secrets = {("ml", "s3"): {"AWS_ACCESS_KEY_ID": base64.b64encode(b"id").decode(),
                              "AWS_SECRET_ACCESS_KEY": base64.b64encode(b"secret").decode(),
                              "AWS_ENDPOINT_URL": base64.b64encode(b"http://127.0.0.1:9000").decode()}}
    env = resolve_env(init, "ml", lambda ns, name: secrets.get((ns, name)))
    assert env["AWS_SECRET_ACCESS_KEY"] == "secret" and env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert "AWS_SESSION_TOKEN" not in env  # optional, absent
    with pytest.raises(KeyError, match="AWS_ACCESS_KEY_ID"):
        resolve_env(init, "ml", lambda ns, name: {})
    node = tmp_path / "nodes" / "h100-0"
    run = node_fetch(init, env, node, tmp_path / "termination-log")
    assert run.argv[1:4] == ["-m", "tidal.cli", "fetch-model"]
    assert run.argv[run.argv.index("--cache-root") + 1] == str(node)
    assert run.argv[-2:] == ["--termination-log", str(tmp_path / "termination-log")]
    model = loaded_model(pod["containers"][0]["args"], node)
    assert model is not None and model.parent.parent == node / "entries" and model.name == "model"
    assert fetch_container(render_deployment("llm", "ml", "uid-1", spec, RenderSettings())["spec"]["template"]
                           ["spec"]) is None  # without the node cache there is nothing for it to run
