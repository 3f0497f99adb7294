"""The proxy hop: forward one request to one replica and pass its answer through as it comes, metered."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiohttp import web

from ..engines.base import refusals
from .call import Call
from .demand import Demand
from .endpoints import Endpoint
from . import keepalive
from .errors import gateway_error as _error
from .metrics import Metrics
from .unprocessed import EMPTY, STREAM_HEAD_LIMIT, aborted_unprocessed, stream_verdict
from .upstream import Refused, UpstreamPool
from .usage import from_answer

log = logging.getLogger("tidal.gateway")
REFUSALS = refusals()  # engines' answers that mean "not processed, try another replica"
# A replica that refused a request because it is shutting down stays out of rotation this long.
UNAVAILABLE_S = 5.0
# One that took no connection is tried again after this long: its pod can be listed as Ready a moment before
# its server listens, or after its process died and before the pod watch says so. Nothing reached it, so the
# request looks for another replica, or waits within the hold limit (hold.py), instead of failing.
UNREACHABLE_S = 1.0
# Headers that describe one hop, not the request (RFC 9110 7.6.1), and what aiohttp sets itself.
HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
       "transfer-encoding", "upgrade", "host", "content-length"}


class Proxy:
    """The gateway's proxy part: keep-alive connections to the replicas, and the hop itself."""

    def __init__(self, metrics: Metrics, demand: Demand, room_freed: Callable[[tuple[str, str]], None]):
        self.metrics, self.demand = metrics, demand
        self.room_freed = room_freed  # a request left a replica: the next held one may take its place
        self._upstream: UpstreamPool | None = None

    async def start(self) -> None:
        # Keep-alive connections, no total timeout (a generation may stream for minutes).
        self._upstream = UpstreamPool()
        self._upstream.start_sweeping()

    async def stop(self) -> None:
        if self._upstream is not None:
            await self._upstream.close()

    async def forward(self, request, call: Call, endpoint: Endpoint,
                      opened: web.StreamResponse | None = None) -> web.StreamResponse | None:
        """Forward to one endpoint; None when it refused before taking the request (try another). `opened`: the
        answer already begun for a streamed request held through a long wake (keepalive.py)."""
        key, body = call.service, call.body
        target = call.path  # as the caller encoded it, query included (request_checks.py)
        # The caller's API key is the gateway's business: it never reaches the engine.
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP and k.lower() != "authorization"]
        endpoint.inflight += 1
        inflight = self.metrics.inflight.labels(*key)
        inflight.inc()
        upstream = None
        sent = time.monotonic()
        try:
            try:
                upstream = await self._upstream.request(endpoint.host, endpoint.port, request.method, target,
                                                        headers, body)
            except Refused as err:
                log.info("%s/%s: %s", key[0], key[1], err)
                self.metrics.retried.labels(*key, "connection").inc()
                endpoint.unavailable_until = time.monotonic() + UNREACHABLE_S
                return None
            answer = None
            small = upstream.content_length is not None and upstream.content_length <= 1 << 20
            if small:
                answer = await upstream.read()  # a complete answer, or an engine's error (perhaps a refusal)
            refused = upstream.status == 503 or (
                upstream.status == 500 and answer is not None and any(r in answer for r in REFUSALS))
            if refused or (upstream.status == 200 and answer is not None and aborted_unprocessed(answer)):
                return self._given_back(key, endpoint, upstream, "draining" if refused else "empty")
            chunks, head = upstream.iter_chunks(), b""
            if upstream.status == 200 and answer is None and _event_stream(upstream):
                try:
                    head, _ = await _stream_head(chunks)
                except (ConnectionError, asyncio.IncompleteReadError):
                    # The replica went away (killed at the end of its grace period) before its first token:
                    # nothing was generated and nothing reached the client, so another replica takes it.
                    return self._given_back(key, endpoint, upstream, "empty")
                if stream_verdict(head, REFUSALS) == EMPTY:
                    return self._given_back(key, endpoint, upstream, "empty")
            self.metrics.answered(key, call.arrived, time.monotonic())
            out_headers = [(k, v) for k, v in upstream.headers if k.lower() not in HOP]
            # What the gateway did with the request, for clients and the playground to show.
            out_headers.append(("x-tidal-held-seconds", f"{call.held_s:.3f}"))
            if call.woke:
                out_headers.append(("x-tidal-woke", "true"))
            if opened is not None and upstream.status != 200:  # the stream has begun: the error is its last event
                body = answer if answer is not None else await upstream.read()  # an error: small
                return await keepalive.fail(opened, web.Response(status=upstream.status, body=body))
            if small and opened is None:
                # A small complete answer: one read, one write (most non-streamed completions).
                response = web.Response(status=upstream.status, body=answer)
                for k, v in [*out_headers, *call.headers.items()]:
                    response.headers.add(k, v)
                if upstream.status == 200:
                    call.usage = from_answer(answer)
                    self.demand.served(key, time.monotonic() - sent)
                return response
            if opened is not None:
                response = opened  # begun while held: the engine's events follow the keep-alive comments
                if small:
                    head = answer
            else:
                response = web.StreamResponse(status=upstream.status)
                for k, v in [*out_headers, *call.headers.items()]:
                    response.headers.add(k, v)
                await response.prepare(request)
            meter = call.meter if upstream.status == 200 else None
            if head:
                out = meter.feed(head) if meter else head
                if out:
                    await response.write(out)
            async for chunk in chunks:  # server-sent events pass through as they come
                out = meter.feed(chunk) if meter else chunk
                if out:
                    await response.write(out)
            if meter:
                await response.write(meter.flush())
            await response.write_eof()
            if upstream.status == 200:
                self.demand.served(key, time.monotonic() - sent)
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
            self.room_freed(key)

    def _given_back(self, key, endpoint: Endpoint, upstream, why: str) -> None:
        """The replica gave the request back unprocessed (shutting down, not ready, or aborted before its
        first token): out of rotation for a moment, and the request goes to another replica, or is held and
        wakes the service."""
        log.info("%s/%s: %s:%s gave a request back unprocessed (%s): sent elsewhere", key[0], key[1],
                 endpoint.host, endpoint.port, why)
        self.metrics.retried.labels(*key, why).inc()
        endpoint.unavailable_until = time.monotonic() + UNAVAILABLE_S
        upstream.close()
        return None


def _event_stream(upstream) -> bool:
    return any(k.lower() == "content-type" and v.lower().startswith("text/event-stream") for k, v in upstream.headers)


async def _stream_head(chunks) -> tuple[bytes, bool]:
    """A stream's first bytes, read until they show whether the replica is generating; and whether the
    stream already ended."""
    head = b""
    while stream_verdict(head, REFUSALS) is None and len(head) < STREAM_HEAD_LIMIT:
        try:
            head += await chunks.__anext__()
        except StopAsyncIteration:
            return head, True
    return head, False
