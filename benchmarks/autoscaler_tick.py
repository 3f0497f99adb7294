"""One autoscaling tick for N InferenceServices against the real Prometheus and apiserver.

Sets up a throw-away local cluster, creates N InferenceServices (minReplicas 1, idle), and a
metrics target that exports vLLM's three gauges the autoscaler reads (waiting, running, KV cache in use) for
every one of them (so Prometheus holds 3N series with the same labels as real engine pods). Then runs the
operator's Autoscaler, pinned to one core, with its store filled as the watches fill it (every service, its
Deployment at 1 ready replica), and measures, after the first ticks have written each service's initial status:

- one tick's duration (median, p95), CPU seconds per tick and resident memory of the process,
- Kubernetes reads and writes per tick, Prometheus queries per tick,
- side by side, the same services read with one Prometheus query each (what a per-object scaler
  such as a KEDA ScaledObject per service does), reported as a ratio;
- side by side, the tick with the gateway's fast signal (#32): a load report naming every service (each busy,
  below what its replica holds, so nothing is written), taken in as POST /v1/load would each second, and the
  ticks that fold it in; reported as the report's cost and the tick's ratio to the tick without it.

  python benchmarks/autoscaler_tick.py [--services 2000] [--ticks 20]
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def exporter(namespace: str, names: list[str]):
    lines = ["# TYPE vllm:num_requests_waiting gauge", "# TYPE vllm:num_requests_running gauge",
             "# TYPE vllm:kv_cache_usage_perc gauge"]
    for n in names:
        labels = f'namespace="{namespace}",tidal_dev_inferenceservice="{n}",model_name="m"'
        lines.append(f"vllm:num_requests_waiting{{{labels}}} 0")
        lines.append(f"vllm:num_requests_running{{{labels}}} 0")
        lines.append(f"vllm:kv_cache_usage_perc{{{labels}}} 0")
    body = ("\n".join(lines) + "\n").encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=2000)
    parser.add_argument("--ticks", type=int, default=20)
    args = parser.parse_args()

    from kubernetes import client

    from tidal.autoscaling.observe import GatewayLoad
    from tidal.clients.kube import Kube, load_api_client
    from tidal.clients.prometheus import Prometheus
    from tidal.controller.autoscaler import Autoscaler
    from tidal.controller.store import DeploymentState, ServiceStore
    from tidal_dev.cluster.cluster import DevCluster

    state_dir = Path(tempfile.mkdtemp(prefix="tidal-bench-"))
    cluster = DevCluster(state_dir, scrape_interval="2s", log=lambda *a: None)
    print(f"starting a local cluster in {state_dir} ...", flush=True)
    info = cluster.up()
    try:
        # The control plane and Prometheus on core 1, the autoscaler alone on core 0.
        for pid in info.pids.values():
            os.sched_setaffinity(pid, {1})
        os.sched_setaffinity(0, {0})
        os.system(f"{info.kubectl()} --kubeconfig {info.kubeconfig} apply -f {REPO / 'crds'} >/dev/null")
        time.sleep(2)
        api = load_api_client(str(info.kubeconfig))
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        ns = "bench"
        core.create_namespace({"metadata": {"name": ns}})
        names = [f"svc-{i:05d}" for i in range(args.services)]
        body = lambda n: {"apiVersion": "tidal.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": n},
                          "spec": {"engine": {"type": "vllm"}, "model": {"uri": f"hf://org/{n}"},
                                   "scaling": {"minReplicas": 1, "maxReplicas": 4}}}
        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda n: custom.create_namespaced_custom_object("tidal.dev", "v1alpha1", ns,
                                                                           "inferenceservices", body(n)), names))
        print(f"created {args.services} InferenceServices in {time.monotonic() - started:.1f} s", flush=True)
        server = exporter(ns, names)
        (state_dir / "targets" / "bench.json").write_text(json.dumps(
            [{"targets": [f"127.0.0.1:{server.server_port}"], "labels": {"job": "bench"}}]))
        prometheus = Prometheus(info.prometheus_url)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if len(asyncio.run(prometheus.service_loads())) >= args.services:
                break
            time.sleep(1)
        print("Prometheus has every service's series", flush=True)

        store = ServiceStore()
        listed = custom.list_namespaced_custom_object("tidal.dev", "v1alpha1", ns, "inferenceservices")["items"]
        for obj in listed:
            store.put_service(obj)
            store.deployments[(ns, obj["metadata"]["name"])] = DeploymentState(replicas=1, ready=1)
        kube = Kube(api)
        scaler = Autoscaler(kube, prometheus, store, interval_s=0)

        async def measure():
            warm_started = time.monotonic()
            for _ in range(2):  # the first ticks write every service's initial scaling status
                await scaler.tick()
            warm = time.monotonic() - warm_started
            warm_writes = kube.counter.writes
            durations, cpu = [], []
            reads0, writes0, queries0 = kube.counter.reads, kube.counter.writes, prometheus.queries
            for _ in range(args.ticks):
                c0, t0 = time.process_time(), time.perf_counter()
                await scaler.tick()
                durations.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            steady = {"reads": (kube.counter.reads - reads0) / args.ticks,
                      "writes": (kube.counter.writes - writes0) / args.ticks,
                      "prometheus_queries": (prometheus.queries - queries0) / args.ticks}
            # Side by side: one query per service, as a per-object scaler polls.
            t0 = time.perf_counter()
            sem = asyncio.Semaphore(16)

            async def one(n):
                async with sem:
                    await prometheus.query(f'sum(vllm:num_requests_waiting{{namespace="{ns}",'
                                           f'tidal_dev_inferenceservice="{n}"}})')
            await asyncio.gather(*(one(n) for n in names))
            per_service = time.perf_counter() - t0
            # The fast signal: every service busy at the gateway (1 in flight, 0.2/s of 2 s requests).
            report = {(ns, n): GatewayLoad(1, 0, 0.2, 2.0) for n in names}
            taken, fast = [], []
            writes1 = kube.counter.writes
            for _ in range(args.ticks):
                t0 = time.perf_counter()
                scaled = await scaler.gateway_report("gateway-0", report)
                taken.append(time.perf_counter() - t0)
                assert not scaled, scaled  # below capacity: the report alone scales nothing
                t0 = time.perf_counter()
                await scaler.tick()
                fast.append(time.perf_counter() - t0)
            steady["fast_writes"] = (kube.counter.writes - writes1) / args.ticks
            return warm, warm_writes, durations, cpu, steady, per_service, taken, fast

        warm, warm_writes, durations, cpu, steady, per_service, taken, fast = asyncio.run(measure())
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        q = sorted(durations)
        report = {
            "services": args.services,
            "first_two_ticks_s": round(warm, 2), "first_two_ticks_writes": warm_writes,
            "tick_median_s": round(statistics.median(q), 4), "tick_p95_s": round(q[int(0.95 * (len(q) - 1))], 4),
            "cpu_s_per_tick": round(statistics.median(cpu), 4),
            "rss_mib": round(rss, 1),
            "steady_reads_per_tick": steady["reads"], "steady_writes_per_tick": steady["writes"],
            "prometheus_queries_per_tick": steady["prometheus_queries"],
            "per_service_queries_s": round(per_service, 2),
            "batched_vs_per_service_speedup": round(per_service / statistics.median(q), 1),
            "load_report_of_all_services_s": round(statistics.median(taken), 4),
            "tick_with_fast_signal_median_s": round(statistics.median(fast), 4),
            "tick_with_vs_without_fast_signal": round(statistics.median(fast) / statistics.median(q), 2),
            "writes_per_tick_with_fast_signal": steady["fast_writes"],
        }
        print(json.dumps(report, indent=2))
        print("\n| services | tick median | tick p95 | CPU/tick | RSS | K8s reads/writes per idle tick | "
              "Prometheus queries/tick | one query per service | ratio |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        print(f"| {args.services} | {report['tick_median_s'] * 1000:.0f} ms | {report['tick_p95_s'] * 1000:.0f} ms | "
              f"{report['cpu_s_per_tick'] * 1000:.0f} ms | {rss:.0f} MiB | {steady['reads']:g} / {steady['writes']:g} | "
              f"{steady['prometheus_queries']:g} | {per_service:.2f} s | {report['batched_vs_per_service_speedup']}× |")
        print(f"\nfast signal: a report of all {args.services} services taken in "
              f"{report['load_report_of_all_services_s'] * 1000:.0f} ms; tick with it "
              f"{report['tick_with_fast_signal_median_s'] * 1000:.0f} ms "
              f"({report['tick_with_vs_without_fast_signal']}x the tick without); "
              f"{steady['fast_writes']:g} writes per tick")
        server.shutdown()
    finally:
        cluster.down()


if __name__ == "__main__":
    sys.exit(main())
