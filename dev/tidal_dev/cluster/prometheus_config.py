"""Prometheus configuration for the local cluster.

Targets come from file discovery in `<state>/targets/*.json`: `pods.json` holds
the annotated pods (kept by the simulated runtime's pod watch, see
pod_discovery), and processes that run outside the cluster (the operator and
the activator during tests) drop a file of their own there.
"""

from __future__ import annotations

from pathlib import Path


def prometheus_config(targets_dir: Path, scrape_interval: str) -> dict:
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval,
                   "scrape_timeout": scrape_interval},
        "scrape_configs": [{
            "job_name": "tidal-dev",
            "file_sd_configs": [{"files": [str(targets_dir / "*.json")], "refresh_interval": "5s"}],
        }],
    }
