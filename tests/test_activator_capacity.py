"""A cold start's backlog spreads over the replicas that come up: the activator (real gateway, on
loopback) sends a replica no more than its capacity and holds the rest, in front of real simulated
engines. The endpoints are set by hand here, as the pod watch sets them (tests/cluster covers that)."""

from __future__ import annotations

import asyncio
import time
import re
import socket

import aiohttp
from aiohttp import web

from tidal.gateway.endpoints import Endpoint, Endpoints
from tidal.gateway.gateway import Gateway, Limits
from tidal.simulate.latency import LatencyModel
from tidal_dev.simserver.podspec import EngineSpec
from tidal_dev.simserver.runtime import serve_engine

KEY = ("ns", "chat")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def engine(max_concurrency=4):
    port = free_port()
    latency = LatencyModel(prefill_s_per_token=0, decode_s_per_token=0.01, overhead_s=0,
                           max_concurrency=max_concurrency)
    _, runners = await serve_engine(EngineSpec("vllm", ("m",), "m", port, None, latency), "127.0.0.1")
    return port, runners


async def engine_load(http, port) -> tuple[float, float]:
    """(requests in the engine now, requests it has finished), from its /metrics."""
    async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()

    def total(name):
        return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))
    return (total("vllm:num_requests_running") + total("vllm:num_requests_waiting"),
            total("vllm:request_success_total"))


async def until(condition, what: str, timeout: float = 10.0) -> None:
    """Wait for a condition with a generous bound (a fixed sleep then an exact count flakes on a busy machine)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.01)


async def gateway(endpoints: Endpoints, limits=Limits()):
    gw = Gateway(endpoints, operator_url=None, limits=limits)
    runner = web.AppRunner(gw.app(), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return gw, runner, f"http://127.0.0.1:{port}/ns/chat/v1/completions"


def test_a_backlog_held_at_zero_spreads_over_replicas_as_they_come_up_and_none_exceeds_its_capacity():
    async def scenario():
        (port_a, runners_a), (port_b, runners_b) = await engine(), await engine()
        endpoints = Endpoints()
        gw, runner, url = await gateway(endpoints)
        peaks = {port_a: 0.0, port_b: 0.0}
        try:
            async with aiohttp.ClientSession() as http:
                # 30 requests of 0.5 s each arrive while the service is at zero: all are held.
                requests = [asyncio.create_task(http.post(url, json={"prompt": "x", "max_tokens": 50}))
                            for _ in range(30)]
                await until(lambda: gw.holds.pending.get(KEY) == 30, "all 30 held")
                # The first replica is ready: it takes its capacity (4 in the batch + 2 waiting), no more.
                endpoints.update(KEY, "a", Endpoint("127.0.0.1", port_a, capacity=6))
                await until(lambda: gw.holds.pending[KEY] == 24, "the replica's 6 taken, 24 still held")
                endpoints.update(KEY, "b", Endpoint("127.0.0.1", port_b, capacity=6))
                pending = set(requests)
                while pending:
                    for port in peaks:
                        peaks[port] = max(peaks[port], (await engine_load(http, port))[0])
                    _, pending = await asyncio.wait(pending, timeout=0.05)
                statuses = [(await r).status for r in requests]
                served = {port: (await engine_load(http, port))[1] for port in peaks}
        finally:
            await runner.cleanup()
            for r in runners_a + runners_b:
                await r.cleanup()
        assert statuses == [200] * 30
        assert max(peaks.values()) <= 6, peaks
        # Without the capacity the first replica would have taken all 30 and the second none.
        assert served[port_a] + served[port_b] == 30 and min(served.values()) >= 10, served
        assert gw.holds.pending == {} and gw.holds.lines == {}  # nothing left behind

    asyncio.run(scenario())


def test_without_a_known_capacity_nothing_is_held_and_a_full_line_answers_429_naming_why():
    async def scenario():
        port, runners = await engine()
        endpoints = Endpoints()
        endpoints.update(KEY, "a", Endpoint("127.0.0.1", port))  # no capacity annotation (Triton, a static upstream)
        gw, runner, url = await gateway(endpoints, Limits(max_pending=2, hold_timeout_s=5))
        try:
            async with aiohttp.ClientSession() as http:
                answers = await asyncio.gather(*(http.post(url, json={"prompt": "x", "max_tokens": 5})
                                                 for _ in range(20)))
                assert [a.status for a in answers] == [200] * 20 and gw.holds.pending == {}
                # Now a capacity of 1: one in flight, two held, the rest refused with the reason.
                endpoints.update(KEY, "a", None)
                endpoints.update(KEY, "a", Endpoint("127.0.0.1", port, capacity=1))
                answers = await asyncio.gather(*(http.post(url, json={"prompt": "x", "max_tokens": 50})
                                                 for _ in range(6)))
                statuses = sorted(a.status for a in answers)
                refusals = [await a.json() for a in answers if a.status == 429]
        finally:
            await runner.cleanup()
            for r in runners:
                await r.cleanup()
        assert statuses == [200, 200, 200, 429, 429, 429]
        assert all("every ready replica is busy" in r["error"]["message"] for r in refusals)

    asyncio.run(scenario())


def test_a_replica_listed_before_its_server_listens_is_tried_again_and_no_request_fails():
    """The pod watch can list a replica whose server does not listen yet (Ready a moment early) or any more
    (its process died before the watch says so). Its connections are refused: nothing reached it, so the
    requests wait for it within the hold limit instead of failing at once — here it listens 1.5 s late."""
    async def scenario():
        port = free_port()  # nothing listens here yet
        endpoints = Endpoints()
        endpoints.update(KEY, "a", Endpoint("127.0.0.1", port, capacity=8))
        gw, runner, url = await gateway(endpoints)
        runners = []
        try:
            async with aiohttp.ClientSession() as http:
                requests = [asyncio.create_task(http.post(url, json={"prompt": "x", "max_tokens": 5}))
                            for _ in range(10)]
                await asyncio.sleep(1.5)
                early = [r for r in requests if r.done()]
                latency = LatencyModel(prefill_s_per_token=0, decode_s_per_token=0.01, overhead_s=0, max_concurrency=8)
                _, runners = await serve_engine(EngineSpec("vllm", ("m",), "m", port, None, latency), "127.0.0.1")
                statuses = [(await r).status for r in requests]
        finally:
            await runner.cleanup()
            for r in runners:
                await r.cleanup()
        assert [(await r).text() for r in early] == []  # none answered while the replica took no connection
        assert statuses == [200] * 10

    asyncio.run(scenario())


def test_a_replica_that_never_listens_ends_in_the_holds_503_with_retry_after():
    async def scenario():
        endpoints = Endpoints()
        endpoints.update(KEY, "a", Endpoint("127.0.0.1", free_port(), capacity=8))
        gw, runner, url = await gateway(endpoints, Limits(hold_timeout_s=2))
        try:
            async with aiohttp.ClientSession() as http:
                started = time.monotonic()
                async with http.post(url, json={"prompt": "x", "max_tokens": 5}) as answer:
                    waited, status, body = time.monotonic() - started, answer.status, await answer.json()
                    retry_after = answer.headers.get("Retry-After")
        finally:
            await runner.cleanup()
        assert status == 503 and retry_after and body["error"]["type"], (status, body)
        assert waited >= 2, waited  # it waited out the hold limit, trying the replica again meanwhile

    asyncio.run(scenario())
