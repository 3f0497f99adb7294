"""Prometheus discovery of annotated pods, written as file-discovery targets.

Debian's Prometheus 2.42 is built without Kubernetes service discovery
(`kubernetes_sd_configs` is rejected as an unknown field), so the local cluster
does the equivalent itself: every Running pod annotated
`prometheus.io/scrape: "true"` becomes a target at `<podIP>:<prometheus.io/port>`
with the labels Kubernetes discovery plus the usual relabelling give a real
cluster's series: `namespace`, `pod`, `node` and the pod's labels.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def scrape_target(pod: dict) -> dict | None:
    """The file-discovery target group for a pod (a Kubernetes Pod as a dict), or None."""
    meta, status = pod.get("metadata", {}), pod.get("status", {})
    annotations = meta.get("annotations") or {}
    if annotations.get("prometheus.io/scrape") != "true" or meta.get("deletionTimestamp"):
        return None
    if status.get("phase") != "Running" or not status.get("podIP"):
        return None
    port = annotations.get("prometheus.io/port")
    if not (port or "").isdigit():
        return None
    labels = {_INVALID.sub("_", k): str(v) for k, v in (meta.get("labels") or {}).items()}
    labels.update({
        "namespace": meta.get("namespace", ""),
        "pod": meta.get("name", ""),
        "node": (pod.get("spec") or {}).get("nodeName") or "",
        "__metrics_path__": annotations.get("prometheus.io/path") or "/metrics",
    })
    return {"targets": [f"{status['podIP']}:{port}"], "labels": labels}


class TargetsFile:
    """Keeps one file-discovery file in step with the pods it is told about."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.groups: dict[str, dict] = {}
        self._write()

    def update(self, uid: str, pod: dict | None) -> None:
        group = scrape_target(pod) if pod is not None else None
        if self.groups.get(uid) == group:
            return
        if group is None:
            self.groups.pop(uid, None)
        else:
            self.groups[uid] = group
        self._write()

    def retain(self, uids: set[str]) -> None:
        if set(self.groups) - uids:
            self.groups = {k: v for k, v in self.groups.items() if k in uids}
            self._write()

    def _write(self) -> None:
        # Write-then-rename: Prometheus never reads a half-written file.
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(self.groups.values(), key=lambda g: g["targets"])))
        os.replace(tmp, self.path)
