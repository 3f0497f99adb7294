"""The simulated container runtime: a model server for every Running engine pod.

KWOK pods run no process. This watches pods (a watch, not a poll); when an
engine pod gets its IP it starts a simulated vLLM or Triton server on the
pod's IP (a loopback address, from the node's pod CIDR) and port; when the pod
is being deleted the server drains like the real engine on SIGTERM (no new
requests, in-flight ones finish); when the pod is gone, so is its server.
From the same watch it keeps Prometheus's pod targets up to date (pod_discovery).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

from aiohttp import web

from ..cluster.pod_discovery import TargetsFile
from .podspec import EngineSpec
from .init_fetch import (ENGINE_STARTED_ANNOTATION, FETCH_FINISHED_ANNOTATION, FETCH_MESSAGE_ANNOTATION,
                         FETCH_STARTED_ANNOTATION,
                         fetch_container, loaded_model, node_fetch, resolve_env)
from .real import ENGINE_ANNOTATION, SERVING_ANNOTATION, RealProcess, prepare_real
from .registry import engine_spec, simulated

log = logging.getLogger("tidal.sim-runtime")
# While a simulated engine serves, its pod carries this finalizer: deleting the pod then waits, as a
# kubelet waits for a container that finishes its in-flight requests after SIGTERM (bounded by the
# grace period). KWOK removes a pod only once it has no finalizers.
DRAIN_FINALIZER = "sim.tidal.dev/drain"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


@dataclass
class RunningPod:
    key: str
    ip: str
    spec: EngineSpec | None  # None for a real engine
    server: Any  # a simulated engine's server, or the RealProcess of a real one
    runners: list[web.AppRunner] = field(default_factory=list)
    draining: bool = False


async def serve_engine(spec: EngineSpec, host: str) -> tuple[Any, list[web.AppRunner]]:
    """Start a simulated engine on host: its API on spec.port (and what else it listens on)."""
    server, apps = simulated()[spec.engine].serve(spec)
    runners = []
    try:
        for app, port in apps:
            runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1)
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, host, port, reuse_address=True).start()
    except BaseException:
        for runner in runners:
            await runner.cleanup()
        raise
    return server, runners


def _stamp() -> str:
    """Now, as Kubernetes writes a time (RFC 3339, whole seconds, UTC)."""
    import datetime
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class SimulatedRuntime:
    def __init__(self, api_client, drain_timeout: float = 600, targets: TargetsFile | None = None,
                 workdir: Path | None = None, real_start_timeout: float = 600):
        from kubernetes import client
        self.core = client.CoreV1Api(api_client)
        self.api_client = api_client
        self.targets = targets
        self.pods: dict[str, RunningPod] = {}
        self.drain_timeout = drain_timeout
        self._node_products: dict[str, str | None] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.grace: dict[str, tuple[str, str, int]] = {}  # pod uid -> (namespace, name, grace seconds)
        self._tried: set[str] = set()  # real-engine pods started (or failed to start): never twice
        self.ready = threading.Event()
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="tidal-real-engines-"))  # real engines' files
        self.real_start_timeout = real_start_timeout

    # ---- watch (in a thread: the kubernetes client is blocking) --------------------------------
    def _watch(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        from kubernetes import watch
        from kubernetes.client.rest import ApiException
        while True:
            try:
                listing = self.core.list_pod_for_all_namespaces()
                live = {p.metadata.uid for p in listing.items}
                loop.call_soon_threadsafe(queue.put_nowait, ("SYNC", live))
                for pod in listing.items:
                    loop.call_soon_threadsafe(queue.put_nowait, ("MODIFIED", pod))
                self.ready.set()
                rv = listing.metadata.resource_version
                while True:
                    stream = watch.Watch().stream(self.core.list_pod_for_all_namespaces,
                                                  resource_version=rv, timeout_seconds=300,
                                                  allow_watch_bookmarks=True)
                    for event in stream:
                        if event["type"] == "ERROR":  # e.g. 410 Gone as a watch event
                            raise ApiException(status=event["raw_object"].get("code", 500),
                                               reason=event["raw_object"].get("reason", "watch error"))
                        if event["type"] == "BOOKMARK":  # only a newer resourceVersion to resume from
                            rv = event["raw_object"]["metadata"]["resourceVersion"]
                            continue
                        obj = event["object"]
                        rv = obj.metadata.resource_version
                        loop.call_soon_threadsafe(queue.put_nowait, (event["type"], obj))
            except ApiException as err:
                if err.status == 410:  # our resourceVersion is too old: relist at once
                    continue
                log.warning("pod watch failed (%s %s); relisting in 1 s", err.status, err.reason)
            except Exception as err:  # connection lost, e.g. the apiserver restarts
                log.warning("pod watch interrupted (%s); relisting in 1 s", err)
            threading.Event().wait(1)

    async def run(self) -> None:
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._watch, args=(loop, queue), daemon=True, name="pod-watch").start()
        while True:
            kind, obj = await queue.get()
            if kind == "SYNC":
                for key in [k for k in self.pods if k not in obj]:
                    asyncio.create_task(self._stop(key))
                if self.targets:
                    self.targets.retain(obj)
                continue
            if self.targets:
                self.targets.update(obj.metadata.uid,
                                    None if kind == "DELETED" else self.api_client.sanitize_for_serialization(obj))
            asyncio.create_task(self._handle(kind, obj))

    # ---- reactions -----------------------------------------------------------------------------
    async def _handle(self, kind: str, pod) -> None:
        key = pod.metadata.uid
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if kind == "DELETED":
                await self._stop(key)
                self._locks.pop(key, None)
                self.grace.pop(key, None)
                self._tried.discard(key)
            elif pod.metadata.deletion_timestamp:
                if key in self.pods:
                    await self._drain(key)
                elif DRAIN_FINALIZER in (pod.metadata.finalizers or []):
                    # Served by an earlier run of this runtime: nothing left to drain here.
                    await asyncio.to_thread(self._finalizer, pod.metadata.namespace, pod.metadata.name, False)
            elif pod.status.pod_ip and pod.status.phase in ("Pending", "Running") and key not in self.pods:
                # Listening from the moment the pod has an IP, so that when KWOK marks it Ready the
                # engine answers; nothing routes to it before it is Ready.
                await self._start(pod)

    async def _start_real(self, pod) -> None:
        """The pod's own container command as a real process on the pod's IP (annotation
        sim.tidal.dev/engine: real). KWOK marks the pod Ready once the runtime has seen the engine pass its
        readiness probe and annotated the pod (sim.tidal.dev/serving), not after a fixed cold start."""
        ns, name, ip = pod.metadata.namespace, pod.metadata.name, pod.status.pod_ip
        if pod.metadata.uid in self._tried:  # once per pod: our own annotations bring it back here
            return
        self._tried.add(pod.metadata.uid)
        pod_spec = self.api_client.sanitize_for_serialization(pod.spec)
        container = pod_spec["containers"][0]
        workdir = self.workdir / pod.metadata.uid
        workdir.mkdir(parents=True, exist_ok=True)
        model_dir = None
        fetcher = fetch_container(pod_spec)
        if fetcher is not None:  # the node's model cache: fetch for real first, as the init container would
            node_cache = self.workdir / "nodes" / pod.spec.node_name
            if not await self._fetch(ns, name, fetcher, node_cache, workdir):
                return
            model_dir = loaded_model(container.get("args") or [], node_cache)
        try:
            command, probe = await asyncio.to_thread(prepare_real, container, ip, workdir, model_dir)
        except (ValueError, OSError, subprocess.CalledProcessError) as err:
            log.warning("pod %s/%s: cannot run its engine for real: %s", ns, name, err)
            return
        process = RealProcess(command, workdir / "engine.log", probe, workdir)
        await asyncio.to_thread(self._annotate, ns, name, {ENGINE_STARTED_ANNOTATION: _stamp()})
        await process.start()
        self.pods[pod.metadata.uid] = RunningPod(pod.metadata.uid, ip, None, process)
        self.grace[pod.metadata.uid] = (ns, name, pod.spec.termination_grace_period_seconds or 30)
        await asyncio.to_thread(self._finalizer, ns, name, add=True)
        log.info("started the real engine of pod %s/%s on %s: %s (log %s)", ns, name, ip, " ".join(command.argv),
                 workdir / "engine.log")
        # Not under the pod's lock: a deletion while the model loads must be able to stop it.
        asyncio.create_task(self._mark_serving(ns, name, process, probe, workdir))

    async def _fetch(self, ns: str, name: str, container: dict, node_cache: Path, workdir: Path) -> bool:
        """Run the pod's fetch container for real (init_fetch.py); its start and end go on the pod."""
        try:
            env = await asyncio.to_thread(resolve_env, container, ns, self._secret_data)
        except Exception as err:  # a required Secret key missing, or the Secret unreadable
            log.warning("pod %s/%s: cannot start its fetch container: %s", ns, name, err)
            return False
        fetch = node_fetch(container, env, node_cache, workdir / "termination-log")
        node_cache.mkdir(parents=True, exist_ok=True)
        started = _stamp()
        with open(workdir / "fetch.log", "ab") as out:
            proc = await asyncio.create_subprocess_exec(*fetch.argv, env=fetch.env, stdout=out,
                                                        stderr=subprocess.STDOUT)
            code = await proc.wait()
        finished, log_file = _stamp(), workdir / "termination-log"
        message = log_file.read_text()[:4000] if log_file.exists() else ""
        await asyncio.to_thread(self._annotate, ns, name, {FETCH_STARTED_ANNOTATION: started,
                                                           FETCH_FINISHED_ANNOTATION: finished,
                                                           FETCH_MESSAGE_ANNOTATION: message})
        if code != 0:
            log.warning("pod %s/%s: its model fetch failed (exit %s, see %s)", ns, name, code, workdir / "fetch.log")
        return code == 0

    def _secret_data(self, namespace: str, name: str) -> dict | None:
        from kubernetes.client.rest import ApiException
        try:
            return self.core.read_namespaced_secret(name, namespace).data
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    async def _mark_serving(self, ns: str, name: str, process: RealProcess, probe: str, workdir: Path) -> None:
        if await process.serving(timeout=self.real_start_timeout):
            await asyncio.to_thread(self._annotate, ns, name, {SERVING_ANNOTATION: "true"})
            log.info("real engine of pod %s/%s serves", ns, name)
        else:
            log.warning("real engine of pod %s/%s did not pass %s (see %s)", ns, name, probe, workdir / "engine.log")

    def _annotate(self, namespace: str, name: str, annotations: dict) -> None:
        from kubernetes.client.rest import ApiException
        try:
            self.core.patch_namespaced_pod(name, namespace, {"metadata": {"annotations": annotations}})
        except ApiException as err:
            if err.status != 404:
                log.warning("pod %s/%s: cannot annotate: %s", namespace, name, err.reason)

    async def _start(self, pod) -> None:
        if (pod.metadata.annotations or {}).get(ENGINE_ANNOTATION) == "real":
            return await self._start_real(pod)
        container = pod.spec.containers[0].to_dict()
        container = {"command": container.get("command"), "args": container.get("args")}
        product = await asyncio.to_thread(self._gpu_product, pod.spec.node_name)
        try:
            spec = engine_spec(container, pod.metadata.annotations or {}, product)
        except (ValueError, TypeError) as err:
            log.warning("pod %s/%s: cannot read engine settings: %s", pod.metadata.namespace, pod.metadata.name, err)
            return
        if spec is None:
            return
        # KWOK reuses the IP of a deleted pod; its server may still be closing, so retry briefly.
        for attempt in range(50):
            try:
                server, runners = await serve_engine(spec, pod.status.pod_ip)
                break
            except OSError as err:
                if attempt == 49:
                    log.warning("pod %s/%s: cannot listen on %s:%s: %s", pod.metadata.namespace,
                                pod.metadata.name, pod.status.pod_ip, spec.port, err)
                    return
                await asyncio.sleep(0.2)
        self.pods[pod.metadata.uid] = RunningPod(pod.metadata.uid, pod.status.pod_ip, spec, server, runners)
        self.grace[pod.metadata.uid] = (pod.metadata.namespace, pod.metadata.name,
                                        pod.spec.termination_grace_period_seconds or 30)
        await asyncio.to_thread(self._finalizer, pod.metadata.namespace, pod.metadata.name, add=True)
        log.info("serving %s %s for pod %s/%s on %s:%s", spec.engine, ",".join(spec.models),
                 pod.metadata.namespace, pod.metadata.name, pod.status.pod_ip, spec.port)

    async def _drain(self, key: str) -> None:
        running = self.pods.get(key)
        if running and not running.draining:
            running.draining = True
            asyncio.create_task(self._drain_then_release(key, running))

    async def _drain_then_release(self, key: str, running: RunningPod) -> None:
        namespace, name, grace = self.grace.get(key, (None, None, 30))
        if isinstance(running.server, RealProcess):
            await running.server.drain(min(self.drain_timeout, grace))
        else:
            await running.server.engine.scheduler.drain(min(self.drain_timeout, grace))
        if namespace:
            await asyncio.to_thread(self._finalizer, namespace, name, add=False)

    def _finalizer(self, namespace: str, name: str, add: bool) -> None:
        from kubernetes.client.rest import ApiException
        try:
            pod = self.core.read_namespaced_pod(name, namespace)
            finalizers = list(pod.metadata.finalizers or [])
            if add == (DRAIN_FINALIZER in finalizers):
                return
            finalizers = finalizers + [DRAIN_FINALIZER] if add else [f for f in finalizers if f != DRAIN_FINALIZER]
            # A JSON merge patch replaces the list (a strategic merge patch would merge it, and removing
            # our finalizer would silently do nothing); the resourceVersion guards against a lost update.
            self.core.patch_namespaced_pod(name, namespace, {"metadata": {
                "finalizers": finalizers, "resourceVersion": pod.metadata.resource_version}},
                _content_type="application/merge-patch+json")
        except ApiException as err:
            if err.status == 409:  # changed under us: try again with the fresh object
                self._finalizer(namespace, name, add)
            elif err.status != 404:
                log.warning("pod %s/%s: cannot %s the drain finalizer: %s", namespace, name,
                            "add" if add else "remove", err.reason)

    async def _stop(self, key: str) -> None:
        running = self.pods.pop(key, None)
        if running:
            if isinstance(running.server, RealProcess):
                await running.server.stop()
            for runner in running.runners:
                await runner.cleanup()
            log.info("stopped %s server on %s", running.spec.engine if running.spec else "the real", running.ip)

    async def stop_real_engines(self) -> None:
        """Kill every real engine's process group. They run in sessions of their own (as containers would), so
        the signal that stops this runtime never reaches them: without this they outlive the cluster (~1 GB
        each for vLLM's CPU build)."""
        for running in list(self.pods.values()):
            if isinstance(running.server, RealProcess):
                await running.server.stop()

    def _gpu_product(self, node_name: str | None) -> str | None:
        if not node_name:
            return None
        if node_name not in self._node_products:
            try:
                node = self.core.read_node(node_name)
                self._node_products[node_name] = (node.metadata.labels or {}).get(GPU_PRODUCT_LABEL)
            except Exception:
                return None
        return self._node_products[node_name]


async def run_runtime(kubeconfig: str, health_port: int | None = None, targets_file: str | None = None) -> None:
    from kubernetes import config
    targets = TargetsFile(targets_file) if targets_file else None
    runtime = SimulatedRuntime(config.new_client_from_config(config_file=kubeconfig), targets=targets)
    if health_port:
        app = web.Application()

        async def healthz(request):
            ok = runtime.ready.is_set()
            return web.json_response({"ready": ok, "pods": len(runtime.pods)}, status=200 if ok else 503)

        app.router.add_get("/healthz", healthz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", health_port).start()
    loop, stopping = asyncio.get_running_loop(), asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # how the cluster stops it (processes.stop_pid), and Ctrl-C
        loop.add_signal_handler(sig, stopping.set)
    serving = asyncio.create_task(runtime.run())
    await asyncio.wait({serving, asyncio.create_task(stopping.wait())}, return_when=asyncio.FIRST_COMPLETED)
    await runtime.stop_real_engines()
    serving.cancel()
