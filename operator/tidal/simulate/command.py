"""`tidal simulate`: replay a request trace through autoscaling policies (one service, or a fleet sharing a pool)
and write the figures (simulation.json/.md/.png, fleet.json/.md)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from .engine import CACHE_FIGURES
from .latency import LatencyModel
from .nodes import CacheModel


def _scaling_default(field: str):
    from ..api.v1alpha1 import Scaling
    return Scaling.model_fields[field].default


def cache_model(args: argparse.Namespace) -> CacheModel | None:
    if args.model_cache is None:
        return None
    return CacheModel(args.model_cache == "on", args.model_gb, args.fetch_gbps, args.cache_gb_per_node,
                      args.gpus_per_node, args.prefetch)


def _config(args: argparse.Namespace, latency):
    """The simulation's settings and Tidal's scaling policy, from the command line (one service or a fleet)."""
    from ..autoscaling import Policy
    from .engine import SimConfig
    cfg = SimConfig(latency=latency, cold_start_s=args.cold_start, cold_start_sigma=args.cold_start_sigma,
                    seed=args.seed, scrape_interval_s=args.scrape_interval, slo_wait_s=args.slo,
                    cache=cache_model(args), pool_gpus=args.pool_gpus, kv_admission=args.kv_admission)
    scaling = Policy(min_replicas=args.min_replicas, max_replicas=args.max_replicas, target_queue=args.target_queue,
                     max_concurrency=args.max_concurrency, idle_seconds=args.idle_seconds,
                     adaptive_idle=not args.fixed_idle, scale_down_window_s=args.scale_down_window)
    return cfg, scaling


def add_simulate(sub) -> None:
    """The `simulate` subcommand on the `tidal` command line."""
    sim = sub.add_parser("simulate", help="replay a request trace through autoscaling policies: GPU cost and latency")
    sim.add_argument("--trace", required=True, help="CSV (TIMESTAMP,ContextTokens,GeneratedTokens) or JSONL "
                                                   "(timestamp, input_tokens, output_tokens)")
    sim.add_argument("--policy", default="all",
                     help="all (tidal, keda-hpa, knative-kpa), or names separated by commas; reactive-bound: "
                          "every replica at a burst's first request, the lowest latency a service at zero can have")
    sim.add_argument("--out", default="out/simulation", help="directory for simulation.json/.md/.png")
    sim.add_argument("--cold-start", type=float, default=60.0, help="seconds from launch to ready (median)")
    sim.add_argument("--cold-start-sigma", type=float, default=0.0, help="lognormal spread of the cold start")
    sim.add_argument("--slo", type=float, default=5.0, help="queue-wait SLO in seconds")
    sim.add_argument("--scrape-interval", type=float, default=15.0, help="Prometheus scrape interval, seconds")
    sim.add_argument("--max-concurrency", type=int, default=48, help="requests one replica runs at once")
    sim.add_argument("--min-replicas", type=int, default=0)
    sim.add_argument("--max-replicas", type=int, default=8)
    sim.add_argument("--target-queue", type=float, default=_scaling_default("targetQueueDepth"),
                     help="waiting requests per replica (Tidal, HPA); default: the API's")
    sim.add_argument("--idle-seconds", type=float, default=_scaling_default("idleSecondsBeforeZero"),
                     help="Tidal's idle period before zero; default: the API's")
    sim.add_argument("--fixed-idle", action="store_true",
                     help="Tidal's idle period as written (spec.scaling.adaptIdlePeriod: false)")
    sim.add_argument("--scale-down-window", type=float, default=_scaling_default("scaleDownStabilizationSeconds"),
                     help="Tidal's scale-down window; default: the API's")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--rate-scale", type=float, default=1.0,
                     help="replay the trace this many times faster (arrival rate x N, same requests)")
    sim.add_argument("--fleet", type=int, default=0, metavar="N",
                     help="simulate N services built from the trace (shifted and scaled), sharing a pool")
    sim.add_argument("--pool-gpus", type=int, default=64, help="with --fleet: GPUs in the shared pool (with "
                                                                "--model-cache, also a single service's nodes)")
    sim.add_argument("--model-cache", choices=["on", "off"],
                     help="model each cold start as fetching the weights (--model-gb at --fetch-gbps) then loading "
                          "them (--cold-start), on nodes of --gpus-per-node GPUs: on, each node keeps what it fetched "
                          "(--cache-gb-per-node) and replicas prefer nodes that hold their model; off, every cold "
                          "start fetches. Unset: a cold start is --cold-start alone")
    sim.add_argument("--model-gb", type=float, default=16.0, help="with --model-cache: the model's size")
    sim.add_argument("--fetch-gbps", type=float, default=0.5,
                     help="with --model-cache: GB a second from the model store to a node")
    sim.add_argument("--cache-gb-per-node", type=float, default=500.0, help="with --model-cache on: each node's budget")
    sim.add_argument("--gpus-per-node", type=int, default=8, help="with --model-cache: GPUs of each node")
    sim.add_argument("--prefetch", action="store_true",
                     help="with --model-cache on: every model is on some of the pool's nodes before the first "
                          "request (spread within the budgets), as spec.model.cache.prefetch would put it")
    sim.add_argument("--routing", metavar="least-loaded,prefix",
                     help="how the gateway spreads requests over replicas, one result per routing (comma-separated): "
                          "least-loaded, or prefix (spec.routing.policy: a prompt's first block, or the one after a "
                          "prefix several conversations share, picks the replica on a ring with bounded loads). "
                          "Each replica's KV prefix cache is modelled on traces with prompt blocks (Mooncake's "
                          "hash_ids), and a replica prefills its prompts one after another "
                          "(prefill is compute); results add routing, ttft_p50_s, ttft_p99_s and "
                          "prefix_cache_hit_ratio")
    sim.add_argument("--kv-cache-tokens", type=int, default=LatencyModel().kv_cache_tokens,
                     help="with --routing or --kv-admission: the tokens each replica's KV cache holds (its prefix "
                          "cache reuses what is there); default: the latency model's 48 x 4,096")
    sim.add_argument("--kv-admission", action="store_true",
                     help="a replica takes a request only while its KV cache holds the whole request (prompt and "
                          "output), as vLLM admits one, and exports the cache's use to the autoscaler: long prompts "
                          "then run fewer than --max-concurrency at once")
    sim.add_argument("--adapters", type=int, default=0, metavar="N",
                     help="the trace as traffic to N LoRA adapters of one base (equal shares): GPU-hours of one "
                          "service per adapter vs the adapters on a shared base (adapters.json/.md)")
    sim.add_argument("--adapter-shares", metavar="50,30,20",
                     help="as --adapters, with each adapter's share of the requests")
    sim.add_argument("--workload", choices=["trace", "bursts", "varied", "demo"], default="trace",
                     help="trace: as recorded; bursts: four 2-minute surges of 20 req/s, each after 15 idle "
                          "minutes; varied: ten surges of random length and rate after random quiets (20 s to "
                          "30 min; --seed); request sizes drawn from the trace; demo: what `make demo` sends "
                          "(its warm-up, 5 quiet minutes, its burst)")
    sim.set_defaults(func=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    import time

    from .report import BOUNDS, POLICIES, VARIANTS, physical_limit, run_all, write
    from .trace import load_trace
    from .latency import LatencyModel

    from .clairvoyant import clairvoyant_hours
    from .workloads import bursts_from_zero, demo_replay, rate_scaled, varied_bursts

    started = time.monotonic()
    try:
        requests = load_trace(Path(args.trace))
    except (OSError, ValueError) as err:
        print(f"error: cannot read the trace: {err}", file=sys.stderr)
        return 2
    names = list(POLICIES) if args.policy == "all" else [n.strip() for n in args.policy.split(",")]
    unknown = [n for n in names if n not in POLICIES + BOUNDS + VARIANTS]
    if unknown or not names:
        print(f"error: --policy {args.policy!r}: unknown {', '.join(unknown) or 'empty'}; choose from "
              f"{', '.join(POLICIES + BOUNDS + VARIANTS)} (comma-separated) or all", file=sys.stderr)
        return 2
    if args.workload == "bursts":
        requests = bursts_from_zero(requests, seed=args.seed)  # sizes from the trace, timing generated
    elif args.workload == "varied":
        requests = varied_bursts(requests, seed=args.seed)
    elif args.workload == "demo":
        try:
            requests = demo_replay(requests)
        except ValueError as err:
            print(f"error: --workload demo: {err}", file=sys.stderr)
            return 2
    if args.rate_scale != 1:
        try:
            requests = rate_scaled(requests, args.rate_scale)
        except ValueError as err:
            print(f"error: --rate-scale: {err}", file=sys.stderr)
            return 2
    latency = LatencyModel(max_concurrency=args.max_concurrency, kv_cache_tokens=args.kv_cache_tokens)
    routings = [r.strip() for r in args.routing.split(",")] if args.routing else [None]
    if args.routing and ([r for r in routings if r not in ("least-loaded", "prefix")] or args.fleet):
        print(f"error: --routing {args.routing!r}: least-loaded, prefix or both (comma-separated), for a single "
              "service (not with --fleet)", file=sys.stderr)
        return 2
    if args.fleet:
        return _simulate_fleet(args, requests, names, latency, started)
    if args.adapters or args.adapter_shares:
        from .adapters import shares_of, simulate_adapters
        try:
            if len(shares_of(args)) < 1 or min(shares_of(args)) <= 0:
                raise ValueError
        except ValueError:
            print(f"error: --adapters {args.adapters} / --adapter-shares {args.adapter_shares!r}: give a number of "
                  "adapters (1 or more) or their shares as positive numbers (50,30,20)", file=sys.stderr)
            return 2
        return simulate_adapters(args, requests, names, *_config(args, latency), started)
    cfg, scaling = _config(args, latency)
    results = []
    for routing in routings:
        results += run_all(requests, names, replace(cfg, routing=routing), scaling, log=lambda m: print(m, flush=True))
    paths = write(results, physical_limit(requests, cfg), cfg, Path(args.out), args.trace,
                  clairvoyant_hours(requests, latency, args.cold_start))
    print()
    print(paths["markdown"].read_text())
    print(f"wrote {paths['json']}, {paths['markdown']}, {paths['png']} in {time.monotonic() - started:.1f} s")
    return 0


def _longest_waits(by_service: list[float]) -> str:
    """Each service's longest wait, summed up: the worst service's and the median service's."""
    ordered = sorted(by_service)
    return f"{ordered[-1]:.0f} s / {ordered[len(ordered) // 2]:.0f} s" if ordered else ""


