"""Generated bad input against the real apiserver and the running operator.

Thousands of malformed or hostile InferenceServices (wrong types, huge and negative numbers, unknown
engines, enormous strings, invalid URIs, shell and argument injection in args and env) are sent as
server-side dry runs: each is either refused with a message naming a field the mutation changed, or
accepted — and then the operator's own parser accepts it too (the schema is generated from it), and what it
renders runs only what the user asked for. A sample of the accepted ones is created for real: the operator
gives each Valid=True, or False with a reason only the cluster can tell, and keeps serving the well-formed
service beside them.
"""

from __future__ import annotations

import json
import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.cluster.test_autoscaler import apply, service
from tests.cluster.test_operator import condition, events, wait_condition
from tests.cluster.test_smoke import wait_for
from tidal.api.v1alpha1 import GROUP, PLURAL, VERSION, parse_spec
from tidal.engines import engine
from tidal.render.deployment import render_deployment
from tidal.render.settings import RenderSettings

pytestmark = pytest.mark.cluster
HOSTILE = ["; rm -rf /", "$(curl http://127.0.0.1:1/x)", "`id`", "a\nb", "--model=/etc/passwd", "-c",
           "x" * 5000, "\u0000", "' OR 1=1 --", "../../etc/shadow", "{{ .Values }}", "%n%n%n", "☃" * 300, ""]
weird_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63), st.floats(allow_nan=False, allow_infinity=False),
                         st.sampled_from(HOSTILE), st.text(max_size=60))
weird = st.recursive(weird_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                           st.dictionaries(st.text(max_size=12), inner, max_size=3)),
                     max_leaves=6)
FIELDS = {  # where to put something odd, and what sort of odd
    ("engine", "type"): st.one_of(st.sampled_from(["vllm", "triton", "sglang", "VLLM", "", "vllm; id"]), weird),
    ("engine", "image"): st.one_of(st.sampled_from(HOSTILE), weird),
    ("engine", "tag"): st.one_of(st.sampled_from(HOSTILE), weird),
    ("engine", "args"): st.one_of(st.lists(st.sampled_from(HOSTILE) | st.text(max_size=40), max_size=4), weird),
    ("engine", "env"): st.one_of(st.lists(st.fixed_dictionaries(
        {"name": st.sampled_from(["A", "LD_PRELOAD", "1BAD", "A B", "x" * 200]),
         "value": st.sampled_from(HOSTILE) | st.text(max_size=30)}), max_size=3), weird),
    ("model", "uri"): st.one_of(st.sampled_from(["hf://", "hf://-x/y", "http://evil/x", "pvc://", "s3://b/../../x",
                                                 "hf://org/m; id", "file:///etc/passwd", "gs://b/" + "p" * 2000]),
                                weird),
    ("model", "servedName"): st.one_of(st.sampled_from(HOSTILE), weird),
    ("resources", "gpus"): st.one_of(st.integers(-10**12, 10**12), weird),
    ("resources", "memory"): st.one_of(st.sampled_from(["1e999", "-1Gi", "lots", "32Gi; id"]), weird),
    ("placement", "nodePool"): st.one_of(st.sampled_from(HOSTILE + ["h200", "h100"]), weird),
    ("scaling", "minReplicas"): st.one_of(st.integers(-10**12, 10**12), weird),
    ("scaling", "maxReplicas"): st.one_of(st.integers(-10**12, 10**12), weird),
    ("scaling", "targetQueueDepth"): st.one_of(st.floats(allow_nan=False, allow_infinity=False), weird),
    ("scaling", "query"): st.one_of(st.sampled_from(HOSTILE), st.text(max_size=5000)),
    ("extra",): weird,
}
MUTATION = st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=3, unique=True).flatmap(
    lambda paths: st.tuples(*(st.tuples(st.just(p), FIELDS[p]) for p in paths)))
CLUSTER_REASONS = {"UnknownNodePool", "UnknownGPUProduct", "InsufficientGPUCapacity", "SecretNotFound", "ClaimNotFound"}


def names_a_changed_field(message: str, mutation) -> bool:
    """Whether the apiserver's refusal names one of the fields the mutation changed: `spec.engine.args` (or a
    deeper part of it, `spec.engine.args[0]`), its section for a rule across fields (`spec.scaling`), or
    the unknown field itself."""
    for path, _ in mutation:
        if path == ("extra",):
            if "spec.unexpected" in message:
                return True
        elif re.search(rf"spec\.{path[0]}(\.{path[1]}\b|\b(?!\.))|spec\.{path[0]}\.{path[1]}\[", message):
            return True
    return False


