"""One scaling decision for one service."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from .limits import (adapted_idle_seconds, batch_that_fits, batch_that_runs, cap_at_pool_capacity, capacity_exhausted,
                     clamp, everything_served, expected_backlog, first_wake_backlog, idle_long_enough, limit_scale_down,
                     limit_scale_up, recommend, remember_gap, replicas_have_room, replicas_needed, replicas_to_drain,
                     spare_beyond_reserve, stabilise_down, stabilise_up, too_late_to_help, within_tolerance)
from .policy import Policy


# A service whose cold start was never measured (the operator restarted, and status has none): a minute, a
# common cold start for a model server (FACTS.md: 20 s to several minutes).
UNKNOWN_COLD_START_S = 60.0


@dataclass(frozen=True)
class Observation:
    current: int  # replicas the Deployment asks for now
    ready: int  # of those, ready to serve
    waiting: float | None  # requests queued in the engines; None when the metrics are unavailable
    running: float | None  # requests being generated; None when unavailable
    pending: float = 0.0  # requests the activator holds for this service (it is at zero or waking)
    batch_backlog: float = 0.0  # batch requests the gateway has not sent yet: a queue like `waiting`
    held_rate: float = 0.0  # held requests arriving per second (the activator's count over a few seconds)
    cold_start_s: float | None = None  # this service's last measured cold start; None: never woke yet
    request_s: float | None = None  # how long a request keeps a slot, recently (the activator's average)
    unschedulable: int = 0  # replicas the scheduler cannot place: their node pool is full
    pool_capacity: int | None = None  # the most replicas the node pool could hold; None: unknown
    query_error: str | None = None  # why Prometheus refused the service's own spec.scaling.query
    gateway_demand: float | None = None  # the fast signal: requests in flight and held at the gateway (observe.py)
    gateway_rate: float = 0.0  # requests arriving per second at the gateway
    gateway_message: str = ""
    quota_refused: str | None = None  # the namespace's ResourceQuota refused a replica (the Deployment says why)
    metrics_outage: bool = False  # Prometheus gave no answer at all (down, or the service's own query failed)
    wake_reserve: int = 0  # of the pool's room, replicas' worth other services at zero may need to wake
    queue_age_s: float = 0.0  # how old `waiting` and `running` are: the scrape was taken this long before now
    kv_usage: float | None = None  # the serving replicas' KV caches, the fraction in use (mean); None: not exported
    engines_scraped: int | None = None  # replicas whose engine gauges `waiting` and `running` sum; None: unknown


@dataclass(frozen=True)
class ScalerState:
    # Persisted in status, so a restarted operator decides the same way:
    last_active: float | None = None  # last time anything was waiting, running or held
    last_scale: float | None = None
    idle_gaps: tuple[float, ...] = ()  # the last quiet gaps (seconds), which the idle period learns from
    # In memory only; after a restart it is empty, and scale-down waits for it to refill:
    history: tuple[tuple[float, int], ...] = field(default_factory=tuple)  # (time, recommendation)
    observing_since: float | None = None
    woke_at: float | None = None  # when the last wake from zero began


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str
    message: str
    state: ScalerState
    recommended: int | None = None

    def changed(self, current: int) -> bool:
        return self.replicas != current


def _hold(obs: Observation, policy: Policy, state: ScalerState, reason: str, message: str) -> Decision:
    return Decision(clamp(obs.current, policy.min_replicas, policy.max_replicas), reason, message, state)


def _remember(state: ScalerState, policy: Policy, now: float, recommended: int) -> ScalerState:
    keep = max(policy.scale_down_window_s, policy.scale_up_window_s)
    history = tuple((t, r) for t, r in state.history if now - t <= keep) + ((now, recommended),)
    return replace(state, history=history)


def _shortest_idle(obs: Observation, policy: Policy) -> float:
    """The idle period never adapts below the scale-down window or a cold start: a gap shorter than a
    cold start costs less bridged than restarted, whatever came before."""
    return min(policy.idle_seconds, max(policy.scale_down_window_s, obs.cold_start_s or 0.0))


def _idle_seconds(obs: Observation, state: ScalerState, policy: Policy) -> float:
    if not policy.adaptive_idle:
        return policy.idle_seconds
    return adapted_idle_seconds(state.idle_gaps, policy.idle_seconds, _shortest_idle(obs, policy))


def _busy_again(obs: Observation, state: ScalerState, policy: Policy, now: float) -> ScalerState:
    """Work arrived: if the service had been quiet for longer than the shortest idle period, remember
    how long. Only a quiet this process saw begin counts, or one at zero (lastActiveTime is written
    exactly when a service goes idle): after a restart, a busy service's stored time can be minutes old."""
    last = state.last_active
    if last is None and obs.current == 0 and state.observing_since is not None:
        # A service at zero that never served since we began watching has been quiet at least that long:
        # a first burst after an hour's silence is evidence of bursty traffic like any later one (the
        # bursts workload in `tidal simulate` pays 0.461 GPU-hours without this, 0.394 with it).
        last = state.observing_since
    if last is None or now - last < _shortest_idle(obs, policy):
        return state
    if obs.current > 0 and (state.observing_since is None or last < state.observing_since):
        return state
    return replace(state, idle_gaps=remember_gap(state.idle_gaps, now - last))


