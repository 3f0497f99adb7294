"""The gateway's HTTP front: authenticate, find the service, limit, hold or proxy, meter.

Where a request goes: a Host naming a service (`<name>.<namespace>`), else a path naming one
(`/<namespace>/<name>/...`), else the one endpoint — `/v1/...` by the body's `model`, and
`/v2/models/{name}/...` (Triton's KServe v2) by the model in the path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client import generate_latest

from . import errors
from .catalog import Catalog, Entry
from .endpoints import Endpoint, Endpoints
from .keys import ApiKey, KeyRing
from .line import Line
from .metrics import Metrics
from .openai_api import model_in_body, model_object, triton_model
from .ratelimits import RateLimiter
from .routing import API_PREFIXES, route
from .upstream import Refused, UpstreamPool
from .usage import StreamMeter, Usage, ask_for_stream_usage, from_answer

log = logging.getLogger("tidal.activator")
UNKNOWN_FOR_S = 2.0  # short: a service created a moment ago may not be known to the operator yet
# Headers that describe one hop, not the request (RFC 9110 7.6.1), and what aiohttp sets itself.
UNAVAILABLE_S = 5.0
HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
       "transfer-encoding", "upgrade", "host", "content-length"}


@dataclass
class Limits:
    max_pending: int = 1000  # requests held per service (no ready replica, or all of them busy)
    hold_timeout_s: float = 300.0  # then 503 with Retry-After
    max_body_bytes: int = 16 * 2**20
    upstream_attempts: int = 5  # a replica that refused (went away, shutting down) is tried elsewhere


def _room_after(candidates: list[Endpoint], taken: Endpoint) -> bool:
    """Whether a place is still free once `taken` has one more request in flight."""
    return any(e.has_room(adding=1 if e is taken else 0) for e in candidates)


def _error(status: int, reason: str, message: str, retry_after: int | None = None) -> web.Response:
    """An error about the gateway's own state (holding, waking, replicas failing), in OpenAI's shape;
    `reason` becomes the code a client can act on (for example "service_waking")."""
    code = "".join("_" + c.lower() if c.isupper() else c for c in reason).lstrip("_")
    type_ = "server_error" if status >= 500 else "requests" if status == 429 else "invalid_request_error"
    return errors.openai_error(status, message, type_, code, retry_after=retry_after)


@dataclass
class Call:
    """One request as the gateway resolved it."""
    service: tuple[str, str]
    path: str  # what goes upstream
    body: bytes
    key: ApiKey | None
    model: str  # served name, for usage ("-" when unknown)
    headers: dict[str, str]  # added to the answer (rate-limit headers)
    meter: StreamMeter | None = None  # set for streamed answers that are metered
    usage: Usage | None = None  # of a complete answer
    arrived: float = 0.0  # time.monotonic() at arrival
    held_s: float = 0.0  # how long it waited for a replica
    woke: bool = False  # it found the service without any replica (it waited for a cold start)


class Gateway:
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
        self._pending: dict[tuple[str, str], int] = {}
        self._lines: dict[tuple[str, str], Line] = {}  # the held requests of each service, oldest first
        endpoints.on_added = self._wake_all_held
        self._waking: set[tuple[str, str]] = set()
        self.draining = False  # set on SIGTERM: not ready, and every response closes its connection
        # Services the operator says do not exist, and when it said so: their requests get a 404 at
        # once instead of being held for the whole hold timeout. Forgotten after UNKNOWN_FOR_S.
        self._unknown: dict[tuple[str, str], float] = {}
        self._http: aiohttp.ClientSession | None = None

    async def start(self, app: web.Application) -> None:
        self._http = aiohttp.ClientSession()  # for the operator's wake endpoint only
        # Upstream replicas: keep-alive connections, no total timeout (a generation may stream for minutes).
        self._upstream = UpstreamPool()

    async def stop(self, app: web.Application) -> None:
        if self._http:
            await self._http.close()
        await self._upstream.close()

    def app(self, mount=None) -> web.Application:
        """The gateway's app; `mount(app)` adds routes of its own (the playground) before the catch-all."""
        app = web.Application(client_max_size=self.limits.max_body_bytes)
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
        arrived = time.monotonic()
        key = None
        if self.keys is not None:
            header = request.headers.get("Authorization")
            key = self.keys.authenticate(header)
            if key is None:
                return errors.missing_key() if not header else errors.wrong_key()
        target = route(request.path, request.headers.get("Host"), self.own)
        if target is None and request.method == "GET" and (request.path == "/v1/models"
                                                            or request.path.startswith("/v1/models/")):
            return self._models(request.path, key)
        body = await request.read()
        call = self._resolve(request, target, body, key)
        if isinstance(call, web.Response):
            return call
        if key is not None:
            verdict = self.limiter.admit(key, time.monotonic())
            if not verdict.admitted:
                limit = verdict.headers[f"x-ratelimit-limit-{verdict.which}"]
                return errors.rate_limited(verdict.which, limit, verdict.retry_after_s, verdict.headers)
            call.headers = verdict.headers
        call.arrived = arrived
        response = await self._serve(request, call)
        self._account(call, response)
        return response

    def _resolve(self, request: web.Request, target, body: bytes, key: ApiKey | None) -> Call | web.Response:
        """Which service a request is for, whether its key may use it, and what to send upstream."""
        name, payload = model_in_body(body) if request.method == "POST" else (None, None)
        if target is not None:  # Host or path names the service
            namespace, service, path = target
            entry = self.catalog.entries.get((namespace, service))
            model = entry.served_name if entry else None
        elif request.path.split("/", 2)[1] in API_PREFIXES:  # the one endpoint: the model picks the service
            path = request.path
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
        return Call((namespace, service), path, body, key, model or "-", {}, meter)

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
        self.metrics.duration.labels(namespace, name).observe(time.monotonic() - call.arrived)
        key_id = call.key.id if call.key else "-"
        self.metrics.requests.labels(key_id, call.model, f"{response.status // 100}xx").inc()
        usage = call.meter.usage if call.meter else call.usage
        if usage is not None:
            self.metrics.prompt_tokens.labels(key_id, call.model).inc(usage.prompt)
            self.metrics.completion_tokens.labels(key_id, call.model).inc(usage.completion)
            if call.key is not None:
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
            async with self._http.post(url, json={"pending": self._pending.get(key, 1)},
                                       timeout=aiohttp.ClientTimeout(total=5)) as resp:
                await resp.read()
                if resp.status == 404:
                    now = time.monotonic()
                    # Requests may name any service: forget expired entries so memory stays bounded.
                    self._unknown = {k: t for k, t in self._unknown.items() if now - t < UNKNOWN_FOR_S}
                    self._unknown[key] = now
                    self._wake_all_held(key)  # they get the 404 now
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            log.warning("wake-up of %s/%s failed: %s (the autoscaler still sees the pending gauge)", *key, err)
        finally:
            self._waking.discard(key)

    async def _proxy(self, request, call: Call, endpoint: Endpoint) -> web.StreamResponse | None:
        """Forward to one endpoint; None when it refused before taking the request (try another)."""
        key, body = call.service, call.body
        target = call.path + ("?" + request.query_string if request.query_string else "")
        # The caller's API key is the gateway's business: it never reaches the engine.
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP and k.lower() != "authorization"]
        endpoint.inflight += 1
        inflight = self.metrics.inflight.labels(*key)
        inflight.inc()
        upstream = None
        try:
            try:
                upstream = await self._upstream.request(endpoint.host, endpoint.port, request.method, target,
                                                        headers, body)
            except Refused as err:
                log.info("%s/%s: %s", key[0], key[1], err)
                return None
            if upstream.status != 503:
                self.metrics.answered(key, call.arrived, time.monotonic())
            if upstream.status == 503:
                # A replica shutting down (or not ready) refused it unprocessed: out of rotation for a
                # moment, and the request goes to another replica, or is held and wakes the service.
                endpoint.unavailable_until = time.monotonic() + UNAVAILABLE_S
                upstream.close()
                return None
            out_headers = [(k, v) for k, v in upstream.headers if k.lower() not in HOP]
            # What the gateway did with the request, for clients and the playground to show.
            out_headers.append(("x-tidal-held-seconds", f"{call.held_s:.3f}"))
            if call.woke:
                out_headers.append(("x-tidal-woke", "true"))
            if upstream.content_length is not None and upstream.content_length <= 1 << 20:
                # A small complete answer: one read, one write (most non-streamed completions).
                answer = await upstream.read()
                response = web.Response(status=upstream.status, body=answer)
                for k, v in [*out_headers, *call.headers.items()]:
                    response.headers.add(k, v)
                if upstream.status == 200:
                    call.usage = from_answer(answer)
                return response
            response = web.StreamResponse(status=upstream.status)
            for k, v in [*out_headers, *call.headers.items()]:
                response.headers.add(k, v)
            await response.prepare(request)
            meter = call.meter if upstream.status == 200 else None
            async for chunk in upstream.iter_chunks():  # server-sent events pass through as they come
                out = meter.feed(chunk) if meter else chunk
                if out:
                    await response.write(out)
            if meter:
                await response.write(meter.flush())
            await response.write_eof()
            return response
        except (ConnectionError, asyncio.IncompleteReadError) as err:
            if upstream is not None:
                upstream.close()
            log.warning("%s/%s: upstream %s:%s failed mid-response: %s", key[0], key[1], endpoint.host,
                        endpoint.port, err)
            return _error(502, "UpstreamFailed", f"the replica of {key[0]}/{key[1]} failed while answering")
        finally:
            endpoint.inflight -= 1
            inflight.dec()
            self._room_freed(key)
