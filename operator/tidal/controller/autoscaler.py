"""The autoscaling loop: every tick, one Prometheus query for all services, one pure decision per
service, and Kubernetes writes only for the services whose replicas or status changed.

A wake-up (the activator holding a request for a service at zero) runs the same decision for
that one service at once, without waiting for a scrape or the next tick.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from pydantic import ValidationError

from ..api.v1alpha1 import InferenceServiceSpec, parse_spec
from ..autoscaling import Decision, Observation, ScalerState, decide
from ..autoscaling.decide import gateway_recommends
from ..autoscaling.observe import GatewayDemand, GatewayLoad, Replicas, observe
from ..clients.kube import Kube, unreachable
from ..clients.prometheus import Prometheus, PrometheusError, ServiceLoad
from ..engines.gpus import Gpu
from ..render.labels import SERVICE_LABEL
from ..planning import cold_start_phases
from ..planning.checks import pool_capacity, replica_gpu
from ..planning.conditions import get_condition
from ..planning.scaling_status import plan_scaling_status, restored_state
from . import metrics
from .cold_starts import ColdStarts
from .gateway_loads import GatewayLoads
from .scaling_inputs import custom_query, engine_queue, policy_of
from .pools import Pools
from .store import DEPARTED_MEMORY_S, Key, ServiceStore, update_status

log = logging.getLogger("tidal.autoscaler")
HELD_DEMAND_FRESH_S = 10.0


@dataclass
class Autoscaler:
    kube: Kube
    prometheus: Prometheus
    store: ServiceStore
    interval_s: float = 2.0
    clock: callable = time.time
    states: dict[Key, ScalerState] = field(default_factory=dict)
    _specs: dict[Key, tuple[int, InferenceServiceSpec | None]] = field(default_factory=dict)
    # New replicas are not discovered and scraped at once (a discovery refresh plus a scrape interval:
    # 30 s or more with common settings). Replicas are held from the first tick without data; the
    # condition and its Event wait this long, so a routine start-up does not read as an outage.
    metrics_grace_s: float = 30.0
    _missing_since: dict[Key, float] = field(default_factory=dict)
    last_tick_s: float = 0.0
    scaling_defaults: dict | None = None  # the chart's defaultScaling, under each object's own fields
    pool_label: str = "tidal.dev/pool"
    _capacity: dict = field(default_factory=dict)
    _used: dict | None = None  # GPUs our pods take per node, as of this tick
    _query_errors: dict[Key, str] = field(default_factory=dict)  # custom queries Prometheus refused
    _prometheus_down_since: float | None = None
    _failures: dict[Key, str] = field(default_factory=dict)  # last failure logged per service
    _accounted_at: dict[Key, float] = field(default_factory=dict)  # when GPU-seconds were last added
    cold_starts: ColdStarts = field(default_factory=ColdStarts)
    # The activator's last word on a service it holds requests for: (arrivals/s, request seconds, when).
    _held: dict[Key, tuple[float, float | None, float]] = field(default_factory=dict)
    # One decision at a time per service: a wake-up call and the tick (or two calls) deciding on the same
    # replica count would both scale from it, and the later write could undo the earlier one.
    _deciding: dict[Key, asyncio.Lock] = field(default_factory=dict)
    # The fast signal: the gateways' load reports (gateway_loads.py), and the last tick's Prometheus answers,
    # which a decision on a report between ticks reuses (a report asks no query of its own).
    gateway_loads: GatewayLoads = field(default_factory=GatewayLoads)
    pools: Pools = field(default_factory=Pools)  # who makes way in a full pool (pools.py)
    _last_round: tuple[dict | None, dict] = (None, {})
    _busy: dict[Key, bool] = field(default_factory=dict)  # whether each service had work at its last decision

    def forget(self, key: Key) -> None:
        self.states.pop(key, None)
        self._specs.pop(key, None)
        self._missing_since.pop(key, None)
        self._query_errors.pop(key, None)
        self._failures.pop(key, None)
        self._held.pop(key, None)
        self._deciding.pop(key, None)
        self.gateway_loads.forget(key)
        self._busy.pop(key, None)
        self.cold_starts.forget(key)
        metrics.forget(*key)

    def seat_inputs(self, key: Key) -> tuple[InferenceServiceSpec | None, bool, float | None]:
        """What a full pool's planning needs of a service (controller/pools.py): its spec, whether the last look
        found work, and when it last had work."""
        body, state = self.store.services.get(key), self.states.get(key)
        return (self._spec(key, body) if body is not None else None, self._busy.get(key, True),
                state.last_active if state is not None else None)

    def _spec(self, key: Key, body: dict) -> InferenceServiceSpec | None:
        """Parsed once per generation: a tick over 2,000 services must not re-validate 2,000 specs."""
        generation = body["metadata"].get("generation", 0)
        cached = self._specs.get(key)
        if cached and cached[0] == generation:
            return cached[1]
        try:
            spec = parse_spec(body.get("spec") or {}, self.scaling_defaults)
        except ValidationError:
            spec = None  # the reconciler reports it; nothing to scale
        self._specs[key] = (generation, spec)
        return spec

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.tick()
            except Exception:  # the loop must survive anything; the next tick tries again
                metrics.ERRORS.labels("tick").inc()
                log.exception("autoscaling tick failed")
            self.last_tick_s = time.monotonic() - started
            await asyncio.sleep(max(0.0, self.interval_s - self.last_tick_s))

    def _pool_capacity(self, spec: InferenceServiceSpec, scheduled: int) -> int | None:
        """The most replicas the service could have without waiting for a GPU: those it has scheduled plus what
        is free in its pool. (Replicas beyond it would wait Pending, ahead of other services' wake-ups: on the
        32-GPU fleet, capping growth at the free GPUs took lost requests from 2,471 to 0.) The free room is
        computed once per tick per (pool, product, GPUs per replica): 2,000 services share a handful of pools."""
        key = (spec.placement.nodePool, spec.resources.gpuProduct, spec.resources.gpus)
        if key not in self._capacity:
            nodes = list(self.store.nodes.values())
            self._capacity[key] = (pool_capacity(spec, nodes, self.pool_label),
                                   pool_capacity(spec, nodes, self.pool_label, self._used or {}))
        total, room = self._capacity[key]
        # Never above the pool's size: other workloads' GPUs are not in `room`, and a replica created a moment
        # ago and not yet reported Pending counts as scheduled.
        return None if room is None else min(total, scheduled + room)

    def _gpu(self, spec: InferenceServiceSpec) -> Gpu | None:
        """Once per tick per (pool, product), like the capacity."""
        key = ("gpu", spec.placement.nodePool, spec.resources.gpuProduct, bool(spec.resources.gpus))
        if key not in self._capacity:
            self._capacity[key] = replica_gpu(spec, list(self.store.nodes.values()), self.pool_label)
        return self._capacity[key]

    async def tick(self) -> None:
        self._capacity, self._used = {}, self.store.gpus_used()
        self.pools.new_tick()
        with metrics.TICK_SECONDS.time():
            self.store.forget_departed_before(time.monotonic() - DEPARTED_MEMORY_S)
            loads = await self._loads()
            keys = list(self.store.services)
            metrics.SERVICES.set(len(keys))
            custom = await self._custom_loads(keys, loads is not None)
            self._last_round = (loads, custom)
            self._account_gpu_seconds(keys, time.monotonic())
            for key in keys:
                body = self.store.services.get(key)
                if body is not None:
                    load = custom.get(key, loads.get(key) if loads is not None else None)
                    await self._scale_or_report(key, body, load, prometheus_ok=loads is not None)
            await self.pools.make_way(self, keys)

    def _account_gpu_seconds(self, keys: list[Key], now: float) -> None:
        """Add each service's GPU-seconds since the last tick: scheduled replicas x GPUs per replica x elapsed.
        (Replicas Pending for a full pool hold no GPU and are not counted.)"""
        last, self._accounted_at = self._accounted_at, {}
        for key in keys:
            body, deployment = self.store.services.get(key), self.store.deployments.get(key)
            spec = self._spec(key, body) if body else None
            if spec is None or deployment is None:
                continue
            self._accounted_at[key] = now
            held = max(0, deployment.replicas - len(self.store.unschedulable.get(key, ())))
            if key in last and held and spec.resources.gpus:
                metrics.GPU_SECONDS.labels(*key).inc(held * spec.resources.gpus * (now - last[key]))

    async def _loads(self) -> dict[Key, ServiceLoad] | None:
        """Every service's load from one query, or None while Prometheus fails (logged once per outage)."""
        try:
            loads = await self.prometheus.service_loads(self.store.is_departed)
        except PrometheusError as err:
            metrics.ERRORS.labels("prometheus").inc()
            if self._prometheus_down_since is None:
                self._prometheus_down_since = time.monotonic()
                log.warning("%s; holding every service's replicas until it answers", err)
            return None
        if self._prometheus_down_since is not None:
            log.warning("Prometheus answers again after %.0f s; scaling resumes",
                        time.monotonic() - self._prometheus_down_since)
            self._prometheus_down_since = None
        return loads

    async def _scale_or_report(self, key: Key, body: dict, load: ServiceLoad | None, prometheus_ok: bool) -> None:
        """One service's failure never costs the others their decision; each failure is logged once
        (an apiserver restart would otherwise print a traceback per service per tick)."""
        try:
            await self._scale(key, body, load, prometheus_ok=prometheus_ok)
        except Exception as err:
            metrics.ERRORS.labels("scale").inc()
            brief = unreachable(err)
            said = brief or repr(err)
            if self._failures.get(key) != said:
                self._failures[key] = said
                if brief:
                    log.warning("%s/%s: %s; will retry every tick", *key, brief)
                else:
                    log.exception("%s/%s: scaling failed; will retry every tick", *key)
        else:
            if self._failures.pop(key, None) is not None:
                log.info("%s/%s: scaling works again", *key)

    async def _custom_loads(self, keys: list[Key], prometheus_ok: bool) -> dict[Key, ServiceLoad | None]:
        out: dict[Key, ServiceLoad | None] = {}
        for key in keys:
            body = self.store.services.get(key)
            spec = self._spec(key, body) if body else None
            query = custom_query(spec, *key) if spec else None
            if query is None:
                continue
            if not prometheus_ok:
                out[key] = None
                continue
            try:
                value = await self.prometheus.scalar(query)
                out[key] = None if value is None else ServiceLoad(waiting=value, seen={"custom"})
                self._query_errors.pop(key, None)
            except PrometheusError as err:
                metrics.ERRORS.labels("custom_query").inc()
                if key not in self._query_errors:
                    log.warning("%s/%s: custom query failed: %s", *key, err)
                self._query_errors[key] = str(err)
                out[key] = None
        return out

    def _held_demand(self, key: Key, now: float) -> tuple[float, float | None]:
        """What the activator said with its last wake-up call, while it is recent (it calls about every
        second while it holds requests; a tick between calls uses the last one)."""
        rate, request_s, at = self._held.get(key, (0.0, None, -HELD_DEMAND_FRESH_S))
        if now - at > HELD_DEMAND_FRESH_S:
            self._held.pop(key, None)
            return 0.0, None
        return rate, request_s

    def _observe(self, key: Key, spec: InferenceServiceSpec, load: ServiceLoad | None,
                 extra_pending: float = 0.0, status: dict | None = None) -> Observation | None:
        deployment = self.store.deployments.get(key)
        if deployment is None:
            return None  # the reconciler has not created it yet
        held_rate, request_s = self._held_demand(key, time.monotonic())
        pending = len(self.store.unschedulable.get(key, ()))
        others_asleep = self.pools.asleep(self, (spec.placement.nodePool, spec.resources.gpuProduct)) - (
            deployment.replicas == 0 and bool(spec.resources.gpus))
        replicas = Replicas(deployment.replicas, deployment.ready, pending,
                            self._pool_capacity(spec, max(0, deployment.replicas - pending)),
                            quota_refused=deployment.unavailable_reason, wake_reserve=max(0, others_asleep))
        signals = [engine_queue(load, spec, self._query_errors.get(key)),
                   GatewayDemand(extra_pending, held_rate, request_s)]
        fast = self.gateway_loads.of(key, time.monotonic()) if deployment.ready else None
        if fast is not None:
            signals.append(fast)
        return observe(replicas, signals, cold_start_s=self.cold_starts.last(key, status))

    async def _scale(self, key: Key, body: dict, load: ServiceLoad | None, prometheus_ok: bool | None,
                     extra_pending: float = 0.0) -> Decision | None:
        """prometheus_ok: whether this round's query worked; None when none was made (a wake-up call)."""
        async with self._deciding.setdefault(key, asyncio.Lock()):
            return await self._decide_and_apply(key, body, load, prometheus_ok, extra_pending)

    async def _decide_and_apply(self, key: Key, body: dict, load: ServiceLoad | None, prometheus_ok: bool | None,
                                extra_pending: float) -> Decision | None:
        spec = self._spec(key, body)
        if spec is None:
            return None
        deployment = self.store.deployments.get(key)
        # On a wake-up call while no replica serves there is no engine queue to know: the gateway's numbers
        # are the whole demand. Not while Prometheus is down: an outage changes nothing that exists (a pod
        # evicted meanwhile leaves a service with none ready, and its held requests are no new surge).
        starting = (prometheus_ok is None and deployment is not None and deployment.ready == 0
                    and self._prometheus_down_since is None)
        if load is None and (prometheus_ok or starting) and not custom_query(spec, *key):
            load = ServiceLoad()  # Prometheus answered and has no series for this service, or none can exist
        obs = self._observe(key, spec, load, extra_pending, body.get("status"))
        if obs is None:
            return None
        now = self.clock()
        state = self.states.get(key) or restored_state(body.get("status") or {})
        decision = decide(obs, state, policy_of(spec, self._gpu(spec)), now)
        self.states[key] = decision.state
        self._busy[key] = bool(obs.pending or (obs.waiting or 0) or (obs.running or 0) or obs.batch_backlog
                               or obs.gateway_demand)
        metrics.DECISIONS.labels(decision.reason).inc()
        metrics.DESIRED.labels(*key).set(decision.replicas)
        if obs.waiting is not None:
            metrics.QUEUE.labels(*key).set(obs.waiting)
        if decision.replicas != obs.current:
            started = self.cold_starts.scaling(key, obs.current, decision.replicas, time.monotonic())
            try:
                await self.kube.scale(key[0], key[1], decision.replicas)
            except Exception:
                self.cold_starts.not_scaled(key, started)
                raise
            self.store.deployments[key].replicas = decision.replicas
            direction = "up" if decision.replicas > obs.current else "down"
            metrics.SCALE_CHANGES.labels(direction).inc()
            metrics.SCALE_EVENTS.labels(*key, decision.reason, direction).inc()
            await self.kube.event(body, "Normal", "Scaled",
                                  f"{obs.current} -> {decision.replicas} replicas: {decision.reason}: {decision.message}")
            log.info("%s/%s: %d -> %d (%s: %s)", *key, obs.current, decision.replicas, decision.reason,
                     decision.message)
        if self.cold_starts.unexplained(key, time.monotonic()) is not None:
            await self.explain_cold_start(key)  # its pod did not show its times when it ended: again, for a while
        generation = body["metadata"].get("generation", 0)
        if obs.waiting is None:
            since = self._missing_since.setdefault(key, now)
        else:
            since = self._missing_since.pop(key, None)
        # Prometheus itself failing is reported at once; one service's missing series after a grace.
        report = (obs.waiting is not None or prometheus_ok is False or obs.query_error is not None
                  or now - since >= self.metrics_grace_s)
        before, after = await update_status(
            self.kube, self.store, body,
            lambda cur: plan_scaling_status(cur, decision, obs.current, obs.waiting, generation, now, report,
                                            spec.scaling.idleSecondsBeforeZero, obs.cold_start_s,
                                            self.cold_starts.last_phases(key)))
        old, new = get_condition(before.get("conditions"), "ScalingActive"), get_condition(after.get("conditions"),
                                                                                          "ScalingActive")
        metrics.SCALING_ACTIVE.labels(*key).set(1 if (new or {}).get("status") == "True" else 0)
        metrics.UNSCHEDULABLE.labels(*key).set(obs.unschedulable)
        if _flipped(before, after, "ScalingLimited", to="True"):
            await self.kube.event(body, "Warning", decision.reason, decision.message)
        # Events on flips, and on a first False; "metrics available" at start-up is not news.
        if new and ((old and old["status"] != new["status"]) or (not old and new["status"] == "False")):
            await self.kube.event(body, "Normal" if new["status"] == "True" else "Warning", new["reason"],
                                  new["message"])
        return decision

    async def explain_cold_start(self, key: Key) -> None:
        """Where the last cold start's seconds went, from its first ready replica: metric, status, Event. Once: the
        watch that saw it end and the ticks after may both try, and only the one that claims it goes on."""
        pending = self.cold_starts.claim(key)
        if pending is None:
            return
        took = pending[0]
        try:
            pods = await self.kube.list_pods(key[0], f"{SERVICE_LABEL}={key[1]}")
        except Exception as err:  # an explanation is not worth failing the watch that noticed readiness
            log.warning("%s/%s: cold start of %.0f s not explained: %s", *key, took, unreachable(err) or err)
            self.cold_starts.unclaim(key, pending)
            return
        explained = [(parts, p) for p in pods if (parts := cold_start_phases.phases(p, took)) is not None]
        if not explained:
            self.cold_starts.unclaim(key, pending)  # its pod does not show its times yet: a later tick tries again
            return
        parts, _ = min(explained, key=lambda e: cold_start_phases.ready_at(e[1]))
        self.cold_starts.explained(key, parts)
        body = self.store.services.get(key)
        if body is not None:
            await self.kube.event(body, "Normal", "ColdStart", cold_start_phases.summary(took, parts))

    async def gateway_report(self, gateway: str, services: dict[Key, GatewayLoad],
                             hold_timeout_s: float | None = None) -> list[Key]:
        """A gateway's load report: kept for every decision, and acted on at once for each serving service whose
        report asks for more replicas than it has (the rest wait for the tick). Returns the services scaled."""
        now = time.monotonic()
        self.gateway_loads.report(gateway, services, now, hold_timeout_s)
        scaled = []
        loads, custom = self._last_round
        for key in services:
            body, deployment = self.store.services.get(key), self.store.deployments.get(key)
            spec = self._spec(key, body) if body is not None else None
            if spec is None or deployment is None or not deployment.ready or not deployment.replicas:
                continue  # not serving: the wake-up call and the tick handle it
            total = self.gateway_loads.of(key, now)
            seen = observe(Replicas(deployment.replicas, deployment.ready), [total],
                           cold_start_s=self.cold_starts.last(key, body.get("status")))
            wants = gateway_recommends(seen, policy_of(spec, self._gpu(spec)))
            if wants > deployment.replicas:
                load = custom.get(key, loads.get(key) if loads is not None else None)
                await self._scale_or_report(key, body, load, prometheus_ok=loads is not None)
                scaled.append(key)
        return scaled

    async def wake(self, namespace: str, name: str, pending: float, arrivals_per_s: float = 0.0,
                   request_s: float | None = None) -> Decision | None:
        """The activator holds `pending` requests for this service, arriving at `arrivals_per_s`, and its
        requests took `request_s` lately: decide now, not at the next tick. Also while its first
        replicas start: a surge that outgrows them gets the rest now, not one cold start later."""
        key = (namespace, name)
        body = self.store.services.get(key)
        deployment = self.store.deployments.get(key)
        if body is None or deployment is None or (deployment.replicas > 0 and deployment.ready > 0):
            return None  # serving (or not created yet): the regular tick handles it
        # (At zero, the ready count may still show the last replica going: the scale to zero is written
        # at once, the Deployment's status follows.)
        self._held[key] = (arrivals_per_s, request_s, time.monotonic())
        return await self._scale(key, body, None, prometheus_ok=None, extra_pending=pending)


def _flipped(before: dict, after: dict, type_: str, to: str) -> bool:
    old, new = get_condition(before.get("conditions"), type_), get_condition(after.get("conditions"), type_)
    return bool(new) and new["status"] == to and (old is None or old["status"] != to)
