"""The engine adapter interface."""

from __future__ import annotations

from dataclasses import dataclass, field

from .gpus import Gpu

ENGINES: dict[str, "EngineAdapter"] = {}


@dataclass(frozen=True)
class ModelLocation:
    """Where the weights are inside the pod, and under which name clients ask for them."""

    path: str
    served_name: str
    gpus: int
    drain_seconds: int


@dataclass(frozen=True)
class Probe:
    path: str
    port: str = "http"


@dataclass(frozen=True)
class Batch:
    """Requests one replica runs at once, and where that number comes from (shown in status)."""

    size: int
    source: str
    known: bool = True  # False: the engine's default could not be told and a conservative value is used


@dataclass(frozen=True)
class EngineAdapter:
    name: str
    summary: str  # what clients speak to it, for `kubectl explain` (for example "OpenAI-compatible API")
    image: str
    tag: str
    # (name, port) pairs; the first one is the API port the Service routes to.
    ports: tuple[tuple[str, int], ...]
    # Where Prometheus scrapes the engine, and the series that count requests.
    metrics_port: int
    metrics_path: str
    queue_metric: str  # requests waiting
    inflight_metric: str | None  # requests being processed (None if the engine does not export it)
    model_label: str  # the label that carries the served model's name
    startup_probe: Probe
    readiness_probe: Probe
    liveness_probe: Probe
    extra_env: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    # How to ask a running replica whether it serves the model (tidal.clients.engine_health): "openai"
    # (the served name is listed by GET /v1/models) or "kserve-v2" (GET /v2/models/{name}/ready).
    model_check: str = "openai"
    # Error answers (a fragment of the body) that mean the engine refused the request without processing
    # it, so that another replica may take it: how a draining engine says "not me".
    refusals: tuple[bytes, ...] = field(default_factory=tuple)
    serves_adapters: bool = False  # LoRA adapters on the base model (adapter_args)
    # The fraction of its KV cache in use (0..1), if it exports one: a batch of long prompts fills the cache before
    # its places, and then the replica is full with fewer requests running (autoscaling.limits.batch_that_fits).
    kv_usage_metric: str | None = None

    def command(self, model: ModelLocation) -> list[str]:
        raise NotImplementedError

    def adapter_args(self, adapters: list[tuple[str, str]], max_rank: int, per_batch: int) -> list[str]:
        """The flags that serve LoRA adapters, (name, path inside the pod) each; only when serves_adapters."""
        raise NotImplementedError(f"{self.name} serves no adapters")

    def batch(self, args: list[str], gpu: Gpu | None = None) -> Batch:
        """Requests one replica runs at once (and reports through `inflight_metric`), from the user's
        engine args or the engine's own default on that GPU; 0 when the engine reports no in-flight
        count (then only its queue is counted)."""
        return Batch(0, f"{self.name} reports no in-flight count: its queue alone is counted")

    def batch_size(self, args: list[str], gpu: Gpu | None = None) -> int:
        return self.batch(args, gpu).size

    @property
    def api_port(self) -> int:
        return self.ports[0][1]


def refusals() -> tuple[bytes, ...]:
    """Every engine's refusal answers (the gateway proxies to replicas without knowing their engine)."""
    return tuple(m for adapter in ENGINES.values() for m in adapter.refusals)


def register(adapter: EngineAdapter) -> EngineAdapter:
    ENGINES[adapter.name] = adapter
    return adapter
