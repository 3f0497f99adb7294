"""A stand-in for a Kubernetes Service in front of activator replicas that run as local processes:
round-robin over the current backends, one TCP connection to one backend, as kube-proxy does.
Removing a backend affects new connections only, like an EndpointSlice update. (A real Service
cannot be used: the activator processes are not pods, and loopback addresses are not allowed in
EndpointSlices.)"""

from __future__ import annotations

import asyncio
import itertools
import threading


class ServiceProxy:
    def __init__(self):
        self.backends: list[int] = []  # ports on 127.0.0.1
        self._counter = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.port = 0
        threading.Thread(target=self._run, daemon=True, name="service-proxy").start()
        self._ready.wait(10)

    def _run(self):
        asyncio.set_event_loop(self._loop)

        async def start():
            server = await asyncio.start_server(self._connection, "127.0.0.1", 0, backlog=1024)
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
        self._loop.run_until_complete(start())
        self._loop.run_forever()

    async def _connection(self, reader, writer):
        backends = list(self.backends)
        if not backends:
            writer.close()
            return
        port = backends[next(self._counter) % len(backends)]
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
