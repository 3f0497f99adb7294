"""A Triton-like server: the KServe v2 HTTP protocol (enough for tritonclient.http) and
Triton's metric names on a separate metrics port.

The simulated model echoes INPUT0 to OUTPUT0. Its latency follows the latency
model with the input's element count as prompt tokens and the request parameter
`sim_output_tokens` (default 16) as generated tokens.
"""

from __future__ import annotations

import json
import struct

import numpy as np
from aiohttp import web

from .engine import Engine
from tidal.simulate.latency import LatencyModel
from .podspec import EngineSpec, flag
from .registry import SimulatedEngine, register
from .scheduler import Draining

DEFAULT_OUTPUT_TOKENS = 16
VERSION = "1"
_NP_TYPES = {"BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
             "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
             "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}


class InferError(ValueError):
    pass


class _ModelStats:
    def __init__(self):
        self.success = self.failure = self.count = self.exec_count = 0
        self.queue_us = self.request_us = self.compute_us = 0


class TritonServer:
    def __init__(self, models: list[str], latency: LatencyModel | None = None):
        if not models:
            raise ValueError("a Triton server needs at least one model")
        self.models = list(models)
        self.engine = Engine(latency or LatencyModel())
        self.stats = {m: _ModelStats() for m in self.models}

    # ---- HTTP ---------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 2**20)
        r = app.router
        r.add_get("/v2/health/ready", self.ready)
        r.add_get("/v2/health/live", self.live)
        r.add_get("/v2", self.server_metadata)
        r.add_post("/v2/repository/index", self.repository_index)
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            r.add_get(prefix, self.model_metadata)
            r.add_get(prefix + "/ready", self.model_ready)
            r.add_get(prefix + "/config", self.model_config)
            r.add_post(prefix + "/infer", self.infer)
        return app

    def metrics_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        return app

    async def live(self, request):
        return web.Response(status=200)

    async def ready(self, request):
        return web.Response(status=503 if self.engine.scheduler.draining else 200)

    async def server_metadata(self, request):
        return web.json_response({"name": "triton", "version": "2.60.0-simulated",
                                  "extensions": ["classification", "model_repository", "binary_tensor_data",
                                                 "statistics", "parameters"]})

    async def repository_index(self, request):
        return web.json_response([{"name": m, "version": VERSION, "state": "READY"} for m in self.models])

    def _model(self, request) -> str:
        name = request.match_info["model"]
        version = request.match_info.get("version", VERSION)
        if name not in self.stats or version != VERSION:
            raise web.HTTPNotFound(text=json.dumps({"error": f"Request for unknown model: '{name}' version "
                                                            f"{version} is not found"}),
                                   content_type="application/json")
        return name

    async def model_ready(self, request):
        self._model(request)
        return web.Response(status=200)

    async def model_metadata(self, request):
        name = self._model(request)
        tensor = {"datatype": "FP32", "shape": [-1, -1]}
        return web.json_response({"name": name, "versions": [VERSION], "platform": "python",
                                  "inputs": [{"name": "INPUT0", **tensor}],
                                  "outputs": [{"name": "OUTPUT0", **tensor}]})

    async def model_config(self, request):
        name = self._model(request)
        return web.json_response({"name": name, "backend": "python", "max_batch_size": 0,
                                  "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [-1, -1]}],
                                  "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [-1, -1]}]})

    async def infer(self, request: web.Request) -> web.Response:
        name = self._model(request)
        stats = self.stats[name]
        try:
            header, inputs = _parse_infer_request(request.headers, await request.read())
        except InferError as err:
            stats.failure += 1
            return web.json_response({"error": str(err)}, status=400)
        array = inputs.get("INPUT0")
        if array is None:
            stats.failure += 1
            return web.json_response({"error": "expected input 'INPUT0'"}, status=400)
        output_tokens = int((header.get("parameters") or {}).get("sim_output_tokens", DEFAULT_OUTPUT_TOKENS))
        try:
            timings = await self.engine.run(int(array.size), output_tokens)
        except Draining:
            stats.failure += 1
            return web.json_response({"error": "server is shutting down"}, status=503)
        stats.success += 1
        stats.count += 1
        stats.exec_count += 1
        stats.queue_us += int(timings.queued_s * 1e6)
        stats.request_us += int(timings.e2e_s * 1e6)
        stats.compute_us += int((timings.e2e_s - timings.queued_s) * 1e6)
        out = {"name": "OUTPUT0", "datatype": _datatype(array), "shape": list(array.shape),
               "data": array.flatten().tolist()}
        return web.json_response({"model_name": name, "model_version": VERSION,
                                  "id": header.get("id", ""), "outputs": [out]})

    async def metrics(self, request):
        lines = []

        def family(metric, kind, doc, value_of):
            lines.append(f"# HELP {metric} {doc}")
            lines.append(f"# TYPE {metric} {kind}")
            for model, stats in self.stats.items():
                lines.append(f'{metric}{{model="{model}",version="{VERSION}"}} {value_of(model, stats)}')

        # The engine's queue is shared; it is reported on the first model, as one queue per pod.
        first = self.models[0]
        family("nv_inference_pending_request_count", "gauge", "Instantaneous number of pending requests",
               lambda m, s: self.engine.scheduler.waiting if m == first else 0)
        family("nv_inference_request_success", "counter", "Number of successful inference requests",
               lambda m, s: s.success)
        family("nv_inference_request_failure", "counter", "Number of failed inference requests",
               lambda m, s: s.failure)
        family("nv_inference_count", "counter", "Number of inferences performed", lambda m, s: s.count)
        family("nv_inference_exec_count", "counter", "Number of model executions performed",
               lambda m, s: s.exec_count)
        family("nv_inference_request_duration_us", "counter", "Cumulative inference request duration",
               lambda m, s: s.request_us)
        family("nv_inference_queue_duration_us", "counter", "Cumulative inference queuing duration",
               lambda m, s: s.queue_us)
        family("nv_inference_compute_infer_duration_us", "counter", "Cumulative compute inference duration",
               lambda m, s: s.compute_us)
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


def _datatype(array: np.ndarray) -> str:
    for name, kind in _NP_TYPES.items():
        if array.dtype == kind:
            return name
    return "BYTES"


def _parse_infer_request(headers, raw: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """Decode a v2 infer request, JSON or with the binary tensor extension (as tritonclient sends)."""
    header_length = headers.get("Inference-Header-Content-Length")
    try:
        split = int(header_length) if header_length else len(raw)
        header = json.loads(raw[:split])
    except (ValueError, UnicodeDecodeError) as err:
        raise InferError(f"malformed inference request: {err}") from err
    binary, offset, inputs = raw[split:], 0, {}
    for spec in header.get("inputs", []):
        try:
            name, datatype, shape = spec["name"], spec["datatype"], [int(d) for d in spec["shape"]]
        except (KeyError, TypeError, ValueError) as err:
            raise InferError(f"input needs name, datatype and shape: {err}") from err
        size = (spec.get("parameters") or {}).get("binary_data_size")
        if datatype == "BYTES":
            if size is not None:
                chunk, offset, items = binary[offset:offset + size], offset + size, []
                pos = 0
                while pos < len(chunk):
                    (n,) = struct.unpack_from("<I", chunk, pos)
                    items.append(chunk[pos + 4:pos + 4 + n])
                    pos += 4 + n
                inputs[name] = np.array(items, dtype=np.object_).reshape(shape)
            else:
                inputs[name] = np.array(spec.get("data", []), dtype=np.object_).reshape(shape)
            continue
        if datatype not in _NP_TYPES:
            raise InferError(f"input {name}: unsupported datatype {datatype}")
        try:
            if size is not None:
                array = np.frombuffer(binary[offset:offset + size], dtype=_NP_TYPES[datatype]).reshape(shape)
                offset += size
            else:
                array = np.array(spec.get("data", []), dtype=_NP_TYPES[datatype]).reshape(shape)
        except ValueError as err:
            raise InferError(f"input {name}: data does not match shape {shape}: {err}") from err
        inputs[name] = array
    return header, inputs


def parse(argv: list[str], words: list[str], latency: LatencyModel) -> EngineSpec | None:
    """`tritonserver --load-model=X [--load-model=Y] --http-port=P --metrics-port=M`."""
    if "tritonserver" not in words:
        return None
    models = tuple(flag(argv, "--load-model")) or ("model",)
    port = int((flag(argv, "--http-port") or ["8000"])[0])
    metrics_port = int((flag(argv, "--metrics-port") or ["8002"])[0])
    return EngineSpec("triton", models, None, port, metrics_port, latency)


def serve(spec: EngineSpec) -> tuple[TritonServer, list[tuple[web.Application, int]]]:
    server = TritonServer(list(spec.models), spec.latency)
    return server, [(server.app(), spec.port), (server.metrics_app(), spec.metrics_port or 8002)]


register(SimulatedEngine("triton", parse, serve))
