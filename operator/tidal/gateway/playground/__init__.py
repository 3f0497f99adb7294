"""The playground: a page served by the gateway for trying models in a browser and watching Tidal scale them.

Static files (no build step, nothing fetched from outside the cluster) under /playground/, and one JSON
endpoint of its own, /playground/api/history, that reads a model's last hour from Prometheus for the
key's models only. Everything else the page does goes through the gateway's public API with the key the
user typed: /v1/models for the live state, /v1/chat/completions for chat.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).parent / "static"
HISTORY_S, STEP_S = 3600, 30

# What the page draws per model, over the last hour: name -> PromQL for one service.
SERIES = {
    "replicas": 'sum(tidal_autoscaler_desired_replicas{{namespace="{ns}", inferenceservice="{name}"}})',
    "ready": 'sum(tidal_service_ready_replicas{{namespace="{ns}", inferenceservice="{name}"}})',
    # Either side may have no series yet (a service that never held a request): count it as 0.
    "queue": '(sum(tidal_autoscaler_observed_queue{{namespace="{ns}", inferenceservice="{name}"}}) or vector(0))'
             ' + (sum(tidal_activator_pending_requests{{namespace="{ns}", tidal_dev_inferenceservice="{name}"}})'
             ' or vector(0))',
    "latency_p50_s": 'histogram_quantile(0.5, sum by (le) (rate(tidal_gateway_request_duration_seconds_bucket'
                     '{{namespace="{ns}", tidal_dev_inferenceservice="{name}"}}[2m])))',
}


def _finite(value: str) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


def add_routes(app: web.Application, gateway, prometheus) -> None:
    """Mount the page and its history endpoint on the gateway's app (before its catch-all route)."""
    async def index(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers=_SECURITY_HEADERS)

    async def asset(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers=_SECURITY_HEADERS)

    async def history(request: web.Request) -> web.Response:
        allowed = gateway.model_for_key(request.headers.get("Authorization"), request.query.get("model", ""))
        if isinstance(allowed, web.Response):
            return allowed
        if prometheus is None:
            return web.json_response({"error": {"message": "the gateway runs without --prometheus-url: no history",
                                                "type": "server_error", "param": None, "code": "no_prometheus"}},
                                     status=503)
        ns, name = allowed.key
        end = time.time()
        out = {}
        for series, template in SERIES.items():
            try:
                result = await prometheus.range_query(template.format(ns=ns, name=name), end - HISTORY_S, end, STEP_S)
            except Exception as err:  # noqa: BLE001 - a picture missing must not fail the page
                return web.json_response({"error": {"message": f"Prometheus: {err}", "type": "server_error",
                                                    "param": None, "code": "prometheus_error"}}, status=502)
            # JSON has no NaN: a quantile over a window without requests is null (a gap in the picture).
            out[series] = [[float(t), _finite(v)] for t, v in (result[0]["values"] if result else [])]
        return web.json_response({"model": allowed.served_name, "step_seconds": STEP_S, "series": out})

    app.router.add_get("/playground", lambda r: web.HTTPFound("/playground/"))
    app.router.add_get("/playground/", index)
    app.router.add_get("/playground/api/history", history)
    app.router.add_get("/playground/{name}", asset)


# The page loads nothing from elsewhere; say so to the browser too.
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
