"""#30.4: a streamed request held through a long wake keeps its connection alive — the real gateway (in this
process, on loopback) begins the answer once the request has waited `keepalive_s` and sends SSE comment lines
until a replica (a simulated vLLM, added as the pod watch would add it) takes it; then the engine's events
follow. Past the hold limit the stream ends with an error event the official `openai` client raises; a
request that did not ask for a stream gets the plain 503 with Retry-After. Never a silent drop."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import pytest
from aiohttp import web

from tests.test_activator_capacity import engine, free_port
from tidal.gateway.catalog import Catalog, Entry
from tidal.gateway.endpoints import Endpoint, Endpoints
from tidal.gateway.gateway import Gateway, Limits

KEY = ("ns", "chat")
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": True}


async def start_gateway(limits: Limits):
    endpoints, catalog = Endpoints(), Catalog()
    catalog.put(Entry(KEY, "m", "vllm", ""))
    endpoints.ready.set()
    gw = Gateway(endpoints, operator_url=None, limits=limits, catalog=catalog)
    runner = web.AppRunner(gw.app(), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return endpoints, runner, f"http://127.0.0.1:{port}/v1"


def test_a_streamed_request_held_through_a_wake_gets_keepalive_comments_then_the_answer():
    async def scenario():
        endpoints, runner, base = await start_gateway(Limits(keepalive_s=0.3, hold_timeout_s=60))
        port, engine_runners = await engine()
        try:
            async with aiohttp.ClientSession() as http:
                async def wake_later():
                    await asyncio.sleep(1.5)  # a cold start, shortened: five keep-alive periods
                    endpoints.update(KEY, "pod-1", Endpoint("127.0.0.1", port, capacity=4))
                waking = asyncio.create_task(wake_later())
                async with http.post(f"{base}/chat/completions", json=CHAT) as resp:
                    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
                    body = (await resp.read()).decode()
                await waking
            lines = [line for line in body.split("\n\n") if line]
            comments = [line for line in lines if line.startswith(":")]
            assert len(comments) >= 3 and all(c == ": waiting for m" for c in comments), lines[:6]
            first_data = next(i for i, line in enumerate(lines) if line.startswith("data: "))
            assert all(line.startswith(":") for line in lines[:first_data])  # the comments came first
            assert lines[-1] == "data: [DONE]" and len(lines) - first_data >= 3, lines[-4:]

            # The official client skips the comments and reads the answer.
            endpoints.update(KEY, "pod-1", None)
            waking = asyncio.create_task(wake_later())
            client = openai.AsyncOpenAI(base_url=base, api_key="keys-off", max_retries=0)
            stream = await client.chat.completions.create(**CHAT)
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            await waking
            assert text.strip()
        finally:
            await runner.cleanup()
            for r in engine_runners:
                await r.cleanup()
    asyncio.run(scenario())


def test_past_the_hold_limit_a_begun_stream_ends_with_an_error_the_client_raises():
    async def scenario():
        _, runner, base = await start_gateway(Limits(keepalive_s=0.3, hold_timeout_s=1.5))
        try:
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{base}/chat/completions", json=CHAT) as resp:
                    body = (await resp.read()).decode()
            lines = [line for line in body.split("\n\n") if line]
            assert lines[0] == ": waiting for m" and lines[-1].startswith('data: {"error": ')
            assert '"code": "service_waking"' in lines[-1], lines[-1]
            client = openai.AsyncOpenAI(base_url=base, api_key="keys-off", max_retries=0)
            with pytest.raises(openai.APIError, match="no ready replica"):
                stream = await client.chat.completions.create(**CHAT)
                async for _ in stream:
                    pass
            async with aiohttp.ClientSession() as http:  # not streamed: the plain 503, in OpenAI's shape
                async with http.post(f"{base}/chat/completions", json={**CHAT, "stream": False}) as resp:
                    error = await resp.json()
                    assert resp.status == 503 and resp.headers["Retry-After"] == "10"
                    assert error["error"]["code"] == "service_waking"
        finally:
            await runner.cleanup()
    asyncio.run(scenario())
