"""SGLang: `python3 -m sglang.launch_server`, the OpenAI-compatible API and its metrics on 30000.

Every flag below is one SGLang's own parser knows (the `sglang` 0.5.23 wheel's
`sglang/srt/arg_groups/fields/*.py`; checked by tests/test_sglang.py against that parser's source).
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Batch, EngineAdapter, ModelLocation, Probe, register
from .gpus import Gpu

MAX_RUNNING = "--max-running-requests"  # SGLang's batch limit: requests running at once
# Without --max-running-requests, SGLang sizes the batch from the KV cache when it starts (about
# tokens / context length x 512, kept within 2,048..4,096, and at most half the tokens): it cannot be
# told from the spec. 2,048, the bottom of that range, is what Tidal assumes; status says so.
ASSUMED_DEFAULT = 2048


@dataclass(frozen=True)
class SglangAdapter(EngineAdapter):
    def command(self, model: ModelLocation) -> list[str]:
        argv = ["python3", "-m", "sglang.launch_server", "--model-path", model.path,
                "--served-model-name", model.served_name, "--host", "0.0.0.0", "--port", str(self.api_port),
                # sglang:num_queue_reqs and sglang:num_running_reqs, on the API port's /metrics
                "--enable-metrics"]
        if model.gpus > 1:
            argv += ["--tp-size", str(model.gpus)]
        # No drain flag: on SIGTERM SGLang stops taking requests (/health answers 503) and waits for the
        # running ones by itself; the pod's grace period (drainSeconds) bounds that wait.
        return argv

    def adapter_args(self, adapters: list[tuple[str, str]], max_rank: int, per_batch: int) -> list[str]:
        return ["--enable-lora", "--max-lora-rank", str(max_rank), "--max-loras-per-batch", str(per_batch),
                "--lora-paths", *[f"{name}={path}" for name, path in adapters]]

    def batch(self, args: list[str], gpu: Gpu | None = None) -> Batch:
        """--max-running-requests, as `--max-running-requests=64` or `--max-running-requests 64` (the last
        one wins, as in argparse); otherwise SGLang's own sizing, which only the running engine knows."""
        size = None
        for i, arg in enumerate(args):
            if arg.startswith(MAX_RUNNING + "=") and arg.split("=", 1)[1].isdigit():
                size = int(arg.split("=", 1)[1])
            elif arg == MAX_RUNNING and i + 1 < len(args) and args[i + 1].isdigit():
                size = int(args[i + 1])
        if size is not None:
            return Batch(size, f"{MAX_RUNNING}={size}")
        return Batch(ASSUMED_DEFAULT, f"SGLang sizes its batch from the KV cache at start (2,048 to 4,096 "
                                      f"requests when memory allows); taken as {ASSUMED_DEFAULT}: set {MAX_RUNNING}",
                     known=False)


SGLANG = register(SglangAdapter(
    name="sglang",
    summary="OpenAI-compatible API",
    image="lmsysorg/sglang",
    tag="v0.5.23",
    ports=(("http", 30000),),
    metrics_port=30000,
    metrics_path="/metrics",
    queue_metric="sglang:num_queue_reqs",
    inflight_metric="sglang:num_running_reqs",
    kv_usage_metric="sglang:token_usage",
    model_label="model_name",
    # /health answers 503 until the server is up and while it shuts down; /v1/models lists the model.
    startup_probe=Probe("/health"),
    readiness_probe=Probe("/health"),
    liveness_probe=Probe("/health"),
    extra_env=(("HF_HUB_OFFLINE", "1"),),  # the weights are on disk already (init container or PVC)
    serves_adapters=True,
))
