"""`make demo`: watch Tidal scale a model 0 -> N -> 0 on the local GPU cluster.

It starts (or reuses) the local cluster with a 20 s simulated model load, the operator and the
activator, applies examples/demo-scale-to-zero.yaml (minReplicas 0), waits until the service idles to
zero (after 20 warm-up requests), replays a time-compressed slice of the real Azure trace through the
activator, and waits until it is back at zero — with a live view of replicas, queue, requests and the autoscaler's last decision.
At the end: a summary table, a PNG plot, and where to look next. Ctrl-C stops the load and summarises.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .cluster import stack
from .repo import repo_root
from tidal.simulate.trace import load_trace
from tidal.simulate.workloads import DEMO_SHORT_WINDOW_S, DEMO_SPEEDUP, DEMO_WARMUP_REQUESTS, DEMO_WINDOW_S, demo_slice

EXAMPLE = Path("examples") / "demo-scale-to-zero.yaml"  # in the checkout
DEMO_NODES = Path(__file__).parent / "cluster" / "demo-nodepools.yaml"
TRACE = Path("..") / "shared" / "traces" / "azure-llm-2023-code.csv"  # beside the checkout
NAMESPACE, NAME = "default", "demo"


@dataclass
class Stats:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    inflight: int = 0
    latencies: list = field(default_factory=list)  # (finish time, seconds)
    samples: list = field(default_factory=list)  # (t, desired, ready, queue, inflight)
    phase: str = "starting"
    decision: str = ""
    max_replicas: int = 0
    went_up_from_zero: bool = False
    back_to_zero: bool = False


def _kubectl(info, *args, input=None, check=True):
    return subprocess.run([info.kubectl(), "--kubeconfig", str(info.kubeconfig), *args], input=input,
                          capture_output=True, text=True, check=check)


def _percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


class Observer(threading.Thread):
    """Samples the service once a second (Deployment, status) and draws the live view."""

    def __init__(self, info, stats: Stats, started: float):
        super().__init__(daemon=True)
        from kubernetes import client

        from tidal.clients.kube import load_api_client
        api = load_api_client(str(info.kubeconfig))
        self.apps, self.custom = client.AppsV1Api(api), client.CustomObjectsApi(api)
        self.stats, self.started, self.stop = stats, started, threading.Event()
        self.tty = sys.stdout.isatty()
        self._last_print = 0.0

    def sample(self) -> tuple[int, int, float]:
        dep = self.apps.read_namespaced_deployment(NAME, NAMESPACE)
        tis = self.custom.get_namespaced_custom_object("tidal.dev", "v1alpha1", NAMESPACE, "inferenceservices", NAME)
        status = tis.get("status") or {}
        desired, ready = dep.spec.replicas or 0, dep.status.ready_replicas or 0
        last = status.get("lastDecision") or {}
        if last:
            self.stats.decision = f"{last.get('previousReplicas')} -> {last.get('replicas')}: {last.get('reason')} " \
                                  f"({last.get('message', '')[:70]})"
        return desired, ready, float(status.get("queueDepth") or 0)

    def run(self):
        while not self.stop.is_set():
            try:
                desired, ready, queue = self.sample()
                s = self.stats
                now = time.monotonic() - self.started
                s.samples.append((now, desired, ready, queue, s.inflight))
                s.max_replicas = max(s.max_replicas, desired)
                if s.phase == "replaying" and desired > 0:
                    s.went_up_from_zero = True
                self.draw(now, desired, ready, queue)
            except Exception as err:  # a transient API error must not end the demo
                print(f"(observer: {err})", flush=True)
            self.stop.wait(1.0)

    def draw(self, now, desired, ready, queue):
        s = self.stats
        recent = [l for t, l in s.latencies if t > time.monotonic() - 30]
        lines = [
            f"Tidal demo — {NAMESPACE}/{NAME}   t={now:5.0f}s   phase: {s.phase}",
            f"  replicas   desired {desired:2d}   ready {ready:2d}   (max so far {s.max_replicas})",
            f"  queue      {queue:5.0f} waiting (Prometheus)   {s.inflight:4d} in flight at the client",
            f"  requests   {s.sent:6d} sent   {s.ok:6d} ok   {s.failed:4d} failed",
            f"  latency    p50 {_percentile(recent, 0.5):6.2f}s   p99 {_percentile(recent, 0.99):6.2f}s (last 30 s)",
            f"  autoscaler {s.decision or '-'}",
        ]
        if self.tty:
            sys.stdout.write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n")
            sys.stdout.flush()
        elif now - self._last_print >= 5:
            self._last_print = now
            print(" | ".join(l.strip() for l in lines[1:5]), flush=True)


async def replay(url: str, api_key: str, requests, stats: Stats, stop: threading.Event) -> None:
    """Send each request at its arrival time (seconds from the start)."""
    import aiohttp
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600), connector=aiohttp.TCPConnector(limit=0),
                                     headers={"Authorization": f"Bearer {api_key}"}) as http:
        async def one(r):
            stats.sent += 1
            stats.inflight += 1
            t0 = time.monotonic()
            try:
                async with http.post(url, json={"model": "llama-3.1-8b", "prompt": "x" * (4 * r.input_tokens),
                                                "max_tokens": max(1, r.output_tokens)}) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except aiohttp.ClientError:
                ok = False
            stats.inflight -= 1
            stats.ok += ok
            stats.failed += not ok
            stats.latencies.append((time.monotonic(), time.monotonic() - t0))

        tasks = []
        for r in requests:
            if stop.is_set():
                break
            delay = r.arrival - (time.monotonic() - started)
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(r)))
        await asyncio.gather(*tasks)


def plot(stats: Stats, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t = [s[0] for s in stats.samples]
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.step(t, [s[1] for s in stats.samples], where="post", label="desired replicas")
    ax.step(t, [s[2] for s in stats.samples], where="post", label="ready replicas")
    ax.set_xlabel("seconds")
    ax.set_ylabel("replicas")
    q = ax.twinx()
    q.fill_between(t, [s[3] for s in stats.samples], step="post", alpha=0.25, color="tab:red", label="queue")
    q.plot(t, [s[4] for s in stats.samples], color="tab:purple", alpha=0.6, label="in flight")
    q.set_ylabel("requests")
    ax.legend(loc="upper left")
    q.legend(loc="upper right")
    ax.set_title("Tidal demo: replicas, queue and requests in flight")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _wait_for_zero(stats: Stats, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stats.samples and stats.samples[-1][1] == 0 and stats.samples[-1][2] == 0:
            return True
        time.sleep(0.5)
    return False


def up(state_dir: Path, short: bool = False, down_at_end: bool = False, trace: Path = TRACE) -> int:
    started_all = time.monotonic()
    if not Path(trace).is_file():
        print(f"error: the request trace {trace} is not there; the demo replays it. Pass --trace FILE "
              "(the Azure LLM CSV format, or JSONL with timestamp, input_tokens, output_tokens).", file=sys.stderr)
        return 2
    state_dir = Path(state_dir).resolve()
    info = stack.up(state_dir, DEMO_NODES, scrape_interval="1s")
    act_url, api_key = info.extra["gateway_url"], info.extra["api_key"]
    print(f"operator {info.extra['operator_url']}; gateway {act_url} (API key in {state_dir / 'state.json'})",
          flush=True)
    _kubectl(info, "apply", "-f", str(repo_root() / EXAMPLE))
    chosen = demo_slice(load_trace(Path(trace)), short)  # arrivals already DEMO_SPEEDUP times faster
    window = DEMO_SHORT_WINDOW_S if short else DEMO_WINDOW_S
    stats = Stats()
    observer = Observer(info, stats, time.monotonic())
    observer.start()
    stop = threading.Event()
    interrupted = False
    try:
        # A service that served before, as most that wake up have: the gateway then knows how long its
        # requests take, which is what sizes a wake-up for a surge (a first-ever wake-up grows no further).
        stats.phase = "warm-up: 20 requests, so the gateway knows this model's request time"
        asyncio.run(replay(f"{act_url}/v1/completions", api_key, chosen[:DEMO_WARMUP_REQUESTS], Stats(), stop))
        stats.phase = "waiting for the service to idle to zero"
        if not _wait_for_zero(stats, 240):
            print("the service did not reach zero replicas in 240 s", flush=True)
        stats.phase = "replaying"
        print(f"replaying {len(chosen)} requests of the Azure trace ({window[1] - window[0]:.0f} s at "
              f"{DEMO_SPEEDUP:g}x speed) through the gateway's one endpoint", flush=True)
        asyncio.run(replay(f"{act_url}/v1/completions", api_key, chosen, stats, stop))
        stats.phase = "load over: waiting for scale to zero"
        stats.back_to_zero = _wait_for_zero(stats, 240)
    except KeyboardInterrupt:
        interrupted = True
        stop.set()
        stats.phase = "interrupted"
    finally:
        observer.stop.set()
        observer.join(5)
    out = state_dir / "demo"
    out.mkdir(exist_ok=True)
    try:
        plot(stats, out / "demo.png")
    except ImportError:
        print("demo.png not drawn: matplotlib is not installed (pip install 'tidal[sim]')", file=sys.stderr)
    lat = [l for _, l in stats.latencies]
    summary = {
        "requests_sent": stats.sent, "served": stats.ok, "failed": stats.failed,
        "latency_p50_s": round(_percentile(lat, 0.5), 3), "latency_p99_s": round(_percentile(lat, 0.99), 3),
        "max_replicas": stats.max_replicas, "scaled_up_from_zero": stats.went_up_from_zero,
        "back_to_zero": stats.back_to_zero, "seconds": round(time.monotonic() - started_all),
        "interrupted": interrupted,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\n| what | value |\n|---|---|")
    for k, v in summary.items():
        print(f"| {k} | {v} |")
    print(f"""
Plot: {out / 'demo.png'}   Summary: {out / 'summary.json'}
Look around:
  export KUBECONFIG={info.kubeconfig}
  export PATH={info.binaries_dir}:$PATH
  kubectl get tis demo; kubectl describe tis demo     # the decisions and their reasons are in the Events
  Prometheus: {info.prometheus_url}/graph?g0.expr=vllm:num_requests_waiting
  curl {act_url}/v1/completions -H "Authorization: Bearer <api_key from {state_dir / 'state.json'}>" \\
    -H 'Content-Type: application/json' -d '{{"model": "llama-3.1-8b", "prompt": "hi", "max_tokens": 8}}'
Stop everything: make demo-down""", flush=True)
    if down_at_end:
        down(state_dir)
    return 130 if interrupted else 0


def down(state_dir: Path) -> int:
    stack.down(Path(state_dir))
    return 0


def main(action: str, state_dir: str, short: bool = False, down_at_end: bool = False, trace: str | None = None) -> int:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if action == "up":
        return up(Path(state_dir), short, down_at_end, Path(trace) if trace else repo_root() / TRACE)
    return down(Path(state_dir))
