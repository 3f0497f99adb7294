"""What the world shows, turned into the `Observation` that `decide` reads: the one place the rules live.

The operator (controller/autoscaler.py) and the simulator (simulate/policies.py) both build observations
here, each from its own sources: the operator from Prometheus's answer, the gateway's wake-up calls and its
load reports every second, the simulator from its modelled scrapes and gateway. A signal is a source: a small
object that folds what it knows into the observation.

The rules, each once:
- Never read missing data as idle. Prometheus not answering, a NaN sample, or serving replicas whose queue
  series no scrape has seen yet (a pod is discovered and scraped 1-2 intervals after it is ready) all leave
  `waiting`/`running` None, which `decide` answers by holding the replicas.
- At zero there are no pods to report: no answer is the truth there (0 waiting, 0 running).
- Held requests count as waiting demand: the gateway's own gauge as Prometheus scraped it, plus what its
  latest wake-up call said.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Protocol

from .decide import Observation


@dataclass(frozen=True)
class Replicas:
    """What the Deployment shows, and where its pool stands."""
    current: int  # replicas asked for
    ready: int  # ready pods as the Deployment reports them (after a scale to zero, the last one may still show)
    unschedulable: int = 0  # Pending because the node pool is full
    pool_capacity: int | None = None  # the most replicas the pool could hold; None: unknown
    quota_refused: str | None = None  # why the namespace's ResourceQuota refused a replica, if it did
    wake_reserve: int = 0  # replicas' worth of the pool's room kept for other services at zero to wake into


class Signal(Protocol):
    def fold(self, obs: Observation, replicas: Replicas) -> Observation:
        """The observation with what this source knows folded in."""


@dataclass(frozen=True)
class EngineQueue:
    """The slow truth: the engines' queue as Prometheus last scraped it (the gauges summed over the service's
    pods), or no answer at all (`answered=False`: Prometheus down, or not asked on a wake-up call)."""
    answered: bool = True
    waiting: float = 0.0
    running: float = 0.0  # 0 for an engine that exports no in-flight gauge
    held: float = 0.0  # the gateway's held-requests gauge, as scraped
    batch_backlog: float = 0.0  # batch requests the gateway has not sent yet
    queue_exported: bool = True  # the engine's queue series is in the answer (always, for a custom query)
    trustworthy: bool = True  # False on a NaN or infinite sample
    query_error: str | None = None  # why Prometheus refused the service's own spec.scaling.query
    age_s: float = 0.0  # how long before the tick the engines' gauges were scraped
    kv_usage: float | None = None  # the replicas' KV caches, the fraction in use (mean); None: not exported
    engines: int | None = None  # replicas whose in-flight gauge the answer sums; None: unknown

    def fold(self, obs: Observation, replicas: Replicas) -> Observation:
        if not self.answered:
            known = replicas.current == 0 and replicas.ready == 0
        else:
            known = self.trustworthy and (self.queue_exported or replicas.ready == 0)
        waiting, running = (self.waiting, self.running) if self.answered else (0.0, 0.0)
        return replace(obs, waiting=waiting if known else None, running=running if known else None,
                       pending=obs.pending + self.held, batch_backlog=self.batch_backlog,
                       query_error=self.query_error, metrics_outage=not self.answered,
                       queue_age_s=self.age_s if self.answered else 0.0,
                       kv_usage=self.kv_usage if self.answered and known else None,
                       engines_scraped=self.engines if self.answered and known else None)


@dataclass(frozen=True)
class GatewayDemand:
    """The gateway's wake-up calls while it holds requests for a service with nothing serving: how many it
    holds now, how fast they arrive and how long its requests took lately."""
    held: float = 0.0
    arrivals_per_s: float = 0.0
    request_s: float | None = None

    def fold(self, obs: Observation, replicas: Replicas) -> Observation:
        return replace(obs, pending=obs.pending + self.held, held_rate=self.arrivals_per_s,
                       request_s=self.request_s)


@dataclass(frozen=True)
class GatewayLoad:
    """The fast signal: what the gateway sees of a serving service, reported every second — requests in flight
    (sent to a replica, not answered yet), held (waiting in its line for room), arriving per second, and how long
    they took lately. It is seconds fresher than Prometheus's queue (a scrape, then a tick), so a rise shows here
    first; it only ever adds demand (`decide` never scales down on it), and its absence is no news."""
    in_flight: float = 0.0
    held: float = 0.0
    arrivals_per_s: float = 0.0
    request_s: float | None = None
    oldest_held_s: float = 0.0  # how long the oldest held request has waited (who makes way: make_way.py)

    def has_traffic(self) -> bool:
        """Whether the gateway reports the service at all (it leaves out the quiet ones)."""
        return bool(self.in_flight or self.held or self.arrivals_per_s)

    def fold(self, obs: Observation, replicas: Replicas) -> Observation:
        return replace(obs, gateway_demand=self.in_flight + self.held, gateway_rate=self.arrivals_per_s,
                       request_s=self.request_s if self.request_s is not None else obs.request_s,
                       gateway_message=(
            f"the gateway sees {self.in_flight:g} in flight, {self.held:g} held, {self.arrivals_per_s:.3g}/s arriving"
            + (f" at {self.request_s:.1f} s a request" if self.request_s else "")))


def observe(replicas: Replicas, signals: Iterable[Signal], cold_start_s: float | None = None) -> Observation:
    """One observation: the replicas, then each signal folded in, in order."""
    obs = Observation(current=replicas.current, ready=min(replicas.ready, replicas.current), waiting=None,
                      running=None, cold_start_s=cold_start_s, unschedulable=replicas.unschedulable,
                      pool_capacity=replicas.pool_capacity, quota_refused=replicas.quota_refused,
                      wake_reserve=replicas.wake_reserve)
    for signal in signals:
        obs = signal.fold(obs, replicas)
    return obs
