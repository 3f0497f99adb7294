"""The simulated engines over real HTTP on loopback: APIs, streaming, queueing, metrics."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import numpy as np
import pytest

from tidal.simulate.latency import LatencyModel
from tidal_dev.simserver.podspec import EngineSpec
from tidal_dev.simserver.runtime import serve_engine
from tidal_dev.simserver.scheduler import FifoScheduler

FAST = LatencyModel(prefill_s_per_token=0.0, decode_s_per_token=0.001, overhead_s=0.001, max_concurrency=4)


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start(engine="vllm", latency=FAST, models=("m1",)):
    port = free_port()
    spec = EngineSpec(engine, tuple(models), models[0] if engine == "vllm" else None, port,
                      free_port() if engine == "triton" else None, latency)
    server, runners = await serve_engine(spec, "127.0.0.1")
    return server, runners, spec


async def stop(runners):
    for r in runners:
        await r.cleanup()


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def test_fifo_scheduler_serves_in_arrival_order_within_the_limit():
    async def scenario():
        sched, order = FifoScheduler(2), []

        async def job(i):
            async with sched.slot():
                order.append(i)
                await asyncio.sleep(0.01)

        tasks = [asyncio.create_task(job(i)) for i in range(6)]
        await asyncio.sleep(0)
        assert (sched.running, sched.waiting) == (2, 4)
        await asyncio.gather(*tasks)
        assert order == list(range(6))
        assert (sched.running, sched.waiting) == (0, 0)

    asyncio.run(scenario())


def test_long_requests_wait_for_room_in_the_kv_cache_first_come_first_served():
    """As vLLM admits a request only while its blocks fit: a 48-place batch with a 100-token cache runs two
    40-token requests; the third waits, and a small one behind it waits its turn; the big one runs alone."""
    async def scenario():
        sched = FifoScheduler(48, kv_tokens=100)
        done = {i: asyncio.Event() for i in range(5)}
        order = []

        async def job(i, tokens):
            async with sched.slot(tokens):
                order.append(i)
                await done[i].wait()

        tasks = [asyncio.create_task(job(i, t)) for i, t in enumerate((40, 40, 40, 10, 500))]
        await asyncio.sleep(0)
        assert (sched.running, sched.waiting, sched.kv_held) == (2, 3, 80)
        done[0].set()
        await asyncio.sleep(0.01)
        assert order == [0, 1, 2, 3] and (sched.running, sched.kv_held) == (3, 90)  # 40 + 40 + 10
        for i in (1, 2, 3):
            done[i].set()
        await asyncio.sleep(0.01)
        assert order[-1] == 4 and (sched.running, sched.kv_held) == (1, 500)  # larger than the cache: alone
        done[4].set()
        await asyncio.gather(*tasks)
        assert (sched.running, sched.waiting, sched.kv_held) == (0, 0, 0)

    asyncio.run(scenario())


def test_a_cancelled_waiter_gives_its_place_back():
    async def scenario():
        sched = FifoScheduler(1)
        release = asyncio.Event()

        async def holder():
            async with sched.slot():
                await release.wait()

        async def waiter():
            async with sched.slot():
                pass

        h = asyncio.create_task(holder())
        await asyncio.sleep(0)
        w = asyncio.create_task(waiter())
        await asyncio.sleep(0)
        assert sched.waiting == 1
        w.cancel()
        await asyncio.gather(w, return_exceptions=True)
        assert sched.waiting == 0
        release.set()
        await h
        assert sched.running == 0

    asyncio.run(scenario())


def test_vllm_completion_plain_and_streamed():
    async def scenario():
        server, runners, spec = await start()
        base = f"http://127.0.0.1:{spec.port}"
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(base + "/v1/models") as r:
                    assert (await r.json())["data"][0]["id"] == "m1"
                async with http.post(base + "/v1/completions",
                                     json={"model": "m1", "prompt": "x" * 400, "max_tokens": 7}) as r:
                    body = await r.json()
                assert r.status == 200
                assert body["usage"] == {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107}
                assert body["choices"][0]["text"].count("tok") == 7
                chunks = []
                async with http.post(base + "/v1/chat/completions",
                                     json={"model": "m1", "stream": True, "max_tokens": 120,
                                           "stream_options": {"include_usage": True},
                                           "messages": [{"role": "user", "content": "hi"}]}) as r:
                    assert r.headers["Content-Type"].startswith("text/event-stream")
                    async for line in r.content:
                        if line.startswith(b"data: "):
                            chunks.append(line[6:].strip())
                assert chunks[-1] == b"[DONE]"
                events = [json.loads(c) for c in chunks[:-1]]
                text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
                assert text.count("tok") == 120 and len(events) > 2  # really streamed in pieces
                # asked for: usage in one last event without choices (vLLM's shape); not in the others
                assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 120
                assert not any("usage" in e for e in events[:-1])
                async with http.post(base + "/v1/completions", json={"model": "other", "prompt": "x"}) as r:
                    assert r.status == 404 and "does not exist" in (await r.json())["error"]["message"]
                async with http.get(base + "/metrics") as r:
                    text = await r.text()
                assert metric(text, "vllm:request_success_total") == 2
                assert metric(text, "vllm:generation_tokens_total") == 127
        finally:
            await stop(runners)

    asyncio.run(scenario())


def test_vllm_queue_depth_is_what_the_metrics_say():
    async def scenario():
        slow = LatencyModel(prefill_s_per_token=0.0, decode_s_per_token=0.01, overhead_s=0.0, max_concurrency=4)
        server, runners, spec = await start(latency=slow)
        base = f"http://127.0.0.1:{spec.port}"
        try:
            async with aiohttp.ClientSession() as http:
                async def one():
                    async with http.post(base + "/v1/completions", json={"prompt": "x", "max_tokens": 30}) as r:
                        return r.status
                tasks = [asyncio.create_task(one()) for _ in range(20)]
                await asyncio.sleep(0.1)
                async with http.get(base + "/metrics") as r:
                    text = await r.text()
                assert metric(text, "vllm:num_requests_running") == 4
                assert metric(text, "vllm:num_requests_waiting") == 16
                assert await asyncio.gather(*tasks) == [200] * 20
                async with http.get(base + "/metrics") as r:
                    text = await r.text()
                assert metric(text, "vllm:num_requests_waiting") == 0
                assert metric(text, "vllm:request_queue_time_seconds_count") == 20
                # 4 started at once; the other 16 waited one to four rounds of 0.29 s
                assert metric(text, 'vllm:request_queue_time_seconds_bucket{le="0.25",model_name="m1"}') == 4
                assert metric(text, 'vllm:request_queue_time_seconds_bucket{le="2.5",model_name="m1"}') == 20
        finally:
            await stop(runners)

    asyncio.run(scenario())


def test_tritonclient_sees_ready_models_and_gets_an_inference():
    import tritonclient.http as triton

    async def scenario():
        server, runners, spec = await start("triton", models=("resnet", "bert"))
        return runners, spec

    loop = asyncio.new_event_loop()
    runners, spec = loop.run_until_complete(scenario())
    import threading
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        client = triton.InferenceServerClient(f"127.0.0.1:{spec.port}")
        assert client.is_server_ready() and client.is_server_live()
        assert client.is_model_ready("resnet") and client.is_model_ready("bert")
        assert not client.is_model_ready("missing")
        meta = client.get_model_metadata("resnet")
        assert meta["inputs"][0]["name"] == "INPUT0"
        data = np.arange(6, dtype=np.float32).reshape(2, 3)
        inp = triton.InferInput("INPUT0", [2, 3], "FP32")
        inp.set_data_from_numpy(data)  # binary tensor extension, as tritonclient sends by default
        result = client.infer("resnet", [inp], outputs=[triton.InferRequestedOutput("OUTPUT0")])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
        import urllib.request
        text = urllib.request.urlopen(f"http://127.0.0.1:{spec.metrics_port}/metrics").read().decode()
        assert metric(text, 'nv_inference_request_success{model="resnet",version="1"}') == 1
        assert metric(text, 'nv_inference_pending_request_count{model="resnet",version="1"}') == 0
        assert "# TYPE nv_inference_queue_duration_us counter" in text
    finally:
        asyncio.run_coroutine_threadsafe(stop(runners), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()


@pytest.mark.parametrize("container,expected", [
    ({"command": ["vllm", "serve", "meta-llama/Llama-3.1-8B"], "args": ["--served-model-name", "llama", "--port=8080"]},
     ("vllm", ("meta-llama/Llama-3.1-8B",), "llama", 8080, None)),
    ({"command": ["tritonserver"], "args": ["--model-repository=/models", "--model-control-mode=explicit",
                                            "--load-model=a", "--load-model", "b", "--http-port=9000"]},
     ("triton", ("a", "b"), None, 9000, 8002)),
    ({"command": ["sh", "-c", "exec /usr/bin/vllm serve /models/m --port 8000"]},
     ("vllm", ("/models/m",), "/models/m", 8000, None)),
    ({"command": ["python", "app.py"]}, None),
])
def test_engine_settings_are_read_from_the_container_command(container, expected):
    from tidal_dev.simserver.registry import engine_spec
    spec = engine_spec(container, {})
    got = None if spec is None else (spec.engine, spec.models, spec.served_name, spec.port, spec.metrics_port)
    assert got == expected


def test_a100_pods_are_slower_and_annotations_override_the_latency():
    from tidal_dev.simserver.registry import engine_spec
    container = {"command": ["vllm", "serve", "m"]}
    h100 = engine_spec(container, {}, "NVIDIA-H100-80GB-HBM3").latency
    a100 = engine_spec(container, {}, "NVIDIA-A100-SXM4-80GB").latency
    assert a100.decode_s_per_token == pytest.approx(2 * h100.decode_s_per_token)
    custom = engine_spec(container, {"sim.tidal.dev/latency": '{"max_concurrency": 4}'}).latency
    assert custom.max_concurrency == 4
