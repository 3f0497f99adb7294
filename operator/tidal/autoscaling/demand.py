"""What the activator measures of a service's demand for a wake-up: how fast held requests arrive,
and how long a request keeps a slot.

A wake-up is sized for what will be waiting when its replicas are ready: what is held now plus what
arrives during the cold start. The rate is a count over a fixed window, divided by the whole window
even before the window has passed, so that two requests a few milliseconds apart read as 2 per 5 s
(0.4/s), not as 100/s: early evidence under-estimates, and the estimate grows as the burst goes on.
"""

from __future__ import annotations

from collections import deque

WINDOW_S = 5.0


class ArrivalRate:
    """Arrivals per second over the last `window_s` seconds; memory bounded by the arrivals in one window
    (or by `max_kept`: past that many the oldest are dropped, and the rate reads as a floor)."""

    def __init__(self, window_s: float = WINDOW_S, max_kept: int = 100_000):
        self.window_s, self.max_kept = window_s, max_kept
        self._times: deque[float] = deque()

    def add(self, now: float) -> None:
        self._forget_before(now)
        self._times.append(now)
        if len(self._times) > self.max_kept:
            self._times.popleft()

    def per_second(self, now: float) -> float:
        self._forget_before(now)
        return len(self._times) / self.window_s

    def _forget_before(self, now: float) -> None:
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()

    def __len__(self) -> int:
        return len(self._times)


class RequestTime:
    """A moving average of how long requests take (alpha 0.2: about the last ten count); None until the
    first. It outlives the replicas: at the next wake-up it is the best guess of the service's requests."""

    def __init__(self, alpha: float = 0.2):
        self.alpha, self.seconds = alpha, None

    def add(self, seconds: float) -> None:
        self.seconds = seconds if self.seconds is None else self.seconds + self.alpha * (seconds - self.seconds)
