"""A FIFO, concurrency-limited request scheduler: the queue every engine has.

`max_concurrency` requests run at once, and with a KV cache only as many as its tokens hold; the rest wait in
arrival order. The counts it keeps (waiting, running) are exactly what the engines export as
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
    def __init__(self, max_concurrency: int, kv_tokens: int | None = None):
        """`kv_tokens`: the KV cache's size; a request then also waits until its tokens fit (None: no limit)."""
        self.max_concurrency = max_concurrency
        self.kv_capacity = kv_tokens
        self.running = 0
        self.kv_held = 0  # tokens of the running requests
        self._waiters: collections.deque[tuple[asyncio.Future, int]] = collections.deque()
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _fits(self, tokens: int) -> bool:
        """A place in the batch, and room in the KV cache (a request larger than the cache runs alone), as vLLM
        admits a request only while its blocks fit."""
        if self.running >= self.max_concurrency:
            return False
        return self.kv_capacity is None or self.running == 0 or self.kv_held + tokens <= self.kv_capacity

    @asynccontextmanager
    async def slot(self, tokens: int = 0):
        """Hold a place for a request of `tokens` KV tokens; yields the seconds spent queued."""
        if self.draining:
            raise Draining()
        queued_at = time.monotonic()
        self._idle.clear()
        if self._waiters or not self._fits(tokens):
            future = asyncio.get_running_loop().create_future()
            self._waiters.append((future, tokens))
            try:
                await future  # admitted by a release, which counted it in
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._release(tokens)  # admitted as we were cancelled
                else:
                    self._waiters = collections.deque(w for w in self._waiters if w[0] is not future)
                    self._admit()
                self._maybe_idle()
                raise
        else:
            self._take(tokens)
        try:
            yield time.monotonic() - queued_at
        finally:
            self._release(tokens)
            self._maybe_idle()

    def _take(self, tokens: int) -> None:
        self.running += 1
        self.kv_held += tokens

    def _release(self, tokens: int) -> None:
        self.running -= 1
        self.kv_held -= tokens
        self._admit()

    def _admit(self) -> None:
        """First come, first served: the oldest waiting requests, as long as each fits."""
        while self._waiters:
            future, tokens = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            if not self._fits(tokens):
                return
            self._waiters.popleft()
            self._take(tokens)
            future.set_result(None)

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
