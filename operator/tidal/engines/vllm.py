"""vLLM: `vllm serve`, the OpenAI-compatible API on 8000, metrics on the same port."""

from __future__ import annotations

from dataclasses import dataclass

from .base import EngineAdapter, ModelLocation, Probe, register

MAX_NUM_SEQS = "--max-num-seqs"  # vLLM's batch limit: sequences scheduled at once
MAX_NUM_SEQS_DEFAULT = 256


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

    def batch_size(self, args: list[str]) -> int:
        """--max-num-seqs, as `--max-num-seqs=48` or `--max-num-seqs 48`; vLLM's default 256 otherwise."""
        size = MAX_NUM_SEQS_DEFAULT
        for i, arg in enumerate(args):
            if arg.startswith(MAX_NUM_SEQS + "=") and arg.split("=", 1)[1].isdigit():
                size = int(arg.split("=", 1)[1])
            elif arg == MAX_NUM_SEQS and i + 1 < len(args) and args[i + 1].isdigit():
                size = int(args[i + 1])
        return size



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
