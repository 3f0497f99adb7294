"""Keys that reach past what conversations share: a system prompt or tool definitions that every conversation
begins with.

Keyed on its first chunk, every conversation behind one long shared system prompt has the same key: all of them
belong to one replica, the bound spills the rest over the others in the ring's order, and a conversation's turns
land wherever the load allows — least-loaded with extra steps. Simulated on Mooncake's trace with an 8-block
(4,096-token) prompt put in front of every conversation, x1: TTFT p50 10.36 s against least-loaded's 4.46 s.

So the gateway learns where prompts part: for each leading prefix (a chunk's digest, which covers every chunk
before it) it remembers up to SHARED_BY (4) different chunks seen after it. A prefix followed by four different
chunks is shared, and a prompt's key is the digest of the chunk just past the deepest shared prefix it begins
with (its first chunk's when there is none). Every conversation behind the same system prompt then keys on its
own first message, on every turn: its turns only ever append, so they never part from each other. Four, not
two: a conversation whose answer was regenerated once or twice has parted from itself, and it should stay where
its history is; a prompt four conversations begin with is one many will.

What it costs: the first conversations behind a new system prompt, before it is known to be shared, key on its
first chunk and move once (the fourth teaches it; all key past it from then on). Each gateway replica learns
from what it sees, so a few conversations may key differently on two replicas until both have seen the prompt
shared. Memory: at most `capacity` prefixes, least recently seen forgotten first (a shared prompt is seen by
every conversation behind it, so it stays); 32,768 of them took 7.9 MB (measured with tracemalloc, 32-chunk
prompts).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

CAPACITY = 32_768  # prefixes remembered, across every service: 7.9 MB
SHARED_BY = 4  # different chunks seen after a prefix that make it shared (why four: above)
MAX_CHUNKS = 32  # how deep a shared prefix is looked for: 32 chunks of 2,048 characters, about 16,000 tokens


class SharedPrefixes:
    def __init__(self, capacity: int = CAPACITY):
        self.capacity = capacity
        self._after: OrderedDict[Hashable, tuple] = OrderedDict()  # prefix -> up to SHARED_BY different next chunks

    def key(self, digests: Sequence[Hashable]) -> Hashable | None:
        """The digest to key a prompt on, given its leading chunks' digests (each covering all before it);
        None without a whole chunk. Learns from the prompt first, so the fourth conversation behind a
        prompt already keys past it."""
        digests = digests[:MAX_CHUNKS]
        if not digests:
            return None
        self._learn(digests)
        chosen = digests[0]
        for depth in range(len(digests) - 1):
            if len(self._after.get(digests[depth], ())) >= SHARED_BY:
                chosen = digests[depth + 1]
        return chosen

    def _learn(self, digests: Sequence[Hashable]) -> None:
        for prefix, following in zip(digests, digests[1:]):
            seen = self._after.get(prefix, ())
            if following not in seen and len(seen) < SHARED_BY:
                seen = (*seen, following)
            self._after[prefix] = seen
            self._after.move_to_end(prefix)
        while len(self._after) > self.capacity:
            self._after.popitem(last=False)
