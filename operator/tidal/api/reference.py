"""The CRD reference in Markdown, generated from the same model as the CRD (`make crds`)."""

from __future__ import annotations

import sys

from .crd import crd


def _rows(schema: dict, path: str, required: set[str]):
    for name, sub in (schema.get("properties") or {}).items():
        field = f"{path}.{name}" if path else name
        kind = sub.get("type", "object")
        if kind == "array":
            kind = f"[]{sub.get('items', {}).get('type', 'object')}"
        if "enum" in sub:
            kind = " \\| ".join(f"`{v}`" for v in sub["enum"])
        yield field, kind, name in required, sub.get("description", "").replace("\n", " ").replace("|", "\\|")
        if sub.get("type") == "object":
            yield from _rows(sub, field, set(sub.get("required", [])))
        if sub.get("type") == "array" and sub.get("items", {}).get("type") == "object":
            yield from _rows(sub["items"], f"{field}[]", set(sub["items"].get("required", [])))


def render() -> str:
    root = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    out = ["# InferenceService reference (tidal.dev/v1alpha1)", "",
           "Generated from `operator/tidal/api` by `make crds`; `kubectl explain inferenceservice.spec` shows "
           "the same text.", ""]
    for part in ("spec", "status"):
        out += [f"## {part}", "", "| field | type | required | description |", "|---|---|---|---|"]
        for field, kind, req, desc in _rows(root["properties"][part], "", set(root["properties"][part].get("required", []))):
            out.append(f"| `{field}` | {kind} | {'yes' if req else ''} | {desc} |")
        out.append("")
    rules = [r for r in _all_rules(root)]
    out += ["## Cross-field rules (checked by the apiserver at `kubectl apply`)", ""]
    out += [f"- {message}" for message in rules] + [""]
    return "\n".join(out)


def _all_rules(schema: dict):
    for rule in schema.get("x-kubernetes-validations", []):
        yield rule["message"]
    for sub in (schema.get("properties") or {}).values():
        yield from _all_rules(sub)
    if "items" in schema:
        yield from _all_rules(schema["items"])


if __name__ == "__main__":
    sys.stdout.write(render())
