"""Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam, 2018): a key goes to the replica that
owns its place on a hash ring, unless that replica already carries more than its share of the load times
LOAD_FACTOR; then to the next replica clockwise that does not.

- Each replica owns VNODES points on the ring (hashes of its name), so a replica joining or leaving moves
  about 1/N of the keys, and only its own: 4 -> 5 replicas move ~20 % of keys, all of them to the new one.
- The bound: with `total` requests in flight (this one included) over N replicas, none may carry more than
  ceil(LOAD_FACTOR * total / N). At 1.25, with 8 in flight over 2 replicas, at most 5 on one: a hot
  conversation overflows to the next replica instead of queueing behind itself.
"""

from __future__ import annotations

import bisect
import hashlib
import math

LOAD_FACTOR = 1.25
VNODES = 64


def _point(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def load_bound(total: int, replicas: int, factor: float = LOAD_FACTOR) -> int:
    """The most requests one replica may carry when `total` are in flight (counting the one being placed)."""
    return max(1, math.ceil(factor * total / max(1, replicas)))


class HashRing:
    def __init__(self, members: list[str], vnodes: int = VNODES):
        self.members = tuple(sorted(set(members)))
        points = sorted((_point(f"{m}#{i}"), m) for m in self.members for i in range(vnodes))
        self._hashes = [h for h, _ in points]
        self._owners = [m for _, m in points]

    def owner(self, key: str) -> str | None:
        """The replica that owns the key, whatever the loads."""
        return next(self.walk(key), None)

    def walk(self, key: str):
        """The replicas in ring order from the key's place, each once."""
        if not self._hashes:
            return
        start, seen = bisect.bisect(self._hashes, _point(key)), set()
        for i in range(len(self._hashes)):
            member = self._owners[(start + i) % len(self._owners)]
            if member not in seen:
                seen.add(member)
                yield member
                if len(seen) == len(self.members):
                    return

    def pick(self, key: str, loads: dict[str, int], eligible: set[str] | None = None,
             factor: float = LOAD_FACTOR) -> str | None:
        """The first replica from the key's place that is eligible and under the bound (None if none is
        eligible). `loads`: requests in flight on each member."""
        allowed = [m for m in self.members if eligible is None or m in eligible]
        if not allowed:
            return None
        bound = load_bound(sum(loads.get(m, 0) for m in allowed) + 1, len(allowed), factor)
        fallback = None
        for member in self.walk(key):
            if eligible is not None and member not in eligible:
                continue
            if loads.get(member, 0) + 1 <= bound:
                return member
            fallback = fallback or member
        return fallback
