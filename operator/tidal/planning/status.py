"""What an InferenceService's status should say, from what the operator observed."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..engines.base import Batch
from ..modelcache.layout import ADAPTER_FETCH_PREFIX, FETCH_CONTAINER
from .cache_nodes import CachePlan
from .checks import Problem
from .conditions import set_condition


@dataclass(frozen=True)
class Observation:
    generation: int
    problems: list[Problem] = field(default_factory=list)  # spec errors and cluster problems
    deployment: dict | None = None
    pods: list[dict] = field(default_factory=list)
    engine_ready: bool | None = None  # the engine's own model check on a ready replica; None: not checked
    engine_message: str = ""
    url: str | None = None
    served_name: str | None = None  # set when the spec parsed
    name_owner: tuple[str, str] | None = None  # another service that wins the served name
    batch: Batch | None = None  # requests one replica runs at once, and where that comes from
    cache: CachePlan | None = None  # the node cache on, for a cached model: pool nodes holding it
    prefetch: tuple[str, str, str] | None = None  # the Prefetched condition, when the spec asks for prefetch
    min_replicas: int = 0  # spec.scaling.minReplicas: a quota that keeps the service below it is a failure
    adapter_owners: tuple[tuple[str, tuple[str, str]], ...] = ()  # (adapter, the service that wins its name)
    loaded_adapters: tuple[tuple[str, tuple[str, ...]], ...] | None = None  # (pod, adapters its engine lists)


def pod_unschedulable(pod: dict) -> str | None:
    """The scheduler's message when it could not place this pod, else None."""
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("reason") == "Unschedulable":
            return cond.get("message") or "a replica cannot be scheduled"
    return None


def pod_gpus(pod: dict) -> int:
    """GPUs a pod asks for (its containers' nvidia.com/gpu requests)."""
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        try:
            total += int(((container.get("resources") or {}).get("requests") or {}).get("nvidia.com/gpu", 0))
        except (TypeError, ValueError):
            pass
    return total


def ready_for_its_spec(deployment: dict) -> int:
    """Ready replicas a Deployment reports for the replicas it now asks for: 0 while it asks for none, or while
    its status is older than its spec (status.observedGeneration < metadata.generation). Scaled 1 -> 0 -> 1
    within a second, its status still shows the replica of before; only a status that has seen the scale-up
    says a replica is ready for it."""
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    if not spec.get("replicas", 1) or (status.get("observedGeneration") or 0) < \
            ((deployment.get("metadata") or {}).get("generation") or 0):
        return 0
    return status.get("readyReplicas") or 0


