"""A cold start's backlog through the activator, with and without per-replica capacity, side by side.

N requests arrive while a service is at zero and are held. Replicas then become ready one after the
other (a cold start is not simultaneous), each a simulated vLLM engine on loopback with a batch of B.
With capacity, the activator sends a replica at most B + target queue and holds the rest for the
replicas still starting; without, the first ready replica receives the whole backlog. Reports when the
last answer came and the latency percentiles of both runs, and their ratio.

  python benchmarks/activator_backlog.py [--requests 300] [--replicas 4] [--ready-every 2] [--batch 8]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time

import aiohttp
from aiohttp import web

from tidal.gateway.endpoints import Endpoint, Endpoints
from tidal.gateway.gateway import Gateway
from tidal.simulate.latency import LatencyModel
from tidal_dev.simserver.podspec import EngineSpec
from tidal_dev.simserver.runtime import serve_engine

KEY = ("bench", "chat")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def run(args, capacity: int | None) -> list[float]:
    latency = LatencyModel(prefill_s_per_token=0, decode_s_per_token=args.decode_ms / 1000, overhead_s=0,
                           max_concurrency=args.batch)
    engines = []
    for _ in range(args.replicas):
        port = free_port()
        _, runners = await serve_engine(EngineSpec("vllm", ("m",), "m", port, None, latency), "127.0.0.1")
        engines.append((port, runners))
    endpoints = Endpoints()
    gateway = Gateway(endpoints, operator_url=None)
    runner = web.AppRunner(gateway.app(), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}/bench/chat/v1/completions"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=aiohttp.ClientTimeout(total=600)) as http:
            started = time.monotonic()

            async def one():
                async with http.post(url, json={"prompt": "x", "max_tokens": args.tokens}) as r:
                    await r.read()
                    assert r.status == 200, r.status
                return time.monotonic() - started
            requests = [asyncio.create_task(one()) for _ in range(args.requests)]
            for i, (engine_port, _) in enumerate(engines):  # replica i is ready at i * ready_every seconds
                await asyncio.sleep(max(0.0, started + i * args.ready_every - time.monotonic()))
                endpoints.update(KEY, f"pod-{i}", Endpoint("127.0.0.1", engine_port, capacity=capacity))
            return sorted(await asyncio.gather(*requests))
    finally:
        await runner.cleanup()
        for _, runners in engines:
            for r in runners:
                await r.cleanup()


def summary(latencies: list[float]) -> dict[str, float]:
    q = statistics.quantiles(latencies, n=100)
    return {"p50": q[49], "p90": q[89], "last": latencies[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--ready-every", type=float, default=2.0, help="seconds between replicas becoming ready")
    parser.add_argument("--batch", type=int, default=8, help="the engine's --max-num-seqs")
    parser.add_argument("--target-queue", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--decode-ms", type=float, default=10.0)
    args = parser.parse_args()
    print(f"{args.requests} requests held at zero; {args.replicas} replicas ready {args.ready_every:g} s apart; "
          f"batch {args.batch}, {args.tokens} tokens at {args.decode_ms:g} ms (one request {args.tokens * args.decode_ms / 1000:g} s)")
    results = {}
    for name, capacity in (("first replica takes all", None), ("capacity per replica", args.batch + args.target_queue)):
        print(f"  running: {name} ...", flush=True)
        results[name] = summary(asyncio.run(run(args, capacity)))
    print("\n| activator | p50 latency | p90 latency | last answer |\n|---|---|---|---|")
    for name, s in results.items():
        print(f"| {name} | {s['p50']:.1f} s | {s['p90']:.1f} s | {s['last']:.1f} s |")
    without, with_ = results["first replica takes all"], results["capacity per replica"]
    print(f"| ratio (without / with) | {without['p50'] / with_['p50']:.2f}× | {without['p90'] / with_['p90']:.2f}× "
          f"| {without['last'] / with_['last']:.2f}× |")


if __name__ == "__main__":
    main()
