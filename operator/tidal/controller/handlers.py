"""kopf wiring: which events trigger a reconcile. Kept thin; the logic is in reconcile.py.

No handler here makes kopf store state on objects (no finalizers, no annotations): deletion
needs no operator (owner references cascade), and an unchanged object costs no write.
"""

from __future__ import annotations

import asyncio
import copy
import logging

import kopf

from ..api.v1alpha1 import GROUP, PLURAL, VERSION
from ..clients.kube import Kube, load_api_client
from ..render.labels import MANAGED_BY, SERVICE_LABEL
from .config import OperatorConfig
from .reconcile import Reconciler

log = logging.getLogger("tidal.operator")
CONFIG = OperatorConfig()  # set by `tidal run` before kopf starts
MANAGED = {k: v for k, v in MANAGED_BY.items()}


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_):
    settings.posting.enabled = False  # we write our own Events, about our own decisions
    settings.peering.standalone = True
    settings.watching.server_timeout = 300
    settings.networking.error_backoffs = [1, 2, 5, 10]
    memo.services = {}
    memo.nodes = {}
    memo.reconciler = Reconciler(Kube(load_api_client(CONFIG.kubeconfig)), CONFIG.render, memo.nodes)
    memo.resync = asyncio.create_task(_resync(memo))


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_):
    memo.resync.cancel()


async def _reconcile(memo: kopf.Memo, body: dict) -> None:
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    try:
        status = await memo.reconciler.reconcile(body)
        if key in memo.services:  # later triggers compare against what we just wrote, not a stale copy
            memo.services[key]["status"] = status
    except Exception:  # one object's failure never stops the others; the resync retries it
        meta = body.get("metadata", {})
        log.exception("reconcile of %s/%s failed; will retry", meta.get("namespace"), meta.get("name"))


@kopf.on.event(GROUP, VERSION, PLURAL)
async def inference_service_event(type: str, body: kopf.Body, namespace: str, name: str, memo: kopf.Memo, **_):
    if type == "DELETED" or body.metadata.get("deletionTimestamp"):
        memo.services.pop((namespace, name), None)
        memo.reconciler.forget(namespace, name)
        return
    memo.services[(namespace, name)] = copy.deepcopy(dict(body))
    await _reconcile(memo, memo.services[(namespace, name)])


async def _owner_changed(namespace: str, labels, memo: kopf.Memo) -> None:
    owner = (labels or {}).get(SERVICE_LABEL)
    body = memo.services.get((namespace, owner))
    if body is not None:
        await _reconcile(memo, body)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
async def deployment_event(namespace: str, labels, memo: kopf.Memo, **_):
    await _owner_changed(namespace, labels, memo)


@kopf.on.event("", "v1", "pods", labels=MANAGED)
async def pod_event(namespace: str, labels, memo: kopf.Memo, **_):
    await _owner_changed(namespace, labels, memo)


@kopf.on.event("", "v1", "nodes")
async def node_event(type: str, name: str, body: kopf.Body, memo: kopf.Memo, **_):
    """Keep only what placement checks need: labels and allocatable resources."""
    if type == "DELETED":
        memo.nodes.pop(name, None)
    else:
        memo.nodes[name] = {"metadata": {"name": name, "labels": dict(body.metadata.labels or {})},
                            "status": {"allocatable": dict((body.get("status") or {}).get("allocatable") or {})}}


async def _resync(memo: kopf.Memo) -> None:
    """Re-check every service now and then: engine readiness can change without a Kubernetes event,
    and a failed reconcile is retried here."""
    while True:
        await asyncio.sleep(CONFIG.resync_seconds)
        for body in list(memo.services.values()):
            await _reconcile(memo, body)
