"""How a service's LoRA adapters reach its engine, beside the model (render/model_fetch.py):

  the model in the node cache, an s3://, hf:// or gs:// adapter
                      -> `tidal fetch-model --used-with <the model's key>` into the same cache: fetched once per
                         node and shared by every base that names the same uri; kept from eviction while a replica
                         of a base that uses it runs (the base's in-use lock covers its adapters)
  otherwise           -> downloaded per pod into an emptyDir at /adapters/<n> with the storage's own tool
  pvc://claim/path    -> the claim mounted read-only at /adapter-claims/<n>

Each adapter is a directory the engine loads by name (adapter_config.json and the weights): the engine adapter
renders the flags (`--lora-modules name=path` for vLLM).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..api.v1alpha1 import InferenceServiceSpec
from ..modelcache.layout import ADAPTER_FETCH_PREFIX, cache_key, weights_path
from .model_fetch import CACHE_DIR, CACHED_SCHEMES, cache_fetcher, downloader
from .settings import RenderSettings

ADAPTERS_DIR = "/adapters"
CLAIMS_DIR = "/adapter-claims"


@dataclass(frozen=True)
class AdapterFiles:
    volumes: list[dict]
    init_containers: list[dict]
    mounts: list[dict]
    paths: list[tuple[str, str]]  # (adapter name, its directory in the pod), in spec order


def adapter_files(spec: InferenceServiceSpec, settings: RenderSettings, container_security: dict) -> AdapterFiles:
    cache = settings.model_cache
    through_cache = cache is not None and spec.model.scheme in CACHED_SCHEMES
    volumes: list[dict] = []
    inits: list[dict] = []
    mounts: list[dict] = []
    paths: list[tuple[str, str]] = []
    downloads = False
    for n, adapter in enumerate(spec.adapters):
        name = f"{ADAPTER_FETCH_PREFIX}{n}"
        if adapter.scheme == "pvc":
            claim, _, sub = adapter.path.partition("/")
            volumes.append({"name": f"adapter-claim-{n}",
                            "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
            mounts.append({"name": f"adapter-claim-{n}", "mountPath": f"{CLAIMS_DIR}/{n}", "readOnly": True})
            paths.append((adapter.name, f"{CLAIMS_DIR}/{n}/{sub}" if sub else f"{CLAIMS_DIR}/{n}"))
        elif through_cache:
            used_with = ("--used-with", cache_key(spec.model.uri, spec.model.revision))
            fetcher, key_volumes = cache_fetcher(adapter, cache, container_security, used_with, f"gcs-key-{n}")
            fetcher["name"] = name
            fetcher["resources"] = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
            inits.append(fetcher)
            volumes += key_volumes
            paths.append((adapter.name, weights_path(CACHE_DIR, cache_key(adapter.uri, adapter.revision))))
        else:
            into = f"{ADAPTERS_DIR}/{n}"
            fetcher, key_volumes = downloader(adapter, into, {"name": "adapters", "mountPath": ADAPTERS_DIR},
                                              settings.fetch_images[adapter.scheme], container_security,
                                              f"gcs-key-{n}")
            fetcher["name"] = name
            inits.append(fetcher)
            volumes += key_volumes
            paths.append((adapter.name, into))
            downloads = True
    if downloads:
        volumes.append({"name": "adapters", "emptyDir": {}})
        mounts.append({"name": "adapters", "mountPath": ADAPTERS_DIR, "readOnly": True})
    return AdapterFiles(volumes, inits, mounts, paths)
