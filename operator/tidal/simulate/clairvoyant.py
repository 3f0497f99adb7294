"""A clairvoyant replica schedule: the cheapest one that knows every arrival in advance, serves every
request the moment it arrives, and pays the same cold starts and per-replica capacity as the policies.

It says how good a policy could be (the "physical limit" — every slot always busy — cannot be reached by
anything that has to start replicas). Built per replica, as the issue that asked for it describes:

1. the concurrency the trace needs at each second, if each request is served as it arrives (a sweep over
   start/end events; its maximum within the second);
2. replicas needed at that second = ceil(concurrency / slots per replica);
3. replica k runs wherever k or more are needed; across a gap between its runs it stays up if the gap is
   shorter than a cold start (staying costs the gap), otherwise it stops and is launched again one cold
   start before the work returns (costing the cold start); its first launch costs a cold start too.

Worked example, cold start 60 s: a replica needed for 10 s, then idle 40 s, then needed 10 s costs
60 + 10 + 40 + 10 = 120 s; with a 300 s gap instead, 60 + 10 + 60 + 10 = 140 s.
"""

from __future__ import annotations

import math

from .latency import LatencyModel
from .trace import Request


def needed_per_second(requests: list[Request], latency: LatencyModel) -> list[int]:
    """Replicas needed in each second of the trace to start every request on arrival."""
    events = []
    for r in requests:
        end = r.arrival + latency.service_time(r.input_tokens, r.output_tokens)
        events.append((r.arrival, 1))
        events.append((end, -1))
    events.sort(key=lambda e: (e[0], e[1]))  # ends before starts at the same instant
    if not events:
        return []
    seconds = int(math.ceil(events[-1][0])) + 1
    peak = [0] * seconds
    level = 0
    for i, (t, delta) in enumerate(events):
        level += delta
        if i + 1 < len(events) and events[i + 1][0] == t:
            continue  # the level between events at one instant is no real state (two ends at t=10)
        b = min(seconds - 1, int(t))
        peak[b] = max(peak[b], level)
    # A second in which nothing started or ended still carries what was running through it.
    level, i = 0, 0
    for b in range(seconds):
        while i < len(events) and events[i][0] <= b:
            level += events[i][1]
            i += 1
        peak[b] = max(peak[b], level)
    slots = latency.max_concurrency
    return [math.ceil(c / slots) for c in peak]


def clairvoyant_hours(requests: list[Request], latency: LatencyModel, cold_start_s: float) -> float:
    """GPU-replica-hours of the clairvoyant schedule (one GPU per replica, as the simulator counts)."""
    needed = needed_per_second(requests, latency)
    total = 0.0
    for k in range(1, max(needed, default=0) + 1):
        runs = _runs([n >= k for n in needed])
        total += cold_start_s  # its first launch
        for i, (start, end) in enumerate(runs):
            total += end - start
            if i + 1 < len(runs):
                gap = runs[i + 1][0] - end
                total += min(gap, cold_start_s)
    return total / 3600


def _runs(active: list[bool]) -> list[tuple[int, int]]:
    """[start, end) of each stretch of True."""
    out, start = [], None
    for i, on in enumerate(active):
        if on and start is None:
            start = i
        elif not on and start is not None:
            out.append((start, i))
            start = None
    if start is not None:
        out.append((start, len(active)))
    return out
