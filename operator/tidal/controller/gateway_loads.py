"""The gateways' load reports (POST /v1/load, every second from each gateway replica), kept for the autoscaler.

Each gateway says, for the services it has traffic for, what it has in flight, what it holds, how fast requests
arrive and how long they took lately. Several gateway replicas each see their share: their reports add up. A
report older than FRESH_S is forgotten (a gateway that stopped reporting no longer counts), so memory stays
bounded by gateways x services with traffic, and a stale number never keeps replicas up.
"""

from __future__ import annotations

from ..autoscaling.observe import GatewayLoad

Key = tuple[str, str]
FRESH_S = 5.0  # five missed reports


class GatewayLoads:
    def __init__(self) -> None:
        self._reports: dict[str, tuple[float, dict[Key, GatewayLoad]]] = {}  # gateway -> (when, its services)
        # How long the gateways hold a request: the latest report's figure (every replica of the gateway runs
        # with the chart's one setting); 300 s, the gateway's default, until one says.
        self.hold_timeout_s = 300.0

    def report(self, gateway: str, services: dict[Key, GatewayLoad], now: float,
               hold_timeout_s: float | None = None) -> None:
        self._reports[gateway] = (now, services)
        if hold_timeout_s:
            self.hold_timeout_s = hold_timeout_s
        for name in [g for g, (at, _) in self._reports.items() if now - at > FRESH_S]:
            del self._reports[name]

    def of(self, key: Key, now: float) -> GatewayLoad | None:
        """Every fresh gateway's view of one service, added up; None when none reported it."""
        parts = [services[key] for at, services in self._reports.values() if now - at <= FRESH_S and key in services]
        if not parts:
            return None
        timed = [(p.request_s, p.arrivals_per_s + p.in_flight) for p in parts if p.request_s]
        weight = sum(w for _, w in timed)
        request_s = (sum(s * w for s, w in timed) / weight if weight else timed[0][0]) if timed else None
        return GatewayLoad(sum(p.in_flight for p in parts), sum(p.held for p in parts),
                           sum(p.arrivals_per_s for p in parts), request_s, max(p.oldest_held_s for p in parts))

    def forget(self, key: Key) -> None:
        for _, services in self._reports.values():
            services.pop(key, None)
