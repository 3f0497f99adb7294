"""The Deployment that runs one InferenceService's engine."""

from __future__ import annotations

import math

from ..api.v1alpha1 import InferenceServiceSpec
from ..engines import engine
from ..engines.base import EngineAdapter, ModelLocation, Probe
from ..engines.gpus import Gpu
from .adapters import adapter_files
from .labels import CAPACITY_ANNOTATION, common_labels, owner_reference, selector_labels, stamp_hash
from .model_fetch import HOLD_IN_USE, model_volume
from .settings import GPU_PRODUCT_LABEL, GPU_RESOURCE, RenderSettings

PROBE_PERIOD_S = 10


def _probe(probe: Probe, period: int, failures: int) -> dict:
    return {"httpGet": {"path": probe.path, "port": probe.port}, "periodSeconds": period,
            "timeoutSeconds": 5, "failureThreshold": failures}


def security_contexts(settings: RenderSettings) -> tuple[dict, dict]:
    pod = {"runAsNonRoot": True, "runAsUser": settings.run_as_user, "runAsGroup": settings.run_as_user,
           "fsGroup": settings.run_as_user, "seccompProfile": {"type": "RuntimeDefault"}}
    container = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                 "capabilities": {"drop": ["ALL"]}}
    return pod, container


def _env(spec: InferenceServiceSpec, adapter) -> list[dict]:
    # The user's variables win over the defaults below (a Deployment may not name one twice).
    own = {var.name for var in spec.engine.env}
    defaults = [*adapter.extra_env, ("HOME", "/tmp"), ("XDG_CACHE_HOME", "/tmp/.cache")]
    env = [{"name": k, "value": v} for k, v in defaults if k not in own]
    for var in spec.engine.env:
        if var.valueFromSecret:
            env.append({"name": var.name, "valueFrom": {"secretKeyRef": {
                "name": var.valueFromSecret.name, "key": var.valueFromSecret.key}}})
        else:
            env.append({"name": var.name, "value": var.value})
    return env


def pod_placement(spec: InferenceServiceSpec, settings: RenderSettings) -> dict:
    selector = dict(spec.placement.nodeSelector)
    if spec.placement.nodePool:
        selector[settings.pool_label] = spec.placement.nodePool
    if spec.resources.gpuProduct:
        selector[GPU_PRODUCT_LABEL] = spec.resources.gpuProduct
    tolerations = [t.model_dump(exclude_none=True) for t in spec.placement.tolerations]
    if spec.resources.gpus and settings.gpu_toleration not in tolerations:
        tolerations.insert(0, dict(settings.gpu_toleration))
    out: dict = {}
    if selector:
        out["nodeSelector"] = selector
    if tolerations:
        out["tolerations"] = tolerations
    if spec.placement.affinity:
        out["affinity"] = spec.placement.affinity
    if spec.placement.priorityClassName:
        out["priorityClassName"] = spec.placement.priorityClassName
    elif spec.placement.priority:  # the chart's PriorityClass of that tier
        out["priorityClassName"] = f"tidal-{spec.placement.priority}"
    return out


def prefer_nodes_with(label: str, affinity: dict | None) -> dict:
    """`affinity` plus a preference (never a requirement) for nodes carrying `label`: a replica goes where its
    weights are cached when such a node has room, and anywhere else at once when none has."""
    out = {**(affinity or {})}
    node = {**out.get("nodeAffinity", {})}
    preferred = list(node.get("preferredDuringSchedulingIgnoredDuringExecution", []))
    preferred.append({"weight": 100, "preference": {"matchExpressions": [{"key": label, "operator": "Exists"}]}})
    node["preferredDuringSchedulingIgnoredDuringExecution"] = preferred
    out["nodeAffinity"] = node
    return out