def quota_refusal(deployment: dict) -> str | None:
    """The Deployment's word that a ResourceQuota refused one of its pods (its ReplicaFailure condition, copied
    from the ReplicaSet: `pods "x" is forbidden: exceeded quota: gpus, requested: ..., used: ..., limited: ...`)."""
    for cond in (deployment.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True" \
                and "exceeded quota" in (cond.get("message") or ""):
            return cond["message"]
    return None


def _unschedulable(pods: list[dict]) -> str | None:
    return next((m for m in map(pod_unschedulable, pods) if m), None)


FETCH_REASONS = ("ModelFetchFailed", "CacheTooSmall", "CacheFull")  # the first word of its termination message


def fetch_failure(pods: list[dict]) -> tuple[str, str] | None:
    """(reason, message) when a replica's model fetch failed: its init container's termination message, as
    `tidal fetch-model` wrote it (`CacheTooSmall: ...`). The kubelet retries it; the last failure is kept in
    lastState while the next attempt waits (CrashLoopBackOff)."""
    for pod in pods:
        for status in (pod.get("status") or {}).get("initContainerStatuses") or []:
            name = status.get("name") or ""
            if name != FETCH_CONTAINER and not name.startswith(ADAPTER_FETCH_PREFIX):
                continue
            what = "the model fetch" if name == FETCH_CONTAINER else \
                f"the fetch of spec.adapters[{name.removeprefix(ADAPTER_FETCH_PREFIX)}]"
            for state in (status.get("state") or {}, status.get("lastState") or {}):
                ended = state.get("terminated")
                if ended and ended.get("exitCode", 0) != 0:
                    message = (ended.get("message") or "").strip() or \
                        f"{what} exited with code {ended.get('exitCode')} ({ended.get('reason', '')})"
                    reason, _, rest = message.partition(":")
                    if reason not in FETCH_REASONS:
                        reason, rest = "ModelFetchFailed", message
                    if name != FETCH_CONTAINER:  # an adapter's: say which
                        reason = "AdapterFetchFailed" if reason == "ModelFetchFailed" else reason
                        rest = rest if rest.lstrip().startswith(what) else f"{what}: {rest.strip()}"
                    return reason, rest.strip()
    return None


def _deployment_failed(deployment: dict) -> str | None:
    for cond in (deployment.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return cond.get("message")
    return None


def ready_condition(obs: Observation) -> tuple[str, str, str]:
    """(status, reason, message) of the Ready condition."""
    if obs.problems:
        first = obs.problems[0]
        return "False", first.reason, first.message
    if obs.deployment is None:
        return "False", "Creating", "creating the Deployment"
    dstatus = obs.deployment.get("status") or {}
    want = (obs.deployment.get("spec") or {}).get("replicas", 1)
    ready = dstatus.get("readyReplicas", 0) or 0
    if want == 0 and ready == 0:
        return "True", "ScaledToZero", "no replicas while idle; a request through the activator wakes it"
    failed = _deployment_failed(obs.deployment)
    if failed and ready == 0:
        return "False", "ProgressDeadlineExceeded", failed
    refused = quota_refusal(obs.deployment)
    if refused and ready < min(want, max(1, obs.min_replicas)):
        return "False", "QuotaExceeded", (f"{ready}/{want} replicas ready and spec.scaling.minReplicas is "
                                          f"{obs.min_replicas}: the namespace's ResourceQuota refuses the rest "
                                          f"({refused[:400]})")
    if ready == 0:
        fetch = fetch_failure(obs.pods)
        if fetch:
            return "False", fetch[0], fetch[1]
        pending = _unschedulable(obs.pods)
        if pending:
            return "False", "Unschedulable", pending
        return "False", "ModelLoading", f"0/{want} replicas ready; waiting for the engine to load the model"
    if obs.engine_ready is False:
        return "False", "EngineNotReady", obs.engine_message or "the engine does not report the model ready"
    return "True", "ModelReady", f"{ready}/{want} replicas serving"


def routable_condition(obs: Observation) -> tuple[str, str, str]:
    """Whether requests naming this service's model through the gateway's one endpoint reach it."""
    if obs.name_owner is not None:
        ns, name = obs.name_owner
        return ("False", "ServedNameConflict",
                f"the served name {obs.served_name!r} is also claimed by {ns}/{name}, which claimed it first: "
                f"requests for model {obs.served_name!r} go there. Give this service another spec.model.servedName; "
                "its path and Host routes still reach it")
    if obs.adapter_owners:
        lost = "; ".join(f"adapter {a!r} is also claimed by {ns}/{name}, which claimed it first" for a, (ns, name)
                         in obs.adapter_owners)
        return ("False", "AdapterNameConflict",
                f"{lost}: requests for it go there. Rename the adapter in spec.adapters; requests for model "
                f"{obs.served_name!r} and its other adapters reach this service")
    return "True", "ServedNameClaimed", f"requests for model {obs.served_name!r} reach this service"


def plan_status(current: dict, obs: Observation, now: str) -> dict:
    """The full status the object should have. Equal to `current` when nothing changed."""
    conditions = list(current.get("conditions") or [])
    if obs.problems:
        reason = obs.problems[0].reason if len(obs.problems) == 1 else "MultipleProblems"
        message = "; ".join(p.message for p in obs.problems)
        conditions = set_condition(conditions, "Valid", "False", reason, message, obs.generation, now)
    else:
        conditions = set_condition(conditions, "Valid", "True", "SpecAccepted", "the spec can run in this cluster",
                                   obs.generation, now)
    if obs.served_name is not None:
        status, reason, message = routable_condition(obs)
        conditions = set_condition(conditions, "Routable", status, reason, message, obs.generation, now)
    status, reason, message = ready_condition(obs)
    conditions = set_condition(conditions, "Ready", status, reason, message, obs.generation, now)
    if obs.prefetch is not None:
        conditions = set_condition(conditions, "Prefetched", *obs.prefetch, obs.generation, now)
    elif not obs.problems:  # prefetch turned off: the condition no longer says anything true
        conditions = [c for c in conditions if c.get("type") != "Prefetched"]
    out = dict(current)
    out["conditions"] = conditions
    out["observedGeneration"] = obs.generation
    if obs.deployment is not None:
        dstatus = obs.deployment.get("status") or {}
        out["replicas"] = dstatus.get("replicas", 0) or 0
        out["readyReplicas"] = dstatus.get("readyReplicas", 0) or 0
        out["desiredReplicas"] = (obs.deployment.get("spec") or {}).get("replicas", 0)
    if obs.url:
        out["url"] = obs.url
    if obs.loaded_adapters is not None:
        out["replicaAdapters"] = [{"pod": pod, "adapters": list(names)} for pod, names in obs.loaded_adapters]
    elif not obs.problems:
        out.pop("replicaAdapters", None)
    if obs.cache is not None:
        out["cachedNodes"], out["poolNodes"] = obs.cache.cached, obs.cache.pool
    elif not obs.problems:
        out.pop("cachedNodes", None)
        out.pop("poolNodes", None)
    if obs.batch is not None and obs.batch.size > 0:
        out["batch"] = {"size": obs.batch.size, "source": obs.batch.source}
    return out
