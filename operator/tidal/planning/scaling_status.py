"""The autoscaler's part of an InferenceService's status.

lastActiveTime, lastScaleTime and recentIdleGaps are the autoscaler's memory that must survive a restart.
lastActiveTime is written exactly when a service goes idle (what the idle-to-zero rule counts
from), and while it stays busy only every max(15 s, idle period / 2): with 2,000 busy services and
a 120 s idle period that is 33 writes/s instead of 1,000. An operator that crashes while a service
is busy and restarts once it is idle may count the idle period from up to half of it too early;
the restart rule (no scale-down until the stabilisation window refilled) absorbs part of that.
"""

from __future__ import annotations

import datetime

from ..autoscaling import Decision, ScalerState
from .conditions import set_condition

ACTIVE_GRANULARITY_S = 15.0


def to_iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def from_iso(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def restored_state(status: dict) -> ScalerState:
    """What a (re)started operator knows about a service: only what status carried."""
    gaps = tuple(float(g) for g in status.get("recentIdleGaps") or () if isinstance(g, (int, float)))
    return ScalerState(last_active=from_iso(status.get("lastActiveTime")),
                       last_scale=from_iso(status.get("lastScaleTime")), idle_gaps=gaps)


def plan_scaling_status(current: dict, decision: Decision, previous_replicas: int, queue: float | None,
                        generation: int, now: float, report_condition: bool = True,
                        idle_seconds: float = 120.0, cold_start_s: float | None = None,
                        cold_start_phases: dict[str, float] | None = None) -> dict:
    out = dict(current)
    if cold_start_s is not None and current.get("lastColdStartSeconds") != round(cold_start_s, 1):
        out["lastColdStartSeconds"] = round(cold_start_s, 1)
        if cold_start_phases is None and current.get("lastColdStartPhases"):
            out["lastColdStartPhases"] = None  # an older cold start's: gone until this one's are known (merge patch)
    if cold_start_phases is not None and current.get("lastColdStartPhases") != cold_start_phases:
        out["lastColdStartPhases"] = cold_start_phases
    out["desiredReplicas"] = decision.replicas
    if queue is not None:
        out["queueDepth"] = round(queue)
    active = decision.state.last_active
    stored = from_iso(current.get("lastActiveTime"))
    if active is not None:
        went_idle = active < now and (stored is None or active - stored >= 1)
        stale = stored is None or active - stored >= max(ACTIVE_GRANULARITY_S, idle_seconds / 2)
        if went_idle or stale:
            out["lastActiveTime"] = to_iso(active)
    gaps = [round(g) for g in decision.state.idle_gaps]
    if gaps and current.get("recentIdleGaps") != gaps:  # changes at most once per quiet gap
        out["recentIdleGaps"] = gaps
    if decision.replicas != previous_replicas:
        out["lastScaleTime"] = to_iso(now)
        out["lastDecision"] = {"time": to_iso(now), "replicas": decision.replicas,
                               "previousReplicas": previous_replicas, "reason": decision.reason,
                               "message": decision.message}
    iso_now = to_iso(now)
    if not report_condition:
        return out
    if decision.reason in ("MetricsUnavailable", "QueryFailed"):
        conditions = set_condition(current.get("conditions") or [], "ScalingActive", "False", decision.reason,
                                   decision.message, generation, iso_now)
    else:
        conditions = set_condition(current.get("conditions") or [], "ScalingActive", "True", "MetricsAvailable",
                                   "scaling on the observed queue", generation, iso_now)
    # As the HPA's condition of that name: the autoscaler wants more than it can have.
    if decision.reason in ("Unschedulable", "QuotaExceeded"):
        conditions = set_condition(conditions, "ScalingLimited", "True", decision.reason, decision.message,
                                   generation, iso_now)
    elif any(c.get("type") == "ScalingLimited" for c in conditions):
        conditions = set_condition(conditions, "ScalingLimited", "False", "Schedulable",
                                   "every replica the autoscaler asks for can be scheduled", generation, iso_now)
    out["conditions"] = conditions
    return out
