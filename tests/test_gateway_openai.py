"""The one endpoint with the official `openai` client: the real gateway on loopback, in front of real
simulated vLLM engines, keys and limits as the Secret watch would set them (the Secret watch itself,
the model at zero and revocation are in tests/cluster/test_gateway.py)."""

from __future__ import annotations

import asyncio
import base64
import re
import socket

import openai
import pytest
from aiohttp import web

from tests.exposition import sample_sum
from tidal.gateway.catalog import Catalog, Entry
from tidal.gateway.endpoints import Endpoint, Endpoints
from tidal.gateway.gateway import Gateway
from tidal.gateway.keys import KeyRing, key_from_secret
from tidal.simulate.latency import LatencyModel
from tidal_dev.simserver.podspec import EngineSpec
from tidal_dev.simserver.runtime import serve_engine

FULL, ONLY_A, LIMITED = "full-" + "x" * 20, "only-a-" + "y" * 20, "limited-" + "z" * 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def key(name, token, **annotations):
    return key_from_secret(name, {"key": base64.b64encode(token.encode()).decode()},
                           {f"tidal.dev/{k}": v for k, v in annotations.items()})[0]


class Stack:
    """Two models (model-a in ns-a, model-b in ns-b), each one simulated vLLM replica, behind the gateway."""

    async def __aenter__(self):
        self.runners, endpoints, catalog, ring = [], Endpoints(), Catalog(), KeyRing()
        for ns, served in (("ns-a", "model-a"), ("ns-b", "model-b")):
            port = free_port()
            latency = LatencyModel(prefill_s_per_token=0, decode_s_per_token=0.002, overhead_s=0, max_concurrency=8)
            _, runners = await serve_engine(EngineSpec("vllm", (served,), served, port, None, latency), "127.0.0.1")
            self.runners += runners
            catalog.put(Entry((ns, served), served, "vllm", "2026-01-01T00:00:00Z", 1))
            endpoints.update((ns, served), "pod", Endpoint("127.0.0.1", port))
        for k in (key("full", FULL), key("only-a", ONLY_A, models="model-a"),
                  key("limited", LIMITED, **{"requests-per-minute": "5"})):
            ring.put(k)
        self.gateway = Gateway(endpoints, None, catalog=catalog, keys=ring)
        runner = web.AppRunner(self.gateway.app(), access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self.runners.append(runner)
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc):
        for runner in self.runners:
            await runner.cleanup()

    def client(self, api_key) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=20)

    def counter(self, name, **labels) -> float:
        from prometheus_client import generate_latest
        return sample_sum(generate_latest(self.gateway.metrics.registry).decode(), name, **labels)


def run(coro):
    return asyncio.run(coro)


def test_one_base_url_serves_two_models_plain_and_streamed_and_meters_what_the_client_saw():
    async def scenario():
        async with Stack() as stack:
            client = stack.client(FULL)
            listed = await client.models.list()
            assert sorted(m.id for m in listed.data) == ["model-a", "model-b"]
            extra = {m.id: m.model_extra["tidal"] for m in listed.data}
            assert extra["model-a"]["namespace"] == "ns-a" and extra["model-a"]["state"] == "ready"
            assert (await client.models.retrieve("model-b")).model_extra["tidal"]["name"] == "model-b"
            seen = {}
            for model in ("model-a", "model-b"):
                plain = await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "hello there"}], max_tokens=7)
                assert plain.model == model and plain.usage.completion_tokens == 7
                # Streamed without asking for usage: the client gets no usage event...
                chunks = [c async for c in await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "hello there"}], max_tokens=11, stream=True)]
                assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)
                streamed_text = "".join(c.choices[0].delta.content or "" for c in chunks)
                assert streamed_text.count("tok") == 11
                # ...and asking for it, the client gets it as OpenAI sends it.
                asked = [c async for c in await client.completions.create(
                    model=model, prompt="hello there", max_tokens=3, stream=True,
                    stream_options={"include_usage": True})]
                assert asked[-1].choices == [] and asked[-1].usage.completion_tokens == 3
                seen[model] = (plain.usage.prompt_tokens * 2 + asked[-1].usage.prompt_tokens,
                               plain.usage.completion_tokens + streamed_text.count("tok") + 3)
            # ...and the gateway metered all of it, per key and model.
            for model, (prompt, completion) in seen.items():
                assert stack.counter("tidal_gateway_completion_tokens_total", key="full", model=model) == completion
                assert stack.counter("tidal_gateway_prompt_tokens_total", key="full", model=model) == prompt
            # `tidal usage` reads the same counters.
            from prometheus_client import generate_latest

            from tidal.usage_report import summarise, table
            text = generate_latest(stack.gateway.metrics.registry).decode()
            rows = summarise([text, text])  # two gateway replicas with the same counts: summed
            assert rows[("full", "model-a")] == {"requests": 6, "prompt_tokens": 2 * seen["model-a"][0],
                                                 "completion_tokens": 2 * seen["model-a"][1]}
            assert f"{2 * seen['model-b'][1]:,}" in table(rows)
    run(scenario())


def test_keys_missing_wrong_and_limited_to_another_model_get_openai_errors():
    async def scenario():
        async with Stack() as stack:
            ask = dict(messages=[{"role": "user", "content": "hi"}], max_tokens=2)
            with pytest.raises(openai.AuthenticationError) as err:
                await stack.client("wrong-" + "q" * 20).chat.completions.create(model="model-a", **ask)
            assert err.value.code == "invalid_api_key"
            import aiohttp
            async with aiohttp.ClientSession() as http:  # no Authorization header at all
                async with http.post(stack.base_url + "/chat/completions", json={"model": "model-a", **ask}) as r:
                    assert r.status == 401 and (await r.json())["error"]["code"] == "missing_api_key"
            only_a = stack.client(ONLY_A)
            assert (await only_a.chat.completions.create(model="model-a", **ask)).choices
            for model in ("model-b", "no-such-model"):  # 403 either way: the key learns nothing about B
                with pytest.raises(openai.PermissionDeniedError) as err:
                    await only_a.chat.completions.create(model=model, **ask)
                assert err.value.code == "model_not_permitted"
            assert [m.id for m in (await only_a.models.list()).data] == ["model-a"]
            with pytest.raises(openai.NotFoundError) as err:
                await stack.client(FULL).chat.completions.create(model="no-such-model", **ask)
            assert err.value.code == "model_not_found" and "no-such-model" in err.value.message
            with pytest.raises(openai.BadRequestError):
                await stack.client(FULL).post("/chat/completions", cast_to=object, body={"messages": []})
    run(scenario())


def test_a_burst_against_a_limited_key_serves_the_limit_and_refuses_the_rest_with_429():
    async def scenario():
        async with Stack() as stack:
            client = stack.client(LIMITED)

            async def one():
                try:
                    raw = await client.chat.completions.with_raw_response.create(
                        model="model-a", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
                    return 200, raw.headers
                except openai.APIStatusError as err:
                    return err.status_code, err.response.headers
            results = await asyncio.gather(*(one() for _ in range(20)))
        statuses = sorted(s for s, _ in results)
        assert statuses == [200] * 5 + [429] * 15, statuses
        for status, headers in results:
            assert headers["x-ratelimit-limit-requests"] == "5"
            if status == 429:
                assert int(headers["retry-after"]) >= 1 and headers["x-ratelimit-remaining-requests"] == "0"
                assert re.fullmatch(r"\d+(ms|s)", headers["x-ratelimit-reset-requests"])
    run(scenario())
