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
