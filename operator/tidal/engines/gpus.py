"""Which GPU a replica gets, as far as the cluster says: engines size their defaults by it (vLLM's batch
is 4x larger on an H100 than on an A100 or an L4)."""

from __future__ import annotations

import re
from dataclasses import dataclass

GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"  # set by NVIDIA's GPU feature discovery
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"  # MiB per GPU, also from GPU feature discovery

# Memory per GPU (GiB) of products whose label does not say it (GFD's names, e.g. NVIDIA-H100-80GB-HBM3 does).
KNOWN_MEMORY_GIB = {"H200": 141, "GH200": 96, "B200": 180, "B300": 288, "GB200": 186, "H100-NVL": 94,
                    "H100-PCIE": 80, "H100-SXM": 80, "L40S": 48, "L40": 48, "L4": 24, "A10G": 24, "A10": 24,
                    "T4": 16, "V100": 16, "A40": 48, "A30": 24, "RTX-PRO-6000": 96}


@dataclass(frozen=True)
class Gpu:
    product: str
    memory_gib: float | None  # None: not known from the labels or the table

    @property
    def is_a100(self) -> bool:
        return "a100" in self.product.lower()


def memory_from_product(product: str) -> float | None:
    """80 from NVIDIA-A100-SXM4-80GB; 141 from NVIDIA-H200 (the table); None for a name we do not know."""
    sized = re.search(r"-(\d+)GB\b", product.upper())
    if sized:
        return float(sized.group(1))
    name = product.upper().removeprefix("NVIDIA-").removeprefix("TESLA-")
    for known in sorted(KNOWN_MEMORY_GIB, key=len, reverse=True):  # H100-NVL before H100-...
        if name == known or name.startswith(known + "-"):
            return float(KNOWN_MEMORY_GIB[known])
    return None


def gpu_of(product: str | None, node_labels: list[dict]) -> Gpu | None:
    """The GPU of a replica: the product the spec requires, else the one product of the pool's nodes
    (None when they differ or say nothing). Memory from the nodes' gpu.memory label, else the product."""
    products = {labels.get(GPU_PRODUCT_LABEL) for labels in node_labels} - {None}
    if product is None:
        if len(products) != 1:
            return None
        product = next(iter(products))
    memories = {labels.get(GPU_MEMORY_LABEL) for labels in node_labels if labels.get(GPU_PRODUCT_LABEL) == product}
    memories = {int(m) for m in memories if m and str(m).isdigit()}
    memory = min(memories) / 1024 if memories else memory_from_product(product)
    return Gpu(product, memory)
