"""The autoscaler end to end: real Prometheus, simulated engines, the operator as users run it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.cluster.test_operator import condition, events, get, wait_condition
from tests.cluster.test_smoke import wait_for
from tests.conftest import wake_token_file
from tests.exposition import TextServer
from tests.loadgen import steady_load

pytestmark = pytest.mark.cluster


def service(name, **scaling):
    scaling = {"minReplicas": 0, "maxReplicas": 4, "targetQueueDepth": 2, "idleSecondsBeforeZero": 10,
               "scaleDownStabilizationSeconds": 8, **scaling}
    return {"apiVersion": "tidal.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": name},
            "spec": {"engine": {"type": "vllm", "args": ["--max-num-seqs=4"]}, "model": {"uri": f"hf://org/{name}"},
                     "placement": {"nodePool": "h100"}, "scaling": scaling}}


def apply(kubectl, namespace, obj):
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))


def deployment(kubectl, namespace, name):
    """The service's Deployment, or {} while the operator has not created it yet."""
    found = kubectl("get", "deployment", name, "-n", namespace, "-o", "json", check=False)
    if found.returncode != 0:
        assert "NotFound" in found.stderr, found.stderr
        return {}
    return json.loads(found.stdout)


def replicas(kubectl, namespace, name):
    """The Deployment's spec.replicas, or None while it does not exist yet."""
    return deployment(kubectl, namespace, name).get("spec", {}).get("replicas")


def ready_replicas(kubectl, namespace, name):
    return deployment(kubectl, namespace, name).get("status", {}).get("readyReplicas")


def test_load_raises_replicas_to_max_and_idle_returns_them_to_zero(operator, kubectl, namespace):
    apply(kubectl, namespace, service("chat"))
    wait_condition(kubectl, namespace, "chat", "Ready", "True", "ModelReady")
    seen, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            obj = get(kubectl, namespace, "tis", "chat")
            seen.append((obj["status"].get("desiredReplicas"), obj["status"].get("queueDepth")))
            time.sleep(0.5)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        # 24 clients, 2.8 s per request, 4 at a time per replica: one replica queues 20.
        counts = asyncio.run(steady_load(kubectl, namespace, "chat", concurrency=24, seconds=20, max_tokens=400))
    finally:
        stop.set()
        watcher.join()
    assert counts["failed"] == 0 and counts["ok"] > 0
    assert max(d for d, _ in seen if d is not None) == 4  # reached maxReplicas...
    assert all(d <= 4 for d, _ in seen if d is not None)  # ...and never beyond
    assert max(q for _, q in seen if q is not None) >= 4  # the queue Prometheus saw is in status
    started = time.monotonic()
    wait_for(lambda: replicas(kubectl, namespace, "chat") == 0, timeout=90, interval=1, what="scale to zero")
    obj = get(kubectl, namespace, "tis", "chat")
    assert obj["status"]["lastDecision"]["reason"] == "IdleToZero"
    assert time.monotonic() - started >= 8  # not before the idle period
    scaled = [m for t, r, m in events(kubectl, namespace, "chat") if r == "Scaled"]
    assert any("QueueAboveTarget" in m for m in scaled) and any("IdleToZero" in m for m in scaled)
    metrics = urllib.request.urlopen(operator.url + "/metrics").read().decode()
    assert 'tidal_autoscaler_decisions_total{reason="IdleToZero"}' in metrics
    assert "tidal_autoscaler_tick_seconds_count" in metrics


def test_replicas_whose_kv_caches_are_full_count_as_full(operator, kubectl, namespace):
    """Long prompts fill a simulated vLLM's 196,608-token KV cache at 4 requests of ~40,400 tokens, far below its
    48-request batch: the other 16 wait in the engine. Counted at 48 + 2 places a replica, 20 requests ask for
    one; counted at what fits (4 a replica), for ceil(20 / 6) = 4, and the decision says why."""
    long = service("longctx", minReplicas=1)
    long["spec"]["engine"]["args"] = ["--max-num-seqs=48"]
    apply(kubectl, namespace, long)
    wait_condition(kubectl, namespace, "longctx", "Ready", "True", "ModelReady")
    most, stop = [0], threading.Event()

    def watch():
        while not stop.is_set():
            most[0] = max(most[0], replicas(kubectl, namespace, "longctx") or 0)
            time.sleep(0.5)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        # 160,000 characters are ~40,000 prompt tokens: 4 s of prefill and 2.8 s of decoding each.
        counts = asyncio.run(steady_load(kubectl, namespace, "longctx", concurrency=20, seconds=20, max_tokens=400,
                                         prompt="tide " * 32_000))
    finally:
        stop.set()
        watcher.join()
    assert counts["failed"] == 0 and counts["ok"] > 0
    assert most[0] >= 3, f"at most {most[0]} replica(s) while 16 requests waited for KV-cache room"
    scaled = [m for t, r, m in events(kubectl, namespace, "longctx") if r == "Scaled"]
    assert any("QueueAboveTarget" in m and "KV caches" in m for m in scaled), scaled


