"""The wake-up call: while the gateway holds requests for a service with no replica, it tells the operator
(POST /v1/wake/<namespace>/<name>) what it sees — how many it holds, how fast they arrive, how long the
service's requests took lately (demand.py) — so the operator scales at once, not at its next tick.

One call in flight per service. The operator's 404 ("no such InferenceService") is remembered for
UNKNOWN_FOR_S, so held requests for a made-up name get a 404 at once instead of waiting out the hold.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp

from .demand import Demand
from .wake_token import WakeToken

log = logging.getLogger("tidal.gateway")
Key = tuple[str, str]
UNKNOWN_FOR_S = 2.0  # short: a service created a moment ago may not be known to the operator yet


class Waker:
    def __init__(self, operator_url: str | None, demand: Demand):
        self.operator_url = operator_url.rstrip("/") if operator_url else None
        self.demand = demand
        self.token = WakeToken(None)  # sent with each call (wake_token.py)
        # Told by the owner: how many requests a service holds (the call's `pending`), and what to do when
        # the operator says a service does not exist (let its held requests look again, and get their 404).
        self.held_count: Callable[[Key], int] = lambda key: 1
        self.on_unknown: Callable[[Key], None] = lambda key: None
        self._waking: set[Key] = set()
        self._unknown: dict[Key, float] = {}  # services the operator said do not exist, and when
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._http = aiohttp.ClientSession()

    async def stop(self) -> None:
        if self._http:
            await self._http.close()

    def recently_unknown(self, key: Key, now: float) -> bool:
        return now - self._unknown.get(key, -UNKNOWN_FOR_S) < UNKNOWN_FOR_S

    def wake(self, key: Key) -> None:
        if self.operator_url and key not in self._waking:
            self._waking.add(key)
            asyncio.get_running_loop().create_task(self._call(key))

    async def _call(self, key: Key) -> None:
        try:
            url = f"{self.operator_url}/v1/wake/{key[0]}/{key[1]}"
            said = self.demand.wake_call(key, self.held_count(key), time.monotonic())
            async with self._http.post(url, json=said, headers=await self.token.headers(),
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
                    self.on_unknown(key)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
            log.warning("wake-up of %s/%s failed: %s (the autoscaler still sees the pending gauge)", *key, err)
        finally:
            self._waking.discard(key)
