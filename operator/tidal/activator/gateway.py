"""The activator's HTTP gateway."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from .endpoints import Endpoint, Endpoints
from .line import Line
from .routing import route
from .upstream import Refused, UpstreamPool

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


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        labels = ["namespace", "tidal_dev_inferenceservice"]
        self.pending = Gauge("tidal_activator_pending_requests", "Requests held: the service has no ready "
                             "replica, or every ready replica has its capacity in flight.", labels,
                             registry=self.registry)
        self.inflight = Gauge("tidal_activator_inflight_requests", "Requests being proxied.", labels,
                              registry=self.registry)
        self.responses = Counter("tidal_activator_responses", "Responses by status class.",
                                 labels + ["code"], registry=self.registry)


def _room_after(candidates: list[Endpoint], taken: Endpoint) -> bool:
    """Whether a place is still free once `taken` has one more request in flight."""
    return any(e.has_room(adding=1 if e is taken else 0) for e in candidates)


def _error(status: int, reason: str, message: str, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.json_response({"error": {"type": reason, "message": message, "code": status}}, status=status,
                             headers=headers)


class Gateway:
    def __init__(self, endpoints: Endpoints, operator_url: str | None, limits: Limits = Limits(),
                 own: tuple[str, str] | None = None):
        self.own = own
        self.endpoints = endpoints
        self.operator_url = operator_url.rstrip("/") if operator_url else None
        self.limits = limits
        self.metrics = Metrics()
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

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.limits.max_body_bytes)
        app.on_startup.append(self.start)
        app.on_cleanup.append(self.stop)
        app.on_response_prepare.append(self._close_while_draining)
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
        target = route(request.path, request.headers.get("Host"), self.own)
        if target is None:
            return _error(404, "UnknownService", "name the InferenceService: /<namespace>/<name>/<path> or "
                                                 "Host: <name>.<namespace>")
        namespace, name, path = target
        key = (namespace, name)
        body = await request.read()
        response = await self._serve(request, key, path, body)
        self.metrics.responses.labels(namespace, name, f"{response.status // 100}xx").inc()
        return response

    async def _serve(self, request, key, path, body) -> web.StreamResponse:
        tried: set[int] = set()
        for _ in range(self.limits.upstream_attempts):
            endpoint = await self._endpoint(key, tried)
            if isinstance(endpoint, web.Response):
                return endpoint
            tried.add(id(endpoint))
            result = await self._proxy(request, key, endpoint, path, body)
            if result is not None:
                return result
        return _error(502, "UpstreamUnavailable", f"no replica of {key[0]}/{key[1]} accepted the request after "
                                                   f"{self.limits.upstream_attempts} attempts", retry_after=1)

    async def _endpoint(self, key, tried: set[int]) -> Endpoint | web.Response:
        """The least busy ready endpoint with room. The request is held in the service's line while
        the service has no ready replica (and the service is woken), or while every replica has its
        capacity in flight or older requests are waiting."""
        deadline = time.monotonic() + self.limits.hold_timeout_s
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
                self._pending[key] -= 1
                self.metrics.pending.labels(*key).set(self._pending[key])
                if not self._pending[key]:
                    del self._pending[key]
                    self._lines.pop(key, None)

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

    async def _proxy(self, request, key, endpoint: Endpoint, path, body) -> web.StreamResponse | None:
        """Forward to one endpoint; None when it refused before taking the request (try another)."""
        target = path + ("?" + request.query_string if request.query_string else "")
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP]
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
            if upstream.status == 503:
                # A replica shutting down (or not ready) refused it unprocessed: out of rotation for a
                # moment, and the request goes to another replica, or is held and wakes the service.
                endpoint.unavailable_until = time.monotonic() + UNAVAILABLE_S
                upstream.close()
                return None
            out_headers = [(k, v) for k, v in upstream.headers if k.lower() not in HOP]
            if upstream.content_length is not None and upstream.content_length <= 1 << 20:
                # A small complete answer: one read, one write (most non-streamed completions).
                response = web.Response(status=upstream.status, body=await upstream.read())
                for k, v in out_headers:
                    response.headers.add(k, v)
                return response
            response = web.StreamResponse(status=upstream.status)
            for k, v in out_headers:
                response.headers.add(k, v)
            await response.prepare(request)
            async for chunk in upstream.iter_chunks():  # server-sent events pass through as they come
                await response.write(chunk)
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
