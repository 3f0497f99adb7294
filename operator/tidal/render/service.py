"""The Service in front of one InferenceService's replicas."""

from __future__ import annotations

from ..api.v1alpha1 import InferenceServiceSpec
from ..engines import engine
from .labels import common_labels, owner_reference, selector_labels, stamp_hash


def render_service(name: str, namespace: str, uid: str, spec: InferenceServiceSpec) -> dict:
    adapter = engine(spec.engine.type)
    ports = [{"name": n, "port": 80 if i == 0 else p, "targetPort": n, "protocol": "TCP"}
             for i, (n, p) in enumerate(adapter.ports)]
    return stamp_hash({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": common_labels(name, adapter.name),
                     "ownerReferences": [owner_reference(name, uid)]},
        "spec": {"type": "ClusterIP", "selector": selector_labels(name), "ports": ports},
    })


def service_url(name: str, namespace: str) -> str:
    return f"http://{name}.{namespace}.svc.cluster.local"
