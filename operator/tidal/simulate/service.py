"""The simulated InferenceService: a FIFO queue in front of replicas that each run `max_concurrency`
requests at once, with the engine latency model, cold starts, draining scale-down, and the GPU time
every replica costs from the moment it is launched until it is gone."""

from __future__ import annotations

import collections
import math
import random
from dataclasses import dataclass, field

from ..autoscaling.demand import ArrivalRate, RequestTime
from ..routing.ring import HashRing, load_bound
from ..routing.shared import SharedPrefixes
from .latency import LatencyModel
from .nodes import Nodes
from .prefix_cache import BLOCK_TOKENS, KvPrefixCache, reused_tokens, routing_blocks


@dataclass
class Replica:
    id: int
    launched: float
    ready_at: float
    inflight: int = 0
    draining: bool = False
    removed_at: float | None = None
    node: int | None = None  # with modelled nodes: where it runs
    cache: KvPrefixCache | None = None  # its KV prefix cache, when the trace has prompt blocks
    kv_tokens: int = 0  # KV-cache tokens its running requests hold (prompt and output)
    prefill_free_at: float = 0.0  # with shared prefill: when its compute has prefilled what it has taken
    prefill_begins: collections.deque = field(default_factory=collections.deque)  # when each taken prompt begins

    def ready(self, now: float) -> bool:
        return not self.draining and self.ready_at <= now


class Pool:
    """A node pool with a fixed number of GPUs shared by a fleet of services (one GPU per replica). A replica
    launched while every GPU is taken waits (Pending) and starts its cold start when one frees, oldest first."""

    def __init__(self, gpus: int, nodes: Nodes | None = None):
        self.free = gpus
        self.nodes = nodes  # GPU nodes with model caches (nodes.py); None: a cold start is one phase
        self.pending: collections.deque = collections.deque()  # (service, replica) waiting for a GPU
        self.started: list = []  # (service, replica) given a GPU by a release, for the loop to schedule

    def take(self, service: "Service", replica: "Replica", now: float) -> bool:
        if self.free > 0:
            self.free -= 1
            if self.nodes is not None:
                self._place(service, replica, now, replica.ready_at - now)
            return True
        self.pending.append((service, replica))
        return False

    def _place(self, service: "Service", replica: "Replica", now: float, load_s: float) -> None:
        """On a node: the cold start is the weights' fetch (none on a cache hit) and then the load."""
        replica.node, fetch_s = self.nodes.place(service.model, now)
        self.nodes.loads.append(load_s)
        replica.launched, replica.ready_at = now, now + fetch_s + load_s
        service.cold_start_times.append(fetch_s + load_s)

    def release(self, now: float, replica: "Replica | None" = None, model: str = "") -> None:
        self.free += 1
        if self.nodes is not None and replica is not None and replica.node is not None:
            self.nodes.release(replica.node, model)
        while self.pending and self.free > 0:
            service, replica = self.pending.popleft()
            if replica.draining:  # scaled away before it ever got a GPU
                continue
            self.free -= 1
            if self.nodes is not None:
                self._place(service, replica, now, service.cold_start())
            else:
                replica.launched, replica.ready_at = now, now + service.cold_start()
            self.started.append((service, replica))

    def withdraw(self, replica: "Replica") -> None:
        self.pending = collections.deque((s, r) for s, r in self.pending if r is not replica)


@dataclass(frozen=True)
class Scrape:
    """What Prometheus's last scrape of a service's engines holds."""
    waiting: float = 0.0
    running: float = 0.0
    series: bool = False  # a ready replica exported them (before that, the series do not exist)
    at: float = 0.0  # when it was taken
    kv_usage: float | None = None  # the ready replicas' KV caches, the fraction in use (mean)
    engines: int = 0  # the ready replicas it read


@dataclass
class Outcome:
    arrival: float
    wait: float  # queue wait (held at zero, or waiting for a free slot)
    ttft: float
    lost: bool = False


