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


def forget(namespace: str, name: str) -> None:
    """Drop a deleted service's series, so memory stays bounded by the services that exist."""
    for gauge in (QUEUE, DESIRED):
        try:
            gauge.remove(namespace, name)
        except KeyError:
            pass
