"""Read which engine a pod runs, and how, from its container's real command line.

The operator renders `vllm serve <model> --served-model-name X --port 8000` or
`tritonserver --model-repository=... --load-model=X --http-port=8000 --metrics-port=8002`;
the simulated runtime reads the same arguments a real container would get.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from .latency import GPU_SLOWDOWN, LatencyModel

LATENCY_ANNOTATION = "sim.tidal.dev/latency"  # JSON object of LatencyModel fields


@dataclass(frozen=True)
class EngineSpec:
    engine: str  # "vllm" | "triton"
    models: tuple[str, ...]  # vLLM: (model,), Triton: the loaded models
    served_name: str | None
    port: int
    metrics_port: int | None
    latency: LatencyModel


def _flag(argv: list[str], name: str) -> list[str]:
    """All values of --name, whether written `--name value` or `--name=value`."""
    values = []
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif arg.startswith(name + "="):
            values.append(arg.split("=", 1)[1])
    return values


def _latency(annotations: dict, gpu_product: str | None) -> LatencyModel:
    model = LatencyModel()
    if gpu_product in GPU_SLOWDOWN:
        model = model.scaled(GPU_SLOWDOWN[gpu_product])
    raw = annotations.get(LATENCY_ANNOTATION)
    if raw:
        overrides = json.loads(raw)
        model = LatencyModel(**{**model.__dict__, **overrides})
    return model


def engine_spec(container: dict, annotations: dict, gpu_product: str | None = None) -> EngineSpec | None:
    """The engine a container runs, or None when it runs something else."""
    argv = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
    words = [a.rsplit("/", 1)[-1] for a in argv]
    # A shell wrapper (sh -c "exec vllm serve ...") is split into words too.
    if len(argv) >= 3 and words[0] in ("sh", "bash") and argv[1] == "-c":
        argv = argv[2].split()
        words = [a.rsplit("/", 1)[-1] for a in argv]
    latency = _latency(annotations, gpu_product)
    if "vllm" in words and "serve" in words:
        seqs = _flag(argv, "--max-num-seqs")
        if seqs and seqs[0].isdigit():  # the engine's own batch limit is the simulated concurrency
            latency = replace(latency, max_concurrency=int(seqs[0]))
        rest = argv[words.index("serve") + 1:]
        model = rest[0] if rest and not rest[0].startswith("-") else (_flag(argv, "--model") or ["model"])[0]
        served = (_flag(argv, "--served-model-name") or [model])[0]
        port = int((_flag(argv, "--port") or ["8000"])[0])
        return EngineSpec("vllm", (model,), served, port, None, latency)
    if "tritonserver" in words:
        models = tuple(_flag(argv, "--load-model")) or ("model",)
        port = int((_flag(argv, "--http-port") or ["8000"])[0])
        metrics_port = int((_flag(argv, "--metrics-port") or ["8002"])[0])
        return EngineSpec("triton", models, None, port, metrics_port, latency)
    return None
