"""Engine adapters: everything engine-specific (image, command, ports, probes, metric names).

Each module in this package defines one adapter and registers it with `register`. Adding an engine
(TGI, ...) is one new file here (and one in simserver/ for the local cluster); the API enum, the CRD,
the renderers, the gateway and the sim-runtime pick it up.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import ENGINES, EngineAdapter, ModelLocation, register  # noqa: F401

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")


def engine(name: str) -> EngineAdapter:
    try:
        return ENGINES[name]
    except KeyError:
        raise KeyError(f"unknown engine {name!r}; known: {sorted(ENGINES)}") from None
