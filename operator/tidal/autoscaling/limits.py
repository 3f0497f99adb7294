"""Each limit on a scaling decision as its own small function.

They are applied in order by `decide`: raw recommendation -> tolerance band -> stabilisation
windows -> rate limits -> idle-to-zero -> clamp to [min, max].
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def recommend(waiting: float, running: float, target_queue: float, max_concurrency: float) -> int:
    """Replicas for the work in the system: each runs its full batch (`max_concurrency` requests, the
    engine's --max-num-seqs) and holds at most `target_queue` waiting. 40 running + 20 waiting at 48 per
    batch and 4 waiting -> ceil(60 / 52) = 2. A burst shorter than one batch per replica drains in about
    one request's service time (seconds), long before a new replica could load its model, so it does
    not buy one. For engines without an in-flight gauge (Triton) or a custom query, max_concurrency is 0
    and this is ceil(queue / target): 10 waiting at target 4 -> 3."""
    demand = waiting + running
    return math.ceil(demand / (max_concurrency + target_queue)) if demand > 0 else 0


def expected_backlog(held: float, arrivals_per_s: float, cold_start_s: float | None) -> float:
    """What will be waiting when a replica started now is ready: what is held plus what arrives during
    its cold start. 100 held, arriving at 20/s, a 20 s cold start -> 500 (at 8 + 4 per replica: 42
    replicas, not the 9 that the 100 held alone would ask for). An unknown cold start (the service
    never woke before) counts as none: the wake-up then grows with the held requests, call by call."""
    return held + max(0.0, arrivals_per_s) * max(0.0, cold_start_s or 0.0)


def replicas_to_drain(backlog: float, arrivals_per_s: float, request_s: float, horizon_s: float,
                      slots: float) -> int:
    """Replicas that serve `backlog` within `horizon_s` while requests keep arriving, each completing
    slots / request_s requests a second. 600 waiting, drained over a 60 s cold start while 5/s arrive, at
    8 s a request and 48 slots: (600 / 60 + 5) x 8 / 48 = 2.5 -> 3 (where one slot per request is 12)."""
    return math.ceil((backlog / horizon_s + max(0.0, arrivals_per_s)) * request_s / slots - 1e-9)


def within_tolerance(current: int, recommended: int, tolerance: float) -> bool:
    """True when the change is too small to act on: 10 replicas and a recommendation of 11 is 10%."""
    if current == 0 or recommended == 0:
        return current == recommended
    return abs(recommended / current - 1.0) <= tolerance + 1e-9  # 11/10 - 1 is 0.10000000000000009


def stabilise_down(recommended: int, history: Iterable[tuple[float, int]], now: float, window_s: float) -> int:
    """Scale down only to the highest recommendation of the last `window_s` seconds (HPA's rule), so a
    lull of a few seconds does not cost a cold start a moment later."""
    recent = [r for t, r in history if now - t <= window_s]
    return max([recommended, *recent])


def stabilise_up(recommended: int, history: Iterable[tuple[float, int]], now: float, window_s: float,
                 current: int) -> int:
    """Scale up only to the lowest recommendation of the last `window_s` seconds (0: at once)."""
    if window_s <= 0:
        return recommended
    recent = [r for t, r in history if now - t <= window_s]
    return max(current, min([recommended, *recent]))


def limit_scale_up(current: int, desired: int, rate: float, step: int) -> int:
    """At most max(current * rate, current + step) replicas in one decision."""
    return min(desired, max(math.ceil(current * rate), current + step))


def limit_scale_down(current: int, desired: int, rate: float) -> int:
    """At least current / rate replicas in one decision (to zero only through the idle rule)."""
    if desired >= current:
        return desired
    return max(desired, math.floor(current / rate), 1 if desired > 0 else 0)


def idle_long_enough(last_active: float | None, now: float, idle_s: float) -> bool:
    """Zero replicas only after `idle_s` seconds with nothing waiting or running."""
    return last_active is not None and now - last_active >= idle_s


def clamp(desired: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, desired))


def capacity_exhausted(unschedulable: int) -> bool:
    """No scale-up while a replica already waits for a node: with a full pool, each added replica would
    also wait (a 4-node x 8-GPU pool holds four 8-GPU replicas; asking for 8 leaves 4 Pending forever)."""
    return unschedulable > 0


def cap_at_pool_capacity(wanted: int, current: int, capacity: int | None) -> int:
    """Never ask for more replicas than the pool could hold even if empty (4 nodes x 8 GPUs hold four
    8-GPU replicas: asking for 6 leaves 2 Pending); never removes replicas that already exist."""
    if capacity is None or wanted <= capacity:
        return wanted
    return max(capacity, min(current, wanted))
