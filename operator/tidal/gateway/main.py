"""`tidal activator`: run the gateway against a kubeconfig (or in-cluster)."""

from __future__ import annotations

import asyncio
import signal
import threading
from dataclasses import dataclass, field

from aiohttp import web

from ..routing.prefix import DEFAULT_PREFIX_CHARS
from .catalog import Catalog, Entry, watch_services
from .endpoints import Endpoint, Endpoints, watch_pods
from .gateway import Gateway, Limits
from .keys import ApiKey, KeyRing, digest, watch_keys
from .wake_token import WakeToken


@dataclass
class Static:
    """Fixed upstreams and keys, no cluster: for benchmarks and for trying a client."""
    endpoints: dict[tuple[str, str], list[tuple[str, int]]] = field(default_factory=dict)
    served: dict[tuple[str, str], str] = field(default_factory=dict)
    adapters: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # as spec.adapters' names
    keys: list[ApiKey] = field(default_factory=list)
    capacity: int | None = None  # requests each endpoint holds at most (as a pod's capacity annotation says)
    routing: str = "least-loaded"  # as an InferenceService's spec.routing.policy, for every static service
    prefix_chars: int = DEFAULT_PREFIX_CHARS  # as spec.routing.prefixCharacters

    def add_endpoint(self, service: tuple[str, str], served_name: str, host: str, port: int) -> None:
        self.endpoints.setdefault(service, []).append((host, port))
        self.served[service] = served_name

    def add_key(self, name: str, token: str) -> None:
        self.keys.append(ApiKey(name, digest(token)))


def _watch(target, *args) -> None:
    threading.Thread(target=target, args=args, daemon=True, name=f"watch-{target.__name__}").start()


async def serve(kubeconfig: str | None, operator_url: str | None, host: str, port: int, metrics_port: int | None,
                limits: Limits, static: Static | None = None,
                namespaces: list[str] | None = None, drain_seconds: float = 5.0,
                key_namespace: str | None = "tidal-system", playground: bool = True,
                prometheus_url: str | None = None, batch_storage: str | None = None,
                batch_concurrency: int = 16, wake_token_file: str | None = None, limit_share: int = 1) -> None:
    """key_namespace: where API-key Secrets live; None turns API keys off (a trusted mesh only).
    playground: serve the playground page at /playground/ (its history needs prometheus_url).
    batch_storage: serve /v1/files and /v1/batches, kept in this directory or s3://bucket[/prefix]."""
    endpoints, catalog = Endpoints(), Catalog()
    keys = KeyRing() if key_namespace else None
    gateway = Gateway(endpoints, operator_url, limits, catalog=catalog, keys=keys)
    gateway.waker.token = gateway.load_report.token = WakeToken.default(wake_token_file)
    gateway.limiter.share = max(1, limit_share)  # replicas sharing each key's limits (ratelimits.py)
    loop = asyncio.get_running_loop()
    if static:
        for key, addrs in static.endpoints.items():
            catalog.put(Entry(key, static.served[key], "static", "", routing=static.routing,
                              prefix_chars=static.prefix_chars, adapters=tuple(static.adapters.get(key, ()))))
            for i, (h, p) in enumerate(addrs):
                endpoints.update(key, f"static-{i}", Endpoint(h, p, capacity=static.capacity))
        for api_key in static.keys if keys is not None else []:
            keys.put(api_key)
        endpoints.ready.set()
    else:
        from kubernetes import client

        from ..clients.kube import load_api_client
        api = load_api_client(kubeconfig)
        core = client.CoreV1Api(api)
        # Ready once every watch has listed: pods and services (per namespace, or all), and keys.
        scopes = namespaces or [None]
        waiting = {*(("pods", s) for s in scopes), *(("services", s) for s in scopes),
                   *([("keys", None)] if keys is not None else [])}
        lock = threading.Lock()

        def listed(what):
            with lock:
                waiting.discard(what)
                if not waiting:
                    endpoints.ready.set()
        custom = client.CustomObjectsApi(api)
        for scope in scopes:
            _watch(watch_pods, core, endpoints, loop, scope, lambda s=scope: listed(("pods", s)))
            _watch(watch_services, custom, catalog, loop, lambda s=scope: listed(("services", s)), scope)
        if keys is not None:
            _watch(watch_keys, core, keys, loop, key_namespace, lambda: listed(("keys", None)),
                   gateway.limiter.forget)
    runners = []
    mounts = []
    if playground:
        from ..clients.prometheus import Prometheus
        from .playground import add_routes
        prometheus = Prometheus(prometheus_url, timeout=10) if prometheus_url else None
        mounts.append(lambda app: add_routes(app, gateway, prometheus))
    batches = None
    if batch_storage:
        from .batches.service import BatchService
        front_door = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
        mirror = None
        if not static and key_namespace:  # batches appear as InferenceBatch objects beside the keys
            from .batches.mirror import KubeMirror
            mirror = KubeMirror(custom, key_namespace)
        batches = BatchService(gateway, batch_storage, front_door, batch_concurrency, mirror)
        mounts.append(batches.add_routes)

    def mount(app):
        for add in mounts:
            add(app)
    for app, p in ((gateway.app(mount), port), (gateway.metrics_app(), metrics_port)):
        if p is None:
            continue
        # Held requests may wait out a whole cold start: shutdown waits for them too.
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               shutdown_timeout=limits.hold_timeout_s + 30)
        await runner.setup()
        await web.TCPSite(runner, host, p, backlog=1024, reuse_address=True).start()
        runners.append(runner)
    if batches is not None:
        batches.start()
    print(f"activator listening on {host}:{port}" + (f", metrics on {metrics_port}" if metrics_port else "")
          + (f"; API keys from Secrets in namespace {key_namespace}" if keys is not None else "; API keys OFF")
          + (f"; files and batches in {batch_storage}" if batches is not None else ""),
          flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    # Shutting down as a pod does: fail readiness so the Service stops sending new connections, keep
    # serving for drain_seconds (answers close their connections), then stop listening and let every
    # request in flight finish before exiting.
    gateway.draining = True
    if batches is not None:  # its requests in flight are dropped unwritten: a restart sends them again
        await batches.close()
    print(f"draining for {drain_seconds:g} s", flush=True)
    await asyncio.sleep(drain_seconds)
    for runner in runners:
        await runner.cleanup()
