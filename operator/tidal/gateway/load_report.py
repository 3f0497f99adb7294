"""The load report: every second, the gateway tells the operator (POST /v1/load) what it sees of each service
with traffic — requests in flight to its replicas, requests held in its line, arrivals per second, and how long
requests took lately. It is the autoscaler's fast signal (autoscaling/observe.py, GatewayLoad): a rise shows
here a scrape and a tick before Prometheus's queue shows it.

Only services with traffic are reported (one JSON object for all of them: 2,000 busy services are ~150 KB a
second), so a quiet service costs nothing. The report carries the same token as the wake-up call; a refused or
failed report is logged once and the next one tries again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable

import aiohttp

from .demand import Demand
from .endpoints import Endpoints
from .wake_token import WakeToken

log = logging.getLogger("tidal.gateway")
Key = tuple[str, str]


def gateway_id() -> str:
    """Which gateway replica reports: the operator adds up the replicas' reports, one per name."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def build_report(endpoints: Endpoints, held: dict[Key, int], demand: Demand, now: float,
                 oldest_held_s: Callable[[Key, float], float] = lambda key, now: 0.0) -> dict[str, dict]:
    """{"namespace/name": {"in_flight", "held", "oldest_held_s", "arrival_rate", "request_seconds"}} for
    services with traffic."""
    arriving = demand.arriving(now)
    in_flight = {key: n for key, eps in endpoints.by_service.items()
                 if (n := sum(e.inflight for e in eps.values()))}
    report = {}
    for key in set(arriving) | set(in_flight) | {k for k, n in held.items() if n}:
        entry = {"in_flight": in_flight.get(key, 0), "held": held.get(key, 0),
                 "arrival_rate": round(arriving.get(key, 0.0), 3)}
        if held.get(key):
            entry["oldest_held_s"] = round(oldest_held_s(key, now), 3)
        took = demand.request_seconds(key)
        if took is not None:
            entry["request_seconds"] = round(took, 3)
        report[f"{key[0]}/{key[1]}"] = entry
    return report


class LoadReporter:
    def __init__(self, operator_url: str | None, interval_s: float, endpoints: Endpoints, demand: Demand,
                 held: Callable[[], dict[Key, int]], oldest_held_s: Callable[[Key, float], float],
                 hold_timeout_s: float):
        self.url = f"{operator_url.rstrip('/')}/v1/load" if operator_url and interval_s > 0 else None
        self.interval_s, self.endpoints, self.demand, self.held = interval_s, endpoints, demand, held
        self.oldest_held_s, self.hold_timeout_s = oldest_held_s, hold_timeout_s
        self.token = WakeToken(None)
        self.name = gateway_id()
        self._task: asyncio.Task | None = None
        self._said: str | None = None  # the last failure logged

    async def start(self) -> None:
        if self.url:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as http:
            while True:
                await asyncio.sleep(self.interval_s)
                report = build_report(self.endpoints, self.held(), self.demand, time.monotonic(), self.oldest_held_s)
                if report:
                    await self._send(http, report)

    async def _send(self, http: aiohttp.ClientSession, report: dict) -> None:
        try:
            async with http.post(self.url, json={"gateway": self.name, "hold_timeout_s": self.hold_timeout_s,
                                                 "services": report},
                                 headers=await self.token.headers(),
                                 timeout=aiohttp.ClientTimeout(total=max(1.0, self.interval_s))) as resp:
                said = None if resp.status == 200 else f"{resp.status}: {(await resp.read())[:200]!r}"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
            said = str(err) or type(err).__name__
        if said != self._said and said is not None:
            log.warning("the load report to the operator failed (%s); the autoscaler falls back on Prometheus", said)
        self._said = said
