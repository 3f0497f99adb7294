"""A plain upstream that records every byte the gateway sends it: an asyncio server on loopback in a thread
of its own, answering each request it can frame (Content-Length bodies) with a small JSON 200 on the same
keep-alive connection, as an engine would. Tests read `received` to see what an engine was really sent."""

from __future__ import annotations

import asyncio
import threading


class UpstreamRecorder:
    def __init__(self):
        self.received: list[bytes] = []  # everything one connection carried, one entry per connection
        self.requests: list[bytes] = []  # each request head it answered
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.port = 0

    def __enter__(self) -> "UpstreamRecorder":
        threading.Thread(target=self._run, daemon=True, name="upstream-recorder").start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)

    def all_bytes(self) -> bytes:
        return b"".join(self.received)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.received)
        self.received.append(b"")
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.received[index] += head
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                body = await reader.readexactly(length) if length else b""
                self.received[index] += body
                self.requests.append(head)
                answer = b'{"object":"text_completion","choices":[{"text":"ok"}]}'
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(answer)).encode() + b"\r\n\r\n" + answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            rest = reader._buffer if hasattr(reader, "_buffer") else b""  # bytes it could not frame count too
            self.received[index] += bytes(rest)
            writer.close()
