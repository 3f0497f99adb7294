"""Online latency with and without a batch running beside it, and how much of the capacity the online load
leaves over the batch actually uses — side by side in one run.

One simulated vLLM (`tidal-dev sim-server`, --places of them, 8 by default, 10 ms a token: a 20-token request
keeps a place 0.2 s, so 8 places serve 40 requests a second) behind `tidal activator` with a batch directory (the gateway
pinned to core 0, the engine and this client on core 1). Online clients send 20-token chat requests as a
Poisson stream at 30 % of the capacity. Each round measures them for --seconds alone, then again while a
batch of the same requests runs; rounds alternate which comes first. Reported: online p50 / p99 with the
batch over without (goal: within 1.25x), and the batch's completions per second over the capacity the
online load leaves (goal: >= 80 %).

  python benchmarks/batch_online.py [--seconds 20] [--rounds 2] [--places 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time

import openai

sys.path.insert(0, os.path.dirname(__file__))
from activator_overhead import free_port, pct, wait_http  # noqa: E402

TOKEN_S, TOKENS = 0.01, 20
ASK = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": TOKENS}


async def online(client: openai.AsyncOpenAI, rate: float, seconds: float, rng: random.Random) -> list[float]:
    latencies: list[float] = []

    async def one():
        started = time.monotonic()
        await client.chat.completions.create(**ASK)
        latencies.append(time.monotonic() - started)

    tasks, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        tasks.append(asyncio.create_task(one()))
        await asyncio.sleep(rng.expovariate(rate))
    await asyncio.gather(*tasks)
    return latencies


async def closing(client, work):
    try:
        return await work(client)
    finally:
        await client.close()


async def with_batch(client, rate, seconds, rng, capacity_per_s) -> tuple[list[float], float]:
    lines = "".join(json.dumps({"custom_id": f"b{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": ASK}) + "\n" for i in range(int(capacity_per_s * seconds * 2)))
    uploaded = await client.files.create(file=("b.jsonl", lines.encode()), purpose="batch")
    batch = await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                        completion_window="24h")
    while (await client.batches.retrieve(batch.id)).status != "in_progress":
        await asyncio.sleep(0.05)
    await asyncio.sleep(2)  # the batch at its pace before the online clock starts
    before = (await client.batches.retrieve(batch.id)).request_counts.completed
    started = time.monotonic()
    latencies = await online(client, rate, seconds, rng)
    done = (await client.batches.retrieve(batch.id)).request_counts.completed - before
    took = time.monotonic() - started
    await client.batches.cancel(batch.id)
    while (await client.batches.retrieve(batch.id)).status != "cancelled":
        await asyncio.sleep(0.1)
    return latencies, done / took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--places", type=int, default=8, help="the engine's batch (vLLM --max-num-seqs)")
    args = parser.parse_args()
    places = args.places
    capacity_per_s = places / (TOKENS * TOKEN_S)  # 8 places: 40 requests a second
    engine_port, port, metrics = free_port(), free_port(), free_port()
    py = [sys.executable, "-m", "tidal.cli"]
    engine = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-m", "tidal_dev", "sim-server", "--model", "m", "--port", str(engine_port),
                               "--max-concurrency", str(places), "--decode-s-per-token", str(TOKEN_S),
                               "--overhead-s", "0", "--prefill-s-per-token", "0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory() as batch_dir:
        gateway = subprocess.Popen(["taskset", "-c", "0", *py, "activator", "--host", "127.0.0.1", "--port", str(port),
                                    "--metrics-port", str(metrics), "--api-keys", "off", "--playground", "off",
                                    f"--static-endpoint=ns/m=127.0.0.1:{engine_port}",
                                    "--static-capacity", str(places), "--batch-storage", batch_dir],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.sched_setaffinity(0, {1})
        try:
            wait_http(f"http://127.0.0.1:{metrics}/healthz")
            wait_http(f"http://127.0.0.1:{engine_port}/health")
            def client():  # one per asyncio.run: its connections belong to that loop
                return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0,
                                          timeout=60)
            rate = 0.3 * capacity_per_s
            rows = []
            for r in range(args.rounds):
                rng = random.Random(r)
                order = ["alone", "batch"] if r % 2 == 0 else ["batch", "alone"]
                result = {}
                for what in order:
                    if what == "alone":
                        result[what] = (asyncio.run(closing(client(), lambda c: online(c, rate, args.seconds, rng))), None)
                    else:
                        result[what] = asyncio.run(closing(client(), lambda c: with_batch(c, rate, args.seconds, rng, capacity_per_s)))
                alone, (busy, batch_rate) = result["alone"][0], result["batch"]
                leftover = capacity_per_s - rate
                rows.append((pct(alone, 0.5), pct(alone, 0.99), pct(busy, 0.5), pct(busy, 0.99), batch_rate, leftover))
                print(f"round {r + 1} ({' first, '.join(order)} second): online p50 {pct(alone, 0.5) * 1000:.0f} ms "
                      f"alone, {pct(busy, 0.5) * 1000:.0f} ms with the batch ({pct(busy, 0.5) / pct(alone, 0.5):.2f}x); "
                      f"p99 {pct(alone, 0.99) * 1000:.0f} / {pct(busy, 0.99) * 1000:.0f} ms "
                      f"({pct(busy, 0.99) / pct(alone, 0.99):.2f}x); batch {batch_rate:.1f}/s of {leftover:.0f}/s left "
                      f"over ({batch_rate / leftover:.0%})", flush=True)
        finally:
            gateway.terminate()
            engine.terminate()
            gateway.wait(10)
            engine.wait(10)


if __name__ == "__main__":
    main()