def _wake(obs: Observation, state: ScalerState, policy: Policy, now: float) -> Decision:
    """Requests are held and nothing serves yet: act at once, metrics or not, and size the service for
    what will be waiting when the replicas are ready, so a surge from zero pays one cold start, not
    two (one replica first, the rest only once it serves and its queue shows)."""
    started = state.woke_at if obs.current > 0 and state.woke_at is not None else now
    if obs.cold_start_s is None:
        backlog = first_wake_backlog(obs.pending, waking=obs.current > 0)
    else:  # what arrives until the starting replicas are ready: the whole cold start at the wake, less as it goes
        backlog = expected_backlog(obs.pending, obs.held_rate, max(0.0, obs.cold_start_s - (now - started)))
    # At most one slot (or target queue place) for every request expected...
    sized = recommend(backlog, 0, policy.target_queue, policy.max_concurrency)
    if not obs.request_s and obs.current > 0:
        # ...but without a request time (the service never answered through this gateway) the backlog
        # says nothing about how fast it drains, so it grows only into room no other service needs: never
        # into the seats its pool keeps for the services at zero (grown into anyway, the 50-service fleet on
        # 64 GPUs missed 15 % more as the first wakes took the GPUs the next ones waited for).
        sized = min(sized, obs.current + spare_beyond_reserve(obs.pool_capacity, obs.current, obs.wake_reserve))
    if obs.request_s and obs.cold_start_s and policy.max_concurrency > 0:
        # ...and no more than it takes to serve that backlog within `wake_drain_s` of being ready while
        # requests keep coming: short requests drain fast (2.6/s at 4 s a request is 10 busy slots of 48).
        horizon = min(obs.cold_start_s, policy.wake_drain_s)
        sized = min(sized, replicas_to_drain(backlog, obs.held_rate, obs.request_s, horizon,
                                             policy.max_concurrency))
    wanted = clamp(max(1, sized), max(1, policy.min_replicas), policy.max_replicas)
    wanted = limit_scale_up(obs.current, wanted, policy.scale_up_rate, policy.scale_up_step)
    why = (f"{obs.pending:g} request(s) held by the activator, arriving at {obs.held_rate:.3g}/s: "
           f"{backlog:.0f} expected when a replica is ready")
    if obs.request_s:
        why += f", {obs.request_s:.1f} s a request"
    # The wake's size is not a recommendation the scale-down window keeps: the replicas it starts go once
    # the engines' queue says the backlog is served. On bursts from zero (0.5 s requests, 1,200 held over
    # a 60 s cold start, three replicas to serve them within 5 s) the window kept two of them a minute for
    # a backlog they cleared in 5 s: 0.394 GPU-h with the window, 0.344 without, the same misses. The tick after they are
    # ready, their queue has no series yet; that is MetricsUnavailable (a hold), not an idle service.
    state = replace(_busy_again(obs, state, policy, now), last_active=now)
    if obs.current == 0:
        # minReplicas is the user's floor and wins over the pool's size: the replicas beyond what the
        # pool holds stay Pending and say so (Unschedulable), which is what a cluster autoscaler adds
        # nodes for. The pool caps only what the autoscaler adds on its own account.
        wanted = max(1, policy.min_replicas, cap_at_pool_capacity(wanted, 0, obs.pool_capacity))
        return Decision(wanted, "ActivatorWake", why, replace(state, last_scale=now, woke_at=now), sized)
    keep = clamp(obs.current, policy.min_replicas, policy.max_replicas)
    if wanted <= obs.current:
        return Decision(keep, "WaitingForFirstReplica", f"{why}; {obs.current} replica(s) starting are enough",
                        state, sized)
    if too_late_to_help(now - started, backlog, obs.held_rate, obs.request_s, policy.max_concurrency, obs.current):
        return Decision(keep, "WaitingForFirstReplica",
                        f"{why}; a replica added {now - started:.0f}s into the wake would be ready after the "
                        f"starting ones have served the backlog", state, sized)
    if capacity_exhausted(obs.unschedulable):
        return Decision(keep, "Unschedulable", f"{why}; {obs.unschedulable} replica(s) cannot be scheduled "
                                               "(the node pool is full), so no more are added", state, sized)
    fits = cap_at_pool_capacity(wanted, obs.current, obs.pool_capacity)
    if fits <= obs.current:
        return Decision(keep, "Unschedulable", f"{why}; the node pool holds at most {obs.pool_capacity} "
                                               "replica(s)", state, sized)
    return Decision(fits, "WakeForBacklog", f"{why}; {obs.current} replica(s) starting are not enough",
                    replace(state, last_scale=now), sized)


