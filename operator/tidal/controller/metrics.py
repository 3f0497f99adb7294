"""The operator's own Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()
TICK_SECONDS = Histogram("tidal_autoscaler_tick_seconds", "Duration of one autoscaling tick over all services.",
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=REGISTRY)
DECISIONS = Counter("tidal_autoscaler_decisions", "Scaling decisions, by reason.", ["reason"], registry=REGISTRY)
SCALE_CHANGES = Counter("tidal_autoscaler_scale_changes", "Replica changes written.", ["direction"],
                        registry=REGISTRY)
ERRORS = Counter("tidal_autoscaler_errors", "Errors, by kind.", ["kind"], registry=REGISTRY)
QUEUE = Gauge("tidal_autoscaler_observed_queue", "Requests waiting, last observed, per service.",
              ["namespace", "inferenceservice"], registry=REGISTRY)
DESIRED = Gauge("tidal_autoscaler_desired_replicas", "Replicas decided, per service.",
                ["namespace", "inferenceservice"], registry=REGISTRY)
SERVICES = Gauge("tidal_autoscaler_services", "InferenceServices the autoscaler looks after.", registry=REGISTRY)
SERVICE = ["namespace", "inferenceservice"]
SCALE_EVENTS = Counter("tidal_autoscaler_scale_events", "Replica changes written, per service, by the decision's "
                       "reason and direction.", SERVICE + ["reason", "direction"], registry=REGISTRY)
# A cold start: from the decision that takes a service from zero replicas to its first ready replica
# (scheduling, image pull, model load, engine start). Buckets up to half an hour: large models load slowly.
COLD_START = Histogram("tidal_cold_start_seconds", "From the scale-from-zero decision to the first ready replica.",
                       SERVICE, buckets=(1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 900, 1800),
                       registry=REGISTRY)
COLD_START_PHASE = Histogram("tidal_cold_start_phase_seconds", "Where cold starts' seconds went: scheduling, "
                             "image_pull, weight_fetch (0 on a node-cache hit), engine_load, ready.", ["phase"],
                             buckets=(0.5, 1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 900, 1800),
                             registry=REGISTRY)
GPU_SECONDS = Counter("tidal_gpu_seconds", "GPU-seconds held by the service's scheduled replicas (replicas x GPUs "
                      "per replica, over time): what the service costs.", SERVICE, registry=REGISTRY)
READY = Gauge("tidal_service_ready_replicas", "Ready replicas, per service.", SERVICE, registry=REGISTRY)
SCALING_ACTIVE = Gauge("tidal_service_scaling_active", "1 while the autoscaler has the service's metrics "
                       "(condition ScalingActive=True), else 0.", SERVICE, registry=REGISTRY)
UNSCHEDULABLE = Gauge("tidal_service_unschedulable_replicas", "Replicas the scheduler cannot place (node pool full).",
                      SERVICE, registry=REGISTRY)
RESYNCS = Counter("tidal_operator_resyncs", "Passes of the periodic resync over every InferenceService (each "
                  "re-checks engine readiness and retries failed reconciles; a pass that changes nothing writes "
                  "nothing).", registry=REGISTRY)
LEADING = Gauge("tidal_operator_leading", "1 in the operator process that acts (the leader); a standby reports 0.",
                registry=REGISTRY)

def forget(namespace: str, name: str) -> None:
    """Drop a deleted service's series, so memory stays bounded by the services that exist."""
    for metric in (QUEUE, DESIRED, READY, SCALING_ACTIVE, UNSCHEDULABLE, COLD_START, GPU_SECONDS):
        try:
            metric.remove(namespace, name)
        except KeyError:
            pass
    for labels in [ls for ls in list(SCALE_EVENTS._metrics) if ls[:2] == (namespace, name)]:
        SCALE_EVENTS.remove(*labels)
