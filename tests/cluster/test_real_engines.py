"""#13 on the local cluster: an InferenceService whose pods run the real vLLM (annotation
sim.tidal.dev/engine: real — the sim-runtime runs the pod's rendered command on the pod's IP, and KWOK
marks the pod Ready when that engine passes its readiness probe). Prometheus scrapes vLLM's own metrics,
the autoscaler takes the service 0 -> 2 -> 0 from the queue vLLM reports, Ready means vLLM serves the
model, and every request sent through the gateway with the official openai client is answered."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.parse
import urllib.request

import pytest

from tests.cluster.test_autoscaler import apply, replicas
from tests.cluster.test_operator import condition, events, get
from tests.cluster.test_smoke import wait_for
from tests.conftest import start_activator

pytestmark = [pytest.mark.cluster, pytest.mark.real_engine]
SERVED = "tiny-real"


def service() -> dict:
    return {"apiVersion": "tidal.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": "real"},
            "spec": {"engine": {"type": "vllm", "args": ["--enforce-eager", "--max-num-seqs=2"], "drainSeconds": 60},
                     "model": {"uri": "hf://tidal-test/tiny-llama", "servedName": SERVED},
                     "resources": {"gpus": 1, "cpu": "1", "memory": "4Gi"},
                     "placement": {"nodePool": "h100", "podAnnotations": {"sim.tidal.dev/engine": "real"}},
                     "scaling": {"minReplicas": 0, "maxReplicas": 2, "targetQueueDepth": 1,
                                 "idleSecondsBeforeZero": 20, "scaleDownStabilizationSeconds": 10}}}


def prometheus_series(url: str, query: str) -> list[dict]:
    answer = json.load(urllib.request.urlopen(f"{url}/api/v1/query?query={urllib.parse.quote(query)}", timeout=5))
    return answer["data"]["result"]


@pytest.fixture
def patient_activator(dev_cluster, operator):
    """Two real vLLM replicas starting at once on this 2-core machine take about a minute: the chart's
    default hold timeout (300 s), not the 60 s the other tests use."""
    act = start_activator(dev_cluster, operator, "--hold-timeout", "300")
    yield act
    act.proc.terminate()
    act.proc.wait(10)


def test_a_real_vllm_service_scales_0_2_0_from_its_own_queue(operator, patient_activator, kubectl, namespace,
                                                             dev_cluster):
    from openai import AsyncOpenAI
    activator = patient_activator
    first = service()
    first["spec"]["scaling"]["minReplicas"] = 1  # held up until Ready is seen (idle would take it to zero first)
    apply(kubectl, namespace, first)
    # The first replica starts vLLM for real; Ready comes from the operator asking that vLLM for its models.
    wait_for(lambda: (condition(get(kubectl, namespace, "inferenceservice", "real"), "Ready") or {}).get("reason")
             == "ModelReady", timeout=300, interval=2, what="Ready: ModelReady from the real vLLM")
    apply(kubectl, namespace, service())  # minReplicas 0: the idle service goes to zero
    wait_for(lambda: replicas(kubectl, namespace, "real") == 0, timeout=240, interval=2, what="idle to zero")

    most, stop = [0], threading.Event()

    def watch():
        while not stop.is_set():
            most[0] = max(most[0], replicas(kubectl, namespace, "real") or 0)
            time.sleep(1)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    client = AsyncOpenAI(base_url=f"{activator.url}/{namespace}/real/v1", api_key="unused", max_retries=0, timeout=600)

    async def load():
        async def one(i):
            answer = await client.completions.create(model=SERVED, prompt=f"tide {i}", max_tokens=1000,
                                                     extra_body={"ignore_eos": True})
            return answer.usage.completion_tokens
        return await asyncio.gather(*(one(i) for i in range(16)), return_exceptions=True)

    try:
        results = asyncio.run(load())
    finally:
        stop.set()
        watcher.join()
    assert results == [1000] * 16, [r for r in results if r != 1000][:3]
    assert most[0] == 2, f"at most {most[0]} replica(s)"
    reasons = [m for _, r, m in events(kubectl, namespace, "real") if r == "Scaled"]
    assert any("-> 2 replicas" in m for m in reasons), reasons
    # Prometheus scraped vLLM's own gauge, with vLLM's labels, and saw a queue in vLLM: the gateway sends a
    # replica at most its batch plus the target queue (2 + 1) and holds the rest, so vLLM's queue peaks at 1.
    series = prometheus_series(dev_cluster.prometheus_url, f'vllm:num_requests_waiting{{model_name="{SERVED}"}}')
    assert series and {"model_name", "engine", "namespace"} <= set(series[0]["metric"]), series
    peak = prometheus_series(dev_cluster.prometheus_url,
                             f'max(max_over_time(vllm:num_requests_waiting{{model_name="{SERVED}"}}[10m]))')
    assert peak and float(peak[0]["value"][1]) >= 1, peak
    wait_for(lambda: replicas(kubectl, namespace, "real") == 0, timeout=240, interval=2, what="back to zero")