def decide(obs: Observation, state: ScalerState, policy: Policy, now: float) -> Decision:
    since = state.observing_since if state.observing_since is not None else now
    state = replace(state, observing_since=since)
    # Requests are held and nothing serves: wake at once, metrics or not; grow the starting replicas for the
    # surge only on an observation that knows the queue (a tick with metrics, or a wake-up call while no
    # replica serves and there is no engine queue to know), so that an outage changes nothing that exists.
    if obs.ready == 0 and obs.pending > 0 and (obs.current == 0 or obs.waiting is not None):
        return _wake(obs, state, policy, now)
    if obs.waiting is None or obs.running is None:
        # Never act on missing data: a metrics outage must not look like an idle service. The gateway's own
        # count is data, though, and it only adds: while new replicas' series are not scraped yet, a rise it
        # sees scales up. Not while Prometheus is down: an outage changes nothing that exists.
        fast = gateway_recommends(obs, policy)
        if fast > obs.current and obs.ready > 0 and not obs.metrics_outage:
            return _gateway_scale_up(obs, state, policy, now, fast)
        if obs.query_error:  # the user's query is wrong, not Prometheus away: say which
            return _hold(obs, policy, state, "QueryFailed",
                         f"spec.scaling.query failed: {obs.query_error[:400]}; keeping the current replicas")
        return _hold(obs, policy, state, "MetricsUnavailable", "no queue metrics; keeping the current replicas")

    # A replica whose KV cache fills before its batch, or whose engine leaves requests waiting with room in its
    # batch (long prefills), holds fewer requests: every count below uses what fits.
    full = batch_that_fits(policy.max_concurrency, obs.running, obs.ready, obs.kv_usage)
    fits = min(full, batch_that_runs(policy.max_concurrency, obs.waiting, obs.running, obs.engines_scraped))
    batch_note = ""
    if fits < policy.max_concurrency:
        batch_note = (f"; KV caches {obs.kv_usage:.0%} full: {fits:g} a replica" if fits == full
                      else f"; requests wait with room in the batches: {fits:g} run a replica")
    policy = replace(policy, max_concurrency=fits)
    fast = gateway_recommends(obs, policy)
    # A batch's unsent requests are demand too: 2,000 of them with a target queue of 2 ask for every
    # replica maxReplicas allows, so the batch finishes in hours rather than on one replica's spare places.
    waiting = obs.waiting + obs.pending + obs.batch_backlog
    busy = waiting > 0 or obs.running > 0
    if busy:
        state = replace(_busy_again(obs, state, policy, now), last_active=now)
    slow = recommend(waiting, obs.running, policy.target_queue, policy.max_concurrency)
    # The gateway's view only raises the recommendation: it sees a rise a scrape and a tick before Prometheus
    # does, and it never lowers what the engines' queue asks for.
    recommended = max(slow, fast)
    state = _remember(state, policy, measured_at(obs, now, slow, fast), recommended)
    load = (f"{waiting:g} waiting" + (f" ({obs.batch_backlog:g} of a batch)" if obs.batch_backlog else "")
            + f", {obs.running:g} running on {obs.ready}/{obs.current} ready{batch_note}")

    def result(replicas: int, reason: str, message: str) -> Decision:
        replicas = clamp(replicas, policy.min_replicas, policy.max_replicas)
        final_state = replace(state, last_scale=now) if replicas != obs.current else state
        return Decision(replicas, reason, message, final_state, recommended)

    if recommended > obs.current:
        if obs.quota_refused:
            # More replicas would be refused too: the quota, not the pool, is the limit.
            return result(obs.current, "QuotaExceeded", f"{load}; {recommended} wanted, but the namespace's "
                                                        f"quota refuses more: {obs.quota_refused[:300]}")
        if capacity_exhausted(obs.unschedulable):
            # Another replica would only join the ones already Pending; ask again when they schedule.
            return result(obs.current, "Unschedulable",
                          f"{load}; {obs.unschedulable} replica(s) cannot be scheduled (the node pool is full), "
                          f"so no more are added")
        if obs.ready == 0 and obs.current > 0:
            # A backlog held while nothing serves yet says nothing about serving capacity: the replicas
            # already starting will drain it (one 48-slot replica clears 600 short requests in seconds),
            # and any replica added now would be ready no sooner than them.
            return result(obs.current, "WaitingForFirstReplica",
                          f"{load}; {obs.current} replica(s) starting; deciding on throughput once one serves")
        if within_tolerance(obs.current, recommended, policy.tolerance):
            return result(obs.current, "WithinTolerance", f"{load}; {recommended} wanted is within tolerance")
        wanted = stabilise_up(recommended, state.history, now, policy.scale_up_window_s, obs.current)
        wanted = limit_scale_up(obs.current, wanted, policy.scale_up_rate, policy.scale_up_step)
        reason = "ScaleFromZero" if obs.current == 0 else "QueueAboveTarget" if slow >= fast else "GatewayLoad"
        if reason == "GatewayLoad":
            load = f"{obs.gateway_message}; Prometheus last saw {load}"
        fits = cap_at_pool_capacity(wanted, obs.current, obs.pool_capacity)
        if fits < wanted:
            return result(fits, "Unschedulable" if fits == obs.current else reason,
                          f"{load}; {wanted} wanted but the node pool holds at most {obs.pool_capacity} replica(s)")
        return result(wanted, reason, f"{load}; target {policy.target_queue:g} waiting per replica")
    if recommended == obs.current or within_tolerance(obs.current, recommended, policy.tolerance):
        return result(obs.current, "Steady", load)

    # Below the current size: every brake applies before anything is removed.
    window_full = now - since >= policy.scale_down_window_s
    wanted = stabilise_down(recommended, state.history, now, policy.scale_down_window_s)
    wanted = limit_scale_down(obs.current, wanted, policy.scale_down_rate)
    if obs.ready < obs.current:
        served = everything_served(waiting, obs.gateway_demand or 0.0, obs.ready, policy.max_concurrency)
        if not window_full or wanted >= obs.current or obs.ready == 0 or not served:
            return result(obs.current, "ReplicasStarting",
                          f"{load}; not removing capacity while {obs.current - obs.ready} replica(s) start")
        # Starting replicas the window no longer wants cost a GPU each until they are ready, then a window more:
        # a first wake that grew to 8 while its cold start was unknown served its backlog on the first 2 ready
        # and kept 6 starting for 40 s more. Only once everything is served, whatever a window of
        # recommendations sized for draining within a cold start says. The Deployment removes not-ready pods
        # first, and a ready one is never removed while others start.
        keep = max(wanted, obs.ready)
        return result(keep, "StartingNotNeeded",
                      f"{load}; {obs.current - keep} replica(s) still starting no longer needed: at most {wanted} "
                      f"wanted in the last {policy.scale_down_window_s:g}s")
    if not window_full:
        return result(obs.current, "WindowFilling",
                      f"{load}; observed for {now - since:.0f}s of the {policy.scale_down_window_s:g}s "
                      "scale-down window")
    if wanted >= obs.current:
        return result(obs.current, "Stabilising",
                      f"{load}; {wanted} wanted within the last {policy.scale_down_window_s:g}s")
    if wanted == 0:
        if policy.min_replicas > 0:
            return result(policy.min_replicas, "QueueBelowTarget", f"{load}; down to minReplicas")
        # Never active since we started watching: count idle time from then.
        active = state.last_active if state.last_active is not None else since
        idle_s = _idle_seconds(obs, state, policy)
        learned = _learned(state, policy, idle_s)
        if not idle_long_enough(active, now, idle_s):
            idle_for = now - active
            if obs.current == 1:
                return result(1, "WaitingForIdlePeriod",
                              f"idle for {idle_for:.0f}s of {idle_s:g}s before scaling to zero{learned}")
            return result(1, "QueueBelowTarget", f"{load}; keeping one replica until idle for {idle_s:g}s{learned}")
        return result(0, "IdleToZero", f"nothing waiting or running for {idle_s:g}s{learned}")
    return result(wanted, "QueueBelowTarget", f"{load}; target {policy.target_queue:g} waiting per replica")