def test_prometheus_outage_holds_replicas_then_scaling_resumes(dev_cluster, operator, kubectl, namespace):
    from tidal_dev.cluster.cluster import DevCluster
    cluster = DevCluster(dev_cluster.state_dir)
    apply(kubectl, namespace, service("steady", idleSecondsBeforeZero=4, scaleDownStabilizationSeconds=2))
    wait_condition(kubectl, namespace, "steady", "Ready", "True", "ModelReady")
    wait_condition(kubectl, namespace, "steady", "ScalingActive", "True")
    cluster.stop_component("prometheus")
    try:
        obj = wait_condition(kubectl, namespace, "steady", "ScalingActive", "False", "MetricsUnavailable", timeout=20)
        assert "keeping the current replicas" in condition(obj, "ScalingActive")["message"]
        # Long past the 4 s idle period: an outage is not an idle service.
        time.sleep(10)
        assert replicas(kubectl, namespace, "steady") == 1
        wait_for(lambda: ("Warning", "MetricsUnavailable") in
                 [(t, r) for t, r, _ in events(kubectl, namespace, "steady")], timeout=10, what="the Warning event")
    finally:
        cluster.start_component("prometheus")
    wait_condition(kubectl, namespace, "steady", "ScalingActive", "True", timeout=30)
    wait_for(lambda: replicas(kubectl, namespace, "steady") == 0, timeout=60, interval=1,
             what="scaling resumed: idle service to zero")


def backlog(value: float) -> str:
    return f'# TYPE tidal_test_backlog gauge\ntidal_test_backlog{{queue="orders"}} {value}\n'


def test_custom_promql_service_scales_on_its_own_query(dev_cluster, operator, kubectl, namespace):
    with TextServer(backlog(0)).scraped_by(dev_cluster.state_dir, f"backlog-{namespace}", job="backlog") as server:
        svc = service("orders", minReplicas=1, maxReplicas=5, targetQueueDepth=4,
                      query='sum(tidal_test_backlog{queue="orders"})')
        apply(kubectl, namespace, svc)
        wait_condition(kubectl, namespace, "orders", "Ready", "True", "ModelReady")
        server.text = backlog(12)  # 12 / 4 per replica = 3 replicas, whatever the engines say
        wait_for(lambda: replicas(kubectl, namespace, "orders") == 3, timeout=30, what="3 replicas from the query")
        # The replicas are written before the status that explains them: wait for it.
        obj = wait_for(lambda: (o := get(kubectl, namespace, "tis", "orders"))["status"].get("lastDecision", {})
                       .get("reason") == "QueueAboveTarget" and o, timeout=30, what="the decision in status")
        assert obj["status"]["queueDepth"] == 12
        server.text = backlog(0)
        wait_for(lambda: replicas(kubectl, namespace, "orders") == 1, timeout=60, interval=1,
                 what="back to minReplicas")


def test_a_wake_call_writes_the_replicas_before_it_answers(dev_cluster, operator, kubectl, namespace):
    apply(kubectl, namespace, service("sleepy", idleSecondsBeforeZero=1, scaleDownStabilizationSeconds=1))
    wait_for(lambda: replicas(kubectl, namespace, "sleepy") == 0, timeout=60, interval=0.5, what="scaled to zero")
    url, body = f"{operator.url}/v1/wake/{namespace}/sleepy", json.dumps({"pending": 3}).encode()
    # Without the gateway's token the door stays shut, and nothing is written.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(url, body, {"Content-Type": "application/json"}), timeout=30)
    assert refused.value.code == 401 and replicas(kubectl, namespace, "sleepy") == 0
    token = wake_token_file(dev_cluster).read_text()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json",
                                                 "Authorization": f"Bearer {token}"})
    answer = json.load(urllib.request.urlopen(request, timeout=30))
    assert (replicas(kubectl, namespace, "sleepy") or 0) >= 1, "the wake answered before writing replicas"
    assert answer["woken"] and answer["reason"] == "ActivatorWake"
    print(f"\nthe wake call took {answer['seconds']:.3f} s in the operator")  # a measurement, not a bound
    wait_condition(kubectl, namespace, "sleepy", "Ready", "True", "ModelReady", timeout=30)


def test_a_namespaces_gpu_quota_is_reported_and_respected(operator, kubectl, namespace):
    """#33: a ResourceQuota of 1 GPU in the namespace and a service whose minReplicas is 2: the apiserver
    refuses the second pod, the service says so (Ready False, QuotaExceeded, naming the quota) with a Warning
    Event, and nothing else breaks; raised to 2 GPUs, the second replica comes and the service is Ready."""
    def quota(gpus):
        kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "gpus"},
            "spec": {"hard": {"requests.nvidia.com/gpu": str(gpus)}}}))
    quota(1)
    apply(kubectl, namespace, service("quota", minReplicas=2, maxReplicas=2))
    obj = wait_condition(kubectl, namespace, "quota", "Ready", "False", "QuotaExceeded", timeout=90)
    message = condition(obj, "Ready")["message"]
    assert "minReplicas is 2" in message and "exceeded quota: gpus" in message, message
    wait_for(lambda: ready_replicas(kubectl, namespace, "quota") == 1, timeout=60, what="the one replica allowed")
    assert condition(get(kubectl, namespace, "inferenceservice", "quota"), "Ready")["reason"] == "QuotaExceeded"
    wait_for(lambda: ("Warning", "QuotaExceeded") in [(t, r) for t, r, _ in events(kubectl, namespace, "quota")],
             timeout=20, what="a QuotaExceeded Warning")
    quota(2)
    wait_for(lambda: ready_replicas(kubectl, namespace, "quota") == 2, timeout=120, what="the second replica")
    wait_condition(kubectl, namespace, "quota", "Ready", "True", "ModelReady", timeout=60)
