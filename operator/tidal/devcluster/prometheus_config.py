"""Prometheus configuration for the local cluster.

Prometheus finds model-server pods the way it does in a real cluster: Kubernetes
service discovery (role: pod) against the apiserver, keeping pods annotated
`prometheus.io/scrape: "true"` and scraping the port and path their annotations
name. Processes that run outside the cluster (the operator and activator during
tests) register through file discovery in `<state>/targets/*.json`.
"""

from __future__ import annotations

from pathlib import Path

from .pki import ClientCert


def prometheus_config(api_server: str, ca_cert: Path, client: ClientCert, targets_dir: Path,
                      scrape_interval: str) -> dict:
    tls = {"ca_file": str(ca_cert), "cert_file": str(client.cert), "key_file": str(client.key)}
    annotation = "__meta_kubernetes_pod_annotation_prometheus_io_"
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval,
                   "scrape_timeout": scrape_interval},
        "scrape_configs": [
            {
                "job_name": "kubernetes-pods",
                "kubernetes_sd_configs": [{"role": "pod", "api_server": api_server, "tls_config": tls}],
                "relabel_configs": [
                    {"source_labels": [f"{annotation}scrape"], "regex": "true", "action": "keep"},
                    {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Running", "action": "keep"},
                    {"source_labels": ["__meta_kubernetes_pod_ip", f"{annotation}port"],
                     "regex": "(.+);(\\d+)", "replacement": "$1:$2", "target_label": "__address__"},
                    {"source_labels": [f"{annotation}path"], "regex": "(.+)", "target_label": "__metrics_path__"},
                    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                    {"source_labels": ["__meta_kubernetes_pod_node_name"], "target_label": "node"},
                    {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"},
                ],
            },
            {
                "job_name": "local-processes",
                "file_sd_configs": [{"files": [str(targets_dir / "*.json")], "refresh_interval": "5s"}],
            },
        ],
    }
