"""Labels and owner references shared by everything rendered for one InferenceService."""

from __future__ import annotations

import hashlib
import json

from ..api.v1alpha1 import GROUP, KIND, VERSION

SERVICE_LABEL = "tidal.dev/inferenceservice"
MANAGED_BY = {"app.kubernetes.io/managed-by": "tidal"}
SPEC_HASH_ANNOTATION = "tidal.dev/spec-hash"
# Requests one replica should hold at once: its batch plus the queue the autoscaler aims for. The
# activator sends no more than this to a replica and holds the rest (a cold start's backlog then
# spreads over every replica that comes up, instead of all of it landing on the first one).
CAPACITY_ANNOTATION = "tidal.dev/replica-capacity"


def selector_labels(name: str) -> dict[str, str]:
    return {SERVICE_LABEL: name}


def common_labels(name: str, engine: str) -> dict[str, str]:
    return {**selector_labels(name), "app.kubernetes.io/name": engine, "app.kubernetes.io/instance": name,
            "app.kubernetes.io/component": "model-server", **MANAGED_BY}


def owner_reference(name: str, uid: str) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": name, "uid": uid,
            "controller": True, "blockOwnerDeletion": True}


def stamp_hash(obj: dict) -> dict:
    """Annotate `obj` with a digest of itself: an equal digest on the live object means nothing to apply,
    and it also catches fields we stopped rendering, which a field-by-field comparison would miss."""
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
    obj["metadata"].setdefault("annotations", {})[SPEC_HASH_ANNOTATION] = digest
    return obj
