"""The simulated engines, each in a module of its own: how it recognises its engine's command line and
how it serves. The runtime, `engine_spec` and `tidal-dev sim-server` know engines only through this registry,
so a new simulated engine is one new module in this package that calls `register`."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .podspec import EngineSpec, pod_latency

if TYPE_CHECKING:
    from aiohttp import web

    from tidal.simulate.latency import LatencyModel

# The package's modules that are not engines.
INFRASTRUCTURE = {"engine", "latency", "podspec", "real", "registry", "runtime", "scheduler"}


@dataclass(frozen=True)
class SimulatedEngine:
    name: str
    # (argv, the argv words' basenames, latency) -> the spec, or None when the command is another engine's
    parse: Callable[[list[str], list[str], "LatencyModel"], "EngineSpec | None"]
    # spec -> (server, [(app, port)]): the apps to listen with, the API's first
    serve: Callable[["EngineSpec"], tuple[Any, list[tuple["web.Application", int]]]]


SIMULATED: dict[str, SimulatedEngine] = {}


def register(engine: SimulatedEngine) -> SimulatedEngine:
    SIMULATED[engine.name] = engine
    return engine


def simulated() -> dict[str, SimulatedEngine]:
    """Every simulated engine (their modules are imported on first use)."""
    for module in pkgutil.iter_modules(importlib.import_module(__package__).__path__):
        if module.name not in INFRASTRUCTURE:
            importlib.import_module(f"{__package__}.{module.name}")
    return SIMULATED


def engine_spec(container: dict, annotations: dict, gpu_product: str | None = None) -> EngineSpec | None:
    """The engine a container runs, or None when it runs something else."""
    argv = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
    words = [a.rsplit("/", 1)[-1] for a in argv]
    # A shell wrapper (sh -c "exec vllm serve ...") is split into words too.
    if len(argv) >= 3 and words[0] in ("sh", "bash") and argv[1] == "-c":
        # `sh -c '... exec "$0" "$@"' vllm serve ...` (an engine run from the node's model cache): the engine's
        # argv follows the script; otherwise the script itself is the command line.
        argv = argv[3:] if argv[2].rstrip().endswith('exec "$0" "$@"') and len(argv) > 3 else argv[2].split()
        words = [a.rsplit("/", 1)[-1] for a in argv]
    latency = pod_latency(annotations, gpu_product)
    for engine in simulated().values():
        spec = engine.parse(argv, words, latency)
        if spec is not None:
            return spec
    return None
