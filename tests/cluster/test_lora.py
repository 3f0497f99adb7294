"""LoRA adapters (#34) on the local cluster: the apiserver refuses at apply what cannot run, naming the field; the
official `openai` client asks the gateway's one endpoint for an adapter of a base at zero, the base wakes and the
answer names the adapter; /v1/models lists the adapters with their base as parent; an adapter named like another
service's model stays with that service, and its own service says so in a condition and an Event."""

from __future__ import annotations

import json

import pytest

from tests.cluster.test_autoscaler import apply, replicas, service
from tests.cluster.test_operator import condition, events, get, wait_condition
from tests.cluster.test_smoke import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.lora]


def with_adapters(name: str, adapters: list[str], **spec) -> dict:
    obj = service(name, idleSecondsBeforeZero=5, scaleDownStabilizationSeconds=2)
    obj["spec"]["adapters"] = [{"name": a, "uri": f"s3://adapters/{a}", "rank": 8} for a in adapters]
    obj["spec"].update(spec)
    return obj


@pytest.mark.parametrize("patch,words", [
    ({"adapters": [{"name": "a", "uri": "s3://x/a"}, {"name": "a", "uri": "s3://x/b"}]},
     "spec.adapters: Invalid value: adapters: each name may appear only once"),
    ({"adapters": [{"name": "bad-lora", "uri": "s3://x/a"}]}, "an adapter may not take the model's own served name"),
    ({"adapters": [{"name": "a", "uri": "s3://x/a", "rank": 64}], "lora": {"maxRank": 32}},
     "adapters: an adapter's rank must not exceed lora.maxRank"),
    ({"engine": {"type": "triton"}, "adapters": [{"name": "a", "uri": "s3://x/a"}]},
     "adapters need an engine that serves LoRA adapters: sglang, vllm"),
])
def test_an_adapter_that_cannot_run_is_refused_at_apply(operator, kubectl, namespace, patch, words):
    bad = {"apiVersion": "tidal.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": "bad-lora"},
           "spec": {"engine": {"type": "vllm"}, "model": {"uri": "hf://org/bad-lora"}, **patch}}
    result = kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(bad), check=False)
    assert result.returncode != 0 and words in result.stderr, result.stderr


def test_an_adapter_of_a_base_at_zero_wakes_it_and_answers_by_its_own_name(operator, activator, kubectl, namespace):
    from openai import OpenAI
    base, adapters = f"{namespace}-base", [f"{namespace}-sql", f"{namespace}-poet"]
    obj = with_adapters("base", adapters)
    obj["spec"]["model"]["servedName"] = base
    apply(kubectl, namespace, obj)
    wait_for(lambda: replicas(kubectl, namespace, "base") == 0, timeout=60, interval=0.5, what="the base at zero")
    client = OpenAI(base_url=f"{activator.url}/v1", api_key="keys-are-off", max_retries=0, timeout=120)
    listed = {m.id: m.model_extra for m in client.models.list()}
    assert all(listed[a]["parent"] == base for a in adapters) and "parent" not in listed[base]
    answer = client.completions.create(model=adapters[1], prompt="hello", max_tokens=5)
    assert answer.model == adapters[1] and answer.usage.completion_tokens == 5
    assert (replicas(kubectl, namespace, "base") or 0) >= 1  # woken by the adapter's request
    chat = client.chat.completions.create(model=adapters[0], messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=3)
    assert chat.model == adapters[0]
    # Status lists each ready replica with the adapters its engine has loaded.
    def listed_in_status():
        status = get(kubectl, namespace, "tis", "base").get("status") or {}
        return [r for r in status.get("replicaAdapters") or [] if sorted(r["adapters"]) == sorted(adapters)]
    wait_for(listed_in_status, timeout=30, what="status.replicaAdapters naming both adapters")


def test_an_adapter_named_like_another_services_model_stays_with_it_and_the_newcomer_says_so(
        operator, activator, kubectl, namespace):
    from openai import OpenAI
    older = f"{namespace}-older"
    first = service("older", minReplicas=1)
    first["spec"]["model"]["servedName"] = older
    apply(kubectl, namespace, first)
    wait_condition(kubectl, namespace, "older", "Ready", "True")
    apply(kubectl, namespace, with_adapters("newer", [older, f"{namespace}-own"], scaling={"minReplicas": 1}))
    obj = wait_condition(kubectl, namespace, "newer", "Routable", "False", "AdapterNameConflict")
    message = condition(obj, "Routable")["message"]
    assert f"adapter {older!r} is also claimed by {namespace}/older" in message, message
    wait_for(lambda: ("Warning", "AdapterNameConflict") in [(t, r) for t, r, _ in events(kubectl, namespace, "newer")],
             timeout=15, what="a Warning AdapterNameConflict Event")
    wait_condition(kubectl, namespace, "newer", "Ready", "True")  # the base itself serves
    client = OpenAI(base_url=f"{activator.url}/v1", api_key="keys-are-off", max_retries=0, timeout=120)
    listed = {m.id: m.model_extra for m in client.models.list()}
    assert listed[older]["tidal"]["name"] == "older" and "parent" not in listed[older]
    assert listed[f"{namespace}-own"]["tidal"]["name"] == "newer"
    assert client.completions.create(model=older, prompt="hi", max_tokens=2).model == older
