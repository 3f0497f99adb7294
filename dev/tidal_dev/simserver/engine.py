"""The engine core shared by the simulated vLLM and Triton servers: queue, timing, KV usage."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from tidal.simulate.latency import LatencyModel
from .scheduler import FifoScheduler

# Streams are written in chunks of about this many seconds of decoding, so a
# replica generating 48 streams costs ~1,000 timer wake-ups per second, not one per token.
STREAM_CHUNK_S = 0.05


@dataclass(frozen=True)
class Timings:
    queued_s: float
    ttft_s: float
    e2e_s: float


class Engine:
    def __init__(self, latency: LatencyModel):
        self.latency = latency
        self.scheduler = FifoScheduler(latency.max_concurrency, latency.kv_cache_tokens)

    @property
    def kv_cache_usage(self) -> float:
        return min(1.0, self.scheduler.kv_held / self.latency.kv_cache_tokens)

    async def run(self, prompt_tokens: int, output_tokens: int,
                  on_tokens: Callable[[int], Awaitable[None]] | None = None) -> Timings:
        """Queue, prefill, decode. `on_tokens(n)` is awaited as each chunk of n tokens is produced."""
        started = time.monotonic()
        async with self.scheduler.slot(prompt_tokens + output_tokens) as queued_s:
            await asyncio.sleep(self.latency.time_to_first_token(prompt_tokens))
            ttft = time.monotonic() - started
            if on_tokens is None:
                await asyncio.sleep(self.latency.decode_time(max(0, output_tokens - 1)))
            else:
                await self._stream(output_tokens, on_tokens)
        return Timings(queued_s, ttft, time.monotonic() - started)

    async def _stream(self, output_tokens: int, on_tokens) -> None:
        if output_tokens <= 0:
            return
        await on_tokens(1)  # the first token comes with the prefill
        per_chunk = max(1, int(STREAM_CHUNK_S / self.latency.decode_s_per_token)) if self.latency.decode_s_per_token else output_tokens
        remaining = output_tokens - 1
        while remaining > 0:
            n = min(per_chunk, remaining)
            await asyncio.sleep(self.latency.decode_time(n))
            await on_tokens(n)
            remaining -= n
