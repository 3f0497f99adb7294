"""Each limit on a scaling decision as its own small function.

They are applied in order by `decide`: raw recommendation -> tolerance band -> stabilisation
windows -> rate limits -> idle-to-zero -> clamp to [min, max].
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def recommend(waiting: float, running: float, target_queue: float, max_concurrency: float) -> int:
    """Replicas the load asks for: enough that each holds at most `target_queue` waiting requests,
    and never fewer than the running requests need. 10 waiting at target 4 -> 3; 100 running at
    48 per replica -> 3."""
    by_queue = math.ceil(waiting / target_queue) if waiting > 0 else 0
    by_running = math.ceil(running / max_concurrency) if running > 0 else 0
    return max(by_queue, by_running)


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
