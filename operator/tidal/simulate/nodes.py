"""GPU nodes with a model cache each, for `tidal simulate --model-cache on|off`.

A cold start is then two phases: fetching the weights (model size / the store's bandwidth) and loading them
(--cold-start). With the cache on, a node keeps the models it fetched (least recently used make way within
its budget, never one a replica on the node runs); a replica goes to a node that holds its model when one has
a free GPU, and replicas of one model starting together on one node share one fetch. With the cache off, every
cold start fetches (each replica downloads into its own pod, as without Tidal's cache).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CacheModel:
    enabled: bool
    model_gb: float = 16.0  # an 8B model in 16-bit weights
    fetch_gb_per_s: float = 0.5  # from the model store to one node (S3 or the Hub: 16 GB in 32 s)
    cache_gb_per_node: float = 500.0
    gpus_per_node: int = 8
    prefetch: bool = False  # the pool's nodes get every model before the first request (spread within budgets)


@dataclass
class Node:
    free: int
    cached: OrderedDict = field(default_factory=OrderedDict)  # model -> when its fetch completes (LRU order)
    running: Counter = field(default_factory=Counter)  # model -> replicas on this node using it


class Nodes:
    def __init__(self, model: CacheModel, gpus: int):
        self.model = model
        per = model.gpus_per_node
        self.nodes = [Node(min(per, gpus - i)) for i in range(0, gpus, per)]
        self.fetches: list[float] = []  # the fetch phase of every cold start placed (0 for a cache hit)
        self.loads: list[float] = []  # its load phase (the engine loading the weights)

    def prefetch(self, names: list[str]) -> None:
        """Every model onto as many nodes as the budgets allow, spread evenly: 50 models of 16 GB on 8 nodes of
        500 GB (31 models each) are 4 copies of each, on 4 different nodes."""
        per_node = int(self.model.cache_gb_per_node // self.model.model_gb)
        copies = min(len(self.nodes), per_node * len(self.nodes) // max(1, len(names)))
        for i, name in enumerate(names):
            for k in range(copies):
                self.nodes[(i * copies + k) % len(self.nodes)].cached[name] = 0.0

    def place(self, name: str, now: float) -> tuple[int, float]:
        """(node, seconds until the weights are on it) for a replica of model `name`; a GPU must be free."""
        usable = [i for i, n in enumerate(self.nodes) if n.free > 0]
        holding = [i for i in usable if name in self.nodes[i].cached] if self.model.enabled else []
        # Locality first; otherwise the emptiest node, so that models spread and each node's cache stays useful.
        index = min(holding or usable, key=lambda i: -self.nodes[i].free)
        node = self.nodes[index]
        node.free -= 1
        node.running[name] += 1
        fetch_s = self.model.model_gb / self.model.fetch_gb_per_s
        if self.model.enabled:
            if name in node.cached:
                fetch_s = max(0.0, node.cached[name] - now)  # there, or on its way (one fetch per node)
                node.cached.move_to_end(name)
            elif self._make_room(node, name):
                node.cached[name] = now + fetch_s
        self.fetches.append(fetch_s)
        return index, fetch_s

    def release(self, index: int, name: str) -> None:
        node = self.nodes[index]
        node.free += 1
        node.running[name] -= 1

    def _make_room(self, node: Node, name: str) -> bool:
        """Evict least recently used models no replica on the node runs until `name` fits; False: it does not
        (the fetch then serves its replica without being kept)."""
        budget, size = self.model.cache_gb_per_node, self.model.model_gb
        for victim in list(node.cached):
            if (len(node.cached) + 1) * size <= budget:
                break
            if node.running[victim] == 0:
                del node.cached[victim]
        return (len(node.cached) + 1) * size <= budget

    def hit_ratio(self) -> float | None:
        return sum(1 for f in self.fetches if f == 0) / len(self.fetches) if self.fetches else None
