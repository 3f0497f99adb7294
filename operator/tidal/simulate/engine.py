"""The discrete-event loop: arrivals, completions, replicas becoming ready, scrapes, policy ticks."""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field

from .latency import LatencyModel
from .nodes import CacheModel, Nodes
from .policies import SimPolicy, View
from .service import Pool, Scrape, Service
from .trace import Request


@dataclass(frozen=True)
class SimConfig:
    latency: LatencyModel = field(default_factory=LatencyModel)
    cold_start_s: float = 60.0
    cold_start_sigma: float = 0.0
    seed: int = 0
    scrape_interval_s: float = 15.0  # Prometheus's scrape interval: the age of what metric-driven policies see
    slo_wait_s: float = 5.0
    hold_timeout_s: float = 600.0  # a request held longer at zero gets a 503: lost
    initial_replicas: int = 0
    sample_s: float = 5.0
    # --model-cache on|off: cold starts as a fetch (from model size and bandwidth) plus the load, on GPU nodes
    # with a cache each (nodes.py); None: a cold start is one figure, cold_start_s.
    cache: CacheModel | None = None
    pool_gpus: int = 64  # GPUs of the nodes a single service's replicas go to, with `cache`
    # --routing: how the gateway spreads requests over replicas ("least-loaded" or "prefix"), with each replica's
    # KV prefix cache modelled on traces that carry prompt blocks and its prefill as compute its prompts share;
    # None: neither (the results stay as they were).
    routing: str | None = None
    # --kv-admission: a replica takes a request only while its KV cache holds it (as vLLM does), and exports
    # the cache's use; off, a replica runs `max_concurrency` requests whatever their length (the tables published
    # before session 19 were measured so).
    kv_admission: bool = False


CACHE_FIGURES = ("cache_hit_ratio", "cold_start_p50_s", "cold_start_phases_p50_s")
ROUTING_FIGURES = ("routing", "ttft_p50_s", "ttft_p99_s", "prefix_cache_hit_ratio", "over_load_bound")


@dataclass
class Result:
    policy: str
    requests: int
    gpu_hours: float
    cold_starts: int
    slo_misses: int
    lost: int
    wait_p50: float
    wait_p99: float
    ttft_p50: float
    ttft_p99: float
    timeline: list[tuple[float, int, int, int]]  # (t, replicas, ready, queued)
    extra: dict = field(default_factory=dict)
    cache_hit_ratio: float | None = None  # with --model-cache: cold starts whose weights were on the node
    cold_start_p50_s: float | None = None  # with --model-cache: fetch + load, median
    cold_start_phases_p50_s: dict | None = None  # with --model-cache: weight_fetch, engine_load medians
    routing: str | None = None  # with --routing: least-loaded or prefix
    ttft_p50_s: float | None = None  # with --routing: time to first token, prefill saved by prefix caches included
    ttft_p99_s: float | None = None
    prefix_cache_hit_ratio: float | None = None  # prompt tokens the replicas' prefix caches held, of all
    over_load_bound: int | None = None  # requests a replica took above its bounded share

    def row(self) -> dict:
        # The cache's and the routing's figures only where modelled: the other results stay as they were.
        return {k: v for k, v in self.__dict__.items()
                if k != "timeline" and not (k in CACHE_FIGURES + ROUTING_FIGURES and v is None)}


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(math.ceil(q * len(values))) - 1)]


