"""Each replica's KV prefix cache, as vLLM's automatic prefix caching keeps it: blocks of a prompt, kept after the
request, least recently used evicted first. A request whose leading blocks are in the replica's cache skips their
prefill; only a leading run counts (a block is reusable only after every block before it).

Blocks are those of the trace (Mooncake's `hash_ids`: one id per 512 tokens of the prompt, equal ids for equal
content). Capacity: the replica's KV cache (LatencyModel.kv_cache_tokens) in blocks.
"""

from __future__ import annotations

from collections import OrderedDict

BLOCK_TOKENS = 512  # Mooncake's hash_ids: one per 512 prompt tokens


class KvPrefixCache:
    def __init__(self, capacity_blocks: int):
        self.capacity = max(1, capacity_blocks)
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def reuse(self, blocks: tuple[int, ...]) -> int:
        """How many leading blocks of a prompt are cached (and use them: they become the most recent)."""
        hits = 0
        for block in blocks:
            if block not in self._blocks:
                break
            self._blocks.move_to_end(block)
            hits += 1
        return hits

    def keep(self, blocks: tuple[int, ...]) -> None:
        """The prompt's blocks after its prefill, the least recently used making way."""
        for block in blocks:
            self._blocks[block] = None
            self._blocks.move_to_end(block)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)


def reused_tokens(hit_blocks: int, prompt_tokens: int) -> int:
    """Prompt tokens the engine does not prefill again (at least the last one is always computed)."""
    return max(0, min(hit_blocks * BLOCK_TOKENS, prompt_tokens - 1))


def routing_blocks(blocks: tuple[int, ...], prompt_tokens: int) -> tuple[int, ...]:
    """The prompt's whole blocks, which the simulated gateway keys on (tidal.routing.shared) as the gateway keys
    a prompt on its whole 2048-character chunks (about 512 tokens each); none: least-loaded. Mooncake's ids
    cover every block before them, as the gateway's chunk digests do."""
    return blocks[:prompt_tokens // BLOCK_TOKENS]
