"""kopf wiring: which events trigger what. Kept thin; the logic is in reconcile.py and autoscaler.py.

No handler here makes kopf store state on objects (no finalizers, no annotations): deletion
needs no operator (owner references cascade), and an unchanged object costs no write.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time

import kopf
from aiohttp import web

from ..api.v1alpha1 import GROUP, PLURAL, VERSION
from ..clients.kube import Kube, load_api_client, unreachable
from ..clients.prometheus import Prometheus
from ..planning.served_names import claims_of
from ..planning.status import pod_gpus, pod_unschedulable, quota_refusal, ready_for_its_spec
from ..render.labels import MANAGED_BY, SERVICE_LABEL
from ..render.prefetch import PREFETCH_LABEL
from . import metrics
from .autoscaler import Autoscaler
from .config import OperatorConfig
from .http import build_app
from .wake_auth import AUDIENCE, WakeAuth
from .reconcile import Reconciler
from .store import DeploymentState, ServiceStore

log = logging.getLogger("tidal.operator")
CONFIG = OperatorConfig()  # set by `tidal run` before kopf starts


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_):
    settings.posting.enabled = False  # we write our own Events, about our own decisions
    settings.peering.standalone = True
    settings.watching.server_timeout = 300
    settings.networking.error_backoffs = [1, 2, 5, 10]
    memo.store = ServiceStore()
    metrics.LEADING.set(1)  # this process acts (a standby answers /metrics with 0: leadership.py)
    kube = Kube(load_api_client(CONFIG.kubeconfig))
    memo.kube = kube
    memo.reconciler = Reconciler(kube, CONFIG.render, memo.store, scaling_defaults=CONFIG.scaling_defaults)
    memo.tasks = [asyncio.create_task(_resync(memo))]
    memo.autoscaler = None
    if CONFIG.prometheus_url:
        memo.autoscaler = Autoscaler(kube, Prometheus(CONFIG.prometheus_url, CONFIG.service_label), memo.store,
                                     CONFIG.autoscale_interval_s, metrics_grace_s=CONFIG.metrics_grace_s,
                                     scaling_defaults=CONFIG.scaling_defaults, pool_label=CONFIG.render.pool_label)
        memo.tasks.append(asyncio.create_task(memo.autoscaler.run()))
        # A new service's first replica is its first cold start: timed, the first wake-up can be sized for
        # what arrives while it lasts (without it, make demo's wake grew call by call: 1, 3, 5, 6 replicas).
        memo.reconciler.launched = lambda key: memo.autoscaler.cold_starts.begun(key, time.monotonic(), wake_up=False)
    if CONFIG.http_port:
        wake_auth = None
        if CONFIG.wake_callers is not None:
            wake_auth = WakeAuth(lambda token: kube.review_token(token, AUDIENCE), CONFIG.wake_callers)
        runner = web.AppRunner(build_app(memo.autoscaler, wake_auth), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, CONFIG.http_host, CONFIG.http_port).start()
        memo.http = runner


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_):
    for task in memo.tasks:
        task.cancel()
    if CONFIG.stop_flag is not None:
        # kopf waits for a threading.Event stop flag in an executor thread; stopping on a signal
        # leaves that thread waiting and the process would never exit. Setting it lets it finish.
        CONFIG.stop_flag.set()


async def _reconcile(memo: kopf.Memo, body: dict) -> None:
    try:
        await memo.reconciler.reconcile(body)
    except Exception as err:  # one object's failure never stops the others; the resync retries it
        meta = body.get("metadata", {})
        brief = unreachable(err)
        if brief:  # the apiserver is restarting: a line, not a traceback per object per event
            log.warning("reconcile of %s/%s failed: %s; will retry", meta.get("namespace"), meta.get("name"), brief)
        else:
            log.exception("reconcile of %s/%s failed; will retry", meta.get("namespace"), meta.get("name"))


@kopf.on.event(GROUP, VERSION, PLURAL)
async def inference_service_event(type: str, body: kopf.Body, namespace: str, name: str, memo: kopf.Memo, **_):
    before = claims_of(memo.store.services.get((namespace, name)) or {})
    if type == "DELETED" or body.metadata.get("deletionTimestamp"):
        memo.store.drop_service((namespace, name))
        memo.reconciler.forget(namespace, name)
        if memo.autoscaler:
            memo.autoscaler.forget((namespace, name))
    else:
        memo.store.put_service(copy.deepcopy(dict(body)))
        await _reconcile(memo, memo.store.services[(namespace, name)])
    # A served name claimed or given up: the other services claiming it may have won or lost it.
    after = claims_of(memo.store.services.get((namespace, name)) or {})
    if before != after:
        names = {c.served_name for c in set(before) ^ set(after)}
        for claim in [c for n in names for c in memo.store.claimants(n) if c.key != (namespace, name)]:
            await _reconcile(memo, memo.store.services[claim.key])


async def _owner_changed(namespace: str, labels, memo: kopf.Memo) -> None:
    body = memo.store.services.get((namespace, (labels or {}).get(SERVICE_LABEL)))
    if body is not None:
        await _reconcile(memo, body)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED_BY)
async def deployment_event(type: str, body: kopf.Body, namespace: str, labels, memo: kopf.Memo, **_):
    key = (namespace, (labels or {}).get(SERVICE_LABEL))
    if type == "DELETED":
        memo.store.deployments.pop(key, None)
    else:
        memo.store.deployments[key] = DeploymentState(replicas=body.spec.get("replicas", 1),
                                                      ready=body.status.get("readyReplicas", 0) or 0,
                                                      unavailable_reason=quota_refusal(dict(body)))
        ready = memo.store.deployments[key].ready
        metrics.READY.labels(*key).set(ready)
        if memo.autoscaler:
            took = memo.autoscaler.cold_starts.replicas_ready(key, ready_for_its_spec(dict(body)), time.monotonic())
            if took is not None:
                await memo.autoscaler.explain_cold_start(key)
    await _owner_changed(namespace, labels, memo)


@kopf.on.event("", "v1", "pods", labels=MANAGED_BY)
async def pod_event(type: str, body: kopf.Body, namespace: str, labels, memo: kopf.Memo, **_):
    prefetch_for = (labels or {}).get(PREFETCH_LABEL)
    if prefetch_for:  # a prefetch pod: its service's cache status may have changed; it is not a replica
        body_of = memo.store.services.get((namespace, prefetch_for))
        if body_of is not None:
            await _reconcile(memo, body_of)
        return
    key = (namespace, (labels or {}).get(SERVICE_LABEL))
    gpus, node = pod_gpus(body), (body.get("spec") or {}).get("nodeName")
    if type == "DELETED" or not gpus or not node or (body.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        memo.store.gpu_pods.pop(body.metadata.uid, None)
    else:
        memo.store.gpu_pods[body.metadata.uid] = (node, gpus)
    memo.store.set_pod_schedulable(key, body.metadata.uid,
                                   type == "DELETED" or bool(body.metadata.get("deletionTimestamp"))
                                   or not pod_unschedulable(body))
    if type == "DELETED":
        memo.store.pod_departed(key, body.metadata.name, time.monotonic())
    else:
        memo.store.pod_present(key, body.metadata.name)
    await _owner_changed(namespace, labels, memo)


@kopf.on.event("", "v1", "nodes")
async def node_event(type: str, name: str, body: kopf.Body, memo: kopf.Memo, **_):
    """Keep only what placement checks need: labels and allocatable resources."""
    if type == "DELETED":
        memo.store.nodes.pop(name, None)
    else:
        memo.store.nodes[name] = {"metadata": {"name": name, "labels": dict(body.metadata.labels or {})},
                                  "status": {"allocatable": dict((body.get("status") or {}).get("allocatable") or {})}}


async def _resync(memo: kopf.Memo) -> None:
    """Re-check every service now and then: engine readiness can change without a Kubernetes event,
    and a failed reconcile is retried here."""
    while True:
        await asyncio.sleep(CONFIG.resync_seconds)
        for body in list(memo.store.services.values()):
            await _reconcile(memo, body)
        metrics.RESYNCS.inc()
