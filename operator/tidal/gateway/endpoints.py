"""Ready endpoints of every InferenceService, from a watch (never a poll).

The source is the pods of each service (label tidal.dev/inferenceservice): an endpoint is a pod
that is Ready and not terminating, at its IP and its `http` container port. A pod that starts
terminating leaves the rotation at the first watch event, before the engine stops taking requests.

EndpointSlices carry the same information in a real cluster; the local GPU cluster gives pods
loopback IPs, which Kubernetes refuses in EndpointSlices, so the pod watch is what works in both.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from ..render.labels import CAPACITY_ANNOTATION, SERVICE_LABEL
from .watching import list_then_watch


@dataclass(eq=False)  # identity: two pods never are "the same endpoint", whatever their counters say
class Endpoint:
    host: str
    port: int
    inflight: int = 0
    # Set when the replica refused a request because it is shutting down: the pod watch will remove
    # it in a moment; until then no request is sent there.
    unavailable_until: float = 0.0
    capacity: int | None = None  # requests in flight it should hold at most; None: no limit known

    def has_room(self, adding: int = 0) -> bool:
        """Room for one more request once `adding` more are in flight."""
        return self.capacity is None or self.inflight + adding < self.capacity


@dataclass
class Endpoints:
    """Per service: pod uid -> Endpoint; `on_added(key)` is called whenever a service gains one."""

    by_service: dict[tuple[str, str], dict[str, Endpoint]] = field(default_factory=dict)
    on_added: Callable[[tuple[str, str]], None] | None = None
    ready: threading.Event = field(default_factory=threading.Event)

    def get(self, key: tuple[str, str]) -> list[Endpoint]:
        return list(self.by_service.get(key, {}).values())

    def update(self, key: tuple[str, str], uid: str, endpoint: Endpoint | None) -> None:
        current = self.by_service.setdefault(key, {})
        if endpoint is None:
            current.pop(uid, None)
        elif uid not in current or (current[uid].host, current[uid].port) != (endpoint.host, endpoint.port):
            current[uid] = endpoint
            if self.on_added is not None:
                self.on_added(key)
        if not current:
            self.by_service.pop(key, None)

    def retain(self, uids: set[str], namespace: str | None = None) -> None:
        """Drop endpoints whose pods a fresh listing (of one namespace, or all) no longer has."""
        for key in [k for k in self.by_service if namespace is None or k[0] == namespace]:
            for uid in [u for u in self.by_service[key] if u not in uids]:
                self.update(key, uid, None)


def pod_endpoint(pod) -> tuple[tuple[str, str], str, Endpoint | None] | None:
    """(service key, pod uid, endpoint or None) for a pod of an InferenceService."""
    labels = pod.metadata.labels or {}
    name = labels.get(SERVICE_LABEL)
    if not name:
        return None
    key = (pod.metadata.namespace, name)
    ready = any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))
    if pod.metadata.deletion_timestamp or not ready or not pod.status.pod_ip:
        return key, pod.metadata.uid, None
    port = 8000
    for p in (pod.spec.containers[0].ports or []):
        if p.name == "http":
            port = p.container_port
    capacity = (pod.metadata.annotations or {}).get(CAPACITY_ANNOTATION, "")
    return key, pod.metadata.uid, Endpoint(pod.status.pod_ip, port,
                                           capacity=int(capacity) if capacity.isdigit() and int(capacity) > 0 else None)


def watch_pods(core, endpoints: Endpoints, loop: asyncio.AbstractEventLoop, namespace: str | None = None,
               on_listed=None) -> None:
    """Blocking: keep `endpoints` equal to the ready pods with the service label (in one namespace, or all
    of them, as the RBAC the chart grants allows). on_listed() after each full listing."""
    on_listed = on_listed or endpoints.ready.set

    def listed(pods: list) -> None:
        endpoints.retain({p.metadata.uid for p in pods}, namespace)
        for pod in pods:
            changed("ADDED", pod)
        on_listed()

    def changed(kind: str, pod) -> None:
        found = pod_endpoint(pod)
        if found:
            endpoints.update(found[0], found[1], None if kind == "DELETED" else found[2])

    if namespace:
        list_then_watch("pod", loop, listed, changed, core.list_namespaced_pod, namespace, label_selector=SERVICE_LABEL)
    else:
        list_then_watch("pod", loop, listed, changed, core.list_pod_for_all_namespaces, label_selector=SERVICE_LABEL)
