"""Generate charts/tidal/values.schema.json from charts/tidal/values.yaml (`make crds`).

The shape and the defaults come from values.yaml, each description from the `# --` comment above the
value (a value without one is an error: every value is documented), and the constraints from the
table below. defaultScaling takes the InferenceService API's own scaling schema, so a typo there fails
`helm install` the same way it would fail `kubectl apply`. A test fails when the committed schema is stale.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

from .crd import _schema_of
from .v1alpha1 import Scaling

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
FREE_FORM = {"type": "object"}  # passed through to Kubernetes, which validates it
CONSTRAINTS: dict[str, dict] = {
    "image.pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
    "image.repository": {"minLength": 1},
    "image.digest": {"pattern": r"^(sha256:[a-f0-9]{64})?$"},
    "operator.modelCache.hostPath": {"pattern": r"^/"},
    "operator.modelCache.budget": {"pattern": r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$"},
    "networkPolicy.gatewayClients": {"type": "array", "items": {"type": "object"}},
    "imagePullSecrets": {"type": "array", "items": {"type": "object", "required": ["name"],
                                                     "properties": {"name": {"type": "string"}}}},
    "watchNamespaces": {"type": "array", "uniqueItems": True,
                        "items": {"type": "string", "pattern": DNS_LABEL, "maxLength": 63}},
    "prometheus.url": {"pattern": r"^(https?://.+)?$"},
    "prometheus.serviceLabel": {"pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"},
    "operator.replicas": {"minimum": 1},
    "operator.leaderElection.leaseDurationSeconds": {"minimum": 3},
    "operator.httpPort": {"minimum": 1, "maximum": 65535},
    "operator.autoscaleIntervalSeconds": {"type": "number", "exclusiveMinimum": 0},
    "operator.metricsGraceSeconds": {"type": "number", "minimum": 0},
    "operator.resyncSeconds": {"type": "number", "exclusiveMinimum": 0},
    "operator.startupBudgetSeconds": {"minimum": 1},
    "activator.replicas": {"minimum": 0},
    "activator.maxPendingPerService": {"minimum": 1},
    "activator.holdTimeoutSeconds": {"type": "number", "exclusiveMinimum": 0},
    "activator.terminationGracePeriodSeconds": {"minimum": 0},
    "activator.service.type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
    "activator.service.port": {"minimum": 1, "maximum": 65535},
    "activator.batches.concurrency": {"minimum": 1},
    "activator.batches.volume.size": {"pattern": r"^[0-9]+(\.[0-9]+)?([EPTGMk]i?)?$"},
    "activator.batches.s3.url": {"pattern": r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?)?$"},
    "activator.batches.s3.endpointUrl": {"pattern": r"^(https?://.+)?$"},
    "monitoring.interval": {"pattern": r"^[0-9]+(ms|s|m|h)$"},
}
FREE_FORM_KEYS = {"resources", "podAnnotations", "nodeSelector", "affinity", "podSecurityContext",
                  "securityContext", "labels", "podLabels"}


def descriptions(text: str) -> dict[str, str]:
    """`# -- text` comments (continued by further `#` lines) -> the dotted path of the key below them."""
    found: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if pending is not None:
                pending.append(stripped[1:].strip())
            continue
        match = re.match(r"^(\s*)([A-Za-z][\w]*):", line)
        if not match:
            pending = None
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        if pending is not None:
            found[".".join(k for _, k in stack)] = " ".join(pending)
        pending = None
    return found


def _json_schema_draft7(node: dict) -> dict:
    """Kubernetes schemas are OpenAPI v3 (exclusiveMinimum: true beside minimum); Helm checks values
    with JSON Schema draft 7 (exclusiveMinimum: <number>)."""
    node = {k: v for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.pop("exclusiveMinimum", None) is True:
        node["exclusiveMinimum"] = node.pop("minimum")
    if "properties" in node:
        node["properties"] = {k: _json_schema_draft7(v) for k, v in node["properties"].items()}
    return node


def _schema(path: str, value, docs: dict[str, str]) -> dict:
    key = path.rsplit(".", 1)[-1]
    if path == "defaultScaling":
        node = _json_schema_draft7(_schema_of(Scaling))
        node.pop("description", None)
        node["additionalProperties"] = False
    elif key in FREE_FORM_KEYS:
        node = dict(FREE_FORM)
    elif isinstance(value, dict):
        node = {"type": "object", "additionalProperties": False,
                "properties": {k: _schema(f"{path}.{k}" if path else k, v, docs) for k, v in value.items()}}
    elif isinstance(value, bool):
        node = {"type": "boolean"}
    elif isinstance(value, int):
        node = {"type": "integer"}
    elif isinstance(value, float):
        node = {"type": "number"}
    elif isinstance(value, list):
        node = {"type": "array"}
    else:
        node = {"type": "string"}
    node.update(CONSTRAINTS.get(path, {}))
    if path in docs:
        node["description"] = docs[path]
    elif path and not isinstance(value, dict):
        raise ValueError(f"values.yaml: {path} has no '# --' comment; every value is documented")
    return node


def generate(text: str) -> str:
    """The schema of a values.yaml, given its text."""
    schema = _schema("", yaml.safe_load(text), descriptions(text))
    schema = {"$schema": "https://json-schema.org/draft-07/schema#", "title": "Tidal chart values", **schema}
    return json.dumps(schema, indent=2) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m tidal.api.chart_values charts/tidal/values.yaml")
    sys.stdout.write(generate(Path(sys.argv[1]).read_text()))