@dataclass
class Service:
    latency: LatencyModel
    cold_start_s: float
    cold_start_sigma: float = 0.0
    seed: int = 0
    replicas: list[Replica] = field(default_factory=list)
    queue: collections.deque = field(default_factory=collections.deque)  # (arrival, Request)
    outcomes: list[Outcome] = field(default_factory=list)
    cold_starts: int = 0
    pool: Pool | None = None  # a finite pool shared with other services; None: a GPU is always free
    model: str = "model"  # which weights its replicas load (with modelled node caches)
    cold_start_times: list = field(default_factory=list)  # fetch + load of each placed cold start
    held_arrivals: ArrivalRate = field(default_factory=ArrivalRate)  # as the activator counts them
    request_time: RequestTime = field(default_factory=RequestTime)  # as the activator averages them
    arrivals: ArrivalRate = field(default_factory=ArrivalRate)  # every arrival, as the gateway counts them
    routing: str = "least-loaded"  # or "prefix": as the gateway routes (tidal.routing), by the prompt's key
    prefix_caching: bool = False  # model each replica's KV prefix cache (with --routing, on traces with blocks)
    prompt_tokens: int = 0  # of requests with blocks, and of those what replicas' prefix caches held
    reused_tokens: int = 0
    over_bound: int = 0  # requests sent to a replica above its bounded share (none while one is under it)
    kv_admission: bool = False  # --kv-admission: a replica takes a request only while its KV cache holds it
    shared_prefill: bool = False  # with --routing: a replica prefills the prompts it has taken one after another
    _ring: HashRing | None = None
    _shared: SharedPrefixes = field(default_factory=SharedPrefixes)  # the simulated gateway's, as the gateway's
    _ids: int = 0

    def __post_init__(self):
        self._rng = random.Random(self.seed)

    # ---- what a policy sees --------------------------------------------------------------------
    def current(self) -> int:
        """Replicas the Deployment asks for: starting and ready, not those draining away."""
        return sum(1 for r in self.replicas if not r.draining)

    def ready_count(self, now: float) -> int:
        return sum(1 for r in self.replicas if r.ready(now))

    def unschedulable(self) -> int:
        """Replicas waiting for a GPU in a full pool (what the scheduler reports Unschedulable)."""
        return sum(1 for r in self.replicas if not r.draining and r.launched == math.inf)

    def running(self) -> int:
        return sum(r.inflight for r in self.replicas)

    def waiting(self) -> int:
        return len(self.queue)

    # ---- scaling ---------------------------------------------------------------------------------
    def cold_start(self) -> float:
        if self.cold_start_sigma <= 0:
            return self.cold_start_s
        # Lognormal around the median cold start: mostly near it, a few much slower.
        return self.cold_start_s * math.exp(self._rng.gauss(0, self.cold_start_sigma))

    def last_start_s(self, now: float) -> float:
        """How long its latest replica to become ready took from launch (0: none has yet), as the operator
        keeps status.lastColdStartSeconds."""
        latest = max((r for r in self.replicas if r.ready_at <= now), key=lambda r: r.ready_at, default=None)
        return latest.ready_at - latest.launched if latest is not None else 0.0

    def scale_to(self, desired: int, now: float) -> list[Replica]:
        """Launch or remove replicas; returns the launched ones (their ready events are scheduled)."""
        live = [r for r in self.replicas if not r.draining]
        launched = []
        for _ in range(desired - len(live)):
            self._ids += 1
            replica = Replica(self._ids, now, now + self.cold_start())
            self.replicas.append(replica)
            self.cold_starts += 1
            if self.pool is not None and not self.pool.take(self, replica, now):
                replica.launched, replica.ready_at = math.inf, math.inf  # Pending: no GPU, no cost yet
                continue
            launched.append(replica)
        if desired < len(live):
            # Like a ReplicaSet: not-ready pods go first, then the least busy.
            victims = sorted(live, key=lambda r: (r.ready(now), r.inflight))[: len(live) - desired]
            for r in victims:
                r.draining = True
                if r.launched == math.inf:  # never got a GPU
                    r.removed_at = r.launched
                    if self.pool is not None:
                        self.pool.withdraw(r)
                elif r.inflight == 0:
                    self._remove(r, now)
        return launched

    def _remove(self, replica: Replica, now: float) -> None:
        replica.removed_at = now
        if self.pool is not None:
            self.pool.release(now, replica, self.model)

    def scrape(self, now: float) -> Scrape:
        ready = [r for r in self.replicas if r.ready(now)]
        if not ready:
            return Scrape(at=now)
        # The engines' KV gauge, where the KV cache's admission is modelled (else it would read past 100 %).
        usage = (sum(r.kv_tokens for r in ready) / (len(ready) * self.latency.kv_cache_tokens)
                 if self.kv_admission else None)
        unbegun = sum(self._unbegun(r, now) for r in ready)
        return Scrape(float(self.waiting() + unbegun), float(self.running() - unbegun), True, now, usage, len(ready))

    @staticmethod
    def _unbegun(replica: Replica, now: float) -> int:
        """Prompts it has taken whose prefill has not begun: the engine counts them waiting."""
        while replica.prefill_begins and replica.prefill_begins[0] <= now:
            replica.prefill_begins.popleft()
        return len(replica.prefill_begins)

    def held(self, now: float) -> tuple[float, float, float | None]:
        """What an activator sees while no replica is ready: requests held, how fast they arrive, and how
        long requests took recently."""
        if self.ready_count(now):
            return 0.0, 0.0, self.request_time.seconds
        return float(self.waiting()), self.held_arrivals.per_second(now), self.request_time.seconds

    # ---- requests --------------------------------------------------------------------------------
    def arrive(self, request, now: float) -> None:
        self.arrivals.add(now)
        if not self.ready_count(now):
            self.held_arrivals.add(now)
        self.queue.append((now, request))

    def dispatch(self, now: float) -> list[tuple[float, Replica, int]]:
        """Start queued requests where there is room (least busy replica first); returns (done_at, replica, its
        KV tokens)."""
        started = []
        while self.queue:
            arrival, request = self.queue[0]
            tokens = request.input_tokens + request.output_tokens
            candidates = [r for r in self.replicas if r.ready(now) and self._has_room(r, tokens)]
            if not candidates:
                break
            self.queue.popleft()
            replica = self._choose(candidates, request, now)
            replica.inflight += 1
            replica.kv_tokens += tokens
            prefill = request.input_tokens - self._reused(replica, request)
            behind = self._behind(replica, prefill, now)
            wait = now - arrival + behind
            ttft = wait + self.latency.time_to_first_token(prefill)
            self.outcomes.append(Outcome(arrival, wait, ttft))
            took = behind + self.latency.service_time(prefill, request.output_tokens)
            # The activator learns a request's time when it ends; counted here at its start, one request
            # time early, which moves the average by a few seconds' worth of requests at most.
            self.request_time.add(took)
            started.append((now + took, replica, tokens))
        return started

    def _behind(self, replica: Replica, prefill: int, now: float) -> float:
        """Seconds a prompt taken now waits for the replica's compute to finish the prefills taken before it. Prefill
        is compute-bound: 48 prompts of 12,000 tokens take 48 x 1.2 s on one GPU, not 1.2 s (decoding, bound by
        reading the weights, does share them). 0 where prefill is modelled per place (no --routing)."""
        if not self.shared_prefill:
            return 0.0
        begins = max(now, replica.prefill_free_at)
        replica.prefill_free_at = begins + self.latency.time_to_first_token(prefill)
        if begins > now:
            replica.prefill_begins.append(begins)
        return begins - now

    def _has_room(self, replica: Replica, tokens: int) -> bool:
        """A free place in its batch and room in its KV cache for the whole request, as vLLM admits a request
        only while its blocks fit: 48 places, but 196,608 tokens hold sixteen 12,000-token conversations. A
        request larger than the cache runs alone."""
        if replica.inflight >= self.latency.max_concurrency:
            return False
        return (not self.kv_admission or replica.inflight == 0
                or replica.kv_tokens + tokens <= self.latency.kv_cache_tokens)

    def _choose(self, candidates: list[Replica], request, now: float) -> Replica:
        """Least loaded; with prefix routing, the owner of the prompt's key (its first block, or the one after a
        prefix several conversations share: tidal.routing.shared) on the ring of ready replicas unless it is over
        its bounded share (tidal.routing.ring, as the gateway does)."""
        least = min(candidates, key=lambda r: r.inflight)
        ready = [r for r in self.replicas if r.ready(now)]
        key = (self._shared.key(routing_blocks(request.blocks, request.input_tokens))
               if self.routing == "prefix" else None)
        key = str(key) if key is not None else None
        chosen = least
        if key is not None and len(ready) > 1:
            names = sorted(str(r.id) for r in ready)
            if self._ring is None or list(self._ring.members) != names:
                self._ring = HashRing(names)
            by_name = {str(r.id): r for r in ready}
            pick = self._ring.pick(key, {n: r.inflight for n, r in by_name.items()}, {str(r.id) for r in candidates})
            chosen = by_name[pick] if pick is not None else least
        # The bound over the replicas that could take it, as the ring bounds them (a replica with no room in its
        # batch or KV cache takes nothing, whatever its count).
        if chosen.inflight + 1 > load_bound(sum(r.inflight for r in candidates) + 1, len(candidates)):
            self.over_bound += 1
        return chosen

    def _reused(self, replica: Replica, request) -> int:
        """Prompt tokens the replica's prefix cache spares this request (0 without blocks in the trace)."""
        if not request.blocks or not self.prefix_caching:
            return 0
        if replica.cache is None:
            replica.cache = KvPrefixCache(self.latency.kv_cache_tokens // BLOCK_TOKENS)
        reused = reused_tokens(replica.cache.reuse(request.blocks), request.input_tokens)
        replica.cache.keep(request.blocks)
        self.prompt_tokens += request.input_tokens
        self.reused_tokens += reused
        return reused

    def finish(self, replica: Replica, tokens: int, now: float) -> None:
        replica.inflight -= 1
        replica.kv_tokens -= tokens
        if replica.draining and replica.inflight == 0:
            self._remove(replica, now)

    def expire(self, now: float, timeout: float) -> None:
        """Requests held longer than `timeout` get an error (the activator's 503): lost."""
        while self.queue and now - self.queue[0][0] > timeout:
            arrival, _ = self.queue.popleft()
            self.outcomes.append(Outcome(arrival, now - arrival, math.inf, lost=True))

    def gpu_seconds(self, end: float) -> float:
        return sum((r.removed_at if r.removed_at is not None else end) - r.launched for r in self.replicas
                   if r.launched != math.inf)
