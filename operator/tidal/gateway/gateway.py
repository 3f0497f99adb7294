"""The gateway: one object composing its parts, each with its own state, and the path of one request through
them — admission (keys and limits) -> routing (which service, what goes upstream) -> holding (a replica with
room, or wait in the service's line; wake it when it has none) -> the proxy hop -> accounting (usage, counters).
Files and batches meet this path at the batch door; the playground and the batch routes are mounted on its app.

Where a request goes: a Host naming a service (`<name>.<namespace>`), else a path naming one
(`/<namespace>/<name>/...`), else the one endpoint — `/v1/...` by the body's `model`, and
`/v2/models/{name}/...` (Triton's KServe v2) by the model in the path.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web
from prometheus_client import generate_latest

from . import errors, keepalive
from .accounting import Accounting
from .admission import Admission
from .batch_door import BatchDoor
from .call import Call, Limits
from .catalog import Catalog, Entry
from .demand import Demand
from .endpoints import Endpoints
from .hold import Holds
from .keys import KeyRing
from .load_report import LoadReporter
from .metrics import Metrics
from .proxy import Proxy
from .ratelimits import RateLimiter
from .request_checks import refusal
from .routing import Router
from .waking import UNKNOWN_FOR_S, Waker

log = logging.getLogger("tidal.gateway")
__all__ = ["Gateway", "Limits", "UNKNOWN_FOR_S"]


def _prefers_async(request: web.Request) -> bool:
    """RFC 7240: `Prefer: respond-async` (among other preferences, any case)."""
    return any(p.split("=")[0].strip().lower() == "respond-async"
               for value in request.headers.getall("Prefer", []) for p in value.split(","))


@web.middleware
async def _refuse_hostile(request: web.Request, handler):
    """Before any route (a path holding a line break matches none of them): see request_checks.py."""
    refused = refusal(request)
    if refused is not None:
        return errors.bad_request(*refused)
    return await handler(request)


class Gateway:
    def __init__(self, endpoints: Endpoints, operator_url: str | None, limits: Limits = Limits(),
                 own: tuple[str, str] | None = None, catalog: Catalog | None = None, keys: KeyRing | None = None):
        self.endpoints = endpoints  # ready replicas per service (endpoints.py, from the pod watch)
        self.catalog = catalog or Catalog()  # served names (catalog.py, from the InferenceService watch)
        self.keys = keys  # None: API keys off (a trusted mesh); the default is on
        self.limiter = RateLimiter()
        self.limits = limits
        self.metrics = Metrics(limits.hold_timeout_s)
        demand = self.demand = Demand()  # arrivals and request times: the wake-up call and the load report
        self.admission = Admission(keys, self.limiter)
        self.router = Router(self.catalog, endpoints, own)
        self.waker = Waker(operator_url, demand)
        self.holds = Holds(endpoints, self.catalog, limits, self.metrics, demand, self.waker)
        self.router.held = lambda key: self.holds.pending.get(key, 0)
        self.proxy = Proxy(self.metrics, demand, self.holds.room_freed)
        self.accounting = Accounting(self.metrics, self.limiter, self.catalog)
        self.batch_door = BatchDoor(self.catalog, endpoints, self.holds)
        self.load_report = LoadReporter(operator_url, limits.load_report_s, endpoints, demand,
                                        lambda: self.holds.pending, self.holds.oldest_held_s, limits.hold_timeout_s)
        self.draining = False  # set on SIGTERM: not ready, and every response closes its connection

    async def start(self, app: web.Application) -> None:
        await self.waker.start()
        await self.proxy.start()
        await self.load_report.start()

    async def stop(self, app: web.Application) -> None:
        await self.waker.stop()
        await self.proxy.stop()
        await self.load_report.stop()

    def app(self, mount=None) -> web.Application:
        """The gateway's app; `mount(app)` adds routes of its own (the playground) before the catch-all."""
        app = web.Application(client_max_size=self.limits.max_body_bytes, middlewares=[_refuse_hostile])
        app.on_startup.append(self.start)
        app.on_cleanup.append(self.stop)
        app.on_response_prepare.append(self._close_while_draining)
        if mount is not None:
            mount(app)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    def metrics_app(self) -> web.Application:
        async def metrics(request):
            return web.Response(body=generate_latest(self.metrics.registry), content_type="text/plain")

        async def healthz(request):
            ok = self.endpoints.ready.is_set() and not self.draining
            return web.json_response({"ready": ok}, status=200 if ok else 503)

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        return app

    async def _close_while_draining(self, request: web.Request, response: web.StreamResponse) -> None:
        """Shutting down: answer, then close the connection, so clients reconnect through the Service to
        another replica instead of reusing a connection this one is about to drop."""
        if self.draining:
            response.force_close()
            # aiohttp (3.14) decides the Connection header before this hook runs: say it ourselves, or
            # the client would reuse a connection the server is about to close.
            response.headers["Connection"] = "close"

    # ---- one request -----------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        response = await self._handle(request)
        if "/v2/" in request.path and not response.prepared:  # KServe v2: errors in its own shape
            return errors.in_kserve_shape(response)
        return response

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        internal = self.admission.is_internal(request)
        key = self.admission.caller(request, internal)
        if isinstance(key, web.Response):
            return key
        # Routed and forwarded as the caller encoded it: decoding would turn %0D%0A into a line break
        # upstream (request_checks.py).
        raw_path, _, raw_query = request.raw_path.partition("?")
        target = self.router.target(request, raw_path)
        if target is None and request.method == "GET" and (request.path == "/v1/models"
                                                            or request.path.startswith("/v1/models/")):
            return self.router.models(request.path, key)
        body = await request.read()
        call = self.router.resolve(request, raw_path, target, body, key)
        if isinstance(call, web.Response):
            return call
        if raw_query:
            call.path += "?" + raw_query
        if key is not None and not internal:  # a batch paces itself; its tokens still count
            refused = self.admission.admit(call)
            if refused is not None:
                return refused
        door = self.batch_door
        if door.defer is not None and not internal and _prefers_async(request) and request.method == "POST":
            # Its tokens are charged when it runs (as a batch's are): the reservation goes back now.
            self.limiter.settle(call.reservation, 0)
            return await door.defer(key.id if key else "-", call.path, call.body)
        call.arrived = arrived
        self.demand.arrived(call.service, arrived)
        if internal:
            door.inflight[call.service] = door.inflight.get(call.service, 0) + 1
        try:
            response = await self._serve(request, call)
        finally:
            if internal:
                door.inflight[call.service] -= 1
        self.accounting.record(call, response)
        return response

    async def _serve(self, request, call: Call) -> web.StreamResponse:
        """A replica with room (holding until there is one), then the hop. A replica that gives the request
        back unprocessed, or takes no connection, is left out for a moment (proxy.py) and another tried, or the
        request waits for one: within one hold limit from its arrival, then the hold's 503 with Retry-After. A
        streamed request held through a long wake gets its answer begun, with keep-alive comments, meanwhile
        (keepalive.py)."""
        key = call.service
        tried: set[int] = set()
        opened: web.StreamResponse | None = None
        deadline = time.monotonic() + self.limits.hold_timeout_s
        while True:  # ends: each refusal keeps its replica out of rotation for a while, and the hold has a deadline
            def find():
                return self.holds.endpoint(key, tried, call, deadline)
            if call.meter is not None:  # an OpenAI request with "stream": true
                endpoint, opened = await keepalive.hold(request, call.model, self.limits.keepalive_s, find, opened)
            else:
                endpoint = await find()
            if isinstance(endpoint, web.Response):
                return endpoint if opened is None else await keepalive.fail(opened, endpoint)
            tried.add(id(endpoint))
            result = await self.proxy.forward(request, call, endpoint, opened)
            if result is not None:
                return result

    # ---- for the playground and batches ------------------------------------------------------------
    def model_for_key(self, authorization: str | None, model: str) -> Entry | web.Response:
        """The model's entry if the presented key may use it; else the error the API would give."""
        key = self.admission.key_of(authorization)
        return key if isinstance(key, web.Response) else self.router.entry_for(key, model)
