"""Which ready replica takes a request: the least loaded, or, for a service with spec.routing.policy `prefix`,
the one that owns the prompt's prefix on a consistent-hash ring with bounded loads (tidal.routing).

Replicas are named by address (`host:port`), the same on every gateway replica, so every gateway sends a
conversation to the same replica. Each gateway bounds the loads it sees (its own requests in flight): with
several gateway replicas, each keeps its share within the bound.
"""

from __future__ import annotations

from ..routing.ring import HashRing
from .endpoints import Endpoint

Key = tuple[str, str]


def _name(endpoint: Endpoint) -> str:
    return f"{endpoint.host}:{endpoint.port}"


class Balancer:
    def __init__(self) -> None:
        self._rings: dict[Key, HashRing] = {}  # per service routed by prefix; rebuilt when its replicas change

    def choose(self, key: Key, usable: list[Endpoint], candidates: list[Endpoint],
               prefix: str | None) -> tuple[Endpoint | None, str]:
        """(the replica, how it was chosen: least-loaded, prefix or overflow). `usable`: the service's replicas
        taking requests (the ring is theirs, so a retry elsewhere does not move every key); `candidates`: those
        this request may go to."""
        if not candidates:
            return None, "least-loaded"
        least = min(candidates, key=lambda e: e.inflight)
        room = {_name(e) for e in candidates if e.has_room()}
        if prefix is None or len(usable) < 2 or not room:
            return least, "least-loaded"
        by_name = {_name(e): e for e in usable}
        ring = self._rings.get(key)
        if ring is None or ring.members != tuple(sorted(by_name)):
            ring = self._rings[key] = HashRing(list(by_name))
        chosen = ring.pick(prefix, {n: e.inflight for n, e in by_name.items()}, room)
        if chosen is None:
            return least, "least-loaded"
        return by_name[chosen], "prefix" if chosen == ring.owner(prefix) else "overflow"

    def forget(self, key: Key) -> None:
        self._rings.pop(key, None)
