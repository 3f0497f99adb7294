"""A FIFO, concurrency-limited request scheduler: the queue every engine has.

`max_concurrency` requests run at once; the rest wait in arrival order. The
counts it keeps (waiting, running) are exactly what the engines export as
`vllm:num_requests_waiting` / `nv_inference_pending_request_count`.
"""

from __future__ import annotations

import asyncio
import collections
import time
from contextlib import asynccontextmanager


class Draining(Exception):
    """The server is shutting down and takes no new requests."""


class FifoScheduler:
    def __init__(self, max_concurrency: int):
        self.max_concurrency = max_concurrency
        self.running = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @asynccontextmanager
    async def slot(self):
        """Hold one of the concurrency slots; yields the seconds spent queued."""
        if self.draining:
            raise Draining()
        queued_at = time.monotonic()
        self._idle.clear()
        if self.running >= self.max_concurrency or self._waiters:
            future = asyncio.get_running_loop().create_future()
            self._waiters.append(future)
            try:
                await future  # the releasing request hands its slot over
            except asyncio.CancelledError:
                if future in self._waiters:
                    self._waiters.remove(future)
                elif future.done() and not future.cancelled():
                    self._release()  # the slot was handed to us as we were cancelled
                self._maybe_idle()
                raise
        else:
            self.running += 1
        try:
            yield time.monotonic() - queued_at
        finally:
            self._release()
            self._maybe_idle()

    def _release(self) -> None:
        while self._waiters:
            nxt = self._waiters.popleft()
            if not nxt.done():
                nxt.set_result(None)  # slot passes on; `running` stays the same
                return
        self.running -= 1

    def _maybe_idle(self) -> None:
        if self.running == 0 and not self._waiters:
            self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Stop taking requests and wait up to `timeout` s for in-flight ones; True if all finished."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False
