"""A vLLM-like server: the OpenAI API subset vLLM serves, and vLLM's metric names.

Responses carry made-up text; their timing follows the latency model, and
their `usage` counts are the token counts the latency model used.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from .engine import Engine
from tidal.simulate.latency import LatencyModel, prompt_tokens
from .podspec import EngineSpec, flag, listed
from .registry import SimulatedEngine, register
from .scheduler import Draining

DEFAULT_MAX_TOKENS = 16
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)


class _LiveGauges:
    """Gauges read from the engine at scrape time, so a scrape sees the queue as it is."""

    def __init__(self, server: "VllmServer"):
        self.server = server

    def collect(self):
        engine, labels = self.server.engine, [self.server.served_name]
        for name, doc, value in (
            ("vllm:num_requests_waiting", "Requests waiting to be processed.", engine.scheduler.waiting),
            ("vllm:num_requests_running", "Requests in model execution batches.", engine.scheduler.running),
            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", engine.kv_cache_usage),
        ):
            family = GaugeMetricFamily(name, doc, labels=["model_name"])
            family.add_metric(labels, value)
            yield family


class VllmServer:
    def __init__(self, model: str, served_name: str | None = None, latency: LatencyModel | None = None,
                 adapters: tuple[str, ...] = ()):
        self.model = model
        self.served_name = served_name or model
        self.adapters = adapters  # LoRA adapters' names: answered like the model, named in the answer
        self.engine = Engine(latency or LatencyModel())
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_LiveGauges(self))
        label = ["model_name"]
        self.queue_time = Histogram("vllm:request_queue_time_seconds", "Time spent waiting in the queue.",
                                    label, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token.",
                              label, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency.",
                             label, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.success = Counter("vllm:request_success", "Finished requests.", label + ["finished_reason"],
                               registry=self.registry)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prefill tokens processed.", label,
                                     registry=self.registry)
        self.generation_tokens = Counter("vllm:generation_tokens", "Generation tokens produced.", label,
                                         registry=self.registry)

    # ---- HTTP ---------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_get("/health", self.health)
        app.router.add_get("/version", self.version)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def health(self, request: web.Request) -> web.Response:
        if self.engine.scheduler.draining:
            return web.Response(status=503, text="shutting down")
        return web.Response(status=200)

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "simulated"})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{
            "id": self.served_name, "object": "model", "created": 0, "owned_by": "vllm", "root": self.model,
            "max_model_len": 8192}] + [{"id": name, "object": "model", "created": 0, "owned_by": "vllm",
                                        "root": name, "parent": self.served_name} for name in self.adapters]})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), content_type="text/plain", charset="utf-8")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "request body is not valid JSON", "BadRequestError")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object", "BadRequestError")
        asked = body.get("model", self.served_name)
        if asked != self.served_name and asked not in self.adapters:
            return _error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        source = body.get("messages") if chat else body.get("prompt")
        if source is None:
            return _error(400, f"`{'messages' if chat else 'prompt'}` is required", "BadRequestError")
        n_in = prompt_tokens(source)
        n_out = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
        if not isinstance(n_out, int) or n_out < 1:
            return _error(400, f"max_tokens must be a positive integer, got {n_out!r}", "BadRequestError")
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        try:
            if body.get("stream"):
                options = body.get("stream_options")
                usage = isinstance(options, dict) and bool(options.get("include_usage"))
                return await self._stream(request, rid, chat, n_in, n_out, usage, asked)
            timings = await self.engine.run(n_in, n_out)
        except Draining:
            return _error(503, "server is shutting down", "ServiceUnavailableError")
        self._record(timings, n_in, n_out)
        text = _text(n_out)
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                  if chat else {"index": 0, "text": text, "finish_reason": "length", "logprobs": None})
        return web.json_response({
            "id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": asked, "choices": [choice],
            "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}})

    async def _stream(self, request, rid, chat, n_in, n_out, include_usage: bool, asked: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        obj = "chat.completion.chunk" if chat else "text_completion"
        created = int(time.time())

        async def send(payload: dict) -> None:
            await response.write(b"data: " + json.dumps(payload).encode() + b"\n\n")

        async def on_tokens(n: int) -> None:
            if not response.prepared:
                await response.prepare(request)
            delta = {"delta": {"content": _text(n)}} if chat else {"text": _text(n)}
            await send({"id": rid, "object": obj, "created": created, "model": asked,
                        "choices": [{"index": 0, **delta, "finish_reason": None}]})

        try:
            timings = await self.engine.run(n_in, n_out, on_tokens)
        except ConnectionResetError:  # the client went away mid-stream; its slot is already freed
            return response
        final = {"delta": {}} if chat else {"text": ""}
        await send({"id": rid, "object": obj, "created": created, "model": asked,
                    "choices": [{"index": 0, **final, "finish_reason": "length"}]})
        if include_usage:  # as vLLM does: one more event, with no choices, only when asked for
            await send({"id": rid, "object": obj, "created": created, "model": asked, "choices": [],
                        "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        self._record(timings, n_in, n_out)
        return response

    def _record(self, timings, n_in: int, n_out: int) -> None:
        name = self.served_name
        self.queue_time.labels(name).observe(timings.queued_s)
        self.ttft.labels(name).observe(timings.ttft_s)
        self.e2e.labels(name).observe(timings.e2e_s)
        self.success.labels(name, "length").inc()
        self.prompt_tokens.labels(name).inc(n_in)
        self.generation_tokens.labels(name).inc(n_out)


def _text(tokens: int) -> str:
    return " tok" * tokens


def _error(status: int, message: str, kind: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": status}, "object": "error"},
                             status=status)


def parse(argv: list[str], words: list[str], latency: LatencyModel) -> EngineSpec | None:
    """`vllm serve <model> --served-model-name X --port P [--max-num-seqs N]`."""
    if not ("vllm" in words and "serve" in words):
        return None
    seqs = flag(argv, "--max-num-seqs")
    if seqs and seqs[0].isdigit():  # the engine's own batch limit is the simulated concurrency
        latency = replace(latency, max_concurrency=int(seqs[0]))
    rest = argv[words.index("serve") + 1:]
    model = rest[0] if rest and not rest[0].startswith("-") else (flag(argv, "--model") or ["model"])[0]
    served = (flag(argv, "--served-model-name") or [model])[0]
    port = int((flag(argv, "--port") or ["8000"])[0])
    adapters = tuple(item.split("=", 1)[0] for item in listed(argv, "--lora-modules"))
    return EngineSpec("vllm", (model,), served, port, None, latency, adapters)


def serve(spec: EngineSpec) -> tuple[VllmServer, list[tuple[web.Application, int]]]:
    server = VllmServer(spec.models[0], spec.served_name, spec.latency, spec.adapters)
    return server, [(server.app(), spec.port)]


register(SimulatedEngine("vllm", parse, serve))
