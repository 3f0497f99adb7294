"""Which InferenceService a request is for. Pure functions.

- Host `<name>.<namespace>` (or `<name>.<namespace>.svc[.cluster.local]`): the path goes upstream as is;
- otherwise the path `/<namespace>/<name>/<rest>`: `/<rest>` goes upstream.

The Host form wins, except when it names the activator itself (its own Service), so that
`http://tidal-activator.tidal-system/<namespace>/<name>/v1/...` works too.

Paths under `/v1/` and `/v2/` are the one endpoint (OpenAI's API routed by the body's `model`, KServe v2
by the model in the path), never a namespace: a namespace named `v1` or `v2` is reached by Host.
"""

from __future__ import annotations

import re

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_IP = re.compile(r"^[0-9.]+$|^\[")
API_PREFIXES = ("v1", "v2")


def _from_host(host: str | None) -> tuple[str, str] | None:
    if not host or _IP.match(host):
        return None
    labels = host.rsplit(":", 1)[0].split(".") if not host.startswith("[") else []
    if len(labels) >= 2 and _LABEL.match(labels[0]) and _LABEL.match(labels[1]) and \
            (len(labels) == 2 or labels[2] == "svc"):
        return labels[1], labels[0]
    return None


def route(path: str, host: str | None, own: tuple[str, str] | None = None) -> tuple[str, str, str] | None:
    """(namespace, name, upstream path) or None when the request names no service."""
    by_host = _from_host(host)
    if by_host and by_host != own:
        return by_host[0], by_host[1], path
    parts = path.split("/", 3)
    if len(parts) >= 3 and parts[1] not in API_PREFIXES and _LABEL.match(parts[1] or "") and \
            _LABEL.match(parts[2] or ""):
        return parts[1], parts[2], "/" + parts[3] if len(parts) == 4 else "/"
    return None
