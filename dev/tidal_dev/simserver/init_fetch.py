"""A real-engine pod's model fetch, run for real as a kubelet would run the init container.

With the operator's node cache on, an engine pod starts with the init container `tidal fetch-model --cache-root
/model-cache ...` (render/model_fetch.py) on a hostPath. Here each simulated node's cache is a directory of its
own on this machine (`<workdir>/nodes/<node>`), the container's environment is resolved as the kubelet resolves
it (values, and secretKeyRef read from the Secret), and the command runs as a process. Its start, end and
termination message are written on the pod (annotations the KWOK Stage copies into the init container's status), so the operator times
the fetch phase of a cold start from a fetch that really happened: seconds when the node lacked the model, none
when its cache held it.
"""

from __future__ import annotations

import base64
import sys
from dataclasses import dataclass
from pathlib import Path

from tidal.modelcache.layout import FETCH_CONTAINER
from tidal.render.model_fetch import CACHE_DIR

from ..cluster.stages import (ENGINE_STARTED_ANNOTATION, FETCH_FINISHED_ANNOTATION,  # noqa: F401
                              FETCH_MESSAGE_ANNOTATION, FETCH_STARTED_ANNOTATION)


@dataclass(frozen=True)
class NodeFetch:
    argv: list[str]
    env: dict[str, str]
    node_cache: Path  # what the pod sees at CACHE_DIR


def fetch_container(pod_spec: dict) -> dict | None:
    """The pod's node-cache fetch (None when its model is not fetched into a node cache)."""
    for init in pod_spec.get("initContainers") or []:
        if init.get("name") == FETCH_CONTAINER and (init.get("command") or [])[:2] == ["tidal", "fetch-model"]:
            return init
    return None


def resolve_env(container: dict, namespace: str, read_secret) -> dict[str, str]:
    """The container's environment as the kubelet gives it: a missing optional key is left out; a missing
    required one fails the container (KeyError), as a kubelet refuses to start it."""
    env: dict[str, str] = {}
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        ref = (var.get("valueFrom") or {}).get("secretKeyRef")
        if ref is None:
            continue
        data = read_secret(namespace, ref["name"]) or {}
        if ref["key"] in data:
            env[var["name"]] = base64.b64decode(data[ref["key"]]).decode()
        elif not ref.get("optional"):
            raise KeyError(f"secret {namespace}/{ref['name']} has no key {ref['key']}")
    return env


def node_fetch(container: dict, env: dict[str, str], node_cache: Path, termination_log: Path) -> NodeFetch:
    """`tidal fetch-model ...` with the node's cache directory for CACHE_DIR, run by this machine's Python."""
    argv = [a.replace(CACHE_DIR, str(node_cache), 1) if a.startswith(CACHE_DIR) else a
            for a in container["command"][2:] + (container.get("args") or [])]
    env = {**env, "HOME": str(termination_log.parent), "PATH": "/usr/bin:/bin"}
    return NodeFetch([sys.executable, "-m", "tidal.cli", "fetch-model", *argv, "--termination-log",
                      str(termination_log)], env, node_cache)


def loaded_model(engine_args: list[str], node_cache: Path) -> Path | None:
    """Where, in the node's cache, the engine's `vllm serve <path>` finds the weights."""
    for arg in engine_args:
        if arg.startswith(CACHE_DIR + "/"):
            return node_cache / arg[len(CACHE_DIR) + 1:]
    return None
