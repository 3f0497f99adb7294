"""The gateway's HTTP front: authenticate, find the service, limit, then hold (hold.py) or proxy (proxy.py),
and meter.

Where a request goes: a Host naming a service (`<name>.<namespace>`), else a path naming one
(`/<namespace>/<name>/...`), else the one endpoint — `/v1/...` by the body's `model`, and
`/v2/models/{name}/...` (Triton's KServe v2) by the model in the path.
"""

from __future__ import annotations

import hmac
import json
import logging
import time

import aiohttp
from aiohttp import web
from prometheus_client import generate_latest

from . import errors
from .call import Call, Limits
from .catalog import Catalog, Entry
from .endpoints import Endpoints
from .errors import gateway_error as _error
from .demand import Demand
from .hold import UNKNOWN_FOR_S, Holding
from .keys import ON_BEHALF_HEADER, ApiKey, KeyRing
from .line import Line
from .metrics import Metrics
from .openai_api import model_in_body, model_object, tokens_to_reserve, triton_model
from .proxy import Proxying
from .ratelimits import RateLimiter
from .request_checks import refusal
from .routing import API_PREFIXES, route
from .upstream import UpstreamPool
from .usage import StreamMeter, ask_for_stream_usage
from .wake_token import WakeToken
from ..strict_json import BadJson

log = logging.getLogger("tidal.activator")
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


