"""The activator's upstream HTTP/1.1 client against a real simulated engine on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest

from tidal.gateway.upstream import Refused, UpstreamPool
from tidal.simulate.latency import LatencyModel
from tidal_dev.simserver.podspec import EngineSpec
from tidal_dev.simserver.runtime import serve_engine


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bodies_streams_keep_alive_and_refusals():
    async def scenario():
        port = free_port()
        latency = LatencyModel(prefill_s_per_token=0, decode_s_per_token=0.001, overhead_s=0, max_concurrency=8)
        _, runners = await serve_engine(EngineSpec("vllm", ("m",), "m", port, None, latency), "127.0.0.1")
        pool = UpstreamPool()
        try:
            body = json.dumps({"prompt": "x", "max_tokens": 3}).encode()
            headers = [("Content-Type", "application/json")]
            first = await pool.request("127.0.0.1", port, "POST", "/v1/completions", headers, body)
            assert first.status == 200 and json.loads(await first.read())["usage"]["completion_tokens"] == 3
            assert len(pool._idle[("127.0.0.1", port)]) == 1  # the connection went back to the pool
            streamed = await pool.request("127.0.0.1", port, "POST", "/v1/completions", headers,
                                          json.dumps({"prompt": "x", "max_tokens": 200, "stream": True}).encode())
            assert streamed.chunked
            chunks = [c async for c in streamed.iter_chunks()]
            assert len(chunks) > 2 and b"".join(chunks).endswith(b"data: [DONE]\n\n")
            assert len(pool._idle[("127.0.0.1", port)]) == 1  # reused, not a second connection
            missing = await pool.request("127.0.0.1", port, "GET", "/nope", [], b"")
            assert missing.status == 404
            await missing.read()
            # Idle connections are closed after idle_s (a draining Triton waits for them to close).
            (conn, _), = pool._idle[("127.0.0.1", port)]
            pool.sweep(time.monotonic())
            assert not conn[1].is_closing()
            pool.sweep(time.monotonic() + pool.idle_s + 0.1)
            assert conn[1].is_closing() and not pool._idle
            again = await pool.request("127.0.0.1", port, "GET", "/health", [], b"")
            assert again.status == 200  # a fresh connection
            await again.read()
        finally:
            for r in runners:
                await r.cleanup()
        with pytest.raises(Refused):  # nobody listens any more: safe to try another replica
            await UpstreamPool().request("127.0.0.1", port, "GET", "/health", [], b"")
        await pool.close()

    asyncio.run(scenario())
