"""`tidal activator`: run the gateway against a kubeconfig (or in-cluster)."""

from __future__ import annotations

import asyncio
import signal
import threading

from aiohttp import web

from .endpoints import Endpoint, Endpoints, watch_pods
from .gateway import Gateway, Limits


async def serve(kubeconfig: str | None, operator_url: str | None, host: str, port: int, metrics_port: int | None,
                limits: Limits, static: dict[tuple[str, str], list[tuple[str, int]]] | None = None,
                namespaces: list[str] | None = None, drain_seconds: float = 5.0) -> None:
    endpoints = Endpoints()
    if static:  # fixed upstreams, no cluster: for benchmarks and trying a client
        for key, addrs in static.items():
            for i, (h, p) in enumerate(addrs):
                endpoints.update(key, f"static-{i}", Endpoint(h, p))
        endpoints.ready.set()
    else:
        from kubernetes import client

        from ..clients.kube import load_api_client
        core = client.CoreV1Api(load_api_client(kubeconfig))
        loop = asyncio.get_running_loop()
        scopes = namespaces or [None]
        unlisted = set(scopes)
        lock = threading.Lock()

        def listed(scope):
            with lock:
                unlisted.discard(scope)
                if not unlisted:
                    endpoints.ready.set()
        for scope in scopes:
            threading.Thread(target=watch_pods, args=(core, endpoints, loop, scope, lambda s=scope: listed(s)),
                             daemon=True, name=f"pod-watch-{scope or 'all'}").start()
    gateway = Gateway(endpoints, operator_url, limits)
    runners = []
    for app, p in ((gateway.app(), port), (gateway.metrics_app(), metrics_port)):
        if p is None:
            continue
        # Held requests may wait out a whole cold start: shutdown waits for them too.
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               shutdown_timeout=limits.hold_timeout_s + 30)
        await runner.setup()
        await web.TCPSite(runner, host, p, backlog=1024, reuse_address=True).start()
        runners.append(runner)
    print(f"activator listening on {host}:{port}" + (f", metrics on {metrics_port}" if metrics_port else ""),
          flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    # Shutting down as a pod does: fail readiness so the Service stops sending new connections, keep
    # serving for drain_seconds (answers close their connections), then stop listening and let every
    # request in flight finish before exiting.
    gateway.draining = True
    print(f"draining for {drain_seconds:g} s", flush=True)
    await asyncio.sleep(drain_seconds)
    for runner in runners:
        await runner.cleanup()
