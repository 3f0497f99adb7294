"""The latency model of a simulated engine.

Defaults are roughly Llama-3.1-8B on one H100 with vLLM. On one A100-80G that
model serves about 21 req/s of ~200-in/180-out requests with ~14 ms per output
token; an H100 is about twice as fast, so:

  prefill 0.1 ms per prompt token, decode 7 ms per output token, 10 ms overhead,
  48 requests generating at once (the rest wait in a FIFO queue).

One 200/180 request then takes 10 + 20 + 1260 ms = 1.29 s, and 48 at once give
48 / 1.29 s = 37 req/s per replica, with TTFT = 30 ms when nothing waits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class LatencyModel:
    prefill_s_per_token: float = 0.0001
    decode_s_per_token: float = 0.007
    overhead_s: float = 0.010
    max_concurrency: int = 48
    # KV-cache capacity in tokens; usage = tokens held by running requests / capacity.
    kv_cache_tokens: int = 48 * 4096

    def time_to_first_token(self, prompt_tokens: int) -> float:
        return self.overhead_s + prompt_tokens * self.prefill_s_per_token

    def decode_time(self, output_tokens: int) -> float:
        return max(0, output_tokens) * self.decode_s_per_token

    def service_time(self, prompt_tokens: int, output_tokens: int) -> float:
        return self.time_to_first_token(prompt_tokens) + self.decode_time(output_tokens)

    def scaled(self, slowdown: float) -> "LatencyModel":
        """The same engine on a slower (slowdown > 1) or faster GPU."""
        return replace(self, prefill_s_per_token=self.prefill_s_per_token * slowdown,
                       decode_s_per_token=self.decode_s_per_token * slowdown,
                       overhead_s=self.overhead_s * slowdown)


# Relative speed by GPU product, H100 = 1.
GPU_SLOWDOWN = {"NVIDIA-H100-80GB-HBM3": 1.0, "NVIDIA-A100-SXM4-80GB": 2.0}


def estimate_tokens(text: str) -> int:
    """About four characters per token for English text and code."""
    return max(1, math.ceil(len(text) / 4))


def prompt_tokens(prompt) -> int:
    """Token count of an OpenAI `prompt` (text, list of texts, or token ids) or chat `messages`."""
    if isinstance(prompt, str):
        return estimate_tokens(prompt)
    if isinstance(prompt, list):
        if prompt and all(isinstance(t, int) for t in prompt):
            return len(prompt)
        total = 0
        for item in prompt:
            if isinstance(item, dict):  # a chat message
                content = item.get("content", "")
                total += 4 + (prompt_tokens(content) if content else 0)
            else:
                total += prompt_tokens(item)
        return max(1, total)
    return 1
