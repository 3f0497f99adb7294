"""A fleet: many services, each with its own trace and its own policy, sharing one node pool with a fixed
number of GPUs. A cold start may wait for a GPU (Pending, as a full pool does in a cluster); cost is the
pool's GPU time in use. The same event kinds as the one-service loop, tagged with the service."""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

from ..autoscaling.make_way import Seat, make_way
from .engine import SimConfig, cache_figures
from .nodes import Nodes
from .policies import View
from .service import Pool, Scrape, Service
from .trace import Request


@dataclass
class FleetResult:
    policy: str
    services: int
    requests: int
    gpu_hours: float
    cold_starts: int
    slo_misses: int
    lost: int
    pending_launches: int  # replicas that had to wait for a GPU
    wait_max: float  # the longest queue wait of a served request
    wait_max_by_service: list[float]  # each service's longest wait, a lost request's (its whole hold) included
    cache_hit_ratio: float | None = None  # with --model-cache: cold starts whose weights were on the node
    cold_start_p50_s: float | None = None  # with --model-cache: fetch + load, median
    cold_start_phases_p50_s: dict | None = None  # with --model-cache: weight_fetch, engine_load medians


def simulate_fleet(traces: list[list[Request]], make_policy, cfg: SimConfig, pool_gpus: int) -> FleetResult:
    pool = Pool(pool_gpus, Nodes(cfg.cache, pool_gpus) if cfg.cache is not None else None)
    services = [Service(cfg.latency, cfg.cold_start_s, cfg.cold_start_sigma, cfg.seed + i, pool=pool,
                        model=f"model-{i}", kv_admission=cfg.kv_admission) for i in range(len(traces))]
    if pool.nodes is not None and cfg.cache.enabled and cfg.cache.prefetch:
        pool.nodes.prefetch([s.model for s in services])
    policies = [make_policy() for _ in traces]
    events: list = []
    seq = itertools.count()
    waited_for_gpu = 0

    def push(t, kind, i, payload=None):
        heapq.heappush(events, (t, next(seq), kind, i, payload))

    for i, trace in enumerate(traces):
        for request in trace:
            push(request.arrival, "arrival", i, request)
        push(0.0, "tick", i)
        push(0.0, "scrape", i)
        if policies[i].observe_s:
            push(0.0, "observe", i)
    arbiter = getattr(policies[0], "makes_way", False) if policies else False
    if arbiter:  # Tidal frees GPUs in a full pool for services with held requests (autoscaling/make_way.py)
        push(0.0, "make_way", 0)
    made_way = 0
    scraped = [Scrape()] * len(traces)
    remaining = [len(t) for t in traces]
    end = max((t[-1].arrival for t in traces if t), default=0.0)
    last_done = 0.0

    def view(i, now):
        svc = services[i]
        ready = svc.ready_count(now)
        return View(now, svc.current(), ready, scraped[i].waiting, scraped[i].running, svc.waiting() + svc.running(),
                    *svc.held(now), unschedulable=svc.unschedulable(), scraped_series=scraped[i].series,
                    scraped_at=scraped[i].at, scraped_kv_usage=scraped[i].kv_usage, scraped_engines=scraped[i].engines,
                    in_flight=svc.running(), arrivals_per_s=svc.arrivals.per_second(now), pool_free=pool.free,
                    pool_asleep=asleep(now) - (svc.current() == 0))

    asleep_at: list = [None, 0]  # (time, services at zero then): counted once per instant, not once per look

    def asleep(now) -> int:
        if asleep_at[0] != now:
            asleep_at[:] = [now, sum(1 for s in services if s.current() == 0)]
        return asleep_at[1]

    keys = [("fleet", f"service-{j}") for j in range(len(services))]

    def seat(j, now) -> Seat:
        svc, policy = services[j], policies[j]
        ready = svc.ready_count(now)
        return Seat(keys[j], svc.current(), ready, policy.policy.min_replicas,
                    busy=bool(svc.waiting() or svc.running()), idle_since=policy.state.last_active,
                    pending_for_gpu=svc.unschedulable(), held=float(svc.waiting()),
                    oldest_held_s=now - svc.queue[0][0] if svc.queue else 0.0,
                    start_s=svc.last_start_s(now))

    def act(i, desired, now):
        nonlocal waited_for_gpu
        svc = services[i]
        if desired is not None and desired != svc.current():
            before = len(pool.pending)
            for replica in svc.scale_to(desired, now):
                push(replica.ready_at, "ready", i, replica)
            waited_for_gpu += max(0, len(pool.pending) - before)
        started_by_release()

    def started_by_release():
        while pool.started:
            svc, replica = pool.started.pop()
            push(replica.ready_at, "ready", services.index(svc), replica)

    def start(i, now):
        for done_at, replica, tokens in services[i].dispatch(now):
            push(done_at, "done", i, (replica, tokens))

    while events:
        now, _, kind, i, payload = heapq.heappop(events)
        svc, policy = services[i], policies[i]
        if kind in ("tick", "scrape", "observe", "make_way") and not any(remaining) and \
                all(not s.queue and s.running() == 0 for s in services):
            break  # every trace is served. (A service done early keeps deciding: it must free its GPUs.)
        if kind == "arrival":
            remaining[i] -= 1
            svc.arrive(payload, now)
            if svc.ready_count(now) == 0:
                act(i, policy.poke(view(i, now)), now)
            start(i, now)
        elif kind == "done":
            last_done = max(last_done, now)
            svc.finish(*payload, now)
            started_by_release()
            start(i, now)
        elif kind == "ready":
            start(i, now)
        elif kind == "tick":
            svc.expire(now, cfg.hold_timeout_s)
            act(i, policy.tick(view(i, now)), now)
            start(i, now)
            push(now + policy.tick_s, "tick", i)
        elif kind == "observe":
            act(i, policy.observe(view(i, now)), now)
            start(i, now)
            push(now + policy.observe_s, "observe", i)
        elif kind == "make_way":
            seats = [seat(j, now) for j in range(len(services))]
            for step in make_way(seats, now, cfg.hold_timeout_s):
                j = keys.index(step.victim)
                services[j].scale_to(step.replicas, now)
                made_way += 1
            started_by_release()
            for j in range(len(services)):
                start(j, now)
            push(now + policies[0].tick_s, "make_way", 0)
        elif kind == "scrape":
            scraped[i] = svc.scrape(now)
            push(now + cfg.scrape_interval_s, "scrape", i)
    stop = max(last_done, end)
    outcomes = [o for s in services for o in s.outcomes]
    total = sum(len(t) for t in traces)
    return FleetResult(
        policy=policies[0].name if policies else "", services=len(traces), requests=total,
        gpu_hours=sum(s.gpu_seconds(stop) for s in services) / 3600,
        cold_starts=sum(s.cold_starts for s in services),
        slo_misses=sum(1 for o in outcomes if o.lost or o.wait > cfg.slo_wait_s),
        lost=sum(1 for o in outcomes if o.lost) + total - len(outcomes), pending_launches=waited_for_gpu,
        wait_max=max((o.wait for o in outcomes if not o.lost), default=0.0),
        wait_max_by_service=[round(max((o.wait for o in s.outcomes), default=0.0), 1) for s in services],
        **cache_figures(pool.nodes, [t for s in services for t in s.cold_start_times]))
