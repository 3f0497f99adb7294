"""Run several policies over one trace and write what a person compares: JSON, Markdown, PNG."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from ..autoscaling import Policy
from .engine import Result, SimConfig, physical_limit_hours, simulate
from .policies import KedaHpaPolicy, KnativeKpaPolicy, ReactiveBound, TidalPolicy
from .trace import Request

POLICIES = ("tidal", "keda-hpa", "knative-kpa")  # `all`
BOUNDS = ("reactive-bound",)  # by name only: a yardstick, not a policy
# By name only: Tidal without the gateway's fast signal (Prometheus's queue and the wake-up calls alone), to
# measure what the fast signal buys.
VARIANTS = ("tidal-prometheus-only",)


def make_policy(name: str, cfg: SimConfig, scaling: Policy):
    if name == "tidal":
        return TidalPolicy(scaling)
    if name == "tidal-prometheus-only":
        policy = TidalPolicy(scaling, fast_signal=False)
        policy.name = name
        return policy
    if name == "keda-hpa":
        return KedaHpaPolicy(scaling.target_queue, scaling.min_replicas, scaling.max_replicas)
    if name == "knative-kpa":
        return KnativeKpaPolicy(cfg.latency.max_concurrency, scaling.min_replicas, scaling.max_replicas)
    if name == "reactive-bound":
        return ReactiveBound(scaling.max_replicas, cfg.cold_start_s)
    raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES + BOUNDS + VARIANTS)} or all")


def run_all(requests: list[Request], names: list[str], cfg: SimConfig, scaling: Policy, log=print) -> list[Result]:
    results = []
    for name in names:
        log(f"simulating {name} over {len(requests):,} requests ({requests[-1].arrival:,.0f} s of trace)")
        result = simulate(requests, make_policy(name, cfg, scaling), cfg,
                          progress=lambda f: log(f"  {name}: {f:4.0%} of the requests replayed"))
        results.append(result)
    return results


def markdown(results: list[Result], limit_hours: float, cfg: SimConfig, clairvoyant: float | None = None) -> str:
    lines = [f"| policy | GPU-replica-hours | x clairvoyant | cold starts | waited > {cfg.slo_wait_s:g} s | lost "
             "| queue wait p50 / p99 | TTFT p50 / p99 |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    cached = any(r.cache_hit_ratio is not None for r in results)
    routed = any(r.routing is not None for r in results)
    if cached:
        lines[0] += " cache hits | cold start p50 |"
        lines[1] += "---:|---:|"
    if routed:
        lines[0] += " prefix cache hits | over load bound |"
        lines[1] += "---:|---:|"
    for r in results:
        ratio = f"{r.gpu_hours / clairvoyant:.2f}" if clairvoyant else ""
        name = f"{r.policy}, {r.routing}" if r.routing else r.policy
        lines.append(f"| {name} | {r.gpu_hours:.3f} | {ratio} | {r.cold_starts} | {r.slo_misses} | {r.lost} | "
                     f"{r.wait_p50:.2f} s / {r.wait_p99:.1f} s | {r.ttft_p50:.2f} s / {r.ttft_p99:.1f} s |"
                     + (f" {r.cache_hit_ratio or 0:.0%} | {r.cold_start_p50_s or 0:.1f} s |" if cached else "")
                     + (f" {r.prefix_cache_hit_ratio or 0:.0%} | {r.over_load_bound or 0} |" if routed else ""))
    if clairvoyant is not None:
        lines.append(f"| clairvoyant (knows every arrival; no request waits) | {clairvoyant:.3f} | 1.00 | | 0 | 0 | | |")
    lines.append(f"| physical limit (all slots always busy) | {limit_hours:.3f} | | | | | | |")
    return "\n".join(lines) + "\n"


def plot(results: list[Result], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(12, 2.6 * len(results)), sharex=True, squeeze=False)
    for ax, r in zip(axes[:, 0], results):
        t = [p[0] / 60 for p in r.timeline]
        ax.step(t, [p[1] for p in r.timeline], where="post", label="replicas", color="tab:blue")
        ax.step(t, [p[2] for p in r.timeline], where="post", label="ready", color="tab:green", alpha=0.7)
        ax.set_ylabel("replicas")
        routed = (f", routing {r.routing}: TTFT p50 {r.ttft_p50:.2f} s, prefix cache hits {r.prefix_cache_hit_ratio:.0%}"
                  if r.routing else "")
        ax.set_title(f"{r.policy}: {r.gpu_hours:.2f} GPU-h, {r.cold_starts} cold starts, {r.slo_misses} SLO misses"
                     + routed, fontsize=10, loc="left")
        queue_ax = ax.twinx()
        queue_ax.fill_between(t, [p[3] for p in r.timeline], step="post", color="tab:red", alpha=0.25, label="queue")
        queue_ax.set_ylabel("queued", color="tab:red")
        ax.legend(loc="upper left", fontsize=8)
    axes[-1, 0].set_xlabel("minutes into the trace")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: list[Result], limit_hours: float, cfg: SimConfig, out: Path, trace: str,
          clairvoyant: float | None = None) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "simulation.json", "markdown": out / "simulation.md", "png": out / "simulation.png"}
    paths["json"].write_text(json.dumps({
        "trace": trace, "config": {k: (asdict(v) if hasattr(v, "__dataclass_fields__") else v)
                                   for k, v in cfg.__dict__.items()
                                   if cfg.cache is not None or k not in ("cache", "pool_gpus")},
        "physical_limit_gpu_hours": limit_hours, "clairvoyant_gpu_hours": clairvoyant,
        "results": [r.row() for r in results]}, indent=2, default=str))
    paths["markdown"].write_text(f"Trace: `{trace}`, cold start {cfg.cold_start_s:g} s, SLO: queue wait "
                                 f"<= {cfg.slo_wait_s:g} s, Prometheus scrape every {cfg.scrape_interval_s:g} s.\n\n"
                                 + markdown(results, limit_hours, cfg, clairvoyant))
    try:
        plot(results, paths["png"])
    except ImportError:  # the pictures are an extra: the operator's image has no plotting library
        print("simulation.png not drawn: matplotlib is not installed (pip install 'tidal[sim]')", file=sys.stderr)
        del paths["png"]
    return paths


def physical_limit(requests: list[Request], cfg: SimConfig) -> float:
    return physical_limit_hours(requests, cfg.latency)