def _mutated(mutation) -> dict:
    obj = service("fuzz")
    spec = obj["spec"]
    for path, value in mutation:
        if path == ("extra",):
            spec["unexpected"] = value
            continue
        section = spec.setdefault(path[0], {})
        if not isinstance(section, dict):
            spec[path[0]] = section = {}
        section[path[1]] = value
    return obj


def _check_rendered(spec, namespace) -> None:
    """What the operator would run is the engine's own command plus exactly the user's args."""
    rendered = render_deployment("fuzz", namespace, "uid", spec, RenderSettings())
    container = rendered["spec"]["template"]["spec"]["containers"][0]
    command = container.get("command", []) + container.get("args", [])
    if spec.engine.args:  # the user's args last, each one argument, unchanged
        assert command[-len(spec.engine.args):] == spec.engine.args, command
    assert "sh" not in command[:1] and "-c" not in command[:2], command  # never through a shell
    for init in rendered["spec"]["template"]["spec"].get("initContainers", []):
        assert init["command"][0] not in ("sh", "bash", "/bin/sh"), init["command"]
    assert engine(spec.engine.type).name == spec.engine.type


def test_thousands_of_hostile_objects_are_refused_by_field_or_handled_cleanly(operator, kubectl, k8s, namespace):
    from kubernetes import client
    from kubernetes.client.rest import ApiException
    custom = client.CustomObjectsApi(k8s)
    log_start = len(operator.log_path.read_text())
    outcomes = {"refused": 0, "accepted": 0, "parser refused": 0}
    accepted: list[dict] = []
    parser_refused: list[dict] = []  # accepted by the schema, refused by the operator's own parsing

    @settings(max_examples=2000, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(MUTATION)
    def one(mutation):
        obj = _mutated(mutation)
        try:
            stored = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, obj, dry_run="All")
        except ApiException as err:
            assert err.status in (400, 422), (err.status, err.body[:500])
            message = json.loads(err.body)["message"]
            assert names_a_changed_field(message, mutation), \
                f"refusal does not name a changed field {[p for p, _ in mutation]}: {message[:400]}"
            outcomes["refused"] += 1
            return
        outcomes["accepted"] += 1
        try:
            spec = parse_spec(stored["spec"])
        except ValidationError:
            outcomes["parser refused"] += 1
            if len(parser_refused) < 25:
                parser_refused.append(stored)  # each must become Valid=False (below)
            return
        _check_rendered(spec, namespace)
        if len(accepted) < 400:
            accepted.append(stored)
    one()
    print(f"fuzz: {outcomes}")  # in one run: 1,829 refused, 171 accepted, 0 refused by the parser
    assert outcomes["refused"] + outcomes["accepted"] >= 2000
    assert outcomes["refused"] > 1000 and len(accepted) > 25
    # The CRD's schema is generated from the parser's model: what the apiserver accepts, the operator parses.
    # An object past the schema but refused by the parser would be Valid=False at best; here there is none.
    assert parser_refused == [], [p["spec"] for p in parser_refused[:3]]

    # A sample for real, beside a well-formed service the operator must keep serving: each is Valid=True, or
    # False for what only the cluster can tell (an unknown pool, a missing Secret, ...), never without a word.
    apply(kubectl, namespace, service("healthy", minReplicas=1))
    sample = [(s, True) for s in random.Random(7).sample(accepted, 25)]
    for i, (stored, _) in enumerate(sample):
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceService",
                "metadata": {"name": f"fuzz-{i}"}, "spec": stored["spec"]}
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    for i, (stored, _) in enumerate(sample):
        valid = wait_for(lambda: condition(custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                                               f"fuzz-{i}"), "Valid"),
                         timeout=60, interval=0.3, what=f"a Valid condition on fuzz-{i}")
        assert valid["status"] == "True" or (valid["reason"] in CLUSTER_REASONS and valid["message"]), \
            (stored["spec"], valid)
    wait_condition(kubectl, namespace, "healthy", "Ready", "True", "ModelReady")
    assert operator.proc.poll() is None, "the operator died"
    assert "Traceback" not in operator.log_path.read_text()[log_start:], "the operator logged a crash"


def test_a_query_prometheus_refuses_is_reported_on_the_service(operator, kubectl, namespace):
    apply(kubectl, namespace, service("odd", minReplicas=1, query='sum(vllm:num_requests_waiting{namespace="$namespace"'))
    obj = wait_condition(kubectl, namespace, "odd", "ScalingActive", "False", "QueryFailed", timeout=30)
    message = condition(obj, "ScalingActive")["message"]
    assert message.startswith("spec.scaling.query failed:") and "parse error" in message
    assert "keeping the current replicas" in message
    wait_for(lambda: [r for t, r, _ in events(kubectl, namespace, "odd") if (t, r) == ("Warning", "QueryFailed")],
             timeout=10, what="a QueryFailed Warning event")
