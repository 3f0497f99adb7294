"""A streamed request held through a long wake: proxies and load balancers commonly cut a connection that is
silent for 60 s, and a cold start takes minutes. So a held request that asked for a stream (`"stream": true`)
gets its answer begun once it has waited `keepalive_s` (15 s by default): status 200, `text/event-stream`, and
an SSE comment line (`: waiting for <model>`, which every SSE client skips) every `keepalive_s` until a replica
takes it; then the engine's events follow on the same answer. An error after the answer has begun (the hold
limit passed, no replica accepted it) is one SSE event in OpenAI's error shape, `data: {"error": {...}}`, which
the `openai` client raises as an APIError: never a silent drop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from aiohttp import web


async def hold(request: web.Request, model: str, keepalive_s: float, find: Callable[[], Awaitable],
               opened: web.StreamResponse | None) -> tuple[object, web.StreamResponse | None]:
    """What `find()` gives (a replica, or the error of a hold that ended), and the answer begun meanwhile if the
    wait outlasted `keepalive_s` (or the one begun before a retry)."""
    task = asyncio.ensure_future(find())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=keepalive_s)
            if done:
                return task.result(), opened
            if opened is None:
                opened = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream",
                                                                 "Cache-Control": "no-cache"})
                await opened.prepare(request)
            await opened.write(f": waiting for {model}\n\n".encode())
    finally:
        if not task.done():  # the client went away (or we were cancelled): the held request leaves its line
            task.cancel()


async def fail(opened: web.StreamResponse, error: web.Response) -> web.StreamResponse:
    """An error (a gateway error, or an engine's) as the last event of a begun stream."""
    try:
        body = json.loads(error.body) if error.body else None
    except ValueError:
        body = None
    if not (isinstance(body, dict) and isinstance(body.get("error"), dict)):
        text = error.body.decode(errors="replace")[:2000] if isinstance(error.body, bytes) else ""
        body = {"error": {"message": f"the model's server answered {error.status}: {text}",
                          "type": "server_error", "param": None, "code": "upstream_error"}}
    await opened.write(b"data: " + json.dumps(body).encode() + b"\n\n")
    await opened.write_eof()
    return opened
