"""The one endpoint on the local cluster, with the official `openai` client: keys are real Secrets
(watched), models are real InferenceServices (one at zero), NetworkPolicies go through the real
apiserver, and two services claiming one served name are told apart by a condition."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import urllib.request
import uuid

import openai
import pytest

from tests.cluster.test_autoscaler import apply, replicas, service
from tests.cluster.test_operator import condition, events, get, wait_condition
from tests.cluster.test_smoke import wait_for
from tests.conftest import start_activator, wait_for_resyncs
from tests.exposition import metric_value

pytestmark = pytest.mark.cluster
ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def make_key(kubectl, namespace, name, token, **annotations):
    doc = {"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": name, "namespace": namespace, "labels": {"tidal.dev/api-key": "true"},
        "annotations": {f"tidal.dev/{k}": v for k, v in annotations.items()}}, "stringData": {"key": token}}
    kubectl("apply", "-f", "-", input=json.dumps(doc))


@pytest.fixture(scope="module")
def keyed(dev_cluster, operator, kubectl):
    """A gateway with API keys on, reading keys from a namespace of its own."""
    keys_ns = f"keys-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", keys_ns)
    gateway = start_activator(dev_cluster, operator, "--hold-timeout", "90", key_namespace=keys_ns)
    yield gateway, keys_ns
    gateway.proc.terminate()
    gateway.proc.wait(10)
    kubectl("delete", "namespace", keys_ns, "--wait=false")


def test_one_base_url_lists_wakes_and_serves_two_models_under_api_keys(keyed, kubectl, namespace):
    gateway, keys_ns = keyed
    full, only_a = "tk-" + secrets.token_urlsafe(24), "tk-" + secrets.token_urlsafe(24)
    make_key(kubectl, keys_ns, "full", full)
    make_key(kubectl, keys_ns, "only-a", only_a, models=f"{namespace}-a")
    sleepy = service("sleepy", idleSecondsBeforeZero=1, scaleDownStabilizationSeconds=1)
    sleepy["spec"]["model"]["servedName"] = f"{namespace}-a"
    awake = service("awake", minReplicas=1)
    awake["spec"]["model"]["servedName"] = f"{namespace}-b"
    apply(kubectl, namespace, sleepy)
    apply(kubectl, namespace, awake)
    wait_for(lambda: replicas(kubectl, namespace, "sleepy") == 0, timeout=60, interval=0.5, what="sleepy at zero")
    wait_condition(kubectl, namespace, "awake", "Ready", "True", "ModelReady")
    base = f"{gateway.url}/v1"

    async def scenario():
        client = openai.AsyncOpenAI(base_url=base, api_key=full, max_retries=0, timeout=90)
        # The Deployment is at zero a moment before the service's status says so (the autoscaler scales,
        # then writes status.desiredReplicas, which the gateway's watch then sees): the listing follows.
        for _ in range(100):
            models = {m.id: m.model_extra["tidal"] for m in (await client.models.list()).data}
            if models[f"{namespace}-a"]["state"] == "scaled_to_zero":
                break
            await asyncio.sleep(0.1)
        assert models[f"{namespace}-a"]["state"] == "scaled_to_zero" and models[f"{namespace}-a"]["name"] == "sleepy"
        assert models[f"{namespace}-b"]["state"] == "ready" and models[f"{namespace}-b"]["ready_replicas"] == 1
        seen = {}
        for model in (f"{namespace}-a", f"{namespace}-b"):  # -a is at zero: held, woken, answered
            plain = await client.chat.completions.create(model=model, max_tokens=6,
                                                         messages=[{"role": "user", "content": "hello"}])
            stream = [c async for c in await client.chat.completions.create(
                model=model, max_tokens=9, stream=True, messages=[{"role": "user", "content": "hello"}])]
            text = "".join(c.choices[0].delta.content or "" for c in stream)
            assert plain.usage.completion_tokens == 6 and text.count("tok") == 9
            # The same prompt both times: the streamed request's prompt counts what the plain one said.
            seen[model] = (2 * plain.usage.prompt_tokens, plain.usage.completion_tokens + text.count("tok"))
        assert (await client.models.retrieve(f"{namespace}-a")).model_extra["tidal"]["state"] == "ready"
        limited = openai.AsyncOpenAI(base_url=base, api_key=only_a, max_retries=0, timeout=30)
        with pytest.raises(openai.PermissionDeniedError):
            await limited.chat.completions.create(model=f"{namespace}-b", max_tokens=2,
                                                  messages=[{"role": "user", "content": "hi"}])
        return seen

    seen = asyncio.run(scenario())
    for model, (prompt, completion) in seen.items():
        assert metric_value(gateway.metrics_url, "tidal_gateway_completion_tokens_total", key="full", model=model) == completion
        assert metric_value(gateway.metrics_url, "tidal_gateway_prompt_tokens_total", key="full", model=model) == prompt


def test_no_key_a_wrong_key_and_a_revoked_key_get_401_and_revocation_takes_effect_within_a_second(
        keyed, kubectl, namespace):
    gateway, keys_ns = keyed
    token = "tk-" + secrets.token_urlsafe(24)
    apply(kubectl, namespace, service("gate", minReplicas=1))
    wait_condition(kubectl, namespace, "gate", "Ready", "True", "ModelReady")
    make_key(kubectl, keys_ns, "soon-revoked", token)

    def status(api_key):
        try:
            openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=api_key, max_retries=0, timeout=10).completions.create(
                model="gate", prompt="hi", max_tokens=1)
            return 200
        except openai.APIStatusError as err:
            return err.status_code
    wait_for(lambda: status(token) == 200, timeout=10, interval=0.05, what="the new key to work")
    assert status("tk-" + secrets.token_urlsafe(24)) == 401
    request = urllib.request.Request(f"{gateway.url}/v1/completions", method="POST",
                                     data=json.dumps({"model": "gate", "prompt": "hi"}).encode())
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 401 and json.loads(err.value.read())["error"]["code"] == "missing_api_key"
    kubectl("delete", "secret", "soon-revoked", "-n", keys_ns)
    deleted = time.monotonic()
    wait_for(lambda: status(token) == 401, timeout=30, interval=0.02, what="the revoked key refused")
    # How fast is a matter for measurement, not a pass/fail bound on a busy 2-core machine (seen: 0.1-0.3 s).
    print(f"\nrevocation took effect {time.monotonic() - deleted:.3f} s after kubectl delete returned")
    # The token never reaches a log: the gateway's log has the Secret's name at most.
    assert token not in gateway.log_path.read_text()


def test_a_20_client_burst_against_a_limited_key_gets_the_limit_served_and_429_for_the_rest(keyed, kubectl, namespace):
    gateway, keys_ns = keyed
    token = "tk-" + secrets.token_urlsafe(24)
    make_key(kubectl, keys_ns, "six-a-minute", token, **{"requests-per-minute": "6"})
    apply(kubectl, namespace, service("limited", minReplicas=1))
    wait_condition(kubectl, namespace, "limited", "Ready", "True", "ModelReady")
    client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=token, max_retries=0, timeout=30)

    async def one():
        try:
            await client.completions.create(model="limited", prompt="hi", max_tokens=2)
            return 200, None
        except openai.APIStatusError as err:
            return err.status_code, err.response.headers

    async def burst():
        return await asyncio.gather(*(one() for _ in range(20)))
    results = asyncio.run(burst())
    statuses = sorted(s for s, _ in results)
    assert statuses == [200] * 6 + [429] * 14, statuses  # the window's 6, then 429; never a 5xx
    for _, headers in (r for r in results if r[0] == 429):
        assert int(headers["retry-after"]) >= 1 and headers["x-ratelimit-limit-requests"] == "6"


def test_a_second_service_claiming_a_served_name_is_told_and_requests_keep_going_to_the_first(
        keyed, kubectl, namespace, k8s):
    gateway, keys_ns = keyed
    token = "tk-" + secrets.token_urlsafe(24)
    make_key(kubectl, keys_ns, "conflicts", token)
    first = service("first", minReplicas=1)
    first["spec"]["model"]["servedName"] = f"{namespace}-shared"
    apply(kubectl, namespace, first)
    wait_condition(kubectl, namespace, "first", "Routable", "True", "ServedNameClaimed")
    time.sleep(1.1)  # creation timestamps have one-second resolution: the second is created later
    second = service("second", minReplicas=1)
    second["spec"]["model"]["servedName"] = f"{namespace}-shared"
    apply(kubectl, namespace, second)
    lost = wait_condition(kubectl, namespace, "second", "Routable", "False", "ServedNameConflict")
    assert f"{namespace}/first" in condition(lost, "Routable")["message"]
    wait_for(lambda: any(t == "Warning" and r == "ServedNameConflict" for t, r, _ in events(kubectl, namespace, "second")),
             timeout=10, what="a Warning Event on the second service")
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=token, max_retries=0, timeout=30)
    listed = {m.id: m.model_extra["tidal"]["name"] for m in client.models.list().data}
    assert listed[f"{namespace}-shared"] == "first"
    # The first goes away: the name passes to the second, which is told so.
    kubectl("delete", "tis", "first", "-n", namespace)
    wait_condition(kubectl, namespace, "second", "Routable", "True", "ServedNameClaimed")
    wait_for(lambda: {m.id: m.model_extra["tidal"]["name"] for m in client.models.list().data}
             .get(f"{namespace}-shared") == "second", timeout=10, what="the name routed to the second")


def test_each_service_gets_a_network_policy_naming_only_the_gateway_and_prometheus_as_peers(operator, kubectl,
                                                                                          namespace):
    """What the rendered policy says, as the real apiserver stored it (the local cluster has no network plugin
    that enforces policies, so no traffic is tested here; docs/security.md says what policies cannot stop)."""
    apply(kubectl, namespace, service("fenced", minReplicas=1))
    policy = wait_for(lambda: (kubectl("get", "networkpolicy", "fenced", "-n", namespace, "-o", "json", check=False)
                               .stdout or None), timeout=30, what="the NetworkPolicy")
    spec = json.loads(policy)["spec"]  # stored, so the real apiserver accepted it
    assert spec["podSelector"] == {"matchLabels": {"tidal.dev/inferenceservice": "fenced"}}
    assert spec["policyTypes"] == ["Ingress"]
    peers = [(p["namespaceSelector"]["matchLabels"], p["podSelector"]["matchLabels"])
             for rule in spec["ingress"] for p in rule["from"]]
    assert peers == [({"kubernetes.io/metadata.name": "tidal-system"}, {"app.kubernetes.io/name": "tidal-activator"}),
                     ({"kubernetes.io/metadata.name": "monitoring"}, {"app.kubernetes.io/name": "prometheus"})]
    # Owned by the InferenceService: deleting it deletes the policy.
    assert json.loads(policy)["metadata"]["ownerReferences"][0]["kind"] == "InferenceService"
    before = json.loads(policy)["metadata"]["resourceVersion"]
    wait_for_resyncs(operator, 2)  # resyncs write nothing when nothing changed
    assert get(kubectl, namespace, "networkpolicy", "fenced")["metadata"]["resourceVersion"] == before


def test_tritonclient_through_the_one_endpoint_routed_by_the_model_in_the_path(keyed, kubectl, namespace):
    """KServe v2 paths (/v2/models/{name}/...) route by model name, with the key in a header."""
    import numpy as np
    import tritonclient.http as triton
    import yaml
    gateway, keys_ns = keyed
    token = "tk-" + secrets.token_urlsafe(24)
    make_key(kubectl, keys_ns, "triton-user", token)
    kubectl("create", "secret", "generic", "s3-credentials", "-n", namespace,
            "--from-literal=AWS_ACCESS_KEY_ID=x", "--from-literal=AWS_SECRET_ACCESS_KEY=y")
    example = next(d for d in yaml.safe_load_all((ROOT / "examples" / "triton-a100.yaml").read_text())
                   if d["kind"] == "InferenceService")
    model = f"{namespace}-resnet"  # unique in the cluster: other tests serve the example's own name
    example["spec"]["model"]["servedName"] = model
    apply(kubectl, namespace, example)
    wait_condition(kubectl, namespace, example["metadata"]["name"], "Ready", "True", "ModelReady")
    client = triton.InferenceServerClient(gateway.url.removeprefix("http://"))
    auth = {"Authorization": f"Bearer {token}"}
    assert client.is_model_ready(model, headers=auth)
    data = np.arange(8, dtype=np.float32).reshape(2, 4)
    inp = triton.InferInput("INPUT0", [2, 4], "FP32")
    inp.set_data_from_numpy(data)
    np.testing.assert_array_equal(client.infer(model, [inp], headers=auth).as_numpy("OUTPUT0"), data)
    from tritonclient.utils import InferenceServerException
    # Without the key: refused by the gateway, and Triton itself counts no inference (its own metric).
    pod = json.loads(kubectl("get", "pods", "-n", namespace, "-l",
                             f"tidal.dev/inferenceservice={example['metadata']['name']}", "-o", "json").stdout)["items"]
    engine_metrics = f"http://{pod[0]['status']['podIP']}:8002"
    before = metric_value(engine_metrics, "nv_inference_count")
    assert before >= 1  # the keyed inference above reached it
    with pytest.raises(InferenceServerException) as err:
        client.infer(model, [inp])
    assert "401" in str(err.value) and "API key" in str(err.value)
    assert metric_value(engine_metrics, "nv_inference_count") == before


def test_two_gateway_replicas_together_admit_no_more_than_a_keys_limit(dev_cluster, operator, kubectl, namespace):
    """Two gateway processes behind one (imagined) Service, each told it is one of two (--limit-share 2, as the
    chart sets it from activator.replicas). 200 requests at once, half to each, on a 60-requests-a-minute key:
    60 are admitted, the rest get 429 with Retry-After. Then tokens: 40 requests at once asking for 100 tokens
    each on a 4,000-tokens-a-minute key, all to one gateway. Reserved at admission (100 tokens plus a quarter of
    the body's bytes each), 2,000 // 115 = 17 pass that gateway's share; charged only after the answer, as
    before, all 40 passed."""
    keys_ns = f"keys-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", keys_ns)
    gateways = [start_activator(dev_cluster, operator, "--limit-share", "2", key_namespace=keys_ns) for _ in range(2)]
    try:
        by_requests, by_tokens = "tk-" + secrets.token_urlsafe(24), "tk-" + secrets.token_urlsafe(24)
        make_key(kubectl, keys_ns, "sixty", by_requests, **{"requests-per-minute": "60"})
        make_key(kubectl, keys_ns, "tokens", by_tokens, **{"tokens-per-minute": "4000"})
        awake = service("limited", minReplicas=1, maxReplicas=1)
        awake["spec"]["model"]["servedName"] = model = f"{namespace}-limited"
        apply(kubectl, namespace, awake)
        wait_condition(kubectl, namespace, "limited", "Ready", "True", "ModelReady")
        import aiohttp

        async def burst(token, count, max_tokens, split):
            body = {"model": model, "prompt": "hi", "max_tokens": max_tokens}
            headers = {"Authorization": f"Bearer {token}"}
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
                async def one(i):
                    gateway = gateways[i % 2] if split else gateways[0]
                    async with http.post(f"{gateway.url}/v1/completions", json=body, headers=headers) as r:
                        await r.read()
                        return r.status, r.headers.get("Retry-After"), (await r.json()) if r.status == 429 else None
                return await asyncio.gather(*[one(i) for i in range(count)])

        def key_known(token):  # both gateways' watches have the key (a /v1/models listing is no request)
            return all(urllib.request.urlopen(urllib.request.Request(
                f"{g.url}/v1/models", headers={"Authorization": f"Bearer {token}"}), timeout=5).status == 200
                for g in gateways)
        for token in (by_requests, by_tokens):
            wait_for(lambda: _quietly(key_known, token), timeout=30, what="both gateways know the key")
        answers = asyncio.run(burst(by_requests, 200, 1, split=True))
        admitted = [a for a in answers if a[0] != 429]
        refused = [a for a in answers if a[0] == 429]
        assert len(admitted) == 60 and {a[0] for a in admitted} == {200}, sorted({a[0] for a in answers})
        assert all(r[1] and int(r[1]) >= 1 and r[2]["error"]["code"] == "rate_limit_exceeded" for r in refused)
        answers = asyncio.run(burst(by_tokens, 40, 100, split=False))
        admitted = [a for a in answers if a[0] != 429]
        reserved = 100 + len(json.dumps({"model": model, "prompt": "hi", "max_tokens": 100})) // 4
        assert len(admitted) == 2000 // reserved, (len(admitted), reserved)  # 17 with a 60-byte body
        assert {a[2]["error"]["type"] for a in answers if a[0] == 429} == {"tokens"}
    finally:
        for gateway in gateways:
            gateway.proc.terminate()
            gateway.proc.wait(10)
        kubectl("delete", "namespace", keys_ns, "--wait=false")


def _quietly(check, *args):
    try:
        return check(*args)
    except OSError:
        return False