class Gateway(Holding, Proxying):
    def __init__(self, endpoints: Endpoints, operator_url: str | None, limits: Limits = Limits(),
                 own: tuple[str, str] | None = None, catalog: Catalog | None = None, keys: KeyRing | None = None):
        self.own = own
        self.endpoints = endpoints
        self.catalog = catalog or Catalog()
        self.keys = keys  # None: API keys off (a trusted mesh); the default is on
        self.limiter = RateLimiter()
        self.operator_url = operator_url.rstrip("/") if operator_url else None
        self.limits = limits
        self.metrics = Metrics(limits.hold_timeout_s)
        self.demand = Demand()  # held arrivals and request times, for the wake-up call
        self._pending: dict[tuple[str, str], int] = {}
        self._lines: dict[tuple[str, str], Line] = {}  # the held requests of each service, oldest first
        endpoints.on_added = self._wake_all_held
        self._waking: set[tuple[str, str]] = set()
        self.draining = False  # set on SIGTERM: not ready, and every response closes its connection
        # Services the operator says do not exist, and when it said so: their requests get a 404 at
        # once instead of being held for the whole hold timeout. Forgotten after UNKNOWN_FOR_S.
        self._unknown: dict[tuple[str, str], float] = {}
        self._http: aiohttp.ClientSession | None = None
        # The batch runner's token (batches/sender.py): with it, a request acts as the key it names.
        self.internal_token: str | None = None
        # Accepts `Prefer: respond-async` requests (batches/api.py); None: they are served synchronously.
        self.defer = None
        self._batch_inflight: dict[tuple[str, str], int] = {}  # the batch runner's requests, per service
        self.wake_token = WakeToken(None)  # sent with each wake-up call (wake_token.py)

    async def start(self, app: web.Application) -> None:
        self._http = aiohttp.ClientSession()  # for the operator's wake endpoint only
        # Upstream replicas: keep-alive connections, no total timeout (a generation may stream for minutes).
        self._upstream = UpstreamPool()
        self._upstream.start_sweeping()

    async def stop(self, app: web.Application) -> None:
        if self._http:
            await self._http.close()
        await self._upstream.close()

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
        key, internal = None, self._internal(request)
        if self.keys is not None:
            header = request.headers.get("Authorization")
            if internal:  # the batch runner, acting as the batch's owner (revoked: its requests fail)
                key = self.keys.get(request.headers.get(ON_BEHALF_HEADER, ""))
            else:
                key = self.keys.authenticate(header)
            if key is None:
                return errors.missing_key() if not header else errors.wrong_key()
        # Routed and forwarded as the caller encoded it: decoding would turn %0D%0A into a line break
        # upstream (request_checks.py).
        raw_path, _, raw_query = request.raw_path.partition("?")
        target = route(raw_path, request.headers.get("Host"), self.own)
        if target is None and request.method == "GET" and (request.path == "/v1/models"
                                                            or request.path.startswith("/v1/models/")):
            return self._models(request.path, key)
        body = await request.read()
        call = self._resolve(request, raw_path, target, body, key)
        if isinstance(call, Call) and raw_query:
            call.path += "?" + raw_query
        if isinstance(call, web.Response):
            return call
        if key is not None and not internal:  # a batch paces itself; its tokens still count
            verdict = self.limiter.admit(key, time.monotonic(), call.tokens_reserved)
            if not verdict.admitted:
                limit = verdict.headers[f"x-ratelimit-limit-{verdict.which}"]
                return errors.rate_limited(verdict.which, limit, verdict.retry_after_s, verdict.headers)
            call.headers, call.reservation = verdict.headers, verdict.reservation
        if self.defer is not None and not internal and _prefers_async(request) and request.method == "POST":
            # Its tokens are charged when it runs (as a batch's are): the reservation goes back now.
            self.limiter.settle(call.reservation, 0)
            return await self.defer(key.id if key else "-", call.path, call.body)
        call.arrived = arrived
        if internal:
            self._batch_inflight[call.service] = self._batch_inflight.get(call.service, 0) + 1
        try:
            response = await self._serve(request, call)
        finally:
            if internal:
                self._batch_inflight[call.service] -= 1
        self._account(call, response)
        return response

    def _internal(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        return (self.internal_token is not None and header[:7].lower() == "bearer "
                and hmac.compare_digest(header[7:].strip().encode(), self.internal_token.encode()))

    def _resolve(self, request: web.Request, raw_path: str, target, body: bytes,
                 key: ApiKey | None) -> Call | web.Response:
        """Which service a request is for, whether its key may use it, and what to send upstream."""
        # OpenAI's API speaks JSON: its bodies are checked (and name the model). Other bodies pass as they are:
        # a KServe v2 request may be a JSON header followed by binary tensors.
        upstream_path = target[2] if target is not None else raw_path
        name, payload = None, None
        if request.method == "POST" and upstream_path.startswith("/v1/"):
            try:
                name, payload = model_in_body(body)
            except BadJson as err:
                return errors.bad_request(f"The request body is not acceptable JSON: {err}")
        if target is not None:  # Host or path names the service
            namespace, service, path = target
            entry = self.catalog.entries.get((namespace, service))
            model = entry.served_name if entry else None
        elif request.path.split("/", 2)[1] in API_PREFIXES:  # the one endpoint: the model picks the service
            path = raw_path
            model = name if request.path.startswith("/v1/") else triton_model(request.path)
            if not model:
                if request.path.startswith("/v1/"):
                    return errors.bad_request("the request body must be a JSON object naming a 'model'", "model")
                return errors.openai_error(404, f"no model in the path {request.path[:200]}: use "
                                                "/v2/models/<name>/...", "invalid_request_error", "model_not_found")
            entry = self.catalog.model(model)
            if key is not None and not key.may_use(model, entry.key[0] if entry else None):
                return errors.not_permitted(model)
            if entry is None:
                return errors.unknown_model(model)
            namespace, service = entry.key
        else:
            return _error(404, "UnknownService", "name a model (POST /v1/... with 'model', /v2/models/<name>/...) or "
                                                 "a service: /<namespace>/<name>/<path> or Host: <name>.<namespace>")
        if key is not None and not key.may_use(model, namespace):
            return errors.not_permitted(model or f"{namespace}/{service}")
        meter = None
        if payload is not None and payload.get("stream"):
            strip = ask_for_stream_usage(payload)
            if strip:
                body = json.dumps(payload).encode()
            meter = StreamMeter(strip)
        call = Call((namespace, service), path, body, key, model or "-", {}, meter)
        call.tokens_reserved = tokens_to_reserve(path, payload, len(body))
        return call

    def batch_places(self, model: str) -> int | None:
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
        online = sum(e.inflight for e in ready) - self._batch_inflight.get(entry.key, 0)
        return max(0, total - max(0, online) - self._pending.get(entry.key, 0) - max(1, total // 8))

    def model_for_key(self, authorization: str | None, model: str) -> Entry | web.Response:
        """The model's entry if the presented key may use it; else the error the API would give."""
        key = None
        if self.keys is not None:
            key = self.keys.authenticate(authorization)
            if key is None:
                return errors.missing_key() if not authorization else errors.wrong_key()
        entry = self.catalog.model(model)
        if key is not None and not key.may_use(model, entry.key[0] if entry else None):
            return errors.not_permitted(model)
        return entry if entry is not None else errors.unknown_model(model)

    def _models(self, path: str, key: ApiKey | None) -> web.Response:
        def visible(entry: Entry) -> bool:
            return key is None or key.may_use(entry.served_name, entry.key[0])

        def obj(entry: Entry) -> dict:
            return model_object(entry, len(self.endpoints.get(entry.key)), self._pending.get(entry.key, 0))

        if path == "/v1/models":
            data = [obj(e) for _, e in sorted(self.catalog.by_name.items()) if visible(e)]
            return web.json_response({"object": "list", "data": data})
        wanted = path[len("/v1/models/"):]
        entry = self.catalog.model(wanted)
        if key is not None and not key.may_use(wanted, entry.key[0] if entry else None):
            return errors.not_permitted(wanted)
        if entry is None:
            return errors.unknown_model(wanted)
        return web.json_response(obj(entry))

    def _account(self, call: Call, response: web.StreamResponse) -> None:
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

    async def _serve(self, request, call: Call) -> web.StreamResponse:
        key = call.service
        tried: set[int] = set()
        for _ in range(self.limits.upstream_attempts):
            endpoint = await self._endpoint(key, tried, call)
            if isinstance(endpoint, web.Response):
                return endpoint
            tried.add(id(endpoint))
            result = await self._proxy(request, call, endpoint)
            if result is not None:
                return result
        return _error(502, "UpstreamUnavailable", f"no replica of {key[0]}/{key[1]} accepted the request after "
                                                   f"{self.limits.upstream_attempts} attempts", retry_after=1)
