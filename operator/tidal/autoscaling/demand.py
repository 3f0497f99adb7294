"""What the activator measures of a service's demand for a wake-up: how fast held requests arrive,
and how long a request keeps a slot.

A wake-up is sized for what will be waiting when its replicas are ready: what is held now plus what
arrives during the cold start. The rate is the count over the last 5 s divided by the time those
arrivals span, but by no less than 3 s: 60 requests held in the first 3 s of a surge read as 20/s, not as
the 12/s of a window the surge has not filled yet, and two requests a few milliseconds apart as 0.67/s,
not 100/s. Dividing by the whole window from the start made `make demo`'s wake-up ask for its six
replicas a tick later: `tidal simulate --workload demo` waited 13.8 s at p50 with the window, 12.8 s. On
`--workload varied` (seeds 0-5 at cold starts of 30, 60 and 120 s: 18 runs) none missed more, and together
they took 1.1 % less GPU time and 3 % fewer cold starts. A 2 s floor cost `--workload bursts` 6 % more GPU
time (40 arrivals in 2 s are 20/s +- 3: a fourth replica where three serve).
"""

from __future__ import annotations

from collections import deque

WINDOW_S = 5.0
SHORTEST_SPAN_S = 3.0  # a few requests close together are not yet a rate


class ArrivalRate:
    """Arrivals per second over the last `window_s` seconds (over the time they span, at least
    `shortest_span_s`); memory bounded by the arrivals in one window (or by `max_kept`: past that many the
    oldest are dropped, and the rate reads as a floor)."""

    def __init__(self, window_s: float = WINDOW_S, max_kept: int = 100_000, shortest_span_s: float = SHORTEST_SPAN_S):
        self.window_s, self.max_kept, self.shortest_span_s = window_s, max_kept, shortest_span_s
        self._times: deque[float] = deque()

    def add(self, now: float) -> None:
        self._forget_before(now)
        self._times.append(now)
        if len(self._times) > self.max_kept:
            self._times.popleft()

    def per_second(self, now: float) -> float:
        self._forget_before(now)
        if not self._times:
            return 0.0
        span = min(self.window_s, max(self.shortest_span_s, now - self._times[0]))
        return len(self._times) / span

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