def measured_at(obs: Observation, now: float, slow: int, fast: int) -> float:
    """When the demand behind a recommendation was seen, which is when the scale-down window starts counting: the
    engines' queue when Prometheus scraped it, the gateway's count now. A backlog gone at 80 s, scraped busy at
    78 s and idle at 93 s: the 60 s window counts from 78 s and ends at 138 s, not at 155 s (read at the 95 s
    tick). Only the date moves, never the figure: Mooncake x4 0.377 -> 0.355 GPU-h, code x4 0.418 -> 0.391, no
    miss changed (docs/simulator.md)."""
    return now - max(0.0, obs.queue_age_s) if slow > fast else now


def gateway_recommends(obs: Observation, policy: Policy) -> int:
    """Replicas for what the gateway sees (0 without a report): enough to serve the requests in flight and held
    within one cold start while requests keep arriving at the rate it counts. A replica added now serves only
    after a cold start, so a burst the replicas there will have served by then buys none (in a shared pool it
    would take a GPU another service waits for): 60 held 4 s requests on one 48-slot replica with a 60 s cold
    start drain in seconds -> 1; 20/s arriving is 80 busy slots -> 2. Without a request time (or a batch size)
    the requests themselves are the measure, as for the engines' queue."""
    if not obs.gateway_demand and not obs.gateway_rate:
        return 0
    slots = policy.max_concurrency
    if not (obs.request_s and slots > 0):
        return recommend(obs.gateway_demand or 0.0, 0, policy.target_queue, slots)
    horizon = obs.cold_start_s or UNKNOWN_COLD_START_S
    # A replica is full with its batch running and targetQueueDepth waiting, as the engines' queue is counted
    # (recommend): the two signals agree on what one replica holds.
    need = replicas_needed(obs.gateway_demand or 0.0, obs.gateway_rate, obs.request_s, horizon,
                           slots + policy.target_queue)
    whole = math.ceil(need - 1e-9)
    room = replicas_have_room(obs.gateway_demand or 0.0, obs.ready, slots)
    if obs.current and (room or need <= obs.current * (1 + policy.tolerance)):
        # Slots free in the replicas there (code x4: 0.435 -> 0.418 GPU-h, no miss changed), or within the
        # tolerance of what serves, as HPA judges its ratio before rounding: a second of 96 arrivals/s at 0.57 s a
        # request is 1.06 replicas of 52 places, which the one replica there absorbs in a second; rounded up to 2
        # it started a replica (a cold start of GPU time) that the engines' queue never asked for.
        return min(obs.current, whole)
    return whole


