"""Cold starts as the operator times them: from the decision that takes a service from zero replicas to
its first ready replica (scheduling, image pull, model load, engine start).

Each wake-up's is observed in `tidal_cold_start_seconds`, and its phases (from the first ready replica's status:
scheduling, image pull, weight fetch, engine load, ready) in `tidal_cold_start_phase_seconds{phase}`,
`status.lastColdStartPhases` and a `ColdStart` Event; and the last one per service sizes the next
wake-up (what arrives during a cold start is waiting when it ends). A new service's first replica, the
one its Deployment is created with, is timed too (its first wake-up then knows what one costs) but not
observed: the metric counts wake-ups, as the gateway's does. It is also written to the service's
status.lastColdStartSeconds, so a restarted operator sizes its first wake-up as the old one would have.
"""

from __future__ import annotations

from . import metrics

Key = tuple[str, str]
# A cold start whose first ready pod did not show its times yet is explained again on the ticks, for this long (at a
# 2 s tick, 15 more pod lists at most; a pod that never shows them, not started by a kubelet, is given up on).
EXPLAIN_WITHIN_S = 30.0


class ColdStarts:
    def __init__(self) -> None:
        self._since: dict[Key, float] = {}  # monotonic time of each service's scale-from-zero decision
        self._last: dict[Key, float] = {}
        self._launches: set[Key] = set()  # clocks started by a Deployment's creation, not by a wake-up
        self._phases: dict[Key, dict[str, float]] = {}
        self._unexplained: dict[Key, tuple[float, float]] = {}  # (its seconds, when it ended)

    def begun(self, key: Key, now: float, wake_up: bool = True) -> bool:
        """A clock starts unless one runs already; True when this started it."""
        if key in self._since:
            return False
        self._since[key] = now
        if not wake_up:
            self._launches.add(key)
        return True

    def scaling(self, key: Key, current: int, replicas: int, now: float) -> bool:
        """Before the write that scales `current` -> `replicas`. A wake-up's clock starts here, not after: the
        watch can bring its first ready replica before the write returns (a replica scaled away a moment ago
        and not yet deleted is ready at once), and a clock started after that would never stop. True when
        this started a clock."""
        if current == 0:
            return self.begun(key, now)
        if replicas == 0:
            self.abandoned(key)
        return False

    def not_scaled(self, key: Key, started: bool) -> None:
        """The write failed: the clock it started times nothing."""
        if started:
            self.abandoned(key)

    def abandoned(self, key: Key) -> None:
        """Back to zero before any replica was ready: that wake-up never completed."""
        self._since.pop(key, None)
        self._launches.discard(key)

    def replicas_ready(self, key: Key, ready: int, now: float) -> float | None:
        """The cold start's seconds when this ends one (a wake-up's or a new service's first replica)."""
        if ready > 0 and key in self._since:
            took = now - self._since.pop(key)
            self._last[key] = took
            # The last cold start's phases are this one's or none: never an older one's beside its seconds.
            self._phases.pop(key, None)
            self._unexplained[key] = (took, now)
            if key in self._launches:
                self._launches.discard(key)
            else:
                metrics.COLD_START.labels(*key).observe(took)
            return took
        return None

    def explained(self, key: Key, parts: dict[str, float]) -> None:
        """Where the last cold start's seconds went (planning/cold_start_phases.py), for status."""
        self._phases[key] = parts
        self._unexplained.pop(key, None)
        for phase, seconds in parts.items():
            metrics.COLD_START_PHASE.labels(phase).observe(seconds)

    def unexplained(self, key: Key, now: float) -> float | None:
        """The seconds of the service's last cold start if its phases are still to be found (for a while)."""
        took, ended = self._unexplained.get(key, (None, 0.0))
        if took is not None and now - ended > EXPLAIN_WITHIN_S:
            self._unexplained.pop(key, None)
            return None
        return took

    def claim(self, key: Key) -> tuple[float, float] | None:
        """The last cold start to explain, (seconds, when it ended), taken so no other caller explains it too."""
        return self._unexplained.pop(key, None)

    def unclaim(self, key: Key, pending: tuple[float, float]) -> None:
        """Not explained after all: to try again, unless a newer cold start has ended meanwhile."""
        self._unexplained.setdefault(key, pending)

    def last_phases(self, key: Key) -> dict[str, float] | None:
        return self._phases.get(key)

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
        self._phases.pop(key, None)
        self._unexplained.pop(key, None)
