"""Reconcile one InferenceService: parse, look up, plan, apply, report.

Level-triggered and idempotent: it may run for any event (the object, its Deployment, its
pods, a periodic resync) and writes only what differs — nothing when nothing changed.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

from ..api.v1alpha1 import InferenceServiceSpec, parse_spec
from ..clients.engine_health import listing_serves, model_ready, openai_models
from ..clients.kube import OPERATOR_MANAGER, Kube, Rejected, manages
from ..engines import engine
from ..planning.cache_nodes import (CachePlan, fetched_on, plan_cache_nodes, pool_nodes_holding,
                                    prefetch_condition)
from ..planning.checks import (ClusterFacts, Problem, find_problems, referenced_claims, referenced_secrets,
                               replica_gpu)
from ..planning.conditions import get_condition
from ..planning.served_names import Claim, claims_of, conflict
from ..planning.status import Observation, fetch_failure, plan_status
from ..render import RenderSettings, render_deployment, render_network_policy, render_service
from ..render.deployment import pod_placement
from ..render.labels import SERVICE_LABEL, SPEC_HASH_ANNOTATION
from ..render.model_fetch import cache_fetch_command, cache_node_label
from ..render.prefetch import PREFETCH_LABEL, prefetch_name, render_prefetch, wants_prefetch
from ..render.service import service_url
from .store import ServiceStore, update_status

log = logging.getLogger("tidal.reconcile")
# Not-ready reasons that are normal progress, announced as Normal events rather than Warnings.
PROGRESS_REASONS = {"Creating", "ModelLoading", "Prefetching"}
ENGINE_FAILURE_THRESHOLD = 3
MAX_LISTED = 16  # replicas whose loaded adapters status lists (each one GET per reconcile)


def utcnow() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def spec_problems(err: ValidationError) -> list[Problem]:
    """Pydantic errors as problems that name the field, the value and what is allowed."""
    problems = []
    for e in err.errors():
        where = ".".join(["spec", *(str(p) for p in e["loc"])])
        value = repr(e.get("input"))[:80]
        problems.append(Problem("InvalidSpec", f"{where}: {e['msg']} (got {value})"))
    return problems


def initial_replicas(spec: InferenceServiceSpec) -> int:
    """Start with one replica (like Knative's initial scale) unless minReplicas asks for more; an idle
    service then goes to zero through the autoscaler."""
    return min(spec.scaling.maxReplicas, max(1, spec.scaling.minReplicas))


@dataclass
class Reconciler:
    kube: Kube
    settings: RenderSettings
    store: ServiceStore
    scaling_defaults: dict | None = None
    # Called with (namespace, name) when a Deployment is created with replicas: its first replica's start is
    # a cold start like a wake-up's, and the first a service has (the autoscaler times it).
    launched: Callable[[tuple[str, str]], None] | None = None

    def __post_init__(self):
        self._locks: dict[tuple[str, str], asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self._engine_failures: dict[tuple[str, str], int] = {}

    def forget(self, namespace: str, name: str) -> None:
        self._locks.pop((namespace, name), None)
        self._engine_failures.pop((namespace, name), None)

    async def reconcile(self, body: dict) -> None:
        """Bring the children and the status in line with `body`."""
        meta = body["metadata"]
        async with self._locks[(meta["namespace"], meta["name"])]:
            return await self._reconcile(body)

    async def _reconcile(self, body: dict) -> None:
        meta = body["metadata"]
        ns, name, generation = meta["namespace"], meta["name"], meta.get("generation", 0)
        try:
            spec = parse_spec(body.get("spec") or {}, self.scaling_defaults)
            problems = find_problems(spec, await self._facts(ns, spec), self.settings.pool_label)
        except ValidationError as err:
            spec, problems = None, spec_problems(err)
        deployment = await self.kube.get_deployment(ns, name)
        if spec is not None and not problems:
            try:
                deployment = await self._apply(body, spec, deployment)
            except Rejected as err:  # a spec problem the schema missed: no retry can fix it
                problems = [Problem("RenderRejected", f"the apiserver refused the {err.kind} made from this spec: "
                                                      f"{err.message}")]
        pods = await self.kube.list_pods(ns, f"{SERVICE_LABEL}={name}") if deployment else []
        cache, prefetch = await self._node_cache(ns, name, spec, pods) if spec is not None and not problems \
            else (None, None)
        ready, why, loaded = await self._ask_engines(spec, deployment, pods, problems)
        # Like a probe's failureThreshold: one slow answer on a busy node is not an outage.
        failures = self._engine_failures[(ns, name)] = (self._engine_failures.get((ns, name), 0) + 1
                                                         if ready is False else 0)
        if ready is False and failures < ENGINE_FAILURE_THRESHOLD:
            ready = None
        owner, adapter_owners = None, []
        if spec is not None:
            mine = Claim((ns, name), spec.model.served_name, meta.get("creationTimestamp") or "")
            rival = conflict(mine, self.store.claimants(mine.served_name))
            owner = rival.key if rival else None
            for claim in claims_of(body)[1:]:  # its adapters' names
                theirs = conflict(claim, self.store.claimants(claim.served_name))
                if theirs is not None:
                    adapter_owners.append((claim.served_name, theirs.key))
        batch = engine(spec.engine.type).batch(spec.engine.args, self.gpu(spec)) if spec is not None else None
        obs = Observation(generation, problems, deployment, pods, ready, why,
                          service_url(name, ns) if spec is not None and not problems else None,
                          spec.model.served_name if spec is not None else None, owner, batch, cache, prefetch,
                          spec.scaling.minReplicas if spec is not None else 0, tuple(adapter_owners), loaded)
        now = utcnow()
        before, after = await update_status(self.kube, self.store, body, lambda cur: plan_status(cur, obs, now))
        if after != before:
            await self._announce(body, before, after)

    def gpu(self, spec: InferenceServiceSpec):
        return replica_gpu(spec, list(self.store.nodes.values()), self.settings.pool_label)

    async def _facts(self, ns: str, spec: InferenceServiceSpec) -> ClusterFacts:
        missing_secrets = tuple(sorted([s for s in referenced_secrets(spec)
                                        if not await self.kube.exists("Secret", ns, s)]))
        missing_claims = tuple([c for c in referenced_claims(spec)
                                if not await self.kube.exists("PersistentVolumeClaim", ns, c)])
        return ClusterFacts(list(self.store.nodes.values()), missing_secrets, missing_claims)

    async def _apply(self, body: dict, spec: InferenceServiceSpec, current: dict | None) -> dict:
        meta = body["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        desired = render_deployment(name, ns, uid, spec, self.settings, self.gpu(spec))
        lo, hi = spec.scaling.minReplicas, spec.scaling.maxReplicas
        if current is None:
            desired["spec"]["replicas"] = initial_replicas(spec)
            result = await self.kube.apply(desired)
            if self.launched is not None:
                self.launched((ns, name))
            await self.kube.event(body, "Normal", "Created",
                                  f"created Deployment {name} with {desired['spec']['replicas']} replica(s)")
        else:
            replicas = (current.get("spec") or {}).get("replicas", 1)
            owns_replicas = manages(current, OPERATOR_MANAGER, "spec", "replicas")
            clamped = min(hi, max(lo, replicas))
            if owns_replicas:
                # Until the autoscaler takes replicas over, keep them (clamped to the spec's bounds):
                # leaving them out of the apply would make the apiserver reset them to 1.
                desired["spec"]["replicas"] = clamped
            stale = _hash(current) != _hash(desired)
            if stale or (owns_replicas and clamped != replicas):
                result = await self.kube.apply(desired)
                if stale:
                    await self.kube.event(body, "Normal", "RollingOut",
                                          f"spec generation {meta.get('generation')} applied to Deployment {name}")
            else:
                result = current
        service = render_service(name, ns, uid, spec)
        live = await self.kube.get_service(ns, name)
        if live is None or _hash(live) != _hash(service):
            await self.kube.apply(service)
        if self.settings.model_cache is not None:
            await self._apply_prefetch(body, spec)
        if self.settings.network_policy is not None:
            policy = render_network_policy(name, ns, uid, spec, self.settings.network_policy)
            live = await self.kube.get_network_policy(ns, name)
            if live is None or _hash(live) != _hash(policy):
                await self.kube.apply(policy)
        return result

    async def _apply_prefetch(self, body: dict, spec: InferenceServiceSpec) -> None:
        meta = body["metadata"]
        live = await self.kube.get_daemonset(meta["namespace"], prefetch_name(meta["name"]))
        if wants_prefetch(spec, self.settings):
            desired = render_prefetch(meta["name"], meta["namespace"], meta["uid"], spec, self.settings)
            if live is None or _hash(live) != _hash(desired):
                await self.kube.apply(desired)
        elif live is not None:  # prefetch turned off: the cached copies stay, no longer held from eviction
            await self.kube.delete_daemonset(meta["namespace"], prefetch_name(meta["name"]))

    async def _node_cache(self, ns: str, name: str, spec: InferenceServiceSpec,
                          pods: list[dict]) -> tuple[CachePlan | None, tuple[str, str, str] | None]:
        """Label the nodes where this model was fetched; count the pool's nodes that hold it."""
        label = cache_node_label(spec.model, self.settings)
        prefetching = wants_prefetch(spec, self.settings)
        if label is None:  # no node cache, or a model it does not cache
            asked = spec.model.cache is not None and spec.model.cache.prefetch
            return None, ("False", "ModelCacheOff", "spec.model.cache.prefetch is set but the operator's model "
                          "cache is off: turn it on with the chart's operator.modelCache.enabled") if asked else None
        prefetchers = await self.kube.list_pods(ns, f"{PREFETCH_LABEL}={name}") if prefetching else []
        nodes, pool = list(self.store.nodes.values()), pod_placement(spec, self.settings).get("nodeSelector", {})
        plan = plan_cache_nodes(nodes, pool, label, fetched_on(pods + prefetchers))
        for node in plan.to_label:
            await self.kube.label_node(node, {label: "true"})
            self.store.nodes[node]["metadata"]["labels"][label] = "true"  # the node watch will say so too
        if not prefetching:
            return plan, None
        # Only pods of the current model count: during a rollout to a new uri, the old one's pods still run.
        command = cache_fetch_command(spec.model, self.settings.model_cache)
        current = [p for p in prefetchers if _running(p) and _fetch_command(p) == command]
        held = pool_nodes_holding(nodes, pool, fetched_on(current))
        return plan, prefetch_condition(held, plan.pool, fetch_failure(prefetchers))

    async def _ask_engines(self, spec, deployment, pods, problems) -> tuple[bool | None, str, tuple | None]:
        """Whether a ready replica's engine serves the model (beyond its pod being Ready), and for a service
        with adapters, (pod, the adapters its engine lists) for each ready replica (up to MAX_LISTED; an engine
        that does not answer is left out, not listed empty; None: no adapters). One GET per replica for both."""
        if spec is None:
            return None, "", None
        adapter = engine(spec.engine.type)
        ready_pods = sorted((p for p in pods if _ready(p) and (p.get("status") or {}).get("podIP")),
                            key=lambda p: p["metadata"]["name"])
        lists_adapters = bool(spec.adapters) and adapter.model_check == "openai" and not problems
        listings: dict[str, tuple] = {}  # pod name -> its engine's answer to GET /v1/models
        for pod in ready_pods[:MAX_LISTED] if lists_adapters else []:
            listings[pod["metadata"]["name"]] = await openai_models(pod["status"]["podIP"], adapter.api_port)
        loaded = tuple((pod, tuple(sorted(i for i in ids if i != spec.model.served_name)))
                       for pod, (ids, _) in listings.items() if ids is not None) if lists_adapters else None
        if not deployment or not (deployment.get("status") or {}).get("readyReplicas"):
            return None, "", loaded
        result: tuple[bool | None, str] = (None, "")
        for pod in ready_pods[:3]:  # one serving replica is enough to call it Ready
            ip, listing = pod["status"]["podIP"], listings.get(pod["metadata"]["name"])
            result = listing_serves(ip, adapter.api_port, listing, spec.model.served_name) if listing else \
                await model_ready(adapter.model_check, ip, adapter.api_port, spec.model.served_name)
            if result[0]:
                break
        return *result, loaded

    async def _announce(self, body: dict, before: dict, after: dict) -> None:
        """Events on transitions of Valid and Ready, as `kubectl describe` readers expect."""
        for type_ in ("Valid", "Ready", "Routable", "Prefetched"):
            old, new = get_condition(before.get("conditions"), type_), get_condition(after.get("conditions"), type_)
            if new and (not old or (old["status"], old["reason"]) != (new["status"], new["reason"])):
                kind = "Normal" if new["status"] == "True" or new["reason"] in PROGRESS_REASONS else "Warning"
                await self.kube.event(body, kind, new["reason"], new["message"])


def _ready(pod: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _running(pod: dict) -> bool:
    """Not being deleted, and Ready: a prefetch pod that holds its model (an old revision's pod going away
    does not count for the new one)."""
    return not (pod.get("metadata") or {}).get("deletionTimestamp") and _ready(pod)


def _fetch_command(pod: dict) -> list[str] | None:
    inits = (pod.get("spec") or {}).get("initContainers") or []
    return inits[0].get("command") if inits else None


def _hash(obj: dict) -> str | None:
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION)

