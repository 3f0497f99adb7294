"""A small load generator for tests: sends completions to the ready pods of a service (client-side
balancing, until the activator exists), counts outcomes, bounded in time and count."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import aiohttp


def ready_pod_ips(kubectl, namespace: str, name: str) -> list[str]:
    pods = json.loads(kubectl("get", "pods", "-n", namespace, "-l", f"tidal.dev/inferenceservice={name}",
                              "-o", "json").stdout)["items"]
    return [p["status"]["podIP"] for p in pods if not p["metadata"].get("deletionTimestamp") and
            any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]


async def steady_load(kubectl, namespace, name, concurrency: int, seconds: float, max_tokens: int,
                      max_requests: int = 5000, prompt: str = "x") -> dict:
    counts = {"ok": 0, "failed": 0}
    deadline = time.monotonic() + seconds
    ips: list[str] = []
    refreshed = 0.0
    sent = itertools.count()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        async def worker():
            nonlocal ips, refreshed
            while time.monotonic() < deadline and next(sent) < max_requests:
                if time.monotonic() - refreshed > 1 or not ips:
                    refreshed = time.monotonic()
                    ips = await asyncio.to_thread(ready_pod_ips, kubectl, namespace, name) or ips
                if not ips:
                    await asyncio.sleep(0.2)
                    continue
                ip = ips[next(sent) % len(ips)]
                try:
                    async with http.post(f"http://{ip}:8000/v1/completions",
                                         json={"prompt": prompt, "max_tokens": max_tokens}) as r:
                        await r.read()
                        counts["ok" if r.status == 200 else "failed"] += 1
                except aiohttp.ClientError:
                    counts["failed"] += 1
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts
