"""Who makes way in a full pool, as the operator applies it: after each tick, per node pool, the services'
seats (autoscaling/make_way.py) from what the autoscaler knows — replicas, Pending replicas, its last look at
each service's work, the gateways' held requests and how long the oldest has waited — and, for each replica to
free, a scale-down of the idle service chosen, explained by an Event on both services."""

from __future__ import annotations

import logging
import time

from ..autoscaling.make_way import TIERS, Seat, make_way
from . import metrics

log = logging.getLogger("tidal.autoscaler")
Key = tuple[str, str]


class Pools:
    def __init__(self) -> None:
        self._asleep: dict[tuple, int] | None = None  # per (pool, GPU product): services at zero, this tick

    def new_tick(self) -> None:
        self._asleep = None

    def asleep(self, scaler, pool: tuple) -> int:
        """GPU services of a pool (pool name, GPU product) at zero: each keeps a seat of the pool's room to wake into
        (a wake that does not know its request time yet grows only beyond those: autoscaling/limits.py,
        spare_beyond_reserve). Counted once per tick."""
        if self._asleep is None:
            self._asleep = {}
            for key in list(scaler.store.services):
                deployment, spec = scaler.store.deployments.get(key), scaler.seat_inputs(key)[0]
                if deployment is not None and spec is not None and spec.resources.gpus and deployment.replicas == 0:
                    where = (spec.placement.nodePool, spec.resources.gpuProduct)
                    self._asleep[where] = self._asleep.get(where, 0) + 1
        return self._asleep.get(pool, 0)

    def seats(self, scaler, keys: list[Key], now_monotonic: float) -> dict[tuple, list[Seat]]:
        """The GPU services of each pool (pool name, GPU product), as seats."""
        pools: dict[tuple, list[Seat]] = {}
        for key in keys:
            deployment = scaler.store.deployments.get(key)
            spec, busy, last_active = scaler.seat_inputs(key)
            if spec is None or deployment is None or not spec.resources.gpus:
                continue
            load = scaler.gateway_loads.of(key, now_monotonic)
            body = scaler.store.services.get(key) or {}
            pools.setdefault((spec.placement.nodePool, spec.resources.gpuProduct), []).append(Seat(
                key, deployment.replicas, deployment.ready, spec.scaling.minReplicas, busy,
                last_active, len(scaler.store.unschedulable.get(key, ())),
                load.held if load is not None else 0.0, load.oldest_held_s if load is not None else 0.0,
                gpus=spec.resources.gpus, priority=TIERS[spec.placement.priority or "normal"],
                start_s=scaler.cold_starts.last(key, body.get("status")) or 0.0))
        return pools

    async def make_way(self, scaler, keys: list[Key]) -> None:
        now = scaler.clock()
        for seats in self.seats(scaler, keys, time.monotonic()).values():
            for step in make_way(seats, now, scaler.gateway_loads.hold_timeout_s):
                victim, beneficiary = scaler.store.services.get(step.victim), scaler.store.services.get(step.for_service)
                deployment = scaler.store.deployments.get(step.victim)
                if victim is None or beneficiary is None or deployment is None:
                    continue
                before = deployment.replicas
                await scaler.kube.scale(step.victim[0], step.victim[1], step.replicas)
                deployment.replicas = step.replicas
                metrics.SCALE_CHANGES.labels("down").inc()
                metrics.SCALE_EVENTS.labels(*step.victim, "MadeWay", "down").inc()
                log.info("%s/%s: %d -> %d (MadeWay: %s)", *step.victim, before, step.replicas, step.message)
                await scaler.kube.event(victim, "Normal", "Scaled",
                                        f"{before} -> {step.replicas} replicas: MadeWay: {step.message}")
                await scaler.kube.event(beneficiary, "Normal", "MadeWay",
                                        f"{step.victim[0]}/{step.victim[1]} scaled down from {before} to "
                                        f"{step.replicas} replica(s) to free a GPU for this service's held requests")