def _simulate_fleet(args, requests, names, latency, started) -> int:
    """--fleet N: N services built from the trace (shifted, scaled), sharing a pool of --pool-gpus GPUs."""
    import time

    from .clairvoyant import clairvoyant_hours
    from .fleet import simulate_fleet
    from .report import make_policy
    from .workloads import fleet

    traces = fleet(requests, args.fleet, seed=args.seed)
    cfg, scaling = _config(args, latency)
    bound = sum(clairvoyant_hours(t, latency, args.cold_start) for t in traces)
    print(f"{args.fleet} services, {sum(len(t) for t in traces):,} requests, a pool of {args.pool_gpus} GPUs")
    rows = []
    for name in names:
        print(f"simulating {name} over the fleet", flush=True)
        r = simulate_fleet(traces, lambda n=name: make_policy(n, cfg, scaling), cfg, args.pool_gpus)
        rows.append(r)
    cached = cfg.cache is not None
    table = [f"| policy | pool GPU-hours | x clairvoyant | cold starts | waited for a GPU | waited > {args.slo:g} s | lost "
             "| longest wait: worst service / median service |" + (" cache hits | cold start p50 |" if cached else ""),
             "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if cached else "")]
    table += [f"| {r.policy} | {r.gpu_hours:.2f} | {r.gpu_hours / bound:.2f} | {r.cold_starts} | {r.pending_launches} | "
              f"{r.slo_misses} | {r.lost} | {_longest_waits(r.wait_max_by_service)} |"
              + (f" {r.cache_hit_ratio:.0%} | {r.cold_start_p50_s:.1f} s |" if cached else "") for r in rows]
    table.append(f"| clairvoyant (each service alone, pool unlimited) | {bound:.2f} | 1.00 | | | 0 | 0 | |"
                 + (" | |" if cached else ""))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fleet.md").write_text("\n".join(table) + "\n")
    (out / "fleet.json").write_text(json.dumps({"services": args.fleet, "pool_gpus": args.pool_gpus,
                                                "clairvoyant_gpu_hours": bound,
                                                "results": [{k: v for k, v in r.__dict__.items() if v is not None
                                                             or k not in CACHE_FIGURES} for r in rows]}, indent=2))
    print("\n".join(table))
    print(f"wrote {out / 'fleet.md'}, {out / 'fleet.json'} in {time.monotonic() - started:.1f} s")
    return 0
