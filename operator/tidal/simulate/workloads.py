"""Workloads beyond one trace, to check that nothing is tuned to it: the trace faster (time compressed),
bursts from zero (long idle, then a surge), a fleet of services built from the trace (shifted and
scaled), and the requests `make demo` sends. Deterministic for a seed."""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import replace

from .trace import Request


def rate_scaled(requests: list[Request], factor: float) -> list[Request]:
    """The same requests `factor` times faster: the arrival rate times `factor`, the same work per request."""
    if factor <= 0:
        raise ValueError(f"rate scale must be positive, got {factor}")
    return [replace(r, arrival=r.arrival / factor) for r in requests]


def _surge(rng: random.Random, sizes_from: list[Request], start: float, end: float, rate_per_s: float,
           out: list[Request]) -> float:
    """Poisson arrivals at `rate_per_s` from `start` until `end`, sizes drawn from `sizes_from`, appended to
    `out`; returns `end`."""
    t = start
    while True:
        t += rng.expovariate(rate_per_s)
        if t >= end:
            return end
        size = rng.choice(sizes_from)
        out.append(Request(t, size.input_tokens, size.output_tokens))


def bursts_from_zero(sizes_from: list[Request], bursts: int = 4, idle_s: float = 900.0, surge_s: float = 120.0,
                     rate_per_s: float = 20.0, seed: int = 0) -> list[Request]:
    """`bursts` surges of `surge_s` seconds at `rate_per_s` (Poisson), each after `idle_s` of nothing — long
    enough for any policy to have gone to zero. Request sizes are drawn from `sizes_from` (the real trace)."""
    rng = random.Random(seed)
    out, t = [], 0.0
    for _ in range(bursts):
        t += idle_s
        t = _surge(rng, sizes_from, t, t + surge_s, rate_per_s, out)
    return out


def varied_bursts(sizes_from: list[Request], bursts: int = 10, seed: int = 0) -> list[Request]:
    """`bursts` surges of 20-300 s at 0.5-30 req/s (Poisson), each after a quiet of 20 s to 30 minutes
    drawn from a ladder (20, 45, 90, 200, 400, 900, 1800 s): gaps shorter and longer than any idle period,
    in no order a policy could learn. Request sizes from `sizes_from`."""
    rng = random.Random(seed)
    out, t = [], 0.0
    for _ in range(bursts):
        t += rng.choice([20.0, 45.0, 90.0, 200.0, 400.0, 900.0, 1800.0])
        end, rate = t + rng.uniform(20.0, 300.0), rng.uniform(0.5, 30.0)
        t = _surge(rng, sizes_from, t, end, rate, out)
    return out


def fleet(trace: list[Request], services: int = 50, seed: int = 0) -> list[list[Request]]:
    """`services` traces from one: each shifted in time (wrapped around the trace's length) and thinned or
    thickened (a rate scale between 0.25x and 2x, by keeping or repeating requests), so that the services
    peak at different times and differ in size."""
    rng = random.Random(seed)
    length = trace[-1].arrival + 1.0
    out = []
    for _ in range(services):
        shift, scale = rng.uniform(0, length), rng.choice([0.25, 0.5, 1.0, 1.0, 1.5, 2.0])
        picked = []
        for r in trace:
            copies = int(scale) + (1 if rng.random() < scale - int(scale) else 0)
            for c in range(copies):
                picked.append(replace(r, arrival=(r.arrival + shift + c * 0.37) % length))
        picked.sort(key=lambda r: r.arrival)
        out.append(picked)
    return out


# `make demo` replays this slice of the trace, this many times faster (its --short run: 150-210 s).
DEMO_WINDOW_S, DEMO_SHORT_WINDOW_S, DEMO_SPEEDUP = (120.0, 480.0), (150.0, 210.0), 4.0
DEMO_WARMUP_REQUESTS = 20


def demo_slice(trace: list[Request], short: bool = False) -> list[Request]:
    """The requests of `make demo`'s burst, as sent: the window's arrivals from 0, `DEMO_SPEEDUP` times faster."""
    start, end = DEMO_SHORT_WINDOW_S if short else DEMO_WINDOW_S
    chosen = [r for r in trace if start <= r.arrival < end]
    if not chosen:
        raise ValueError(f"the trace has no requests between {start:g} s and {end:g} s, which the demo replays")
    first = chosen[0].arrival
    return [replace(r, arrival=(r.arrival - first) / DEMO_SPEEDUP) for r in chosen]


def demo_replay(trace: list[Request], quiet_s: float = 300.0) -> list[Request]:
    """What `make demo` sends a service at zero: its warm-up (the first 20 requests of the burst, so the
    gateway knows the model's request time, as for any service that served before), `quiet_s` of nothing
    (the demo waits for zero), then the burst."""
    burst = demo_slice(trace)
    warmup = burst[:DEMO_WARMUP_REQUESTS]
    restart = warmup[-1].arrival + quiet_s
    return warmup + [replace(r, arrival=r.arrival + restart) for r in burst]


def by_adapter(trace: list[Request], shares: list[float], seed: int = 0) -> list[list[Request]]:
    """The trace's requests dealt to LoRA adapters by share (50,30,20: half to the first): one trace per adapter. The
    turns of one conversation (requests whose first prompt block is the same, in Mooncake's traces) go to one
    adapter, as a chat stays with its fine-tune."""
    total = sum(shares)
    if not shares or total <= 0 or any(s < 0 for s in shares):
        raise ValueError(f"adapter shares must be positive numbers, not {shares}")
    edges = list(itertools.accumulate(s / total for s in shares))
    out: list[list[Request]] = [[] for _ in shares]
    for n, r in enumerate(trace):
        draw = random.Random(f"{seed}:{r.blocks[0] if r.blocks else n}").random()
        out[min(bisect.bisect_right(edges, draw), len(shares) - 1)].append(r)
    return out
