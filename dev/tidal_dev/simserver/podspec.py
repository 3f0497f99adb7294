"""Read which engine a pod runs, and how, from its container's real command line.

The operator renders, for example, `vllm serve <model> --served-model-name X --port 8000` or
`tritonserver --model-repository=... --load-model=X --http-port=8000 --metrics-port=8002`; the
simulated runtime reads the same arguments a real container would get. Each simulated engine's module
reads its own command line (`parse`); registry.engine_spec asks each in turn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from tidal.simulate.latency import GPU_SLOWDOWN, LatencyModel

LATENCY_ANNOTATION = "sim.tidal.dev/latency"  # JSON object of LatencyModel fields


@dataclass(frozen=True)
class EngineSpec:
    engine: str  # a simulated engine's name: "vllm", "triton", ...
    models: tuple[str, ...]  # vLLM: (model,), Triton: the loaded models
    served_name: str | None
    port: int
    metrics_port: int | None
    latency: LatencyModel
    adapters: tuple[str, ...] = ()  # LoRA adapters served by name on the model (vLLM --lora-modules name=path)


def flag(argv: list[str], name: str) -> list[str]:
    """All values of --name, whether written `--name value` or `--name=value`."""
    values = []
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif arg.startswith(name + "="):
            values.append(arg.split("=", 1)[1])
    return values


def listed(argv: list[str], name: str) -> list[str]:
    """The values of a flag that takes several (`--lora-modules a=/x b=/y`): up to the next flag."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == name:
            for value in argv[i + 1:]:
                if value.startswith("--"):
                    break
                out.append(value)
    return out


def pod_latency(annotations: dict, gpu_product: str | None) -> LatencyModel:
    model = LatencyModel()
    if gpu_product in GPU_SLOWDOWN:
        model = model.scaled(GPU_SLOWDOWN[gpu_product])
    raw = annotations.get(LATENCY_ANNOTATION)
    if raw:
        overrides = json.loads(raw)
        model = LatencyModel(**{**model.__dict__, **overrides})
    return model
