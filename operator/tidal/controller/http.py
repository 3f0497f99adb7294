"""The operator's HTTP endpoints: health, its own metrics, the gateway's wake-up call and its load report."""

from __future__ import annotations

import math
import time

from aiohttp import web
from prometheus_client import generate_latest

from . import metrics
from ..autoscaling.observe import GatewayLoad
from .autoscaler import Autoscaler
from .wake_auth import WakeAuth


MAX_REPORTED = 20_000  # services in one report: far above any fleet, a bound on what one request may cost


def _number(value, default):
    """A finite, non-negative number from the activator's call; anything else is the default."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) and number >= 0 else default


def build_app(autoscaler: Autoscaler | None, wake_auth: WakeAuth | None = None) -> web.Application:
    """wake_auth: who may call /v1/wake (wake_auth.py); None leaves it open (--wake-auth off)."""
    async def healthz(request: web.Request) -> web.Response:
        if autoscaler is None:  # no Prometheus URL: the operator runs, nothing is autoscaled
            return web.json_response({"ok": True, "autoscaling": False})
        return web.json_response({"ok": True, "autoscaling": True, "services": len(autoscaler.store.services),
                                  "lastTickSeconds": round(autoscaler.last_tick_s, 4)})

    async def metrics_endpoint(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.REGISTRY), content_type="text/plain", charset="utf-8")

    async def wake(request: web.Request) -> web.Response:
        """POST /v1/wake/{namespace}/{name} {"pending": N, "arrival_rate": R, "request_seconds": S}: the
        activator holds N requests for a service, arriving at R a second; its requests took S lately."""
        started = time.monotonic()
        if wake_auth is not None:
            refused = await wake_auth.refusal(request.headers.get("Authorization"))
            if refused is not None:
                status, why = refused
                return web.json_response({"woken": False, "reason": why}, status=status,
                                         headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)
        if autoscaler is None:
            return web.json_response({"woken": False, "reason": "AutoscalingOff: the operator has no --prometheus-url"},
                                     status=503)
        try:
            said = await request.json()
            pending = _number(said.get("pending"), 1.0)
            rate, request_s = _number(said.get("arrival_rate"), 0.0), _number(said.get("request_seconds"), None)
        except (ValueError, AttributeError):
            pending, rate, request_s = 1.0, 0.0, None
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        if (namespace, name) not in autoscaler.store.services:
            return web.json_response({"woken": False, "reason": "UnknownService"}, status=404)
        decision = await autoscaler.wake(namespace, name, max(1.0, pending), rate, request_s)
        return web.json_response({
            "woken": decision is not None and decision.replicas > 0,
            "replicas": decision.replicas if decision else None,
            "reason": decision.reason if decision else "NotAtZero",
            "seconds": round(time.monotonic() - started, 4)})

    async def load(request: web.Request) -> web.Response:
        """POST /v1/load {"gateway": "<replica>", "services": {"<ns>/<name>": {"in_flight": N, "held": H,
        "arrival_rate": R, "request_seconds": S}}}: what one gateway replica sees of each busy service, every
        second (the fast signal). The same callers as /v1/wake may send it."""
        if wake_auth is not None:
            refused = await wake_auth.refusal(request.headers.get("Authorization"))
            if refused is not None:
                status, why = refused
                return web.json_response({"reason": why}, status=status,
                                         headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)
        if autoscaler is None:
            return web.json_response({"reason": "AutoscalingOff: the operator has no --prometheus-url"}, status=503)
        try:
            said = await request.json()
            gateway, reported = str(said["gateway"])[:253], said["services"]
            if not isinstance(reported, dict) or len(reported) > MAX_REPORTED:
                raise ValueError(f"services: an object of at most {MAX_REPORTED} entries")
            services = {}
            for name, entry in reported.items():
                namespace, _, service = str(name).partition("/")
                if not namespace or not service or not isinstance(entry, dict):
                    raise ValueError(f"services: {str(name)[:100]!r} is not \"<namespace>/<name>\": {{...}}")
                services[(namespace, service)] = GatewayLoad(
                    _number(entry.get("in_flight"), 0.0), _number(entry.get("held"), 0.0),
                    _number(entry.get("arrival_rate"), 0.0), _number(entry.get("request_seconds"), None),
                    _number(entry.get("oldest_held_s"), 0.0))
            hold_timeout_s = _number(said.get("hold_timeout_s"), None)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            return web.json_response({"reason": f"BadReport: {err}"[:300]}, status=400)
        scaled = await autoscaler.gateway_report(gateway, services, hold_timeout_s)
        return web.json_response({"scaled": [f"{ns}/{name}" for ns, name in scaled]})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", healthz)  # a standby answers 503 here (leadership.py); the leader 200
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_post("/v1/wake/{namespace}/{name}", wake)
    app.router.add_post("/v1/load", load)
    return app
