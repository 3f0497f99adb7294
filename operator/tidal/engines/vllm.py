"""vLLM: `vllm serve`, the OpenAI-compatible API on 8000, metrics on the same port."""

from __future__ import annotations

from dataclasses import dataclass

from .base import EngineAdapter, ModelLocation, Probe, register


@dataclass(frozen=True)
class VllmAdapter(EngineAdapter):
    def command(self, model: ModelLocation) -> list[str]:
        argv = ["vllm", "serve", model.path, "--served-model-name", model.served_name,
                "--host", "0.0.0.0", "--port", str(self.api_port)]
        if model.gpus > 1:
            argv += ["--tensor-parallel-size", str(model.gpus)]
        # On SIGTERM, finish in-flight generations before exiting (the pod's grace period covers it).
        argv += ["--shutdown-timeout", str(model.drain_seconds)]
        return argv


VLLM = register(VllmAdapter(
    name="vllm",
    image="vllm/vllm-openai",
    tag="v0.11.0",
    ports=(("http", 8000),),
    metrics_port=8000,
    metrics_path="/metrics",
    queue_metric="vllm:num_requests_waiting",
    inflight_metric="vllm:num_requests_running",
    model_label="model_name",
    startup_probe=Probe("/health"),
    readiness_probe=Probe("/health"),
    liveness_probe=Probe("/health"),
    # The weights are already on disk (init container or PVC): never reach the Hub at start.
    extra_env=(("HF_HUB_OFFLINE", "1"),),
))
