"""A minimal HTTP/1.1 client for the activator's upstream hop: keep-alive connections per replica,
Content-Length and chunked bodies, nothing else. The replicas are our own engines on the cluster
network, so the general client's features (redirects, cookies, TLS, proxies) are cost with no use:
measured, this hop was a quarter of the activator's CPU per request with aiohttp's client.
"""

from __future__ import annotations

import asyncio
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


class UpstreamPool:
    def __init__(self, max_idle_per_endpoint: int = 64, connect_timeout: float = 2.0):
        self._idle: dict[tuple[str, int], list] = defaultdict(list)
        self.max_idle = max_idle_per_endpoint
        self.connect_timeout = connect_timeout

    def _put(self, conn) -> None:
        idle = self._idle[conn[2]]
        if len(idle) < self.max_idle and not conn[1].is_closing():
            idle.append(conn)
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
        idle = self._idle[(host, port)]
        while True:
            reused = bool(idle)
            conn = idle.pop() if reused else await self._connect(host, port)
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
        for conns in self._idle.values():
            for conn in conns:
                conn[1].close()
        self._idle.clear()
