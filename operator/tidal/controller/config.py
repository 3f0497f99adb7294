"""Operator settings, from `tidal run` flags (and the Helm chart's values)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..render.settings import RenderSettings


@dataclass
class OperatorConfig:
    kubeconfig: str | None = None
    render: RenderSettings = field(default_factory=RenderSettings)
    resync_seconds: float = 30.0
    prometheus_url: str | None = None  # no URL: no autoscaling, replicas stay where they are
    # The label that carries the InferenceService name on scraped series: the pod label
    # tidal.dev/inferenceservice after Prometheus's usual labelmap relabelling.
    service_label: str = "tidal_dev_inferenceservice"
    autoscale_interval_s: float = 2.0
    metrics_grace_s: float = 30.0
    http_host: str = "0.0.0.0"
    http_port: int | None = None
    # ServiceAccounts ('namespace/name') whose tokens may call /v1/wake; None: anyone may (--wake-auth off)
    wake_callers: list[str] | None = None
    scaling_defaults: dict | None = None
    stop_flag: Any = None  # a threading.Event that stops kopf (set on lost leadership)  # fills scaling fields an InferenceService leaves out
