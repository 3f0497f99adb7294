"""How much simulated-engine traffic one core carries (issue: simulated servers).

Starts N simulated vLLM pods in one process (as the simulated runtime hosts
them: one event loop, each on its own 127.x address), pinned to CPU 0, and
drives them from a load generator pinned to CPU 1. The server's CPU seconds per
request give the capacity of one core: requests/s at 100% of a core.

  python benchmarks/simserver_capacity.py [--pods 50] [--seconds 10] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import socket
import time

import aiohttp


def _port_free(host, port):
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def serve(pods: int, port: int, ready, stop):
    os.sched_setaffinity(0, {0})
    from tidal.simulate.latency import LatencyModel
    from tidal_dev.simserver.podspec import EngineSpec
    from tidal_dev.simserver.runtime import serve_engine

    # Small requests; the engine itself adds 1 ms + 1 ms per token, so CPU is the bound.
    latency = LatencyModel(prefill_s_per_token=0.0, decode_s_per_token=0.001, overhead_s=0.001,
                           max_concurrency=256)

    async def main():
        runners = []
        for i in range(pods):
            spec = EngineSpec("vllm", ("m",), "m", port, None, latency)
            _, rs = await serve_engine(spec, f"127.77.{i // 250}.{i % 250 + 1}")
            runners += rs
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.1)

    asyncio.run(main())


def load(pods: int, port: int, seconds: float, concurrency: int, stream: bool, out):
    os.sched_setaffinity(0, {1})

    async def main():
        done = 0
        deadline = time.monotonic() + seconds
        body = {"model": "m", "prompt": "hello " * 50, "max_tokens": 8, "stream": stream}
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as http:
            async def worker(i):
                nonlocal done
                url = f"http://127.77.{(i % pods) // 250}.{(i % pods) % 250 + 1}:{port}/v1/completions"
                while time.monotonic() < deadline:
                    async with http.post(url, json=body) as r:
                        await r.read()
                        assert r.status == 200
                    done += 1
            await asyncio.gather(*(worker(i) for i in range(concurrency)))
        out.put(done)

    asyncio.run(main())


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run(pods, seconds, concurrency, stream, port=18500):
    ready, stop, out = mp.Event(), mp.Event(), mp.Queue()
    server = mp.Process(target=serve, args=(pods, port, ready, stop))
    server.start()
    ready.wait(60)
    rss = rss_mib(server.pid)
    cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
    loader = mp.Process(target=load, args=(pods, port, seconds, concurrency, stream, out))
    loader.start()
    done = out.get()
    loader.join()
    cpu, wall = cpu_seconds(server.pid) - cpu0, time.monotonic() - t0
    stop.set()
    server.join()
    return {"pods": pods, "stream": stream, "concurrency": concurrency, "requests": done,
            "req_per_s": round(done / wall, 1), "server_cpu_fraction": round(cpu / wall, 2),
            "req_per_s_per_core": round(done / cpu, 1) if cpu else None,
            "server_rss_mib_idle": round(rss, 1), "rss_mib_per_pod": round(rss / pods, 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, nargs="+", default=[1, 50, 200])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    rows = []
    for pods in args.pods:
        for stream in (False, True):
            row = run(pods, args.seconds, args.concurrency, stream)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| pods | streamed | req/s seen | server CPU | req/s per core | idle RSS MiB (per pod) |")
    print("|---:|:---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['pods']} | {'yes' if r['stream'] else 'no'} | {r['req_per_s']} | {r['server_cpu_fraction']:.0%} "
              f"| {r['req_per_s_per_core']} | {r['server_rss_mib_idle']} ({r['rss_mib_per_pod']}) |")


if __name__ == "__main__":
    main()
