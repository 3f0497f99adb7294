"""NVIDIA Triton: KServe v2 HTTP on 8000, gRPC on 8001, metrics on 8002."""

from __future__ import annotations

from dataclasses import dataclass

from .base import EngineAdapter, ModelLocation, Probe, register


@dataclass(frozen=True)
class TritonAdapter(EngineAdapter):
    def command(self, model: ModelLocation) -> list[str]:
        # Explicit model control: load exactly the model this service is for, from its repository.
        return ["tritonserver", f"--model-repository={model.path}", "--model-control-mode=explicit",
                f"--load-model={model.served_name}", "--http-port=8000", "--grpc-port=8001",
                "--metrics-port=8002", f"--exit-timeout-secs={model.drain_seconds}"]


TRITON = register(TritonAdapter(
    name="triton",
    summary="KServe v2 protocol",
    image="nvcr.io/nvidia/tritonserver",
    tag="25.01-py3",
    ports=(("http", 8000), ("grpc", 8001), ("metrics", 8002)),
    metrics_port=8002,
    metrics_path="/metrics",
    queue_metric="nv_inference_pending_request_count",
    inflight_metric=None,
    model_label="model",
    startup_probe=Probe("/v2/health/ready"),
    readiness_probe=Probe("/v2/health/ready"),
    liveness_probe=Probe("/v2/health/live"),
    model_check="kserve-v2",
))
