"""Workloads beyond one trace, to check that nothing is tuned to it: the trace faster (time compressed),
bursts from zero (long idle, then a surge), and a fleet of services built from the trace (shifted and
scaled). Deterministic for a seed."""

from __future__ import annotations

import random

from .trace import Request


def rate_scaled(requests: list[Request], factor: float) -> list[Request]:
    """The same requests `factor` times faster: the arrival rate times `factor`, the same work per request."""
    if factor <= 0:
        raise ValueError(f"rate scale must be positive, got {factor}")
    return [Request(r.arrival / factor, r.input_tokens, r.output_tokens) for r in requests]


def bursts_from_zero(sizes_from: list[Request], bursts: int = 4, idle_s: float = 900.0, surge_s: float = 120.0,
                     rate_per_s: float = 20.0, seed: int = 0) -> list[Request]:
    """`bursts` surges of `surge_s` seconds at `rate_per_s` (Poisson), each after `idle_s` of nothing — long
    enough for any policy to have gone to zero. Request sizes are drawn from `sizes_from` (the real trace)."""
    rng = random.Random(seed)
    out, t = [], 0.0
    for _ in range(bursts):
        t += idle_s
        end = t + surge_s
        while True:
            t += rng.expovariate(rate_per_s)
            if t >= end:
                break
            size = rng.choice(sizes_from)
            out.append(Request(t, size.input_tokens, size.output_tokens))
        t = end
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
                picked.append(Request((r.arrival + shift + c * 0.37) % length, r.input_tokens, r.output_tokens))
        picked.sort(key=lambda r: r.arrival)
        out.append(picked)
    return out
