"""Operator-wide settings the renderers need (set by `tidal run` flags / the Helm chart)."""

from __future__ import annotations

from dataclasses import dataclass, field

GPU_RESOURCE = "nvidia.com/gpu"
from ..engines.gpus import GPU_PRODUCT_LABEL  # noqa: F401  (one definition, where GPUs are described)


@dataclass(frozen=True)
class NetworkPolicySettings:
    """Who may reach an engine: the gateway's pods and Prometheus' pods (by namespace and labels)."""
    gateway_namespace: str = "tidal-system"
    gateway_pod_labels: dict = field(default_factory=lambda: {"app.kubernetes.io/name": "tidal-activator"})
    prometheus_namespace: str = "monitoring"
    prometheus_pod_labels: dict = field(default_factory=lambda: {"app.kubernetes.io/name": "prometheus"})


@dataclass(frozen=True)
class ModelCacheSettings:
    """The node-local model cache (modelcache/): where it lives on every GPU node, how much it may hold, and
    the image whose `tidal fetch-model` fills it (Tidal's own)."""
    root: str = "/var/lib/tidal/models"
    budget: str = "500Gi"
    image: str = "ghcr.io/tidal-dev/tidal:0.1.0"


@dataclass(frozen=True)
class RenderSettings:
    pool_label: str = "tidal.dev/pool"
    # Tolerated on every GPU replica: GPU node pools are commonly tainted so that only GPU work lands there.
    gpu_toleration: dict = field(default_factory=lambda: {"key": GPU_RESOURCE, "operator": "Exists",
                                                          "effect": "NoSchedule"})
    # Images of the init containers that fetch weights, by uri scheme.
    fetch_images: dict = field(default_factory=lambda: {
        "hf": "vllm/vllm-openai:v0.32.0",  # ships the `hf` CLI (huggingface_hub >= 1.31)
        "s3": "amazon/aws-cli:2.22.0",
        "gs": "google/cloud-sdk:502.0.0-slim",
    })
    # A 70B model can take 15-20 min to download and load; the startup probe waits this long
    # before the kubelet gives up, and the rollout deadline is longer still.
    startup_budget_seconds: int = 1800
    # After the pod leaves the endpoints, keep serving this long so that every proxy has seen it.
    prestop_sleep_seconds: int = 5
    run_as_user: int = 1000
    # s3://, hf:// and gs:// models fetched once per node into this cache; None: each replica downloads its own copy.
    model_cache: ModelCacheSettings | None = None
    # One NetworkPolicy per service admitting only the gateway and Prometheus; None: render none.
    network_policy: NetworkPolicySettings | None = field(default_factory=NetworkPolicySettings)
