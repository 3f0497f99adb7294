"""After each answer: the per-service and per-key counters, and the key's token reservation settled with what
the answer says it used (a batch's request, admitted without a reservation, is charged instead)."""

from __future__ import annotations

import time

from aiohttp import web

from .call import Call
from .catalog import Catalog
from .metrics import Metrics
from .ratelimits import RateLimiter


class Accounting:
    def __init__(self, metrics: Metrics, limiter: RateLimiter, catalog: Catalog):
        self.metrics, self.limiter, self.catalog = metrics, limiter, catalog

    def record(self, call: Call, response: web.StreamResponse) -> None:
        namespace, name = call.service
        self.metrics.responses.labels(namespace, name, f"{response.status // 100}xx").inc()
        if call.service in self.catalog.entries:  # a path may name any service: no series for made-up ones
            self.metrics.duration.labels(namespace, name).observe(time.monotonic() - call.arrived)
        key_id = call.key.id if call.key else "-"
        self.metrics.requests.labels(key_id, call.model, f"{response.status // 100}xx").inc()
        usage = call.meter.usage if call.meter else call.usage
        if usage is not None:
            self.metrics.prompt_tokens.labels(key_id, call.model).inc(usage.prompt)
            self.metrics.completion_tokens.labels(key_id, call.model).inc(usage.completion)
        if call.reservation is not None:  # admitted with tokens held: now what was used (0 if it failed)
            if usage is not None or response.status != 200:  # an answer that did not say keeps its reservation
                self.limiter.settle(call.reservation, usage.total if usage is not None else 0)
        elif usage is not None and call.key is not None:  # a batch's request: not admitted, still counted
            self.limiter.charge_tokens(call.key, usage.total, time.monotonic())
