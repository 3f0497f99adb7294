"""What the gateway tells the operator when it wakes a service: how many requests it holds, how fast
they arrive, and how long the service's requests took lately (so the operator can size the wake-up
for the surge, not for the first request). Measured here because only the gateway sees a request
before any replica exists.
"""

from __future__ import annotations

from ..autoscaling.demand import ArrivalRate, RequestTime

Key = tuple[str, str]
MAX_SERVICES = 10_000  # a path may name any service: the made-up ones must not grow memory without end


class Demand:
    def __init__(self) -> None:
        self._arrivals: dict[Key, ArrivalRate] = {}  # held requests only: the wake-up call's rate
        self._times: dict[Key, RequestTime] = {}
        self._all: dict[Key, ArrivalRate] = {}  # every request: the load report's rate (load_report.py)

    def arrived(self, key: Key, now: float) -> None:
        """A request for a service reached the gateway (held or not)."""
        if key not in self._all and len(self._all) >= MAX_SERVICES:
            del self._all[next(iter(self._all))]
        # 5,000 kept: a service at 1,000/s over the 5 s window; past that the rate reads as a floor.
        self._all.setdefault(key, ArrivalRate(max_kept=5_000)).add(now)

    def arriving(self, now: float) -> dict[Key, float]:
        """Arrivals per second of every service with an arrival in the window (the others are forgotten)."""
        out = {}
        for key in list(self._all):
            rate = self._all[key].per_second(now)
            if rate > 0:
                out[key] = rate
            else:
                del self._all[key]
        return out

    def request_seconds(self, key: Key) -> float | None:
        took = self._times.get(key)
        return took.seconds if took is not None else None

    def held(self, key: Key, now: float) -> None:
        """A request was held because the service has no replica."""
        if key not in self._arrivals and len(self._arrivals) >= MAX_SERVICES:
            del self._arrivals[next(iter(self._arrivals))]
        self._arrivals.setdefault(key, ArrivalRate()).add(now)

    def served(self, key: Key, seconds: float) -> None:
        """A replica answered a request in `seconds` (to the last byte). Only for services that answer."""
        if key not in self._times and len(self._times) >= MAX_SERVICES:
            del self._times[next(iter(self._times))]
        self._times.setdefault(key, RequestTime()).add(seconds)

    def wake_call(self, key: Key, pending: int, now: float) -> dict:
        rate = self._arrivals.get(key)
        per_second = rate.per_second(now) if rate is not None else 0.0
        if rate is not None and not len(rate):
            del self._arrivals[key]
        body = {"pending": pending, "arrival_rate": round(per_second, 3)}
        took = self._times.get(key)
        if took is not None and took.seconds is not None:
            body["request_seconds"] = round(took.seconds, 3)
        return body

    def forget(self, key: Key) -> None:
        self._all.pop(key, None)
        self._arrivals.pop(key, None)
        self._times.pop(key, None)
