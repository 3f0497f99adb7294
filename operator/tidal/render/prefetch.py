"""The prefetch DaemonSet: with `spec.model.cache.prefetch`, one small pod on every node of the service's pool
puts the weights into that node's cache before any replica needs them, then holds the model's in-use lock so
the cache never evicts it.

Why a DaemonSet rather than a Job per node: the pool's nodes come and go (a cluster autoscaler adds one, a
node is replaced), and a DaemonSet follows them with no code of ours watching nodes; a node added at 3 a.m.
has the weights before the morning's first request. Its pod is Ready once its init container fetched (the
kubelet's own signal, no probe to tune), and its `numberReady` is how many pool nodes hold the model. It asks
for no GPU: it must never take a replica's place.
"""

from __future__ import annotations

from ..api.v1alpha1 import InferenceServiceSpec
from .deployment import pod_placement, security_contexts
from .labels import MANAGED_BY, owner_reference, stamp_hash
from .model_fetch import CACHED_SCHEMES, cached_model_volume
from .settings import RenderSettings

PREFETCH_LABEL = "tidal.dev/prefetch-for"  # on the DaemonSet's pods: not the service's label (not endpoints)


def prefetch_name(name: str) -> str:
    return f"{name}-prefetch"


def wants_prefetch(spec: InferenceServiceSpec, settings: RenderSettings) -> bool:
    return bool(settings.model_cache is not None and spec.model.cache and spec.model.cache.prefetch
                and spec.model.scheme in CACHED_SCHEMES)


def render_prefetch(name: str, namespace: str, uid: str, spec: InferenceServiceSpec,
                    settings: RenderSettings) -> dict:
    pod_security, container_security = security_contexts(settings)
    models = cached_model_volume(spec.model, settings.model_cache, container_security)
    fetcher = models.init_containers[0]
    holder = {**fetcher, "name": "hold", "command": [*fetcher["command"], "--hold"],
              # after the fetch it only sleeps, holding a lock: a little memory in case the entry must be
              # checked again, no CPU to speak of
              "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "1Gi"}}}
    labels = {PREFETCH_LABEL: name, "app.kubernetes.io/component": "model-prefetch",
              "app.kubernetes.io/instance": name, **MANAGED_BY}
    placement = pod_placement(spec, settings)
    placement.pop("priorityClassName", None)  # a prefetch never preempts anyone
    daemonset = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": prefetch_name(name), "namespace": namespace, "labels": labels,
                     "ownerReferences": [owner_reference(name, uid)]},
        "spec": {
            "selector": {"matchLabels": {PREFETCH_LABEL: name}},
            # Many nodes fetching at once can saturate the store; a quarter of the pool at a time when the
            # spec changes (a new revision is then fetched while the old one still serves).
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%"}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "initContainers": [fetcher],
                    "containers": [holder],
                    "volumes": models.volumes + [{"name": "tmp", "emptyDir": {}}],
                    "securityContext": pod_security,
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 5,
                    **placement,
                },
            },
        },
    }
    return stamp_hash(daemonset)
