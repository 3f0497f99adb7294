"""What the autoscaler reads for one service: its policy (from the spec and the engine's batch on the pool's GPU),
Prometheus's answer as the observation's slow source, and the service's own query with its names filled in."""

from __future__ import annotations

from ..api.v1alpha1 import InferenceServiceSpec
from ..autoscaling import Policy
from ..autoscaling.observe import EngineQueue
from ..clients.prometheus import ServiceLoad
from ..engines import engine
from ..engines.gpus import Gpu


def policy_of(spec: InferenceServiceSpec, gpu: Gpu | None = None) -> Policy:
    s = spec.scaling
    adapter = engine(spec.engine.type)
    # A custom query replaces the engine's signals: then only its value counts, as a queue.
    concurrency = 0 if s.query or adapter.inflight_metric is None else adapter.batch_size(spec.engine.args, gpu)
    return Policy(min_replicas=s.minReplicas, max_replicas=s.maxReplicas, target_queue=s.targetQueueDepth,
                  max_concurrency=concurrency, idle_seconds=s.idleSecondsBeforeZero,
                  adaptive_idle=s.adaptIdlePeriod,
                  scale_down_window_s=s.scaleDownStabilizationSeconds, scale_up_window_s=s.scaleUpStabilizationSeconds)


def engine_queue(load: ServiceLoad | None, spec: InferenceServiceSpec, query_error: str | None) -> EngineQueue:
    """Prometheus's answer for one service as the observation's slow source (None: no answer this round)."""
    if load is None:
        return EngineQueue(answered=False, query_error=query_error)
    adapter = engine(spec.engine.type)
    custom = bool(spec.scaling.query)  # its one value is the queue: no engine gauge, age, KV use or pod count
    return EngineQueue(waiting=load.waiting, running=load.running if adapter.inflight_metric else 0.0,
                       held=load.pending, batch_backlog=load.batch_backlog,
                       queue_exported=custom or adapter.queue_metric in load.seen,
                       trustworthy=not load.unknown, query_error=query_error,
                       age_s=0.0 if custom else load.scrape_age_s or 0.0,
                       kv_usage=None if custom else load.kv_usage,
                       engines=None if custom or not adapter.inflight_metric else len(load.running_pods) or None)


def custom_query(spec: InferenceServiceSpec, namespace: str, name: str) -> str | None:
    if not spec.scaling.query:
        return None
    return spec.scaling.query.replace("$namespace", namespace).replace("$name", name)
