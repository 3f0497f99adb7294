"""The InferenceService model and the CRD generated from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from tidal.api.crd import crd, render
from tidal.api.v1alpha1 import parse_spec

ROOT = Path(__file__).resolve().parents[1]
CRD_FILE = ROOT / "crds" / "tidal.dev_inferenceservices.yaml"
MINIMAL = {"engine": {"type": "vllm"}, "model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct"}}


def test_committed_crd_is_the_generated_one():
    from tidal.api.crd import batch_crd
    assert CRD_FILE.read_text() == render(), "crds/ is stale: run `make crds`"
    assert (ROOT / "crds" / "tidal.dev_inferencebatches.yaml").read_text() == render(batch_crd), "run `make crds`"


def test_the_chart_carries_the_generated_crd_and_values_schema():
    from tidal.api.chart_values import generate
    from tidal.api.crd import render_helm_template
    chart = ROOT / "charts" / "tidal"
    assert (chart / "templates" / "crd.yaml").read_text() == render_helm_template(), "run `make crds`"
    from tidal.api.crd import batch_crd
    assert (chart / "templates" / "crd-inferencebatch.yaml").read_text() == render_helm_template(batch_crd)
    assert (chart / "values.schema.json").read_text() == generate((chart / "values.yaml").read_text()), "values.schema.json is stale: run `make crds`"


def test_every_chart_value_is_documented():
    from tidal.api.chart_values import FREE_FORM_KEYS, descriptions
    text = (ROOT / "charts" / "tidal" / "values.yaml").read_text()
    docs = descriptions(text)

    def leaves(node, path=""):
        for key, value in node.items():
            sub = f"{path}.{key}" if path else key
            if isinstance(value, dict) and value and sub != "defaultScaling" and key not in FREE_FORM_KEYS:
                yield from leaves(value, sub)
            else:
                yield sub
    missing = [p for p in leaves(yaml.safe_load(text)) if p not in docs]
    assert not missing, f"values.yaml values without a '# --' comment: {missing}"


def _walk(schema, path="spec"):
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")


def test_every_spec_and_status_field_is_described():
    root = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    missing = [p for part in ("spec", "status") for p, s in _walk(root["properties"][part], part)
               if not s.get("description")]
    assert not missing, f"fields without a description: {missing}"


def test_printer_columns_and_short_names_do_not_collide_with_kserve():
    spec = crd()["spec"]
    assert "isvc" not in spec["names"]["shortNames"]
    columns = [c["name"] for c in spec["versions"][0]["additionalPrinterColumns"]]
    assert columns[:6] == ["Engine", "Model", "Ready", "Replicas", "Desired", "Queue"] and columns[-1] == "Age"


def test_defaults_make_a_minimal_spec_complete():
    spec = parse_spec(MINIMAL)
    assert spec.model.served_name == "Llama-3.1-8B-Instruct"
    assert spec.resources.gpus == 1 and spec.scaling.minReplicas == 0 and spec.scaling.maxReplicas >= 1
    assert spec.engine.drainSeconds >= 5


@pytest.mark.parametrize("uri,scheme,path", [
    ("hf://meta-llama/Llama-3.1-8B", "hf", "meta-llama/Llama-3.1-8B"),
    ("s3://bucket/models/llama", "s3", "bucket/models/llama"),
    ("gs://bucket/llama/", "gs", "bucket/llama"),
    ("pvc://weights/llama-8b", "pvc", "weights/llama-8b"),
])
def test_every_supported_uri_scheme_parses(uri, scheme, path):
    model = parse_spec({**MINIMAL, "model": {"uri": uri}}).model
    assert (model.scheme, model.path) == (scheme, path)


@pytest.mark.parametrize("patch,field", [
    ({"model": {"uri": "ftp://host/x"}}, "model.uri"),
    ({"scaling": {"minReplicas": -1}}, "scaling.minReplicas"),
    ({"engine": {"type": "tgi"}}, "engine.type"),
    ({"engine": {"type": "vllm", "args": ["--x=1; curl evil"]}}, "engine.args.0"),
    ({"resources": {"memory": "lots"}}, "resources.memory"),
])
def test_bad_fields_are_named(patch, field):
    with pytest.raises(ValidationError) as err:
        parse_spec({**MINIMAL, **patch})
    assert field in {".".join(str(p) for p in e["loc"]) for e in err.value.errors()}


def test_cross_field_rules_hold_in_pydantic_too():
    with pytest.raises(ValidationError, match=r"minReplicas \(5\) must not exceed scaling.maxReplicas \(2\)"):
        parse_spec({**MINIMAL, "scaling": {"minReplicas": 5, "maxReplicas": 2}})
    with pytest.raises(ValidationError, match="revision is only meaningful for hf://"):
        parse_spec({**MINIMAL, "model": {"uri": "s3://b/m", "revision": "main"}})


def test_crd_carries_the_cel_rules():
    version = yaml.safe_load(CRD_FILE.read_text())["spec"]["versions"][0]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert any("self.scaling.minReplicas <= self.scaling.maxReplicas" in r["rule"]
               for r in spec["x-kubernetes-validations"])
    assert version["subresources"] == {"status": {}}


def test_committed_reference_is_the_generated_one():
    from tidal.api.reference import render as reference
    assert (ROOT / "docs" / "crd-reference.md").read_text() == reference(), "docs/ is stale: run `make crds`"
