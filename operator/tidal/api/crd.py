"""Generate the InferenceService CRD from the pydantic models.

`python -m tidal.api.crd > crds/tidal.dev_inferenceservices.yaml` (`make crds`). A test fails when the
committed file differs from what this prints.
"""

from __future__ import annotations

import copy
import sys

import yaml

from ..engines import ENGINES
from . import batch
from .status import InferenceServiceStatus
from .v1alpha1 import CEL_RULES, GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION, InferenceServiceSpec

_DROP = {"title", "additionalProperties", "default", "$defs"}


def _resolve(schema: dict, defs: dict) -> dict:
    if "$ref" in schema:
        target = copy.deepcopy(defs[schema["$ref"].rsplit("/", 1)[1]])
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        return _resolve({**target, **rest}, defs)
    if "anyOf" in schema:  # Optional[X] is anyOf [X, null]: the field may simply be left out
        options = [o for o in schema["anyOf"] if o.get("type") != "null"]
        if len(options) == 1:
            rest = {k: v for k, v in schema.items() if k != "anyOf"}
            return _resolve({**options[0], **rest}, defs)
    return schema


def structural(schema: dict, defs: dict) -> dict:
    """A pydantic JSON schema node as a Kubernetes structural schema node."""
    schema = _resolve(schema, defs)
    out: dict = {}
    default = schema.get("default")
    for key, value in schema.items():
        if key in _DROP:
            continue
        if key == "properties":
            out["properties"] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out["items"] = structural(value, defs)
            if "description" not in out["items"] and schema.get("description"):
                out["items"]["description"] = f"One item of: {schema['description']}"
        elif key == "const":  # Literal["24h"]: OpenAPI v3.0 has no const, a one-value enum says the same
            out["enum"] = [value]
        elif key == "exclusiveMinimum":  # JSON Schema's number form to OpenAPI v3.0's boolean form
            out["minimum"], out["exclusiveMinimum"] = value, True
        else:
            out[key] = value
    extra = schema.get("additionalProperties")
    if schema.get("type") == "object" and "properties" not in schema:
        if isinstance(extra, dict) and extra:
            out["additionalProperties"] = structural(extra, defs)
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
    if default not in (None, [], {}, "") and "description" in out and "Default" not in out["description"]:
        shown = default.get("value") if isinstance(default, dict) else default
        out["description"] += f" Default: {shown}."
    return out


def _attach_rules(root: dict) -> None:
    for path, extra in CEL_RULES.items():
        node = root
        for part in path.split("."):
            node = node["properties"][part.rstrip("[]")]
            if part.endswith("[]"):
                node = node["items"]
        node.update(copy.deepcopy(extra))


def _schema_of(model) -> dict:
    raw = model.model_json_schema()
    return structural(raw, raw.get("$defs", {}))


def crd() -> dict:
    spec = _schema_of(InferenceServiceSpec)
    spec["description"] = "What to serve, on which GPUs, and how to scale it."
    status = _schema_of(InferenceServiceStatus)
    status["description"] = "Observed state, written by Tidal."
    root = {
        "type": "object",
        "description": "An InferenceService runs one model on a model server (" + ", ".join(sorted(ENGINES))
                       + ") on a GPU node pool and scales it between minReplicas (possibly 0) and maxReplicas "
                       "from its request queue.",
        "properties": {
            "apiVersion": {"type": "string", "description": "tidal.dev/v1alpha1"},
            "kind": {"type": "string", "description": "InferenceService"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "required": ["spec"],
    }
    _attach_rules(root)
    ready = '.status.conditions[?(@.type=="Ready")].status'
    columns = [
        ("Engine", "string", ".spec.engine.type", "Model server"),
        ("Model", "string", ".spec.model.uri", "Model location"),
        ("Ready", "string", ready, "Ready condition"),
        ("Replicas", "integer", ".status.readyReplicas", "Ready replicas"),
        ("Desired", "integer", ".status.desiredReplicas", "Replicas the autoscaler wants"),
        ("Queue", "number", ".status.queueDepth", "Requests waiting, last observed"),
        ("Reason", "string", '.status.conditions[?(@.type=="Ready")].reason', "Why (not) ready"),
        ("Cached", "integer", ".status.cachedNodes", "Pool nodes whose model cache holds the weights"),
        ("Pool", "integer", ".status.poolNodes", "Nodes in the service's pool", 1),  # shown by -o wide
        ("Age", "date", ".metadata.creationTimestamp", ""),
    ]
    return _definition(KIND, PLURAL, SINGULAR, SHORT_NAMES, root, columns)


def batch_crd() -> dict:
    spec = _schema_of(batch.InferenceBatchSpec)
    spec["description"] = "The input file, its endpoint, and the API key the batch runs as."
    status = _schema_of(batch.InferenceBatchStatus)
    status["description"] = "Progress, written by the gateway."
    root = {
        "type": "object",
        "description": "An InferenceBatch is an OpenAI batch (POST /v1/batches) as a Kubernetes object: its "
                       "progress in status, and one created with kubectl runs too.",
        "properties": {
            "apiVersion": {"type": "string", "description": "tidal.dev/v1alpha1"},
            "kind": {"type": "string", "description": batch.KIND},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "required": ["spec"],
    }
    columns = [
        ("State", "string", ".status.state", "validating, in_progress, finalizing, completed, failed, ..."),
        ("Model", "string", ".status.model", "The model the requests name"),
        ("Total", "integer", ".status.total", "Requests in the input"),
        ("Completed", "integer", ".status.completed", "Answered successfully"),
        ("Failed", "integer", ".status.failed", "Failed"),
        ("Age", "date", ".metadata.creationTimestamp", ""),
    ]
    return _definition(batch.KIND, batch.PLURAL, batch.SINGULAR, batch.SHORT_NAMES, root, columns)


def _definition(kind: str, plural: str, singular: str, short_names: list[str], root: dict, columns) -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": singular,
                      "shortNames": short_names, "categories": ["tidal"]},
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": n, "type": t, "jsonPath": p, **({"description": d} if d else {}),
                     **({"priority": more[0]} if more else {})}
                    for n, t, p, d, *more in columns],
                "schema": {"openAPIV3Schema": root},
            }],
        },
    }


def render(make=crd) -> str:
    header = "# Generated from operator/tidal/api by `make crds`. Do not edit.\n"
    return header + yaml.safe_dump(make(), sort_keys=False, width=120)


def render_helm_template(make=crd) -> str:
    """The same CRD as a Helm chart template: behind crds.enabled, optionally kept on uninstall
    (deleting a CRD deletes every InferenceService with it)."""
    obj = make()
    head = (
        "{{- if .Values.crds.enabled }}\n"
        "# Generated from operator/tidal/api by `make crds`. Do not edit.\n"
        f"apiVersion: {obj['apiVersion']}\nkind: {obj['kind']}\nmetadata:\n  name: {obj['metadata']['name']}\n"
        "  labels:\n    {{- include \"tidal.labels\" . | nindent 4 }}\n"
        "  {{- if .Values.crds.keep }}\n  annotations:\n    helm.sh/resource-policy: keep\n  {{- end }}\n")
    body = yaml.safe_dump({"spec": obj["spec"]}, sort_keys=False, width=120)
    if "{{" in body:
        raise ValueError("the CRD text contains '{{', which Helm would read as a template action")
    return head + body + "{{- end }}\n"


if __name__ == "__main__":
    which = batch_crd if "--batch" in sys.argv else crd
    sys.stdout.write(render_helm_template(which) if "--helm" in sys.argv else render(which))
