"""Waiting for a replica: each service's line of held requests and the capacity of each replica; a service
with none is woken (waking.py).

A request is held while its service has no ready replica (and the service is woken at once), or while
every replica has its capacity in flight, or while older requests wait: oldest first.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from .balancing import Balancer
from .call import Call, Limits
from .catalog import Catalog
from .demand import Demand
from .endpoints import Endpoint, Endpoints
from .errors import gateway_error as _error
from .line import Line
from .metrics import Metrics
from .waking import Waker

Key = tuple[str, str]


def _room_after(candidates: list[Endpoint], taken: Endpoint) -> bool:
    """Whether a place is still free once `taken` has one more request in flight."""
    return any(e.has_room(adding=1 if e is taken else 0) for e in candidates)


class Holds:
    """The gateway's holding part: which requests wait for which service, and in what order."""

    def __init__(self, endpoints: Endpoints, catalog: Catalog, limits: Limits, metrics: Metrics, demand: Demand,
                 waker: Waker):
        self.endpoints, self.catalog, self.limits, self.metrics, self.demand = endpoints, catalog, limits, metrics, demand
        self.waker = waker
        self.balancer = Balancer()  # which replica: least-loaded, or by the prompt's prefix
        self.pending: dict[Key, int] = {}  # requests held per service (services holding none are absent)
        self.lines: dict[Key, Line] = {}  # the held requests of each service, oldest first
        # When each held request was held, per service, in the order they were (a dict keeps insertion order:
        # the first is the oldest); for the load report's oldest wait (who makes way in a full pool).
        self._held_at: dict[Key, dict[object, float]] = {}
        waker.held_count = lambda key: self.pending.get(key, 1)
        waker.on_unknown = self.wake_all  # they get the 404 now
        endpoints.on_added = self.wake_all

    def oldest_held_s(self, key: Key, now: float) -> float:
        """How long the oldest request held for this service has waited (0 when none is held)."""
        times = self._held_at.get(key)
        return now - next(iter(times.values())) if times else 0.0

    async def endpoint(self, key: Key, tried: set[int], call: Call | None = None,
                       deadline: float | None = None) -> Endpoint | web.Response:
        """The ready endpoint with room the service's routing picks (balancing.py): the least busy, or the
        owner of the prompt's prefix. The request is held in the service's line while
        the service has no ready replica (and the service is woken), or while every replica has its
        capacity in flight or older requests are waiting. `deadline` (time.monotonic()): when the hold ends with a
        503, the hold limit from now unless given."""
        held_at = time.monotonic()
        deadline = deadline if deadline is not None else held_at + self.limits.hold_timeout_s
        line: Line | None = None
        turn: asyncio.Future | None = None
        token = object()  # this request's place among the service's held times
        try:
            while True:
                now = time.monotonic()
                usable = [e for e in self.endpoints.get(key) if e.unavailable_until <= now]
                candidates = [e for e in usable if id(e) not in tried] or usable
                best, how = self.balancer.choose(key, usable, candidates, call.prefix_key if call else None)
                room = best is not None and best.has_room()
                # A newcomer does not overtake requests already held: it joins the line behind them.
                if room and (line is not None or not self.pending.get(key)):
                    if line is not None and len(line) and _room_after(candidates, best):
                        line.wake_next()  # a place is left after this one: the next held request takes it
                    if call is not None and line is not None:
                        call.held_s += time.monotonic() - held_at
                    if key in self.catalog.entries:
                        self.metrics.routed.labels(*key, how).inc()
                    return best
                if not candidates and self.waker.recently_unknown(key, now):
                    return _error(404, "UnknownService", f"there is no InferenceService {key[1]} in namespace "
                                                         f"{key[0]}")
                if line is None:
                    if self.pending.get(key, 0) >= self.limits.max_pending:
                        why = "every ready replica is busy" if candidates else "it is waking up"
                        return _error(429, "TooManyPending", f"{key[0]}/{key[1]} already holds "
                                                             f"{self.limits.max_pending} requests: {why}",
                                      retry_after=5)
                    line = self.lines.setdefault(key, Line())
                    self._held_at.setdefault(key, {})[token] = held_at
                    self.pending[key] = self.pending.get(key, 0) + 1
                    self.metrics.pending.labels(*key).set(self.pending[key])
                    if not candidates:
                        self.demand.held(key, held_at)
                        self.metrics.cold(key, held_at)
                        if call is not None:
                            call.woke = True
                        self.waker.wake(key)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if candidates:
                        return _error(503, "ServiceBusy", f"every replica of {key[0]}/{key[1]} stayed busy for "
                                                          f"{self.limits.hold_timeout_s:g} s", retry_after=5)
                    return _error(503, "ServiceWaking", f"{key[0]}/{key[1]} has no ready replica after "
                                                        f"{self.limits.hold_timeout_s:g} s; its model may still be "
                                                        "loading", retry_after=10)
                if turn is None or turn.done():
                    turn = line.join()
                    if room:  # a place is free but others were held first: the oldest of them takes it
                        line.wake_next()
                done, _ = await asyncio.wait({turn}, timeout=min(remaining, 1.0))
                if not done and not candidates:
                    self.waker.wake(key)  # keep the operator informed while we hold requests
        finally:
            if line is not None:
                if turn is not None:
                    line.leave(turn)
                times = self._held_at.get(key, {})
                times.pop(token, None)
                if not times:
                    self._held_at.pop(key, None)
                if key in self.catalog.entries:  # a path may name any service: no series for made-up ones
                    self.metrics.held.labels(*key).observe(time.monotonic() - held_at)
                self.pending[key] -= 1
                self.metrics.pending.labels(*key).set(self.pending[key])
                if not self.pending[key]:
                    del self.pending[key]
                    self.lines.pop(key, None)
                    if not self.endpoints.get(key):  # every held request gave up before a replica came
                        self.metrics.forget_cold(key)

    def wake_all(self, key: Key) -> None:
        """Every held request of the service looks again: a replica was added, or the service is unknown."""
        line = self.lines.get(key)
        if line is not None:
            line.wake_all()

    def room_freed(self, key: Key) -> None:
        line = self.lines.get(key)
        if line is not None:
            line.wake_next()
