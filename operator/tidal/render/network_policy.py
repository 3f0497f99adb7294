"""The NetworkPolicy that keeps an InferenceService's engines behind the gateway.

Without it, anyone in the cluster could call an engine's Service directly and go around the API keys
and limits. Admitted, and nothing else: the gateway's pods to the engine's serving ports, and
Prometheus' pods to its metrics port. Enforced where the cluster's network plugin enforces
NetworkPolicies (most do; the local cluster here has none, so it only stores them).
"""

from __future__ import annotations

from ..api.v1alpha1 import InferenceServiceSpec
from ..engines import engine
from .labels import common_labels, owner_reference, selector_labels, stamp_hash
from .settings import NetworkPolicySettings

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set by Kubernetes on every namespace


def _peer(namespace: str, pod_labels: dict[str, str]) -> dict:
    return {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}},
            "podSelector": {"matchLabels": dict(pod_labels)}}


def render_network_policy(name: str, namespace: str, uid: str, spec: InferenceServiceSpec,
                          settings: NetworkPolicySettings) -> dict:
    adapter = engine(spec.engine.type)
    # Triton serves on 8000/8001 and reports on 8002; vLLM does both on 8000 (so Prometheus' rule names the
    # API port too: vLLM cannot separate them).
    serving = [{"protocol": "TCP", "port": port} for _, port in adapter.ports
               if port != adapter.metrics_port or port == adapter.api_port]
    return stamp_hash({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace, "labels": common_labels(name, adapter.name),
                     "ownerReferences": [owner_reference(name, uid)]},
        "spec": {
            "podSelector": {"matchLabels": selector_labels(name)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [_peer(settings.gateway_namespace, settings.gateway_pod_labels)], "ports": serving},
                {"from": [_peer(settings.prometheus_namespace, settings.prometheus_pod_labels)],
                 "ports": [{"protocol": "TCP", "port": adapter.metrics_port}]},
            ],
        },
    })
