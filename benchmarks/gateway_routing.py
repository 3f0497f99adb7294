"""Routing by the body's `model` (the one endpoint, /v1/completions) against routing by path
(/<namespace>/<name>/v1/completions), side by side in one run, through one gateway with API keys on.

Both routes do the same work except finding the service: body routing parses the JSON body and looks the
model up. Rounds alternate (path, body, path, body, ...) so that the machine's drift falls on both.
Reports per route the latency percentiles and the requests per CPU-second of the gateway process, and
the difference. The gateway is pinned to core 0; the simulated engine and this client share core 1.

  python benchmarks/gateway_routing.py [--requests 4000] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys


sys.path.insert(0, os.path.dirname(__file__))
from activator_overhead import cpu_seconds, free_port, pct, start_instant_engine, wait_http  # noqa: E402
from activator_overhead import drive as drive_plain  # noqa: E402

TOKEN = "bench-" + "k" * 32


async def drive(url: str, requests: int, concurrency: int) -> list[float]:
    latencies, _ = await drive_plain(url, requests, concurrency, {"Authorization": f"Bearer {TOKEN}"})
    return latencies


def routing_cost_us(n: int = 200_000) -> dict[str, float]:
    """In-process, no network: the gateway's own work to authenticate and resolve one request, per route.
    This is the only code the two routes do not share, measured without the loopback's noise."""
    import timeit

    from tidal.gateway.catalog import Catalog, Entry
    from tidal.gateway.endpoints import Endpoints
    from tidal.gateway.gateway import Gateway
    from tidal.gateway.keys import ApiKey, KeyRing, digest
    from tidal.gateway.routing import route

    catalog, ring = Catalog(), KeyRing()
    catalog.put(Entry(("bench", "m"), "m", "vllm", ""))
    ring.put(ApiKey("bench", digest(TOKEN)))
    gateway = Gateway(Endpoints(), None, catalog=catalog, keys=ring)
    body = json.dumps({"model": "m", "prompt": "hello", "max_tokens": 1}).encode()

    class Request:
        method, headers = "POST", {"Host": "127.0.0.1:8080", "Authorization": f"Bearer {TOKEN}"}

        def __init__(self, path):
            self.path = path

    out = {}
    for name, path in (("path", "/bench/m/v1/completions"), ("body", "/v1/completions")):
        request = Request(path)

        def one():
            key = ring.authenticate(request.headers["Authorization"])
            return gateway.router.resolve(request, request.path, route(request.path, request.headers["Host"]), body, key)
        assert not hasattr(one(), "status"), one()
        out[name] = round(min(timeit.repeat(one, number=n, repeat=3)) / n * 1e6, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000, help="per round and route")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    engine_port, gw_port, gw_metrics = free_port(), free_port(), free_port()
    engine = start_instant_engine(engine_port)
    gateway = subprocess.Popen([sys.executable, "-m", "tidal.cli", "activator", "--host", "127.0.0.1",
                                "--port", str(gw_port), "--metrics-port", str(gw_metrics),
                                "--static-endpoint", f"bench/m@m=127.0.0.1:{engine_port}",
                                "--static-api-key", f"bench={TOKEN}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    routes = {"path": f"http://127.0.0.1:{gw_port}/bench/m/v1/completions",
              "body": f"http://127.0.0.1:{gw_port}/v1/completions"}
    report = {}
    try:
        os.sched_setaffinity(gateway.pid, {0})
        os.sched_setaffinity(engine.pid, {1})
        os.sched_setaffinity(0, {1})
        wait_http(f"http://127.0.0.1:{engine_port}/health")
        wait_http(f"http://127.0.0.1:{gw_metrics}/healthz")
        for concurrency in (1, 16):
            lat = {r: [] for r in routes}
            cpu = {r: 0.0 for r in routes}
            for route, url in routes.items():  # warm both
                asyncio.run(drive(url, 500, concurrency))
            for i in range(args.rounds):
                # Alternate which route goes first, so neither always runs on the heels of the other.
                for route, url in (routes.items() if i % 2 == 0 else reversed(routes.items())):
                    c0 = cpu_seconds(gateway.pid)
                    lat[route] += asyncio.run(drive(url, args.requests, concurrency))
                    cpu[route] += cpu_seconds(gateway.pid) - c0
            n = args.requests * args.rounds
            row = {}
            for route in routes:
                row[route] = {"p50_ms": round(pct(lat[route], 0.5) * 1000, 3),
                              "p99_ms": round(pct(lat[route], 0.99) * 1000, 3),
                              "req_per_cpu_second": round(n / cpu[route]) if cpu[route] else None}
            row["body_minus_path_p50_ms"] = round(row["body"]["p50_ms"] - row["path"]["p50_ms"], 3)
            row["body_minus_path_p99_ms"] = round(row["body"]["p99_ms"] - row["path"]["p99_ms"], 3)
            row["cpu_ratio_body_over_path"] = round(row["path"]["req_per_cpu_second"] /
                                                    row["body"]["req_per_cpu_second"], 3)
            report[f"concurrency_{concurrency}"] = row
        cost = routing_cost_us()
        print(json.dumps({"requests_per_route": args.requests * args.rounds, **report,
                          "in_process_us_per_request": cost,
                          "in_process_body_minus_path_us": round(cost["body"] - cost["path"], 2)}, indent=2))
    finally:
        gateway.terminate()
        engine.terminate()


if __name__ == "__main__":
    main()
