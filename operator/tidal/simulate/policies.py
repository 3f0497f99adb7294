"""Autoscaling policies for the simulator: Tidal's own (the operator's `decide`), faithful
re-implementations of KEDA + HPA and Knative's KPA from their documented defaults, and the reactive
bound (the lowest latency any policy at zero can give a burst).

Every policy sees what it would see in a cluster: the metric-driven ones read Prometheus
samples that are up to one scrape interval old; Knative reads concurrency every second from its
queue proxies; requests held at zero are visible to an activator (Tidal, Knative) at once, and to
KEDA's HTTP add-on interceptor only at KEDA's next poll.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from ..autoscaling import Observation, Policy, ScalerState, decide
from ..autoscaling.decide import gateway_recommends
from ..autoscaling.observe import EngineQueue, GatewayDemand, GatewayLoad, Replicas, observe


@dataclass(frozen=True)
class View:
    now: float
    current: int
    ready: int
    scraped_waiting: float  # engines' queue gauge at the last Prometheus scrape
    scraped_running: float
    live_concurrency: float  # in flight + queued + held, as a queue proxy / activator counts it
    held: float  # requests held while no replica is ready (the activator's pending count)
    held_rate: float = 0.0  # held requests arriving per second, as the activator counts them
    request_s: float | None = None  # the activator's average request time
    unschedulable: int = 0  # replicas waiting for a GPU (Pending in a full pool)
    # Whether the last scrape found a ready replica: until one does, the engines' series do not exist yet.
    scraped_series: bool = True
    scraped_at: float = 0.0  # when that scrape was taken
    scraped_kv_usage: float | None = None  # the ready replicas' KV caches then, the fraction in use
    scraped_engines: int = 0  # the replicas that scrape read
    in_flight: float = 0.0  # requests sent to a replica and not answered yet, as the gateway counts them
    arrivals_per_s: float = 0.0  # every request's arrival, as the gateway counts them (the fast signal)
    pool_free: int | None = None  # GPUs free in a shared pool (a fleet); None: unlimited
    pool_asleep: int = 0  # other services of the pool at zero (each may need a GPU to wake)


class SimPolicy:
    name = "policy"
    tick_s = 2.0
    observe_s: float | None = None  # per-second observations (Knative)

    def tick(self, view: View) -> int | None:
        raise NotImplementedError

    def observe(self, view: View) -> int | None:
        """A look every `observe_s` seconds; a policy may act on it (Tidal's fast signal) or only remember."""
        return None

    def poke(self, view: View) -> int | None:
        """A request arrived while no replica is ready; an activator may act at once."""
        return None


class TidalPolicy(SimPolicy):
    name = "tidal"
    makes_way = True  # in a fleet: idle replicas make way for held requests in a full pool (make_way.py)

    def __init__(self, policy: Policy, tick_s: float = 2.0, fast_signal: bool = True, report_s: float = 1.0):
        self.policy, self.tick_s, self.state = policy, tick_s, ScalerState()
        # The gateway's load report every `report_s` (its fast signal), acted on as it arrives.
        self.fast_signal = fast_signal
        self.observe_s = report_s if fast_signal else None
        self.reasons: dict[str, int] = {}
        # The operator's cold-start clock: from the scale-from-zero decision to the first ready replica.
        self.cold_since: float | None = None
        self.cold_start_s: float | None = None

    def observed(self, view: View, wake: bool = False) -> Observation:
        """What the operator would observe on a tick (or on the gateway's wake-up call), through its own rules
        (autoscaling/observe.py): the modelled scrape and the gateway's held requests."""
        if wake or not view.ready:
            # A wake-up call queries nothing, and while nothing serves there is no engine series: Prometheus
            # answers with none, and no load is the truth.
            queue = EngineQueue(queue_exported=False)
        else:
            # Until a scrape has seen the ready replicas their series do not exist: the operator holds
            # (MetricsUnavailable) rather than reading an idle service.
            queue = EngineQueue(waiting=view.scraped_waiting, running=view.scraped_running,
                                queue_exported=view.scraped_series,
                                age_s=max(0.0, view.now - view.scraped_at) if view.scraped_series else 0.0,
                                kv_usage=view.scraped_kv_usage if view.scraped_series else None,
                                engines=(view.scraped_engines or None) if view.scraped_series else None)
        capacity = view.current + view.pool_free if view.pool_free is not None else None
        replicas = Replicas(view.current, view.ready, view.unschedulable, capacity, wake_reserve=view.pool_asleep)
        signals = [queue, GatewayDemand(view.held if view.ready == 0 else 0.0, view.held_rate, view.request_s)]
        load = self.gateway_load(view)
        if self.fast_signal and view.ready and not wake and load.has_traffic():
            signals.append(load)  # the gateway reports only services with traffic
        return observe(replicas, signals, cold_start_s=self.cold_start_s)

    @staticmethod
    def gateway_load(view: View) -> GatewayLoad:
        """The gateway's report: what it sent and has not had answered, what waits in its line for room."""
        return GatewayLoad(view.in_flight, view.live_concurrency - view.in_flight, view.arrivals_per_s,
                           view.request_s)

    def _decide(self, view: View, wake: bool = False) -> int:
        if view.ready and self.cold_since is not None:
            self.cold_start_s, self.cold_since = view.now - self.cold_since, None
        d = decide(self.observed(view, wake), self.state, self.policy, view.now)
        self.state = d.state
        self.reasons[d.reason] = self.reasons.get(d.reason, 0) + 1
        if view.current == 0 and d.replicas > 0:
            self.cold_since = view.now
        elif d.replicas == 0:
            self.cold_since = None
        return d.replicas

    def tick(self, view: View) -> int:
        return self._decide(view)

    def observe(self, view: View) -> int | None:
        """The gateway's report reaches the operator: it decides at once when the report asks for more replicas
        than there are (as the operator does on POST /v1/load), and otherwise waits for its tick."""
        if not (self.fast_signal and view.ready):
            return None
        wants = gateway_recommends(observe(Replicas(view.current, view.ready), [self.gateway_load(view)],
                                           cold_start_s=self.cold_start_s), self.policy)
        return self._decide(view) if wants > view.current else None

    def poke(self, view: View) -> int | None:
        # The activator's wake-up call, only while no replica serves (then the tick decides).
        return None if view.ready else self._decide(view, wake=True)


class KedaHpaPolicy(SimPolicy):
    """KEDA ScaledObject (Prometheus trigger on the queue gauge, HTTP add-on for activation) driving an HPA.

    KEDA polls every 30 s: 0 -> 1 when the metric (or the interceptor's pending count) is above the
    activation threshold 0; N -> 0 after cooldownPeriod 300 s since the metric was last above it.
    The HPA syncs every 15 s: desired = ceil(sum / target) unless within the 0.1 tolerance; scale-up at
    most max(4 pods, +100 %) per sync, scale-down to the highest recommendation of the last 300 s.
    """

    name = "keda-hpa"

    def __init__(self, target: float, min_replicas: int, max_replicas: int, poll_s=30.0, hpa_sync_s=15.0,
                 cooldown_s=300.0, window_s=300.0, tolerance=0.1):
        self.target, self.lo, self.hi = target, min_replicas, max_replicas
        self.poll_s, self.tick_s, self.cooldown_s, self.window_s, self.tolerance = poll_s, hpa_sync_s, cooldown_s, \
            window_s, tolerance
        self.last_active: float | None = None
        self.at_min_since: float | None = None  # when the HPA last came down to one replica
        self.next_poll = 0.0
        self.history: deque[tuple[float, int]] = deque()

    def tick(self, view: View) -> int | None:
        current = view.current
        if view.now >= self.next_poll:  # KEDA's own loop
            self.next_poll = view.now + self.poll_s
            metric = (view.scraped_waiting if view.ready else 0.0) + view.held
            if metric > 0:
                self.last_active = view.now
            if current == 0:
                return 1 if metric > 0 else 0
            # N -> 0 only from the HPA's minimum: after a burst the HPA holds its replicas for its 300 s
            # window, and the cooldown runs from then: about 10 minutes to zero, as users report.
            quiet_since = max(self.last_active or 0.0, self.at_min_since or 0.0)
            if self.lo == 0 and current == 1 and self.last_active is not None and \
                    view.now - quiet_since >= self.cooldown_s:
                self.history.clear()
                return 0
            if self.lo == 0 and self.last_active is None:
                self.last_active = view.now
        if current == 0:
            return 0
        if current == 1 and self.at_min_since is None:
            self.at_min_since = view.now
        elif current > 1:
            self.at_min_since = None
        ready = max(1, view.ready)
        ratio = (view.scraped_waiting / ready) / self.target
        rec = current if abs(ratio - 1) <= self.tolerance else math.ceil(ready * ratio)
        rec = max(1, min(self.hi, rec))
        self.history.append((view.now, rec))
        while self.history and view.now - self.history[0][0] > self.window_s:
            self.history.popleft()
        if rec > current:
            return min(rec, max(current * 2, current + 4))
        return max(r for _, r in self.history)


class KnativeKpaPolicy(SimPolicy):
    """Knative's KPA: concurrency every 1 s, decision every 2 s, 60 s stable and 6 s panic windows,
    panic at 200 % of ready capacity (no scale-down while panicking, for a stable window), a target of
    70 % of the container concurrency, scale-down at most 2x per decision, zero after the stable window
    saw no traffic plus a 30 s grace; the activator pokes it at once when a request arrives at zero."""

    name = "knative-kpa"
    observe_s = 1.0

    def __init__(self, container_concurrency: float, min_replicas: int, max_replicas: int, stable_s=60.0,
                 panic_s=6.0, panic_threshold=2.0, utilisation=0.7, zero_grace_s=30.0, max_down_rate=2.0):
        self.target = container_concurrency * utilisation
        self.lo, self.hi = min_replicas, max_replicas
        self.stable_s, self.panic_s, self.panic_threshold = stable_s, panic_s, panic_threshold
        self.zero_grace_s, self.max_down_rate = zero_grace_s, max_down_rate
        self.samples: deque[tuple[float, float]] = deque()
        self.panic_since: float | None = None
        self.zero_since: float | None = None

    def observe(self, view: View) -> None:
        self.samples.append((view.now, view.live_concurrency))
        while self.samples and view.now - self.samples[0][0] > self.stable_s:
            self.samples.popleft()

    def _avg(self, now: float, window: float) -> float:
        values = [c for t, c in self.samples if now - t < window]
        return sum(values) / len(values) if values else 0.0

    def tick(self, view: View) -> int:
        stable = math.ceil(self._avg(view.now, self.stable_s) / self.target)
        panic = math.ceil(self._avg(view.now, self.panic_s) / self.target)
        ready = max(1, view.ready)
        if panic / ready >= self.panic_threshold and view.current > 0:
            self.panic_since = view.now
        elif self.panic_since is not None and view.now - self.panic_since >= self.stable_s:
            self.panic_since = None
        desired = max(panic, view.current) if self.panic_since is not None else stable
        if desired < view.current:
            desired = max(desired, math.ceil(view.current / self.max_down_rate) if desired > 0 else 0)
        if desired == 0 and view.current > 0:
            self.zero_since = self.zero_since if self.zero_since is not None else view.now
            if view.now - self.zero_since < self.zero_grace_s:
                desired = 1
        else:
            self.zero_since = None
        return max(self.lo, min(self.hi, desired))

    def poke(self, view: View) -> int | None:
        return max(1, self.lo) if view.current == 0 else None


class ReactiveBound(SimPolicy):
    """Not a policy anyone should run: every replica maxReplicas allows, started by the request that finds
    the service at zero, and kept until nothing has been held, queued or running for a cold start (a lull
    shorter than that costs less bridged than restarted). A burst that finds the service at zero waits no
    less under any policy with the same maxReplicas: no replica can start sooner, and none serves faster.
    Its waits are the floor of what sizing a wake-up can win; its GPU time is not a bound on anything."""

    name = "reactive-bound"
    observe_s = 1.0

    def __init__(self, max_replicas: int, cold_start_s: float):
        self.most, self.cold_start_s = max_replicas, cold_start_s
        self.last_busy: float | None = None

    def observe(self, view: View) -> None:
        if view.live_concurrency > 0 or view.held:
            self.last_busy = view.now

    def tick(self, view: View) -> int:
        recently = self.last_busy is not None and view.now - self.last_busy < self.cold_start_s
        return self.most if recently or view.held else 0

    def poke(self, view: View) -> int | None:
        if view.current == 0:
            self.last_busy = view.now
            return self.most
        return None
