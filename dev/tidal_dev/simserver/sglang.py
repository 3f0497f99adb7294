"""An SGLang-like server: the simulated vLLM's OpenAI API, with SGLang's metric names and labels.

SGLang (0.5.23, `sglang/srt/observability/metrics_collector.py`) exports its scheduler gauges from the
scheduler of TP rank 0, labelled model_name (the served name), engine_type ("unified" when prefill and
decode run together), tp_rank, pp_rank and moe_ep_rank; with --enable-metrics they are on the API port's
/metrics. Simplified: while draining, this refuses new requests with 503, as the simulated vLLM does;
real SGLang keeps taking them (only its /health turns 503). The gateway stops sending requests to a
terminating pod either way.
"""

from __future__ import annotations

from dataclasses import replace

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from tidal.simulate.latency import LatencyModel
from .podspec import EngineSpec, flag
from .registry import SimulatedEngine, register
from .vllm import LATENCY_BUCKETS, VllmServer

LABELS = ["model_name", "engine_type", "tp_rank", "pp_rank", "moe_ep_rank"]


class _SchedulerGauges:
    """SGLang's scheduler gauges, read from the engine at scrape time."""

    def __init__(self, server: "SglangServer"):
        self.server = server

    def collect(self):
        engine = self.server.engine
        for name, doc, value in (
            ("sglang:num_running_reqs", "The number of running requests.", engine.scheduler.running),
            ("sglang:num_queue_reqs", "The number of requests in the waiting queue.", engine.scheduler.waiting),
            ("sglang:token_usage", "The token usage.", engine.kv_cache_usage),
        ):
            family = GaugeMetricFamily(name, doc, labels=LABELS)
            family.add_metric(self.server.label_values, value)
            yield family


class SglangServer(VllmServer):
    def __init__(self, model: str, served_name: str | None = None, latency: LatencyModel | None = None):
        super().__init__(model, served_name, latency)
        self.label_values = [self.served_name, "unified", "0", "0", "0"]
        self.registry = r = CollectorRegistry(auto_describe=False)
        r.register(_SchedulerGauges(self))
        self.queue_time = Histogram("sglang:queue_time_seconds", "Histogram of queueing time in seconds.",
                                    LABELS, buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("sglang:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              LABELS, buckets=LATENCY_BUCKETS, registry=r)
        self.requests = Counter("sglang:num_requests", "Number of requests processed.", LABELS, registry=r)
        self.prompt_tokens = Counter("sglang:prompt_tokens", "Number of prefill tokens processed.", LABELS,
                                     registry=r)
        self.generation_tokens = Counter("sglang:generation_tokens", "Number of generation tokens processed.",
                                         LABELS, registry=r)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{
            "id": self.served_name, "object": "model", "created": 0, "owned_by": "sglang", "root": self.model,
            "max_model_len": 8192}]})

    def _record(self, timings, n_in: int, n_out: int) -> None:
        labels = self.label_values
        self.queue_time.labels(*labels).observe(timings.queued_s)
        self.ttft.labels(*labels).observe(timings.ttft_s)
        self.requests.labels(*labels).inc()
        self.prompt_tokens.labels(*labels).inc(n_in)
        self.generation_tokens.labels(*labels).inc(n_out)


def parse(argv: list[str], words: list[str], latency: LatencyModel) -> EngineSpec | None:
    """`python3 -m sglang.launch_server --model-path M --served-model-name X --port P
    [--max-running-requests N]`."""
    if "sglang.launch_server" not in words:
        return None
    running = flag(argv, "--max-running-requests")
    if running and running[0].isdigit():  # the engine's own batch limit is the simulated concurrency
        latency = replace(latency, max_concurrency=int(running[0]))
    model = (flag(argv, "--model-path") or flag(argv, "--model") or ["model"])[0]
    served = (flag(argv, "--served-model-name") or [model])[0]
    port = int((flag(argv, "--port") or ["30000"])[0])
    return EngineSpec("sglang", (model,), served, port, None, latency)


def serve(spec: EngineSpec) -> tuple[SglangServer, list[tuple[web.Application, int]]]:
    server = SglangServer(spec.models[0], spec.served_name, spec.latency)
    return server, [(server.app(), spec.port)]


register(SimulatedEngine("sglang", parse, serve))
