"""#13 on the local cluster: an InferenceService whose pods run the real vLLM (annotation
sim.tidal.dev/engine: real — the sim-runtime runs the pod's rendered command on the pod's IP, and KWOK
marks the pod Ready when that engine passes its readiness probe). Prometheus scrapes vLLM's own metrics,
the autoscaler takes the service 1 -> 2 -> 0 from the queue vLLM reports, a request wakes it, Ready means vLLM serves the
model, and every request sent through the gateway with the official openai client is answered."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.parse
import urllib.request

import pytest

from tests.cluster.test_autoscaler import apply, deployment, replicas
from tests.cluster.test_operator import condition, events, get
from tests.cluster.test_smoke import wait_for
from tests.conftest import start_activator

pytestmark = [pytest.mark.cluster, pytest.mark.real_engine]
SERVED = "tiny-real"


def service() -> dict:
    return {"apiVersion": "tidal.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": "real"},
            # --dtype=float32: see tests/test_real_vllm.py (bfloat16 kernels died of SIGILL on this AMX CPU)
            "spec": {"engine": {"type": "vllm", "args": ["--enforce-eager", "--max-num-seqs=2", "--dtype=float32"],
                                "drainSeconds": 60},
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
    default hold timeout (300 s), not the 60 s the other tests use. It sends no load reports: the scale-out
    test claims the engine's own queue scales it, and the gateway's fast signal would scale first (#32)."""
    act = start_activator(dev_cluster, operator, "--hold-timeout", "300", "--load-report-interval", "0")
    yield act
    act.proc.terminate()
    act.proc.wait(10)


def test_a_real_vllm_service_scales_1_2_0_from_its_own_queue_and_wakes(operator, patient_activator, kubectl,
                                                                        namespace, dev_cluster):
    """The load comes while one replica serves, so the second can only come from the queue Prometheus sees
    (vLLM's own gauge, and what the gateway holds for it); from zero, the wake-up's sizing alone could ask for
    two and prove nothing about the queue. Then idle to zero, and one request wakes it."""
    from openai import AsyncOpenAI
    activator = patient_activator
    first = service()
    first["spec"]["scaling"]["minReplicas"] = 1
    apply(kubectl, namespace, first)
    # The first replica starts vLLM for real; Ready comes from the operator asking that vLLM for its models.
    wait_for(lambda: (condition(get(kubectl, namespace, "inferenceservice", "real"), "Ready") or {}).get("reason")
             == "ModelReady", timeout=300, interval=2, what="Ready: ModelReady from the real vLLM")

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
    apply(kubectl, namespace, service())  # minReplicas 0 from now on
    reasons = [m for _, r, m in events(kubectl, namespace, "real") if r == "Scaled"]
    # The second replica came from the queue Prometheus saw while the first served (vLLM's own gauge and the
    # requests the gateway held for it), not from the wake-up's sizing, which alone could ask for 2.
    assert any(m.startswith("1 -> 2 replicas: QueueAboveTarget: ") and "running on 1/1 ready" in m
               for m in reasons), reasons
    # Prometheus scraped vLLM's own gauge, with vLLM's labels, and saw a queue in vLLM: the gateway sends a
    # replica at most its batch plus the target queue (2 + 1) and holds the rest, so vLLM's queue peaks at 1.
    series = prometheus_series(dev_cluster.prometheus_url, f'vllm:num_requests_waiting{{model_name="{SERVED}"}}')
    assert series and {"model_name", "engine", "namespace"} <= set(series[0]["metric"]), series
    # ...and its KV-cache gauge, by the name the autoscaler reads (a batch of long prompts is full before its
    # places are: autoscaling.limits.batch_that_fits).
    kv = prometheus_series(dev_cluster.prometheus_url, f'vllm:kv_cache_usage_perc{{model_name="{SERVED}"}}')
    assert kv and 0 <= float(kv[0]["value"][1]) <= 1 and "namespace" in kv[0]["metric"], kv
    peak = prometheus_series(dev_cluster.prometheus_url,
                             f'max(max_over_time(vllm:num_requests_waiting{{model_name="{SERVED}"}}[10m]))')
    assert peak and float(peak[0]["value"][1]) >= 1, peak
    wait_for(lambda: replicas(kubectl, namespace, "real") == 0, timeout=240, interval=2, what="back to zero")
    waker = AsyncOpenAI(base_url=f"{activator.url}/{namespace}/real/v1", api_key="unused", max_retries=0, timeout=600)
    woken = asyncio.run(waker.completions.create(model=SERVED, prompt="wake", max_tokens=4))
    assert woken.usage.completion_tokens == 4
    assert any(m.startswith("0 -> ") and "ActivatorWake" in m
               for _, r, m in events(kubectl, namespace, "real") if r == "Scaled")


