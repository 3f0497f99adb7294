"""Which nodes' caches hold a service's model, and what the operator should say and label about it.

A node holds the model once a pod there (a replica, or the prefetch DaemonSet's) has run `tidal fetch-model`
to success: the fetch's init container ended with exit code 0. The operator labels such a node
(`model-cache.tidal.dev/<key>`) so new replicas prefer it; the label is a hint, never a promise: if the cache
later evicted the model (no replica there held it), a replica placed there fetches it again, no worse than
anywhere else. Prefetched models are held by the DaemonSet's pod, so they are not evicted.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..modelcache.layout import FETCH_CONTAINER


def fetched_on(pods: list[dict]) -> set[str]:
    """Nodes where one of these pods' model fetch succeeded."""
    nodes = set()
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        for status in (pod.get("status") or {}).get("initContainerStatuses") or []:
            ended = (status.get("state") or {}).get("terminated") or {}
            if node and status.get("name") == FETCH_CONTAINER and ended and ended.get("exitCode") == 0:
                nodes.add(node)
    return nodes


def in_pool(node: dict, selector: dict[str, str]) -> bool:
    labels = (node.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


@dataclass(frozen=True)
class CachePlan:
    to_label: list[str]  # nodes that hold the model but do not carry its label yet
    cached: int  # pool nodes holding it (labelled, or about to be)
    pool: int  # nodes in the pool


def plan_cache_nodes(nodes: list[dict], selector: dict[str, str], label: str, fetched: set[str]) -> CachePlan:
    """`nodes`: every node the operator knows; `selector`: the replicas' nodeSelector (the pool)."""
    pool = [n for n in nodes if in_pool(n, selector)]
    labelled = {n["metadata"]["name"] for n in nodes if label in ((n.get("metadata") or {}).get("labels") or {})}
    known = {n["metadata"]["name"] for n in nodes}
    to_label = sorted((fetched & known) - labelled)
    holding = labelled | set(to_label)
    return CachePlan(to_label, sum(1 for n in pool if n["metadata"]["name"] in holding), len(pool))


def pool_nodes_holding(nodes: list[dict], selector: dict[str, str], fetched: set[str]) -> int:
    """How many of the pool's nodes are in `fetched` (for prefetch: nodes whose prefetch pod fetched and holds
    the model, which the labels alone cannot say: they outlive a deleted service's DaemonSet)."""
    return sum(1 for n in nodes if in_pool(n, selector) and n["metadata"]["name"] in fetched)


def prefetch_condition(held: int, pool: int, failure: tuple[str, str] | None) -> tuple[str, str, str]:
    """(status, reason, message) of the Prefetched condition, for a service that asked for prefetch: `held`
    of the `pool` nodes have a prefetch pod that fetched the model and holds it."""
    where = f"on {held} of {pool} pool node(s)"
    if pool and held >= pool:
        return "True", "Prefetched", f"the weights are cached {where}"
    if failure is not None:
        return "False", failure[0], f"{failure[1]} (cached {where})"
    if not pool:
        return "False", "NoPoolNodes", "no node matches the service's pool: nothing to prefetch onto"
    return "False", "Prefetching", f"fetching the weights; cached {where} so far"
