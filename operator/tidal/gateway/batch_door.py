"""Where files and batches (batches/) meet the online path: `Prefer: respond-async` requests handed over, the
batch runner's requests counted per service, and how many places batches may take on a model."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from .catalog import Catalog
from .endpoints import Endpoints
from .hold import Holds

Key = tuple[str, str]


class BatchDoor:
    def __init__(self, catalog: Catalog, endpoints: Endpoints, holds: Holds):
        self.catalog, self.endpoints, self.holds = catalog, endpoints, holds
        # Accepts `Prefer: respond-async` requests (batches/api.py): (key id, path, body) -> the 202 answer.
        # None: no batch storage, and such requests are served synchronously.
        self.defer: Callable[[str, str, bytes], Awaitable[web.Response]] | None = None
        self.inflight: dict[Key, int] = {}  # the batch runner's requests in flight, per service

    def places(self, model: str) -> int | None:
        """How many requests batches may have in flight on a model without making an online request wait:
        the capacity of its ready replicas, less the online requests in flight and held, less a reserve of
        one place in eight (at least one) for online requests arriving meanwhile. Two replicas of 8 with 5
        online requests in flight and none held: 16 - 5 - 2 = 9. None: no capacity is known (no ready
        replica, or replicas without the capacity annotation): the batch runner's own limit applies."""
        entry = self.catalog.model(model)
        ready = self.endpoints.get(entry.key) if entry else []
        if not ready or any(e.capacity is None for e in ready):
            return None
        total = sum(e.capacity for e in ready)
        online = sum(e.inflight for e in ready) - self.inflight.get(entry.key, 0)
        return max(0, total - max(0, online) - self.holds.pending.get(entry.key, 0) - max(1, total // 8))
