"""Where a cold start's seconds went, from the first ready replica's own status (the kubelet's timestamps).

  scheduling    pod created -> PodScheduled
  image_pull    PodScheduled -> the fetch container started, and the fetch's end -> the engine container
                started (the engine's image is pulled after the init container ran)
  weight_fetch  the fetch itself, as `tidal fetch-model` timed it (its termination message: 0 for a cache hit on
                the node), else the fetch container's run (0 for a pvc:// model); the rest of that
                container's run (the process starting) counts as image_pull
  engine_load   the engine started -> the pod Ready (loading the weights, compiling, warming up)
  ready         the rest of the operator's clock: the Deployment creating the pod, and the pod's readiness
                reaching the operator

The kubelet writes times to the second, so a short cold start's whole seconds can add up to more than it took:
they are then scaled to the total the operator measured, so the parts always sum to it (never negative). A pod without those times (not started by a kubelet) gets no
phases rather than invented ones.
"""

from __future__ import annotations

import re

from ..modelcache.layout import FETCH_CONTAINER
from .scaling_status import from_iso as _time

_FETCH_REPORT = re.compile(r"^(?:CacheHit|Fetched): ([0-9]+(?:\.[0-9]+)?) s\b")
PHASES = ("scheduling", "image_pull", "weight_fetch", "engine_load", "ready")
ENGINE_CONTAINER = "engine"


def _condition(pod: dict, type_: str) -> float | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return _time(cond.get("lastTransitionTime"))
    return None


def _container(pod: dict, key: str, name: str) -> dict:
    return next((c for c in (pod.get("status") or {}).get(key) or [] if c.get("name") == name), {})


def phases(pod: dict, total_s: float) -> dict[str, float] | None:
    """Seconds per phase of the cold start that `pod` ended (the operator timed it at `total_s`)."""
    created = _time((pod.get("metadata") or {}).get("creationTimestamp"))
    scheduled, ready = _condition(pod, "PodScheduled"), _condition(pod, "Ready")
    engine_state = _container(pod, "containerStatuses", ENGINE_CONTAINER).get("state") or {}
    engine_started = _time((engine_state.get("running") or {}).get("startedAt"))
    if None in (created, scheduled, ready, engine_started):
        return None
    fetched = (_container(pod, "initContainerStatuses", FETCH_CONTAINER).get("state") or {}).get("terminated") or {}
    fetch_start, fetch_end = _time(fetched.get("startedAt")), _time(fetched.get("finishedAt"))
    if fetch_start is not None and fetch_end is not None:
        ran = max(0.0, fetch_end - fetch_start)
        reported = fetch_seconds(fetched.get("message"))
        fetch = reported if reported is not None else ran
        pull = (fetch_start - scheduled) + (engine_started - fetch_end) + max(0.0, ran - fetch)
    else:
        pull, fetch = engine_started - scheduled, 0.0
    out = {"scheduling": max(0.0, scheduled - created), "image_pull": max(0.0, pull),
           "weight_fetch": max(0.0, fetch), "engine_load": max(0.0, ready - engine_started)}
    seen = sum(out.values())
    if seen > total_s:  # whole seconds can add up to more than a short cold start took: share it out
        out = {k: v * total_s / seen for k, v in out.items()}
    out["ready"] = max(0.0, total_s - sum(out.values()))
    return {k: round(v, 1) for k, v in out.items()}


def fetch_seconds(message: str | None) -> float | None:
    """The seconds a successful `tidal fetch-model` reported (`CacheHit: 0.004 s, ...`, `Fetched: 41.250 s, ...`)."""
    match = _FETCH_REPORT.match(message or "")
    return float(match.group(1)) if match else None


def ready_at(pod: dict) -> float:
    """When the pod became Ready (for picking the first of several)."""
    return _condition(pod, "Ready") or float("inf")


def summary(seconds: float, parts: dict[str, float]) -> str:
    """One line for the Event: `cold start of 92.0 s: scheduling 1 s, image pull 3 s, ...`."""
    named = ", ".join(f"{k.replace('_', ' ')} {parts[k]:g} s" for k in PHASES)
    return f"cold start of {seconds:.1f} s: {named}"
