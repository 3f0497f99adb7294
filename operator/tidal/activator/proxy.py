"""The proxy hop: forward one request to one replica and pass its answer through as it comes, metered."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from ..engines.base import refusals
from .call import Call
from .endpoints import Endpoint
from .errors import gateway_error as _error
from .upstream import Refused
from .usage import from_answer

log = logging.getLogger("tidal.activator")
REFUSALS = refusals()  # engines' answers that mean "not processed, try another replica"
# A replica that refused a request because it is shutting down stays out of rotation this long.
UNAVAILABLE_S = 5.0
# Headers that describe one hop, not the request (RFC 9110 7.6.1), and what aiohttp sets itself.
HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
       "transfer-encoding", "upgrade", "host", "content-length"}


class Proxying:
    """The gateway's proxy part (a mixin: it shares the gateway's upstream pool and metrics)."""

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
        sent = time.monotonic()
        try:
            try:
                upstream = await self._upstream.request(endpoint.host, endpoint.port, request.method, target,
                                                        headers, body)
            except Refused as err:
                log.info("%s/%s: %s", key[0], key[1], err)
                return None
            answer = None
            if upstream.status == 500 and upstream.content_length is not None and upstream.content_length <= 4096:
                answer = await upstream.read()  # small: an engine's error, perhaps its refusal while draining
            if upstream.status == 503 or (answer is not None and any(r in answer for r in REFUSALS)):
                # A replica shutting down (or not ready) refused it unprocessed: out of rotation for a
                # moment, and the request goes to another replica, or is held and wakes the service.
                endpoint.unavailable_until = time.monotonic() + UNAVAILABLE_S
                upstream.close()
                return None
            self.metrics.answered(key, call.arrived, time.monotonic())
            out_headers = [(k, v) for k, v in upstream.headers if k.lower() not in HOP]
            # What the gateway did with the request, for clients and the playground to show.
            out_headers.append(("x-tidal-held-seconds", f"{call.held_s:.3f}"))
            if call.woke:
                out_headers.append(("x-tidal-woke", "true"))
            if upstream.content_length is not None and upstream.content_length <= 1 << 20:
                # A small complete answer: one read, one write (most non-streamed completions).
                if answer is None:
                    answer = await upstream.read()
                response = web.Response(status=upstream.status, body=answer)
                for k, v in [*out_headers, *call.headers.items()]:
                    response.headers.add(k, v)
                if upstream.status == 200:
                    call.usage = from_answer(answer)
                    self.demand.served(key, time.monotonic() - sent)
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
            self._room_freed(key)
