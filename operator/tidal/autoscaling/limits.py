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


# Below this KV-cache usage a replica's few requests say too little about what a full cache holds.
MIN_KV_USAGE = 0.1


def batch_that_fits(batch: float, running: float, ready: int, kv_usage: float | None) -> float:
    """Requests one replica holds at once: its batch (--max-num-seqs), or fewer when its KV cache fills first, as
    with long prompts. 104 running on 8 replicas whose caches are 95 % full: 13 / 0.95 -> 13 a replica, not 48,
    so 300 waiting ask for ceil(404 / (13 + 4)) = 24 replicas, where counting 48 places asked for the 8 there."""
    if batch <= 0 or ready <= 0 or running <= 0 or kv_usage is None or kv_usage < MIN_KV_USAGE:
        return batch
    return max(1, min(batch, math.floor(running / ready / min(1.0, kv_usage))))


def batch_that_runs(batch: float, waiting: float, running: float, engines: int | None) -> float:
    """Requests one replica runs at once when its engine leaves requests waiting with room in its batch: what it
    runs. An engine admits a request only while its step's token budget and KV cache allow, so a replica busy
    prefilling long prompts runs a few and queues the rest: 8 engines running 40 between them with 120 waiting
    run 5 each, and (120 + 40) / (5 + 4 waiting at target 4) asks for 18 replicas where 48 places asked for 4.
    `engines`: the replicas whose gauges the scrape summed (the replicas ready now may be more, and would
    understate it). Waiting only when every batch is full, as with short prompts, changes nothing."""
    if batch <= 0 or not engines or waiting <= 0 or running <= 0:
        return batch
    return max(1, min(batch, math.floor(running / engines)))


def first_wake_backlog(held: float, waking: bool) -> float:
    """What a service's first wake expects to be waiting when its replicas are ready. Nobody has measured its
    cold start: the even bet on a duration known only to exceed what has passed is as long again (a wake 20 s
    old ends before 40 s as likely as after), and requests keep arriving as they have on average since the wake
    began, so as many again arrive as it holds: 100 held -> 200. At the wake itself, only what is held, so one
    request wakes one replica. Counting the held alone grew the first wake of a surge slower than Knative's
    panic mode (Mooncake x4: 8 replicas 24.8 s in, KPA 22 s); counting the rate of the moment instead of the
    average, a burst late in a quiet wake asked for four times the replicas it needed (code x4, maxReplicas
    64: 0.880 GPU-h, KPA 0.590)."""
    return 2 * held if waking else held


def expected_backlog(held: float, arrivals_per_s: float, cold_start_s: float | None) -> float:
    """What will be waiting when a replica started now is ready: what is held plus what arrives during
    its cold start. 100 held, arriving at 20/s, a 20 s cold start -> 500 (at 8 + 4 per replica: 42
    replicas, not the 9 that the 100 held alone would ask for). An unknown cold start counts as none (a first
    wake uses first_wake_backlog)."""
    return held + max(0.0, arrivals_per_s) * max(0.0, cold_start_s or 0.0)


def replicas_to_drain(backlog: float, arrivals_per_s: float, request_s: float, horizon_s: float,
                      slots: float) -> int:
    """Replicas that serve `backlog` within `horizon_s` while requests keep arriving, each completing
    slots / request_s requests a second. 600 waiting, drained over a 60 s cold start while 5/s arrive, at
    8 s a request and 48 slots: (600 / 60 + 5) x 8 / 48 = 2.5 -> 3 (where one slot per request is 12)."""
    return math.ceil(replicas_needed(backlog, arrivals_per_s, request_s, horizon_s, slots) - 1e-9)


def replicas_needed(backlog: float, arrivals_per_s: float, request_s: float, horizon_s: float, slots: float) -> float:
    """replicas_to_drain before rounding up: 2.5 in its example."""
    return (backlog / horizon_s + max(0.0, arrivals_per_s)) * request_s / slots


def replicas_have_room(demand: float, ready: int, slots: float) -> bool:
    """Whether the ready replicas have a free slot for everything the gateway sees in flight and held. Then they
    absorb what arrives, and a rate counted over a second or two is no reason to start a replica that serves
    only a cold start later: 27 in flight on one replica of 48 slots during a moment of 74/s is room (a replica
    started for that blip was ready 60 s after it ended). A sustained rise fills the slots within seconds —
    60 in flight on two replicas of 48 at 40/s: full one second later — and then scales up."""
    return demand < ready * slots


def everything_served(waiting: float, gateway_demand: float, ready: int, slots: float) -> bool:
    """Nothing waits (engines' queues, the gateway's hold, a batch) and the ready replicas have a place for all
    the gateway has in flight: whatever replicas still starting were started for has been served. 800 requests
    queued behind the first ready replica of 32 starting have not."""
    return waiting == 0 and replicas_have_room(gateway_demand, ready, slots)


def too_late_to_help(since_wake_s: float, backlog: float, arrivals_per_s: float, request_s: float | None,
                     slots: float, starting: int) -> bool:
    """A replica added during a wake is ready a cold start after it is added, `since_wake_s` after the
    replicas already starting. It helps only if they have not yet served the backlog by then. 2 replicas
    of 48 slots at 2 s a request serve 48/s; with 20/s arriving, 671 waiting take 671 / 28 = 24 s: a
    replica added 55 s into the wake would be ready 31 s after the backlog is gone and cost a cold start
    of GPU time for nothing; one added 5 s in shortens the drain. Unknown request time: no verdict."""
    if not request_s or slots <= 0 or starting <= 0:
        return False
    spare = starting * slots / request_s - max(0.0, arrivals_per_s)
    return spare > 0 and since_wake_s >= backlog / spare


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


GAPS_KEPT = 2  # the service's last quiet gaps, which its idle period learns from (kept in status)


def remember_gap(gaps: tuple[float, ...], gap_s: float, kept: int = GAPS_KEPT) -> tuple[float, ...]:
    """The last `kept` quiet gaps, newest last, in whole seconds."""
    return (*gaps, float(round(gap_s)))[-kept:]


def adapted_idle_seconds(gaps: tuple[float, ...], longest_s: float, shortest_s: float,
                         needed: int = GAPS_KEPT) -> float:
    """How long to keep an idle replica before zero. The spec's idle period bridges the gaps shorter
    than it; when each of the service's last `needed` quiet gaps outlasted it, waiting bought nothing
    but idle GPU time (each gap ended in a cold start anyway): then wait only `shortest_s`. Four
    2-minute bursts 15 minutes apart with 300 s written: after the second, each burst's replica stops
    60 s after it instead of 300 s. One gap is not enough: on a fleet of 50 services built from a real
    trace, learning from the last gap alone cost 26 more cold starts and 14 % more SLO misses at the
    same GPU time, as a long gap was followed by short ones (`tidal simulate --fleet 50`)."""
    recent = gaps[-needed:]
    if len(recent) < needed or min(recent) <= longest_s:
        return longest_s
    return min(shortest_s, longest_s)


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


def spare_beyond_reserve(capacity: int | None, current: int, reserve: int) -> int:
    """Replicas a service may add in its pool beyond the room kept for the services at zero (one replica each to
    wake into): a pool of 64 with 40 taken and 10 services asleep has 14 to spare; None capacity is a pool of
    unknown size, taken as room enough (a service alone, or outside any pool Tidal counts)."""
    if capacity is None:
        return 1 << 30
    return max(0, capacity - current - reserve)