def pods(kubectl, namespace: str, name: str) -> list[dict]:
    return json.loads(kubectl("get", "pods", "-n", namespace, "-l", f"tidal.dev/inferenceservice={name}",
                              "-o", "json").stdout)["items"]


def rolled_out(kubectl, namespace: str, name: str, count: int) -> bool:
    """The Deployment's pods are all of its current template and Ready, and the old ones are gone."""
    status = deployment(kubectl, namespace, name).get("status", {})
    return (status.get("updatedReplicas") == count and status.get("readyReplicas") == count
            and len(pods(kubectl, namespace, name)) == count)


class SteadyLoad:
    """Clients that each send a 100-token completion through the gateway, then pause a moment, until
    stopped; every answer (or error) is kept. Light on purpose: two replicas under constant load take
    both of this machine's cores, and each new one then needs minutes to start (measured with three clients
    and 0.5 s pauses: 5.5 min for each of the rollout's two new pods, past the test's 10 minutes)."""

    def __init__(self, url: str, clients: int, max_tokens: int = 100, pause_s: float = 0.5):
        from openai import AsyncOpenAI
        self.results: list = []
        self.max_tokens, self.pause_s = max_tokens, pause_s
        self._stop = threading.Event()
        self._client = AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(clients),), daemon=True)
        self._thread.start()

    async def _run(self, clients: int) -> None:
        async def client(i: int) -> None:
            while not self._stop.is_set():
                try:
                    answer = await self._client.completions.create(model=SERVED, prompt=f"tide {i}",
                                                                   max_tokens=self.max_tokens,
                                                                   extra_body={"ignore_eos": True})
                    self.results.append(answer.usage.completion_tokens)
                except Exception as err:  # noqa: BLE001 - every failure is what the test reports
                    self.results.append(err)
                await asyncio.sleep(self.pause_s)
        await asyncio.gather(*(client(i) for i in range(clients)))

    def stop(self) -> list:
        self._stop.set()
        self._thread.join(600)
        return self.results


def test_rollout_and_scale_down_of_real_vllm_under_load_lose_nothing(operator, patient_activator, kubectl,
                                                                    namespace):
    """Two real vLLM replicas serve a steady load through the gateway while the service rolls out a new
    template (a new pod starts, then each old one drains: SIGTERM, vLLM finishes what it runs) and then
    scales down to one. No client sees an error, and every generation is complete."""
    spec = service()
    spec["metadata"]["name"] = "roll"
    spec["spec"]["engine"]["args"] = ["--enforce-eager", "--max-num-seqs=4"]
    spec["spec"]["scaling"].update(minReplicas=2, maxReplicas=2)
    apply(kubectl, namespace, spec)
    wait_for(lambda: rolled_out(kubectl, namespace, "roll", 2), timeout=400, interval=2, what="two real replicas")

    load = SteadyLoad(f"{patient_activator.url}/{namespace}/roll/v1", clients=2, pause_s=2.0)
    try:
        time.sleep(10)
        first = {p["metadata"]["name"] for p in pods(kubectl, namespace, "roll")}
        spec["spec"]["engine"]["args"] = ["--enforce-eager", "--max-num-seqs=5"]  # a new pod template
        apply(kubectl, namespace, spec)
        wait_for(lambda: rolled_out(kubectl, namespace, "roll", 2), timeout=600, interval=2, what="the rollout")
        assert not first & {p["metadata"]["name"] for p in pods(kubectl, namespace, "roll")}
        spec["spec"]["scaling"].update(minReplicas=1, maxReplicas=1)
        apply(kubectl, namespace, spec)
        wait_for(lambda: rolled_out(kubectl, namespace, "roll", 1), timeout=300, interval=2, what="the scale-down")
        time.sleep(5)
    finally:
        results = load.stop()
    errors = [r for r in results if not isinstance(r, int)]
    assert not errors, errors[:3]
    assert len(results) >= 20 and set(results) == {100}, sorted(set(results))
