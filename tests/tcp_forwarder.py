"""A TCP forwarder on loopback in front of a real server, for what the server itself does not report: it counts
the HTTP request lines clients send through it (`GET /bucket/key ...`: how many times S3Proxy served an object)
and can slow the answers down (so a test can kill a download half-way). Bytes pass unchanged, so a client's
AWS signature (which covers the Host it connected to) still verifies at the server."""

from __future__ import annotations

import asyncio
import re
import threading
from collections import Counter

REQUEST_LINE = re.compile(rb"(?:^|\r\n)([A-Z]+) (\S+) HTTP/1\.1\r\n")


class TcpForwarder:
    def __init__(self, target_port: int, bytes_per_s: float | None = None):
        self.target_port, self.bytes_per_s = target_port, bytes_per_s
        self.requests: Counter[tuple[str, str]] = Counter()  # (method, path without the query) -> count
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.port = 0
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def gets(self, prefix: str) -> int:
        """GETs of objects under /<prefix> (listings, which carry a query, are not counted)."""
        return sum(n for (method, path), n in self.requests.items()
                   if method == "GET" and path.startswith(prefix) and "?" not in path)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def upstream() -> None:
            unparsed = b""  # bytes after the last request line found (a line may arrive in two reads)
            while chunk := await reader.read(65536):
                unparsed += chunk
                end = 0
                for match in REQUEST_LINE.finditer(unparsed):
                    self.requests[(match[1].decode(), match[2].decode())] += 1
                    end = match.end()
                unparsed = unparsed[end:][-4096:]
                up_writer.write(chunk)
                await up_writer.drain()
            up_writer.close()

        async def downstream() -> None:
            while chunk := await up_reader.read(16384):
                writer.write(chunk)
                await writer.drain()
                if self.bytes_per_s:
                    await asyncio.sleep(len(chunk) / self.bytes_per_s)
            writer.close()

        try:
            await asyncio.gather(upstream(), downstream())
        except (ConnectionError, OSError):
            writer.close()
            up_writer.close()
