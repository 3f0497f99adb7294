"""Operator settings, from `tidal run` flags (and the Helm chart's values)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..render.settings import RenderSettings


@dataclass
class OperatorConfig:
    kubeconfig: str | None = None
    render: RenderSettings = field(default_factory=RenderSettings)
    resync_seconds: float = 30.0
