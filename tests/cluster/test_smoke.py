"""The local cluster behaves like a real GPU cluster: real scheduling, taints, RBAC, Prometheus."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tidal_dev.cluster.nodes import load_description
from tests.conftest import TEST_NODES
from tests.exposition import TextServer

pytestmark = pytest.mark.cluster
GPU = "nvidia.com/gpu"
TOLERATION = {"key": GPU, "operator": "Exists", "effect": "NoSchedule"}


def wait_for(predicate, timeout=30.0, interval=0.2, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def gpu_pod(name, pool=None, gpus=1, tolerate=True, cold_start=None):
    spec = {"containers": [{"name": "engine", "image": "vllm/vllm-openai:v0.11.0",
                            "resources": {"limits": {GPU: str(gpus)}} if gpus else {}}]}
    if pool:
        spec["nodeSelector"] = {"tidal.dev/pool": pool}
    if tolerate:
        spec["tolerations"] = [TOLERATION]
    annotations = {"sim.tidal.dev/cold-start": cold_start} if cold_start else {}
    return {"metadata": {"name": name, "labels": {"app": name}, "annotations": annotations}, "spec": spec}


def test_every_node_ready_with_its_gpu_capacity(k8s):
    desc = load_description(TEST_NODES)
    nodes = client.CoreV1Api(k8s).list_node().items
    by_pool = {}
    for node in nodes:
        by_pool.setdefault(node.metadata.labels["tidal.dev/pool"], []).append(node)
        assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions), node.metadata.name
    for pool in desc.pools:
        members = by_pool[pool.name]
        assert len(members) == pool.nodes
        for node in members:
            if pool.gpus_per_node:
                assert node.status.allocatable[GPU] == str(pool.gpus_per_node)
                assert node.metadata.labels["nvidia.com/gpu.product"] == pool.gpu_product
                assert any(t.key == GPU and t.effect == "NoSchedule" for t in node.spec.taints)
            else:
                assert GPU not in node.status.allocatable
                assert not node.spec.taints


def test_apiserver_reports_the_stamped_version(k8s):
    version = client.VersionApi(k8s).get_code()
    assert version.git_version.startswith("v1.36."), version.git_version
    assert version.major == "1" and version.minor.startswith("36")


def test_gpu_deployment_lands_on_its_pool_and_is_ready_after_the_cold_start(k8s, namespace):
    apps, core = client.AppsV1Api(k8s), client.CoreV1Api(k8s)
    pod = gpu_pod("llm", pool="h100", cold_start="3s")
    apps.create_namespaced_deployment(namespace, {
        "metadata": {"name": "llm"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "llm"}}, "template": pod}})
    created = time.monotonic()

    def ready_pods():
        pods = core.list_namespaced_pod(namespace, label_selector="app=llm").items
        ready = [p for p in pods if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]
        return ready if len(ready) == 2 else None

    pods = wait_for(ready_pods, timeout=60, what="2 ready GPU pods")
    elapsed = time.monotonic() - created
    assert elapsed >= 3.0, f"pods were Ready after {elapsed:.1f} s, before the 3 s cold start"
    for p in pods:
        node = core.read_node(p.spec.node_name)
        assert node.metadata.labels["tidal.dev/pool"] == "h100"
        assert p.status.pod_ip.startswith("127."), p.status.pod_ip
        assert p.status.phase == "Running"
    deployment = apps.read_namespaced_deployment("llm", namespace)
    assert deployment.status.ready_replicas == 2


def _unschedulable_message(core, namespace, name):
    pod = core.read_namespaced_pod(name, namespace)
    for cond in pod.status.conditions or []:
        if cond.type == "PodScheduled" and cond.status == "False" and cond.reason == "Unschedulable":
            return cond.message
    return None


def test_pod_without_the_gpu_toleration_never_lands_on_a_gpu_node(k8s, namespace):
    core = client.CoreV1Api(k8s)
    core.create_namespaced_pod(namespace, gpu_pod("untolerated", pool="h100", gpus=0, tolerate=False))
    message = wait_for(lambda: _unschedulable_message(core, namespace, "untolerated"), what="Unschedulable")
    assert "untolerated taint" in message
    # Without a pool selector it goes to the CPU pool, never to a GPU node.
    core.create_namespaced_pod(namespace, gpu_pod("plain", gpus=0, tolerate=False))
    node = wait_for(lambda: core.read_namespaced_pod("plain", namespace).spec.node_name, what="plain scheduled")
    assert core.read_node(node).metadata.labels["tidal.dev/pool"] == "cpu"
    assert core.read_namespaced_pod("untolerated", namespace).spec.node_name is None


def test_pods_beyond_the_pool_gpus_stay_pending_unschedulable(k8s, namespace):
    core = client.CoreV1Api(k8s)
    desc = load_description(TEST_NODES)
    a100 = desc.pool("a100")
    # Whole-node pods: exactly one per node fits, the next one cannot.
    names = [f"big-{i}" for i in range(a100.nodes + 1)]
    for name in names:
        core.create_namespaced_pod(namespace, gpu_pod(name, pool="a100", gpus=a100.gpus_per_node))

    def placement():
        pods = [core.read_namespaced_pod(n, namespace) for n in names]
        placed = [p for p in pods if p.spec.node_name]
        pending = [_unschedulable_message(core, namespace, p.metadata.name) for p in pods if not p.spec.node_name]
        return (placed, pending) if len(placed) == a100.nodes and all(pending) else None

    placed, pending = wait_for(placement, what="a full a100 pool")
    assert len({p.spec.node_name for p in placed}) == a100.nodes
    assert len(pending) == 1 and f"Insufficient {GPU}" in pending[0]


def test_service_account_without_rbac_is_denied(dev_cluster, k8s, namespace):
    core = client.CoreV1Api(k8s)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    token = core.create_namespaced_service_account_token(
        "nobody", namespace, {"spec": {"expirationSeconds": 600}}).status.token
    cfg = client.Configuration()
    cfg.host = dev_cluster.api_server
    cfg.ssl_ca_cert = str(dev_cluster.state_dir / "pki" / "ca.crt")
    cfg.api_key = {"authorization": f"Bearer {token}"}
    with client.ApiClient(cfg) as as_nobody:
        with pytest.raises(ApiException) as denied:
            client.CoreV1Api(as_nobody).list_namespaced_pod(namespace)
        assert denied.value.status == 403
        assert f"system:serviceaccount:{namespace}:nobody" in denied.value.body
        # The token itself is valid: the same identity may ask what it can do.
        review = client.AuthorizationV1Api(as_nobody).create_self_subject_access_review(
            {"spec": {"resourceAttributes": {"namespace": namespace, "verb": "list", "resource": "pods"}}})
        assert review.status.allowed is False


def _prometheus(url, path):
    with urllib.request.urlopen(url + path, timeout=5) as resp:
        return json.load(resp)


def test_prometheus_answers_queries_and_scrapes_registered_targets(dev_cluster):
    assert _prometheus(dev_cluster.prometheus_url, "/api/v1/query?query=vector(42)")["data"]["result"][0]["value"][1] == "42"

    with TextServer("# TYPE tidal_smoke gauge\ntidal_smoke 7\n").scraped_by(dev_cluster.state_dir, "smoke", job="smoke"):
        result = wait_for(lambda: _prometheus(dev_cluster.prometheus_url,
                                              "/api/v1/query?query=tidal_smoke")["data"]["result"],
                          timeout=30, interval=0.5, what="Prometheus to scrape the smoke target")
        assert result[0]["value"][1] == "7"
