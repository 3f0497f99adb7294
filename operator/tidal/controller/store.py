"""What the operator knows between events, in memory, bounded by the number of services and nodes.

Filled by watches (kopf event handlers), read by the reconciler and the autoscaler loop, so a
tick reads nothing from the apiserver. Status writes go through `update_status`, which carries
the resourceVersion it started from: two writers (reconciler, autoscaler) never overwrite each
other's newer status; a conflict is re-read and re-planned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..clients.kube import Conflict, Kube
from ..planning.served_names import Claim, claims_of

Key = tuple[str, str]  # (namespace, name)

# Prometheus' default lookback is 5 minutes: after 10, a deleted pod's samples cannot be returned.
DEPARTED_MEMORY_S = 600.0
DEPARTED_PER_SERVICE = 256


@dataclass
class DeploymentState:
    replicas: int  # spec.replicas
    ready: int  # status.readyReplicas
    unavailable_reason: str | None = None  # a replica the ResourceQuota refused: the Deployment's message


@dataclass
class ServiceStore:
    services: dict[Key, dict] = field(default_factory=dict)  # InferenceService bodies
    deployments: dict[Key, DeploymentState] = field(default_factory=dict)
    nodes: dict[str, dict] = field(default_factory=dict)  # slim nodes: labels and allocatable
    # Per service, the uids of its pods the scheduler reported Unschedulable (kept from the pod watch).
    unschedulable: dict[Key, set[str]] = field(default_factory=dict)
    # Per service, pods deleted lately (name -> when): Prometheus may still show their last samples.
    departed: dict[Key, dict[str, float]] = field(default_factory=dict)
    # served name -> the services claiming it (usually one)
    claims: dict[str, dict[Key, Claim]] = field(default_factory=dict)
    # The GPUs our scheduled pods take, by pod uid: (node, GPUs). What is free in a pool is its nodes'
    # allocatable less these (other workloads on the pool show up as Pending replicas instead).
    gpu_pods: dict[str, tuple[str, int]] = field(default_factory=dict)

    def gpus_used(self) -> dict[str, int]:
        used: dict[str, int] = {}
        for node, gpus in self.gpu_pods.values():
            used[node] = used.get(node, 0) + gpus
        return used

    def pod_departed(self, key: Key, name: str, now: float) -> None:
        pods = self.departed.setdefault(key, {})
        pods[name] = now
        while len(pods) > DEPARTED_PER_SERVICE:  # a service churning pods fast: forget the oldest
            del pods[next(iter(pods))]

    def pod_present(self, key: Key, name: str) -> None:
        pods = self.departed.get(key)
        if pods and pods.pop(name, None) is not None and not pods:
            del self.departed[key]

    def is_departed(self, key: Key, name: str) -> bool:
        return name in self.departed.get(key, ())

    def forget_departed_before(self, cutoff: float) -> None:
        for key in list(self.departed):
            pods = self.departed[key]
            for name in [n for n, at in pods.items() if at < cutoff]:
                del pods[name]
            if not pods:
                del self.departed[key]

    def set_pod_schedulable(self, key: Key, uid: str, schedulable: bool) -> None:
        pods = self.unschedulable.setdefault(key, set())
        if schedulable:
            pods.discard(uid)
            if not pods:
                self.unschedulable.pop(key, None)
        else:
            pods.add(uid)

    def put_service(self, body: dict) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        self._unindex(key)
        self.services[key] = body
        for claim in claims_of(body):
            self.claims.setdefault(claim.served_name, {})[key] = claim

    def claimants(self, served_name: str) -> list[Claim]:
        """Every service claiming a served name (kept as an index: no scan of all services per event)."""
        return list(self.claims.get(served_name, {}).values())

    def _unindex(self, key: Key) -> None:
        for claim in claims_of(self.services.get(key) or {}):
            same = self.claims.get(claim.served_name, {})
            same.pop(key, None)
            if not same:
                self.claims.pop(claim.served_name, None)

    def drop_service(self, key: Key) -> None:
        self._unindex(key)
        self.unschedulable.pop(key, None)
        self.departed.pop(key, None)
        self.services.pop(key, None)
        self.deployments.pop(key, None)


async def update_status(kube: Kube, store: ServiceStore, body: dict,
                        plan: Callable[[dict], dict]) -> tuple[dict, dict]:
    """Write plan(status) if it differs; returns (status before, status after). No write if equal."""
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    for _ in range(5):
        before = body.get("status") or {}
        after = plan(before)
        if after == before:
            return before, before
        try:
            body = await kube.patch_status(ns, name, after, meta.get("resourceVersion"))
            if (ns, name) in store.services:
                store.put_service(body)
            return before, body.get("status") or {}
        except Conflict:
            fresh = await kube.get_inference_service(ns, name)
            if fresh is None:
                return before, before
            body, meta = fresh, fresh["metadata"]
    raise Conflict(f"{ns}/{name}: status kept changing under five attempts")