def simulate(requests: list[Request], policy: SimPolicy, cfg: SimConfig, progress=None) -> Result:
    svc = Service(cfg.latency, cfg.cold_start_s, cfg.cold_start_sigma, cfg.seed, kv_admission=cfg.kv_admission)
    if cfg.routing is not None:
        svc.routing, svc.prefix_caching, svc.shared_prefill = cfg.routing, True, True
    if cfg.cache is not None:
        svc.pool = Pool(cfg.pool_gpus, Nodes(cfg.cache, cfg.pool_gpus))
        if cfg.cache.enabled and cfg.cache.prefetch:
            svc.pool.nodes.prefetch([svc.model])
    events: list = []
    seq = itertools.count()

    def push(t, kind, payload=None):
        heapq.heappush(events, (t, next(seq), kind, payload))

    for i, request in enumerate(requests):
        push(request.arrival, "arrival", request)
    for replica in svc.scale_to(cfg.initial_replicas, 0.0):
        replica.ready_at = 0.0  # replicas that exist when the trace starts are warm
    svc.cold_starts = 0
    end_of_trace = requests[-1].arrival
    push(0.0, "tick")
    push(0.0, "scrape")
    push(0.0, "sample")
    if policy.observe_s:
        push(0.0, "observe")
    scraped = Scrape()
    timeline: list[tuple[float, int, int, int]] = []
    arrived = 0
    next_progress = 0.1

    def view(now: float) -> View:
        ready = svc.ready_count(now)
        return View(now, svc.current(), ready, scraped.waiting, scraped.running, svc.waiting() + svc.running(),
                    *svc.held(now), scraped_series=scraped.series, scraped_at=scraped.at,
                    scraped_kv_usage=scraped.kv_usage, scraped_engines=scraped.engines, in_flight=svc.running(),
                    arrivals_per_s=svc.arrivals.per_second(now))

    def act(desired, now):
        if desired is not None and desired != svc.current():
            for replica in svc.scale_to(desired, now):
                push(replica.ready_at, "ready", replica)
        started_by_release()

    def started_by_release():  # replicas that waited for a GPU of the modelled nodes
        while svc.pool is not None and svc.pool.started:
            _, replica = svc.pool.started.pop()
            push(replica.ready_at, "ready", replica)

    def start(now):
        for done_at, replica, tokens in svc.dispatch(now):
            push(done_at, "done", (replica, tokens))

    now = last_done = 0.0
    while events:
        now, _, kind, payload = heapq.heappop(events)
        idle = arrived == len(requests) and not svc.queue and svc.running() == 0
        if idle and kind in ("tick", "scrape", "sample", "observe"):
            break  # the trace is served; what is left is the policies' own tail, not the trace's cost
        if kind == "arrival":
            arrived += 1
            svc.arrive(payload, now)
            if svc.ready_count(now) == 0:
                act(policy.poke(view(now)), now)
            start(now)
            if progress and arrived / len(requests) >= next_progress:
                progress(arrived / len(requests))
                next_progress += 0.1
        elif kind == "done":
            last_done = now
            svc.finish(*payload, now)
            started_by_release()
            start(now)
        elif kind == "ready":
            start(now)
        elif kind == "tick":
            svc.expire(now, cfg.hold_timeout_s)
            act(policy.tick(view(now)), now)
            start(now)
            push(now + policy.tick_s, "tick")
        elif kind == "observe":
            act(policy.observe(view(now)), now)
            start(now)
            push(now + policy.observe_s, "observe")
        elif kind == "scrape":
            scraped = svc.scrape(now)
            push(now + cfg.scrape_interval_s, "scrape")
        elif kind == "sample":
            timeline.append((now, svc.current(), svc.ready_count(now), svc.waiting()))
            push(now + cfg.sample_s, "sample")
    end = max(last_done, end_of_trace)  # cost is counted until the trace's last request is served
    served = [o for o in svc.outcomes if not o.lost]
    waits = [o.wait for o in served]
    return Result(
        policy=policy.name, requests=len(requests), gpu_hours=svc.gpu_seconds(end) / 3600,
        cold_starts=svc.cold_starts,
        slo_misses=sum(1 for o in svc.outcomes if o.lost or o.wait > cfg.slo_wait_s),
        lost=sum(1 for o in svc.outcomes if o.lost) + len(requests) - len(svc.outcomes),
        wait_p50=_percentile(waits, 0.5), wait_p99=_percentile(waits, 0.99),
        ttft_p50=_percentile([o.ttft for o in served], 0.5), ttft_p99=_percentile([o.ttft for o in served], 0.99),
        timeline=timeline, extra=dict(getattr(policy, "reasons", {})),
        **cache_figures(svc.pool.nodes if svc.pool else None, svc.cold_start_times),
        **routing_figures(cfg.routing, svc, served))


def routing_figures(routing: str | None, svc: Service, served: list) -> dict:
    if routing is None:
        return {}
    ttfts = [o.ttft for o in served]
    return {"routing": routing, "ttft_p50_s": _percentile(ttfts, 0.5), "ttft_p99_s": _percentile(ttfts, 0.99),
            "prefix_cache_hit_ratio": svc.reused_tokens / svc.prompt_tokens if svc.prompt_tokens else 0.0,
            "over_load_bound": svc.over_bound}


def cache_figures(nodes: Nodes | None, cold_starts: list[float]) -> dict:
    if nodes is None:
        return {}
    # The phases the operator reports (status.lastColdStartPhases) that the simulator models.
    phases = {"weight_fetch": _percentile(nodes.fetches, 0.5), "engine_load": _percentile(nodes.loads, 0.5)}
    return {"cache_hit_ratio": nodes.hit_ratio(), "cold_start_p50_s": _percentile(cold_starts, 0.5),
            "cold_start_phases_p50_s": phases}


def physical_limit_hours(requests: list[Request], latency: LatencyModel) -> float:
    """GPU time the trace's work needs with every replica's slots always full: a lower bound on cost."""
    slot_seconds = sum(latency.service_time(r.input_tokens, r.output_tokens) for r in requests)
    return slot_seconds / latency.max_concurrency / 3600