def render_deployment(name: str, namespace: str, uid: str, spec: InferenceServiceSpec,
                      settings: RenderSettings, gpu: Gpu | None = None) -> dict:
    """The Deployment, without `spec.replicas`: replicas belong to the autoscaler."""
    adapter = engine(spec.engine.type)
    pod_security, container_security = security_contexts(settings)
    models = model_volume(spec.model, settings, container_security)
    adapters = adapter_files(spec, settings, container_security)
    location = ModelLocation(models.model_path, spec.model.served_name, spec.resources.gpus,
                             spec.engine.drainSeconds)
    resources = {"requests": {"cpu": spec.resources.cpu, "memory": spec.resources.memory},
                 "limits": {"memory": spec.resources.memory}}
    if spec.resources.gpus:
        resources["requests"][GPU_RESOURCE] = str(spec.resources.gpus)
        resources["limits"][GPU_RESOURCE] = str(spec.resources.gpus)
    image = f"{spec.engine.image or adapter.image}:{spec.engine.tag or adapter.tag}"
    argv = adapter.command(location) + list(spec.engine.args)
    if adapters.paths:
        argv += adapter.adapter_args(adapters.paths, spec.lora.maxRank, spec.lora.maxAdaptersPerBatch)
    container = {
        "name": "engine",
        "image": image,
        # From the node's model cache, the engine runs holding the model's in-use lock (model_fetch.py).
        "command": ["/bin/sh", "-c", HOLD_IN_USE] if models.hold_in_use else argv[:1],
        "args": argv if models.hold_in_use else argv[1:],
        "ports": [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in adapter.ports],
        "env": _env(spec, adapter) + list(models.env),
        "resources": resources,
        "volumeMounts": [models.mount, *models.more_mounts, *adapters.mounts, {"name": "dshm", "mountPath": "/dev/shm"},
                         {"name": "tmp", "mountPath": "/tmp"}],
        "startupProbe": _probe(adapter.startup_probe, PROBE_PERIOD_S,
                               math.ceil(settings.startup_budget_seconds / PROBE_PERIOD_S)),
        "readinessProbe": _probe(adapter.readiness_probe, 5, 3),
        "livenessProbe": _probe(adapter.liveness_probe, 15, 4),
        # Leave the endpoints first, then get SIGTERM: no new request reaches a stopping replica.
        "lifecycle": {"preStop": {"sleep": {"seconds": settings.prestop_sleep_seconds}}},
        "securityContext": container_security,
    }
    volumes = models.volumes + adapters.volumes + [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.resources.sharedMemory}},
        {"name": "tmp", "emptyDir": {}},
    ]
    labels = common_labels(name, adapter.name)
    pod_spec = {
        "containers": [container],
        "volumes": volumes,
        "securityContext": pod_security,
        # The engine never talks to the Kubernetes API: no token in the pod.
        "automountServiceAccountToken": False,
        # preStop sleep + the engine's own drain time.
        "terminationGracePeriodSeconds": settings.prestop_sleep_seconds + spec.engine.drainSeconds,
        **pod_placement(spec, settings),
    }
    if models.init_containers or adapters.init_containers:
        pod_spec["initContainers"] = models.init_containers + adapters.init_containers
    if models.node_label:
        pod_spec["affinity"] = prefer_nodes_with(models.node_label, pod_spec.get("affinity"))
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels,
                     "ownerReferences": [owner_reference(name, uid)]},
        "spec": {
            "selector": {"matchLabels": selector_labels(name)},
            # Never drop below the current capacity during a rollout: add one, then remove one.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            # The default 10 min marks large-model rollouts as failed while they are still loading.
            "progressDeadlineSeconds": settings.startup_budget_seconds + 600,
            "revisionHistoryLimit": 3,
            "template": {
                "metadata": {"labels": labels, "annotations": {
                    **spec.placement.podAnnotations,  # the user's first: Tidal's own keys win on a clash
                    "prometheus.io/scrape": "true", "prometheus.io/port": str(adapter.metrics_port),
                    "prometheus.io/path": adapter.metrics_path, **_capacity(spec, adapter, gpu)}},
                "spec": pod_spec,
            },
        },
    }
    return stamp_hash(deployment)


def _capacity(spec: InferenceServiceSpec, adapter: EngineAdapter, gpu: Gpu | None) -> dict[str, str]:
    """48 in the batch and 4 waiting as the autoscaler's target: 52. None for an engine that does not
    say its batch (Triton): the activator then never holds a request for capacity."""
    batch = adapter.batch_size(spec.engine.args, gpu)
    if batch <= 0:
        return {}
    return {CAPACITY_ANNOTATION: str(batch + math.ceil(spec.scaling.targetQueueDepth))}
