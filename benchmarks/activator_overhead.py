"""The activator against a direct connection to a simulated engine, side by side, on loopback.

Small non-streamed completions (the engine adds ~0 ms) from one client process, first straight to the
engine, then through the activator. Reports latency percentiles of both, the latency the activator
adds, and the request rate one core of the activator sustains (requests per CPU-second of its process).

  python benchmarks/activator_overhead.py [--requests 20000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

import aiohttp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_http(url: str) -> None:
    for _ in range(100):
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} never answered")


async def drive(url: str, requests: int, concurrency: int, headers: dict | None = None) -> tuple[list[float], float]:
    latencies: list[float] = []
    body = {"model": "m", "prompt": "hello", "max_tokens": 1}
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=headers) as http:
        remaining = iter(range(requests))

        async def worker():
            for _ in remaining:
                t0 = time.perf_counter()
                async with http.post(url, json=body) as r:
                    await r.read()
                    assert r.status == 200, r.status
                latencies.append(time.perf_counter() - t0)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


def start_instant_engine(port: int) -> subprocess.Popen:
    """A simulated vLLM engine serving model "m" that answers at once: what is measured is the hop."""
    return subprocess.Popen([sys.executable, "-m", "tidal_dev", "sim-server", "--port", str(port),
                             "--served-model-name", "m", "--max-concurrency", "256", "--prefill-s-per-token", "0",
                             "--decode-s-per-token", "0", "--overhead-s", "0"], stdout=subprocess.DEVNULL)


def pct(values, q):
    values = sorted(values)
    return values[int(q * (len(values) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    engine_port, act_port, act_metrics = free_port(), free_port(), free_port()
    engine = start_instant_engine(engine_port)
    activator = subprocess.Popen([sys.executable, "-m", "tidal.cli", "activator", "--host", "127.0.0.1",
                                  "--port", str(act_port), "--metrics-port", str(act_metrics),
                                  "--static-endpoint", f"bench/m=127.0.0.1:{engine_port}",
                                  # the proxy hop alone (keys and body routing: benchmarks/gateway_routing.py)
                                  "--api-keys", "off"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # The activator alone on core 0; the engine and this client share core 1.
        os.sched_setaffinity(activator.pid, {0})
        os.sched_setaffinity(engine.pid, {1})
        os.sched_setaffinity(0, {1})
        wait_http(f"http://127.0.0.1:{engine_port}/health")
        wait_http(f"http://127.0.0.1:{act_metrics}/healthz")
        direct_url = f"http://127.0.0.1:{engine_port}/v1/completions"
        via_url = f"http://127.0.0.1:{act_port}/bench/m/v1/completions"
        asyncio.run(drive(direct_url, 1000, args.concurrency))  # warm both paths
        asyncio.run(drive(via_url, 1000, args.concurrency))
        direct, direct_s = asyncio.run(drive(direct_url, args.requests, args.concurrency))
        cpu0 = cpu_seconds(activator.pid)
        via, via_s = asyncio.run(drive(via_url, args.requests, args.concurrency))
        act_cpu = cpu_seconds(activator.pid) - cpu0
        report = {
            "requests": args.requests, "concurrency": args.concurrency,
            "direct_p50_ms": round(pct(direct, 0.5) * 1000, 3), "direct_p99_ms": round(pct(direct, 0.99) * 1000, 3),
            "via_p50_ms": round(pct(via, 0.5) * 1000, 3), "via_p99_ms": round(pct(via, 0.99) * 1000, 3),
            "added_p50_ms": round((pct(via, 0.5) - pct(direct, 0.5)) * 1000, 3),
            "added_p99_ms": round((pct(via, 0.99) - pct(direct, 0.99)) * 1000, 3),
            "direct_req_per_s": round(args.requests / direct_s), "via_req_per_s": round(args.requests / via_s),
            "activator_cpu_fraction": round(act_cpu / via_s, 2),
            "activator_req_per_cpu_second": round(args.requests / act_cpu) if act_cpu else None,
            "latency_ratio_p50": round(statistics.median(via) / statistics.median(direct), 2),
        }
        print(json.dumps(report, indent=2))
    finally:
        activator.terminate()
        engine.terminate()


if __name__ == "__main__":
    main()
