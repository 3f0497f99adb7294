"""Simulated engines behind simulated pods: reached at the pod IP, scraped by Prometheus as pods."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import urllib.error
import urllib.request

import aiohttp
import numpy as np
import pytest
from kubernetes import client

from tests.cluster.test_smoke import TOLERATION, wait_for

pytestmark = pytest.mark.cluster


def engine_pod(name, engine, latency=None, cold_start="1s"):
    if engine == "vllm":
        container = {"name": "engine", "image": "vllm/vllm-openai:v0.11.0", "command": ["vllm", "serve"],
                     "args": ["meta-llama/Llama-3.1-8B-Instruct", "--served-model-name", "llama", "--port", "8000"],
                     "ports": [{"containerPort": 8000, "name": "http"}]}
        scrape = {"prometheus.io/scrape": "true", "prometheus.io/port": "8000", "prometheus.io/path": "/metrics"}
    else:
        container = {"name": "engine", "image": "nvcr.io/nvidia/tritonserver:25.01-py3", "command": ["tritonserver"],
                     "args": ["--model-repository=/models", "--model-control-mode=explicit", "--load-model=resnet",
                              "--http-port=8000", "--metrics-port=8002"],
                     "ports": [{"containerPort": 8000, "name": "http"}, {"containerPort": 8002, "name": "metrics"}]}
        scrape = {"prometheus.io/scrape": "true", "prometheus.io/port": "8002"}
    container["resources"] = {"limits": {"nvidia.com/gpu": "1"}}
    annotations = {**scrape, "sim.tidal.dev/cold-start": cold_start}
    if latency:
        annotations["sim.tidal.dev/latency"] = json.dumps(latency)
    return {"metadata": {"name": name, "labels": {"app": name}, "annotations": annotations},
            "spec": {"containers": [container], "tolerations": [TOLERATION], "nodeSelector": {"tidal.dev/pool": "h100"},
                     "terminationGracePeriodSeconds": 5}}


def running_pod(core, namespace, name):
    def ready():
        pod = core.read_namespaced_pod(name, namespace)
        ok = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
        return pod if ok else None
    return wait_for(ready, timeout=60, what=f"pod {name} Ready")


def http_until_up(url, timeout=10):
    """The server starts as the pod turns Running; give the watch a moment to react."""
    def attempt():
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status == 200 and (r.read() or b"(empty body)")
        except OSError:
            return None
    return wait_for(attempt, timeout=timeout, interval=0.1, what=url)


def prom_query(dev_cluster, query):
    url = f"{dev_cluster.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)["data"]["result"]


def test_completion_through_the_pod_ip_plain_and_streamed(k8s, namespace):
    core = client.CoreV1Api(k8s)
    core.create_namespaced_pod(namespace, engine_pod("llm", "vllm"))
    pod = running_pod(core, namespace, "llm")
    base = f"http://{pod.status.pod_ip}:8000"
    models = json.loads(http_until_up(base + "/v1/models"))
    assert models["data"][0]["id"] == "llama"

    async def requests():
        async with aiohttp.ClientSession() as http:
            async with http.post(base + "/v1/completions", json={"model": "llama", "prompt": "def f():",
                                                                  "max_tokens": 12}) as r:
                plain = await r.json()
            events = []
            async with http.post(base + "/v1/completions", json={"model": "llama", "prompt": "x", "stream": True,
                                                                  "max_tokens": 40}) as r:
                async for line in r.content:
                    if line.startswith(b"data: "):
                        events.append(line[6:].strip())
            return plain, events

    plain, events = asyncio.run(requests())
    assert plain["usage"]["completion_tokens"] == 12
    assert events[-1] == b"[DONE]" and len(events) > 3
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]).count("tok") == 40


def test_tritonclient_against_a_triton_pod(k8s, namespace):
    import tritonclient.http as triton
    core = client.CoreV1Api(k8s)
    core.create_namespaced_pod(namespace, engine_pod("triton", "triton"))
    pod = running_pod(core, namespace, "triton")
    http_until_up(f"http://{pod.status.pod_ip}:8000/v2/health/ready")
    tc = triton.InferenceServerClient(f"{pod.status.pod_ip}:8000")
    assert tc.is_server_ready() and tc.is_model_ready("resnet")
    data = np.ones((1, 4), dtype=np.float32)
    inp = triton.InferInput("INPUT0", [1, 4], "FP32")
    inp.set_data_from_numpy(data)
    np.testing.assert_array_equal(tc.infer("resnet", [inp]).as_numpy("OUTPUT0"), data)


def test_queue_rises_to_16_and_drains_and_prometheus_sees_it_per_pod(dev_cluster, k8s, namespace):
    core = client.CoreV1Api(k8s)
    # 4 at a time, 2 s each: 20 requests queue 16 and drain in five rounds (10 s).
    latency = {"max_concurrency": 4, "decode_s_per_token": 0.01, "prefill_s_per_token": 0.0, "overhead_s": 0.0}
    core.create_namespaced_pod(namespace, engine_pod("queue", "vllm", latency))
    pod = running_pod(core, namespace, "queue")
    base = f"http://{pod.status.pod_ip}:8000"
    http_until_up(base + "/health")
    series = f'vllm:num_requests_waiting{{namespace="{namespace}",pod="queue"}}'
    wait_for(lambda: prom_query(dev_cluster, series), timeout=30, what="Prometheus to discover the pod")

    async def burst():
        async with aiohttp.ClientSession() as http:
            async def one():
                async with http.post(base + "/v1/completions", json={"prompt": "x", "max_tokens": 200}) as r:
                    return r.status
            tasks = [asyncio.create_task(one()) for _ in range(20)]
            await asyncio.sleep(0.3)
            async with http.get(base + "/metrics") as r:
                text = await r.text()
            return text, await asyncio.gather(*tasks)

    started = time.time()
    metrics_text, statuses = asyncio.run(burst())
    assert statuses == [200] * 20
    assert 'vllm:num_requests_waiting{model_name="llama"} 16.0' in metrics_text
    assert 'vllm:num_requests_running{model_name="llama"} 4.0' in metrics_text
    # Prometheus saw the peak of 16 for this pod, with the pod's namespace and name as labels...
    window = f"{int(time.time() - started) + 5}s"
    peak = prom_query(dev_cluster, f"max_over_time({series}[{window}])")
    assert len(peak) == 1 and peak[0]["metric"]["namespace"] == namespace and peak[0]["metric"]["pod"] == "queue"
    assert float(peak[0]["value"][1]) == 16
    # ...and the fall back to zero once the requests completed.
    wait_for(lambda: [r for r in prom_query(dev_cluster, series) if float(r["value"][1]) == 0],
             timeout=10, what="waiting back to 0 in Prometheus")


def test_deleting_the_pod_stops_its_server(k8s, namespace):
    core = client.CoreV1Api(k8s)
    core.create_namespaced_pod(namespace, engine_pod("gone", "vllm"))
    pod = running_pod(core, namespace, "gone")
    url = f"http://{pod.status.pod_ip}:8000/health"
    http_until_up(url)
    core.delete_namespaced_pod("gone", namespace)

    def pod_gone_and_server_closed():
        try:
            core.read_namespaced_pod("gone", namespace)
            return False
        except client.ApiException as err:
            if err.status != 404:
                raise
        try:
            urllib.request.urlopen(url, timeout=1)
            return False
        except urllib.error.URLError as err:  # refused: nothing listens there any more (a timeout is no proof)
            return isinstance(err.reason, ConnectionRefusedError)

    wait_for(pod_gone_and_server_closed, timeout=30, what="pod and its server gone")
