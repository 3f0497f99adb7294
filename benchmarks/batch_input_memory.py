"""The gateway's memory while it takes and validates a 200 MB batch input (OpenAI's largest), and whether it
keeps answering meanwhile — the upload streamed to storage and the input streamed through validation and
sending, never held whole.

One `tidal activator` with a batch directory and API keys off. This client uploads a JSONL file of 50,000
chat requests of about 4 KB each (200 MB, generated on the fly, never in this process's memory either),
creates a batch from it and waits for it to finish (every line names a model that does not exist, so each is
answered at once by the gateway itself with a 404 error line: the input's whole path is exercised without an
engine). Meanwhile the gateway's resident memory (VmRSS) is sampled every 50 ms, and `GET /v1/models` is
timed every 100 ms. Reported: RSS before, peak, growth (goal: under 64 MiB) and the /v1/models p50/p99/max.

  python benchmarks/batch_input_memory.py [--megabytes 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time

import aiohttp

sys.path.insert(0, os.path.dirname(__file__))
from activator_overhead import free_port, pct, wait_http  # noqa: E402

REQUESTS = 50_000


def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def lines(size: int):
    """50,000 request lines adding up to about `size` bytes, 256 at a time (an async generator: aiohttp
    streams it as the upload's body)."""
    pad = "x" * max(0, size // REQUESTS - 160)
    chunk = []
    for i in range(REQUESTS):
        chunk.append(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                                 "body": {"model": "no-such-model", "max_tokens": 1,
                                          "messages": [{"role": "user", "content": pad}]}}) + "\n")
        if len(chunk) == 256:
            yield "".join(chunk).encode()
            chunk = []
    if chunk:
        yield "".join(chunk).encode()


async def main(args) -> None:
    port, metrics = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        gateway = subprocess.Popen([sys.executable, "-m", "tidal.cli", "activator", "--host", "127.0.0.1",
                                    "--port", str(port), "--metrics-port", str(metrics), "--api-keys", "off",
                                    "--static-endpoint=ns/m=127.0.0.1:9", "--batch-storage", tmp],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            wait_http(f"http://127.0.0.1:{metrics}/healthz")
            base = f"http://127.0.0.1:{port}/v1"
            samples, lookups, stop = [], [], asyncio.Event()
            before = rss_mib(gateway.pid)

            async def sample():
                while not stop.is_set():
                    samples.append(rss_mib(gateway.pid))
                    await asyncio.sleep(0.05)

            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600)) as http:
                async def lookup():
                    while not stop.is_set():
                        started = time.monotonic()
                        async with http.get(f"{base}/models") as r:
                            await r.read()
                            assert r.status == 200
                        lookups.append(time.monotonic() - started)
                        await asyncio.sleep(0.1)
                watchers = [asyncio.create_task(sample()), asyncio.create_task(lookup())]
                started = time.monotonic()
                form = aiohttp.FormData()
                form.add_field("purpose", "batch")
                form.add_field("file", lines(args.megabytes * 1_000_000), filename="big.jsonl",
                               content_type="application/jsonl")
                async with http.post(f"{base}/files", data=form) as r:
                    uploaded = await r.json()
                assert r.status == 200, uploaded
                uploaded_s = time.monotonic() - started
                async with http.post(f"{base}/batches", json={"input_file_id": uploaded["id"],
                                                              "endpoint": "/v1/chat/completions",
                                                              "completion_window": "24h"}) as r:
                    batch = await r.json()
                after_upload = max(samples)
                phases = {}
                while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
                    await asyncio.sleep(0.2)
                    async with http.get(f"{base}/batches/{batch['id']}") as r:
                        batch = await r.json()
                    phases.setdefault(batch["status"], max(samples))
                done_s = time.monotonic() - started
                stop.set()
                await asyncio.gather(*watchers)
            peak = max(samples)
            print(f"input: {uploaded['bytes'] / 1e6:.1f} MB, {REQUESTS:,} requests; uploaded in {uploaded_s:.1f} s, "
                  f"batch {batch['status']} ({batch['request_counts']}) after {done_s:.1f} s")
            print(f"gateway RSS: before {before:.1f} MiB, peak {peak:.1f} MiB, growth {peak - before:.1f} MiB "
                  f"(goal < 64 MiB: {'met' if peak - before < 64 else 'NOT met'})")
            print(f"peak by phase: upload {after_upload - before:.1f} MiB, then when the batch was first seen "
                  + ", ".join(f"{k} {v - before:.1f}" for k, v in phases.items()) + " MiB over the start")
            print(f"GET /v1/models meanwhile: {len(lookups)} answered, p50 {pct(lookups, 0.5) * 1000:.1f} ms, "
                  f"p99 {pct(lookups, 0.99) * 1000:.1f} ms, max {max(lookups) * 1000:.1f} ms")
        finally:
            gateway.terminate()
            gateway.wait(30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=200)
    asyncio.run(main(parser.parse_args()))
