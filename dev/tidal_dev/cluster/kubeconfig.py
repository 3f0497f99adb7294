"""Kubeconfig files for the local cluster's users."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from .pki import ClientCert


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, ca_cert: Path, client: ClientCert, user: str) -> Path:
    """Write a self-contained kubeconfig (certificates embedded, so it can be copied)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "tidal-dev", "cluster": {"server": server,
                                                       "certificate-authority-data": _b64(ca_cert)}}],
        "users": [{"name": user, "user": {"client-certificate-data": _b64(client.cert),
                                          "client-key-data": _b64(client.key)}}],
        "contexts": [{"name": f"{user}@tidal-dev", "context": {"cluster": "tidal-dev", "user": user}}],
        "current-context": f"{user}@tidal-dev",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path
