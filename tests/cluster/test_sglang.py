"""#17 on the local cluster: an SGLang InferenceService (the simulated SGLang: SGLang's command line,
OpenAI API and metric names) becomes Ready from its own /v1/models, and scales 0 -> N -> 0 through the
gateway from the queue SGLang reports, `sglang:num_queue_reqs`, which Prometheus scrapes with SGLang's
labels."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time

import pytest

from tests.cluster.test_activator import burst
from tests.cluster.test_autoscaler import apply, replicas
from tests.cluster.test_operator import condition, events, get
from tests.cluster.test_real_engines import prometheus_series
from tests.cluster.test_smoke import wait_for

pytestmark = pytest.mark.cluster
SERVED = "qwen-sim"


def service(**scaling) -> dict:
    return {"apiVersion": "tidal.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": "sgl"},
            "spec": {"engine": {"type": "sglang", "args": ["--max-running-requests=2"]},
                     "model": {"uri": "hf://Qwen/Qwen2.5-7B-Instruct", "servedName": SERVED},
                     "resources": {"gpus": 1}, "placement": {"nodePool": "h100"},
                     "scaling": {"minReplicas": 0, "maxReplicas": 3, "targetQueueDepth": 1,
                                 "idleSecondsBeforeZero": 5, "scaleDownStabilizationSeconds": 5, **scaling}}}


def test_an_sglang_service_scales_out_from_its_own_queue_then_to_zero_and_wakes(operator, queue_only_activator,
                                                                                kubectl, namespace, dev_cluster):
    """The burst comes while one replica serves, so a second replica can only come from the queue Prometheus
    sees (SGLang's own gauge): from zero, the wake-up's sizing alone once asked for 3 and proved nothing. Through
    a gateway that sends no load reports: its fast signal would otherwise scale first."""
    activator = queue_only_activator
    apply(kubectl, namespace, service(minReplicas=1))
    wait_for(lambda: (condition(get(kubectl, namespace, "inferenceservice", "sgl"), "Ready") or {}).get("reason")
             == "ModelReady", timeout=120, interval=1, what="Ready: ModelReady from SGLang's /v1/models")
    status = get(kubectl, namespace, "inferenceservice", "sgl")["status"]
    assert status["batch"]["size"] == 2, status["batch"]  # from --max-running-requests

    most, stop = [0], threading.Event()

    def watch():
        while not stop.is_set():
            most[0] = max(most[0], replicas(kubectl, namespace, "sgl") or 0)
            time.sleep(0.5)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        results = asyncio.run(burst(f"{activator.url}/{namespace}/sgl/v1/completions", 40, max_tokens=400))
    finally:
        stop.set()
        watcher.join()
    statuses = [s for s, _, _ in results]
    assert statuses.count(200) == 40, {s: statuses.count(s) for s in set(statuses)}
    assert all(json.loads(b)["usage"]["completion_tokens"] == 400 for _, b, _ in results)
    assert most[0] >= 2, f"at most {most[0]} replica(s)"
    scaled = [m for _, r, m in events(kubectl, namespace, "sgl") if r == "Scaled"]
    # "1 -> 3 replicas: QueueAboveTarget: 30 waiting, 2 running on 1/1 ready; target 1 waiting per replica"
    assert any(re.match(r"1 -> \d+ replicas: QueueAboveTarget: .* running on 1/1 ready", m) for m in scaled), scaled
    assert not [m for m in scaled if "ActivatorWake" in m or "WakeForBacklog" in m], scaled  # never at zero
    # Prometheus scraped SGLang's queue gauge, with SGLang's labels, and it held requests.
    series = prometheus_series(dev_cluster.prometheus_url, f'sglang:num_queue_reqs{{model_name="{SERVED}"}}')
    assert series and {"model_name", "engine_type", "tp_rank", "namespace"} <= set(series[0]["metric"]), series
    peak = prometheus_series(dev_cluster.prometheus_url,
                             f'max(max_over_time(sglang:num_queue_reqs{{model_name="{SERVED}"}}[10m]))')
    assert peak and float(peak[0]["value"][1]) >= 1, peak
    # Idle with minReplicas 0: to zero, said in an Event; then one request wakes it and is answered.
    apply(kubectl, namespace, service())
    wait_for(lambda: replicas(kubectl, namespace, "sgl") == 0, timeout=120, interval=1, what="back to zero")
    wait_for(lambda: any(" -> 0 replicas" in m for _, r, m in events(kubectl, namespace, "sgl") if r == "Scaled"),
             timeout=20, what="the scale to zero in an Event")
    woken = asyncio.run(burst(f"{activator.url}/{namespace}/sgl/v1/completions", 1, max_tokens=5))
    assert [s for s, _, _ in woken] == [200]
    assert any(m.startswith("0 -> ") and "ActivatorWake" in m
               for _, r, m in events(kubectl, namespace, "sgl") if r == "Scaled")
