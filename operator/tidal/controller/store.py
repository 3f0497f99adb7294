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

Key = tuple[str, str]  # (namespace, name)


@dataclass
class DeploymentState:
    replicas: int  # spec.replicas
    ready: int  # status.readyReplicas
    unavailable_reason: str | None = None


@dataclass
class ServiceStore:
    services: dict[Key, dict] = field(default_factory=dict)  # InferenceService bodies
    deployments: dict[Key, DeploymentState] = field(default_factory=dict)
    nodes: dict[str, dict] = field(default_factory=dict)  # slim nodes: labels and allocatable
    # Per service, the uids of its pods the scheduler reported Unschedulable (kept from the pod watch).
    unschedulable: dict[Key, set[str]] = field(default_factory=dict)

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
        self.services[(meta["namespace"], meta["name"])] = body

    def drop_service(self, key: Key) -> None:
        self.unschedulable.pop(key, None)
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
