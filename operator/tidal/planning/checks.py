"""Problems with a spec that only the cluster can reveal (the schema cannot know them)."""

from __future__ import annotations

from dataclasses import dataclass

from ..api.v1alpha1 import InferenceServiceSpec
from ..engines.gpus import Gpu, gpu_of
from ..render.settings import GPU_PRODUCT_LABEL, GPU_RESOURCE


@dataclass(frozen=True)
class Problem:
    reason: str  # CamelCase, for the condition and the Event
    message: str  # names the field, the value and what is possible


@dataclass(frozen=True)
class ClusterFacts:
    """What the operator looked up: the nodes and which referenced objects exist."""

    nodes: list[dict]
    missing_secrets: tuple[str, ...] = ()
    missing_claims: tuple[str, ...] = ()


def _gpus(node: dict) -> int:
    try:
        return int((node.get("status", {}).get("allocatable") or {}).get(GPU_RESOURCE, "0"))
    except ValueError:
        return 0


def find_problems(spec: InferenceServiceSpec, facts: ClusterFacts, pool_label: str) -> list[Problem]:
    problems: list[Problem] = []
    nodes = facts.nodes
    pool = spec.placement.nodePool
    if pool:
        pools = sorted({(n["metadata"].get("labels") or {}).get(pool_label) for n in facts.nodes} - {None})
        nodes = [n for n in nodes if (n["metadata"].get("labels") or {}).get(pool_label) == pool]
        if not nodes:
            problems.append(Problem("UnknownNodePool",
                                    f"spec.placement.nodePool {pool!r}: no node has the label {pool_label}={pool}; "
                                    f"pools in this cluster: {', '.join(pools) or 'none'}"))
    product = spec.resources.gpuProduct
    if product and nodes:
        matching = [n for n in nodes if (n["metadata"].get("labels") or {}).get(GPU_PRODUCT_LABEL) == product]
        if not matching:
            have = sorted({(n["metadata"].get("labels") or {}).get(GPU_PRODUCT_LABEL) for n in nodes} - {None})
            problems.append(Problem("UnknownGPUProduct",
                                    f"spec.resources.gpuProduct {product!r}: no{' pool ' + repr(pool) if pool else ''}"
                                    f" node has it; available: {', '.join(have) or 'none'}"))
        nodes = matching
    if spec.resources.gpus and nodes:
        most = max(_gpus(n) for n in nodes)
        if spec.resources.gpus > most:
            where = f"pool {pool!r}" if pool else "the cluster"
            problems.append(Problem("InsufficientGPUCapacity",
                                    f"spec.resources.gpus {spec.resources.gpus}: the largest node in {where} has "
                                    f"{most} allocatable {GPU_RESOURCE}; a replica cannot span nodes"))
    for secret in facts.missing_secrets:
        problems.append(Problem("SecretNotFound", f"Secret {secret!r} (referenced by the spec) does not exist in "
                                                  "this namespace; create it or fix the reference"))
    for claim in facts.missing_claims:
        field = "spec.model.uri" if claim == referenced_claim(spec) else "spec.adapters[].uri"
        problems.append(Problem("ClaimNotFound", f"{field}: PersistentVolumeClaim {claim!r} does not "
                                                 "exist in this namespace"))
    return problems


def referenced_secrets(spec: InferenceServiceSpec) -> set[str]:
    names = {e.valueFromSecret.name for e in spec.engine.env if e.valueFromSecret}
    for source in (spec.model, *spec.adapters):
        if source.credentials:
            names.add(source.credentials.secretName)
    return names


def referenced_claim(spec: InferenceServiceSpec) -> str | None:
    return spec.model.path.split("/", 1)[0] if spec.model.scheme == "pvc" else None


def referenced_claims(spec: InferenceServiceSpec) -> list[str]:
    """The PersistentVolumeClaims the model and its adapters are read from."""
    claims = [s.path.split("/", 1)[0] for s in (spec.model, *spec.adapters) if s.scheme == "pvc"]
    return list(dict.fromkeys(claims))


def replica_gpu(spec: InferenceServiceSpec, nodes: list[dict], pool_label: str) -> Gpu | None:
    """The GPU a replica will get: the spec's gpuProduct, else the one product of the pool's nodes."""
    if not spec.resources.gpus:
        return None
    pool = spec.placement.nodePool
    labels = [n["metadata"].get("labels") or {} for n in nodes]
    return gpu_of(spec.resources.gpuProduct, [ls for ls in labels if not pool or ls.get(pool_label) == pool])


def pool_capacity(spec: InferenceServiceSpec, nodes: list[dict], pool_label: str,
                  used: dict[str, int] | None = None) -> int | None:
    """The most replicas the chosen pool could hold: per node, whole replicas of `gpus` GPUs (an 8-GPU node
    holds two 4-GPU replicas, not 2.5) in what is free of `used` (GPUs taken per node; None: were it empty).
    None when it cannot be told (no pool or product named, or replicas without GPUs)."""
    gpus = spec.resources.gpus
    pool, product = spec.placement.nodePool, spec.resources.gpuProduct
    if not gpus or not (pool or product):
        return None

    def matches(node: dict) -> bool:
        labels = node["metadata"].get("labels") or {}
        return (not pool or labels.get(pool_label) == pool) and (not product or labels.get(GPU_PRODUCT_LABEL) == product)
    taken = used or {}
    return sum(max(0, _gpus(n) - taken.get(n["metadata"]["name"], 0)) // gpus for n in nodes if matches(n))
