"""Cold starts as the operator times them: from the decision that takes a service from zero replicas to
its first ready replica (scheduling, image pull, model load, engine start).

Each wake-up's is observed in `tidal_cold_start_seconds`, and the last one per service sizes the next
wake-up (what arrives during a cold start is waiting when it ends). A new service's first replica, the
one its Deployment is created with, is timed too (its first wake-up then knows what one costs) but not
observed: the metric counts wake-ups, as the gateway's does. It is also written to the service's
status.lastColdStartSeconds, so a restarted operator sizes its first wake-up as the old one would have.
"""

from __future__ import annotations

from . import metrics

Key = tuple[str, str]


class ColdStarts:
    def __init__(self) -> None:
        self._since: dict[Key, float] = {}  # monotonic time of each service's scale-from-zero decision
        self._last: dict[Key, float] = {}
        self._launches: set[Key] = set()  # clocks started by a Deployment's creation, not by a wake-up

    def begun(self, key: Key, now: float, wake_up: bool = True) -> None:
        if key not in self._since:
            self._since[key] = now
            if not wake_up:
                self._launches.add(key)

    def abandoned(self, key: Key) -> None:
        """Back to zero before any replica was ready: that wake-up never completed."""
        self._since.pop(key, None)
        self._launches.discard(key)

    def replicas_ready(self, key: Key, ready: int, now: float) -> None:
        if ready > 0 and key in self._since:
            took = now - self._since.pop(key)
            self._last[key] = took
            if key in self._launches:
                self._launches.discard(key)
            else:
                metrics.COLD_START.labels(*key).observe(took)

    def last(self, key: Key, status: dict | None = None) -> float | None:
        """The last measured cold start; after a restart, the one status kept."""
        if key in self._last:
            return self._last[key]
        kept = (status or {}).get("lastColdStartSeconds")
        return float(kept) if isinstance(kept, (int, float)) and kept >= 0 else None

    def forget(self, key: Key) -> None:
        self._since.pop(key, None)
        self._launches.discard(key)
        self._last.pop(key, None)