def _gateway_scale_up(obs: Observation, state: ScalerState, policy: Policy, now: float, fast: int) -> Decision:
    """Prometheus has no answer, the gateway sees more than the replicas hold: add what it asks for (the brakes
    on scaling up apply, and nothing is ever removed on its word)."""
    state = replace(_busy_again(obs, state, policy, now), last_active=now)
    if capacity_exhausted(obs.unschedulable):
        return Decision(obs.current, "Unschedulable", f"{obs.gateway_message}; {obs.unschedulable} replica(s) cannot "
                                                      "be scheduled (the node pool is full)", state, fast)
    wanted = clamp(limit_scale_up(obs.current, fast, policy.scale_up_rate, policy.scale_up_step),
                   policy.min_replicas, policy.max_replicas)
    wanted = max(obs.current, cap_at_pool_capacity(wanted, obs.current, obs.pool_capacity))
    if wanted <= obs.current:
        return _hold(obs, policy, state, "MetricsUnavailable", "no queue metrics; keeping the current replicas")
    return Decision(wanted, "GatewayLoad", f"{obs.gateway_message}; no queue metrics yet",
                    replace(state, last_scale=now), fast)


def _learned(state: ScalerState, policy: Policy, idle_s: float) -> str:
    if idle_s >= policy.idle_seconds:
        return ""
    gaps = ", ".join(f"{g:.0f}s" for g in state.idle_gaps)
    return (f" (adapted from idleSecondsBeforeZero {policy.idle_seconds:g}s: the last quiet gaps, {gaps}, "
            "were mostly longer than waiting pays for)")
