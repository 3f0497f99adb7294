"""Cold starts as the operator times them: from the decision that takes a service from zero replicas to
its first ready replica (scheduling, image pull, model load, engine start).

Each is observed in `tidal_cold_start_seconds`, and the last one per service sizes the next wake-up
(what arrives during a cold start is waiting when it ends). It is also written to the service's
status.lastColdStartSeconds, so a restarted operator sizes its first wake-up as the old one would have.
"""

from __future__ import annotations

from . import metrics

Key = tuple[str, str]


class ColdStarts:
    def __init__(self) -> None:
        self._since: dict[Key, float] = {}  # monotonic time of each service's scale-from-zero decision
        self._last: dict[Key, float] = {}

    def begun(self, key: Key, now: float) -> None:
        self._since.setdefault(key, now)

    def abandoned(self, key: Key) -> None:
        """Back to zero before any replica was ready: that wake-up never completed."""
        self._since.pop(key, None)

    def replicas_ready(self, key: Key, ready: int, now: float) -> None:
        if ready > 0 and key in self._since:
            took = now - self._since.pop(key)
            self._last[key] = took
            metrics.COLD_START.labels(*key).observe(took)

    def last(self, key: Key, status: dict | None = None) -> float | None:
        """The last measured cold start; after a restart, the one status kept."""
        if key in self._last:
            return self._last[key]
        kept = (status or {}).get("lastColdStartSeconds")
        return float(kept) if isinstance(kept, (int, float)) and kept >= 0 else None

    def forget(self, key: Key) -> None:
        self._since.pop(key, None)
        self._last.pop(key, None)
