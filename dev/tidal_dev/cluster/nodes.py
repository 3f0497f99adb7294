"""The simulated node pools: one declarative description turned into Node objects."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml

DEFAULT_DESCRIPTION = Path(__file__).with_name("nodepools.yaml")
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
KWOK_MANAGED_LABEL = "tidal.dev/simulated-node"
# Pod IPs come from per-node CIDRs inside 127.0.0.0/8 so that a simulated engine
# can listen on a pod's IP and every request stays on this machine.


@dataclass(frozen=True)
class NodePool:
    name: str
    nodes: int
    gpus_per_node: int
    cpu: str
    memory: str
    gpu_product: str | None = None


@dataclass(frozen=True)
class ClusterDescription:
    pool_label: str
    pools: tuple[NodePool, ...]
    cold_start: str
    terminate_delay: str

    def pool(self, name: str) -> NodePool:
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise KeyError(f"no node pool named {name!r}; pools are {[p.name for p in self.pools]}")


def load_description(path: Path | None = None) -> ClusterDescription:
    raw = yaml.safe_load(Path(path or DEFAULT_DESCRIPTION).read_text())
    pools = []
    for entry in raw["pools"]:
        pool = NodePool(
            name=entry["name"],
            nodes=int(entry["nodes"]),
            gpus_per_node=int(entry.get("gpusPerNode", 0)),
            cpu=str(entry["cpu"]),
            memory=str(entry["memory"]),
            gpu_product=entry.get("gpuProduct"),
        )
        if pool.gpus_per_node and not pool.gpu_product:
            raise ValueError(f"pool {pool.name!r}: gpuProduct is required when gpusPerNode > 0")
        pools.append(pool)
    return ClusterDescription(
        pool_label=raw.get("poolLabel", "tidal.dev/pool"),
        pools=tuple(pools),
        cold_start=str(raw.get("coldStart", "1s")),
        terminate_delay=str(raw.get("terminateDelay", "1s")),
    )


def cluster_octet(state_dir: str) -> int:
    return 16 + int(hashlib.sha1(state_dir.encode()).hexdigest(), 16) % 239


def node_manifests(desc: ClusterDescription, octet: int = 16) -> list[dict]:
    """Node objects for every pool. Status is kept on create, so capacity is set here."""
    manifests = []
    index = 0
    for pool in desc.pools:
        for i in range(pool.nodes):
            index += 1
            capacity = {"cpu": pool.cpu, "memory": pool.memory, "pods": "110"}
            labels = {
                desc.pool_label: pool.name,
                KWOK_MANAGED_LABEL: "true",
                "kubernetes.io/hostname": f"{pool.name}-{i}",
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            }
            taints = []
            if pool.gpus_per_node:
                capacity[GPU_RESOURCE] = str(pool.gpus_per_node)
                labels[GPU_PRODUCT_LABEL] = pool.gpu_product
                labels["nvidia.com/gpu.count"] = str(pool.gpus_per_node)
                taints.append(dict(GPU_TAINT))
            cidr = f"127.{octet}.{index}.0/24"
            manifests.append({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": f"{pool.name}-{i}", "labels": labels,
                             "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
                "spec": {"taints": taints, "podCIDR": cidr, "podCIDRs": [cidr]},
                "status": {"capacity": capacity, "allocatable": dict(capacity)},
            })
    return manifests
