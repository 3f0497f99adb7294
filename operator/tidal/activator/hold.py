"""Waiting for a replica: the service's line of held requests, the capacity of each replica, and the
wake-up call to the operator when a service has none.

A request is held while its service has no ready replica (and the service is woken at once), or while
every replica has its capacity in flight, or while older requests wait: oldest first.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
from aiohttp import web

from .call import Call
from .endpoints import Endpoint
from .errors import gateway_error as _error
from .line import Line

log = logging.getLogger("tidal.activator")
UNKNOWN_FOR_S = 2.0  # short: a service created a moment ago may not be known to the operator yet


def _room_after(candidates: list[Endpoint], taken: Endpoint) -> bool:
    """Whether a place is still free once `taken` has one more request in flight."""
    return any(e.has_room(adding=1 if e is taken else 0) for e in candidates)


class Holding:
    """The gateway's holding part (a mixin: it shares the gateway's endpoints, limits, metrics and lines)."""

    async def _endpoint(self, key, tried: set[int], call: Call | None = None) -> Endpoint | web.Response:
        """The least busy ready endpoint with room. The request is held in the service's line while
        the service has no ready replica (and the service is woken), or while every replica has its
        capacity in flight or older requests are waiting."""
        held_at = time.monotonic()
        deadline = held_at + self.limits.hold_timeout_s
        line: Line | None = None
        turn: asyncio.Future | None = None
        try:
            while True:
                now = time.monotonic()
                usable = [e for e in self.endpoints.get(key) if e.unavailable_until <= now]
                candidates = [e for e in usable if id(e) not in tried] or usable
                best = min(candidates, key=lambda e: e.inflight) if candidates else None
                room = best is not None and best.has_room()
                # A newcomer does not overtake requests already held: it joins the line behind them.
                if room and (line is not None or not self._pending.get(key)):
                    if line is not None and len(line) and _room_after(candidates, best):
                        line.wake_next()  # a place is left after this one: the next held request takes it
                    if call is not None and line is not None:
                        call.held_s += time.monotonic() - held_at
                    return best
                if not candidates and now - self._unknown.get(key, -UNKNOWN_FOR_S) < UNKNOWN_FOR_S:
                    return _error(404, "UnknownService", f"there is no InferenceService {key[1]} in namespace "
                                                         f"{key[0]}")
                if line is None:
                    if self._pending.get(key, 0) >= self.limits.max_pending:
                        why = "every ready replica is busy" if candidates else "it is waking up"
                        return _error(429, "TooManyPending", f"{key[0]}/{key[1]} already holds "
                                                             f"{self.limits.max_pending} requests: {why}",
                                      retry_after=5)
                    line = self._lines.setdefault(key, Line())
                    self._pending[key] = self._pending.get(key, 0) + 1
                    self.metrics.pending.labels(*key).set(self._pending[key])
                    if not candidates:
                        self.demand.held(key, held_at)
                        self.metrics.cold(key, held_at)
                        if call is not None:
                            call.woke = True
                        self._wake(key)
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
                    self._wake(key)  # keep the operator informed while we hold requests
        finally:
            if line is not None:
                if turn is not None:
                    line.leave(turn)
                if key in self.catalog.entries:  # a path may name any service: no series for made-up ones
                    self.metrics.held.labels(*key).observe(time.monotonic() - held_at)
                self._pending[key] -= 1
                self.metrics.pending.labels(*key).set(self._pending[key])
                if not self._pending[key]:
                    del self._pending[key]
                    self._lines.pop(key, None)
                    if not self.endpoints.get(key):  # every held request gave up before a replica came
                        self.metrics.forget_cold(key)

    def _wake_all_held(self, key) -> None:
        """Every held request of the service looks again: a replica was added, or the service is unknown."""
        line = self._lines.get(key)
        if line is not None:
            line.wake_all()

    def _room_freed(self, key) -> None:
        line = self._lines.get(key)
        if line is not None:
            line.wake_next()

    def _wake(self, key) -> None:
        if self.operator_url and key not in self._waking:
            self._waking.add(key)
            asyncio.get_running_loop().create_task(self._call_wake(key))

    async def _call_wake(self, key) -> None:
        try:
            url = f"{self.operator_url}/v1/wake/{key[0]}/{key[1]}"
            said = self.demand.wake_call(key, self._pending.get(key, 1), time.monotonic())
            async with self._http.post(url, json=said, headers=await self.wake_token.headers(),
                                       timeout=aiohttp.ClientTimeout(total=5)) as resp:
                answer = await resp.read()
                if resp.status in (401, 403):
                    log.warning("the operator refused the wake-up of %s/%s (%d): %s; the gateway's token is "
                                "--wake-token-file (in the chart, a projected ServiceAccount token)", *key,
                                resp.status, answer[:300].decode(errors="replace"))
                if resp.status == 404:
                    now = time.monotonic()
                    # Requests may name any service: forget expired entries so memory stays bounded.
                    self._unknown = {k: t for k, t in self._unknown.items() if now - t < UNKNOWN_FOR_S}
                    self._unknown[key] = now
                    self._wake_all_held(key)  # they get the 404 now
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
            log.warning("wake-up of %s/%s failed: %s (the autoscaler still sees the pending gauge)", *key, err)
        finally:
            self._waking.discard(key)
