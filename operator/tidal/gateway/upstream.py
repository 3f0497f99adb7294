"""A minimal HTTP/1.1 client for the activator's upstream hop: keep-alive connections per replica,
Content-Length and chunked bodies, nothing else. The replicas are our own engines on the cluster
network, so the general client's features (redirects, cookies, TLS, proxies) are cost with no use:
measured, this hop was a quarter of the activator's CPU per request with aiohttp's client.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import AsyncIterator


class Refused(ConnectionError):
    """The replica did not take the request (not connected, or closed before answering): safe to retry."""


class Response:
    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]], reader, pool, conn):
        self.status, self.reason, self.headers = status, reason, headers
        self._reader, self._pool, self._conn = reader, pool, conn
        lower = {k.lower(): v for k, v in headers}
        self.content_length = int(lower["content-length"]) if "content-length" in lower else None
        self.chunked = "chunked" in lower.get("transfer-encoding", "").lower()
        self._reusable = "close" not in lower.get("connection", "").lower()

    async def read(self) -> bytes:
        if self.content_length is not None:
            body = await self._reader.readexactly(self.content_length)
            self._release()
            return body
        return b"".join([c async for c in self.iter_chunks()])

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        reader = self._reader
        if self.chunked:
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")  # no trailers from our engines
                    break
                yield await reader.readexactly(size)
                await reader.readexactly(2)
            self._release()
        elif self.content_length is not None:
            yield await self.read()
        else:  # delimited by the connection closing
            while chunk := await reader.read(65536):
                yield chunk
            self._close()

    def _release(self) -> None:
        if self._conn is not None:
            if self._reusable:
                self._pool._put(self._conn)
            else:
                self._conn[1].close()
            self._conn = None

    def _close(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            self._conn = None

    def close(self) -> None:
        """Give up on an unread body: the connection cannot be reused."""
        self._close()


# An idle connection is closed after this long. A draining Triton waits for its HTTP connections to
# close before it exits: with idle connections kept open it sat out its whole --exit-timeout-secs (30 s)
# and exited 1. 4 s is also under uvicorn's 5 s keep-alive (vLLM's server), so a reused connection is
# rarely one the replica is closing.
IDLE_S = 4.0


class UpstreamPool:
    def __init__(self, max_idle_per_endpoint: int = 64, connect_timeout: float = 2.0, idle_s: float = IDLE_S):
        self._idle: dict[tuple[str, int], list] = defaultdict(list)  # (host, port) -> [(conn, idle since)]
        self.max_idle = max_idle_per_endpoint
        self.connect_timeout = connect_timeout
        self.idle_s = idle_s
        self._sweeper: asyncio.Task | None = None

    def start_sweeping(self) -> None:
        """Close connections idle longer than idle_s, every second, whether or not requests come."""
        async def sweep_forever():
            while True:
                await asyncio.sleep(1.0)
                self.sweep(time.monotonic())
        self._sweeper = asyncio.get_running_loop().create_task(sweep_forever())

    def sweep(self, now: float) -> None:
        for key in list(self._idle):
            fresh = []
            for conn, since in self._idle[key]:
                if now - since > self.idle_s:
                    conn[1].close()
                else:
                    fresh.append((conn, since))
            if fresh:
                self._idle[key] = fresh
            else:
                del self._idle[key]  # memory bounded by the replicas with idle connections

    def _put(self, conn) -> None:
        idle = self._idle[conn[2]]
        if len(idle) < self.max_idle and not conn[1].is_closing():
            idle.append((conn, time.monotonic()))
        else:
            conn[1].close()

    async def _connect(self, host: str, port: int):
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), self.connect_timeout)
        except (OSError, asyncio.TimeoutError) as err:
            raise Refused(f"{host}:{port}: {err}") from err
        return reader, writer, (host, port)

    async def request(self, host: str, port: int, method: str, target: str, headers: list[tuple[str, str]],
                      body: bytes) -> Response:
        head = [f"{method} {target} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(body)}\r\n"]
        head += [f"{k}: {v}\r\n" for k, v in headers]
        payload = ("".join(head) + "\r\n").encode("latin-1") + body
        idle = self._idle.get((host, port), [])
        while True:
            reused = bool(idle)
            conn = idle.pop()[0] if reused else await self._connect(host, port)
            reader, writer, _ = conn
            try:
                writer.write(payload)
                status_line = await reader.readuntil(b"\r\n")
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as err:
                writer.close()
                if reused:
                    continue  # the replica closed an idle connection: nothing was processed, use a fresh one
                raise Refused(f"{host}:{port}: {err}") from err
            break
        try:
            version, status, *reason = status_line.decode("latin-1").rstrip("\r\n").split(" ", 2)
            raw = await reader.readuntil(b"\r\n\r\n")
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as err:
            writer.close()
            raise ConnectionError(f"{host}:{port}: malformed response: {err}") from err
        headers_out = []
        for line in raw.decode("latin-1").split("\r\n"):
            if ":" in line:
                k, v = line.split(":", 1)
                headers_out.append((k.strip(), v.strip()))
        return Response(int(status), reason[0] if reason else "", headers_out, reader, self, conn)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conns in self._idle.values():
            for conn, _ in conns:
                conn[1].close()
        self._idle.clear()
