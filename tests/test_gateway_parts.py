"""The gateway's parts, each on its own: keys, rate limits, usage metering, served-name ownership,
model lookup, routing of the one endpoint, and the NetworkPolicy that keeps engines behind it."""

from __future__ import annotations

import base64
import json

import pytest

from tidal.gateway.catalog import Catalog, entry_from_object
from tidal.gateway.keys import KeyRing, key_from_secret
from tidal.gateway.openai_api import model_in_body, triton_model
from tidal.gateway.ratelimits import RateLimiter
from tidal.gateway.routing import route
from tidal.gateway.usage import StreamMeter, ask_for_stream_usage, from_answer
from tidal.api.v1alpha1 import parse_spec
from tidal.planning.served_names import Claim, conflict, owners
from tidal.planning.status import Observation, plan_status
from tidal.render.network_policy import render_network_policy
from tidal.render.settings import NetworkPolicySettings

TOKEN = "tk-" + "a" * 30


def secret_key(name="team-a", token=TOKEN, **annotations):
    data = {"key": base64.b64encode(token.encode()).decode()}
    return key_from_secret(name, data, {f"tidal.dev/{k.replace('_', '-')}": v for k, v in annotations.items()})


# ---- keys ------------------------------------------------------------------------------------------
def test_a_key_authenticates_only_its_own_token_and_stops_when_removed():
    key, why = secret_key()
    assert why is None
    ring = KeyRing()
    ring.put(key)
    assert ring.authenticate(f"Bearer {TOKEN}") is key
    assert ring.authenticate(f"bearer {TOKEN}") is key  # the scheme is case-insensitive (RFC 9110)
    assert ring.authenticate(f"Bearer {TOKEN[:-1]}x") is None
    assert ring.authenticate(TOKEN) is None and ring.authenticate(None) is None and ring.authenticate("Bearer ") is None
    ring.remove("team-a")  # the Secret deleted
    assert ring.authenticate(f"Bearer {TOKEN}") is None


def test_a_changed_secret_replaces_its_old_token():
    ring = KeyRing()
    ring.put(secret_key()[0])
    ring.put(secret_key(token="tk-" + "b" * 30)[0])
    assert ring.authenticate(f"Bearer {TOKEN}") is None
    assert ring.authenticate("Bearer tk-" + "b" * 30).id == "team-a"


def test_the_key_is_never_kept_in_clear():
    key, _ = secret_key()
    assert TOKEN not in repr(key) and TOKEN.encode() not in key.digest


@pytest.mark.parametrize("data,annotations,message", [
    ({}, {}, "no data field 'key'"),
    ({"key": "not base64!"}, {}, "not base64-encoded"),
    ({"key": base64.b64encode(b"short").decode()}, {}, "shorter than 16"),
    ({"key": base64.b64encode(TOKEN.encode()).decode()}, {"tidal.dev/requests-per-minute": "lots"},
     "tidal.dev/requests-per-minute must be a positive integer, got 'lots'"),
])
def test_an_unusable_key_secret_says_which_field_and_never_the_token(data, annotations, message):
    key, why = key_from_secret("broken", data, annotations)
    assert key is None and message in why and "broken" in why and TOKEN not in why


def test_model_and_namespace_restrictions():
    only_a, _ = secret_key(models="model-a, model-c")
    assert only_a.may_use("model-a", "ns1") and only_a.may_use("model-c", None)
    assert not only_a.may_use("model-b", "ns1")
    team, _ = secret_key(namespaces="team-a")
    assert team.may_use("anything", "team-a") and not team.may_use("anything", "team-b")
    # An unknown model is refused (403) rather than reported missing (404) to a namespace-limited key.
    assert not team.may_use("no-such-model", None)
    anyone, _ = secret_key()
    assert anyone.may_use("no-such-model", None)


# ---- rate limits -----------------------------------------------------------------------------------
def test_requests_per_minute_is_exact_per_window_with_openai_headers():
    key, _ = secret_key(requests_per_minute="3")
    limiter = RateLimiter()
    verdicts = [limiter.admit(key, 100.0 + i) for i in range(5)]
    assert [v.admitted for v in verdicts] == [True, True, True, False, False]
    assert verdicts[0].headers["x-ratelimit-limit-requests"] == "3"
    assert verdicts[2].headers["x-ratelimit-remaining-requests"] == "0"
    assert verdicts[3].headers["x-ratelimit-reset-requests"] == "57s" and verdicts[3].retry_after_s == 57
    assert verdicts[3].which == "requests"
    assert limiter.admit(key, 160.0).admitted  # a new window


def test_tokens_per_minute_refuses_once_the_window_has_used_them():
    key, _ = secret_key(tokens_per_minute="100")
    limiter = RateLimiter()
    assert limiter.admit(key, 0.0).admitted
    limiter.charge_tokens(key, 120, 1.0)  # the answer crossed the limit: it was served, the next waits
    refused = limiter.admit(key, 2.0)
    assert not refused.admitted and refused.which == "tokens" and refused.headers["x-ratelimit-remaining-tokens"] == "0"
    assert limiter.admit(key, 61.0).admitted


def test_tokens_are_reserved_at_admission_so_concurrent_requests_cannot_all_pass():
    key, _ = secret_key(tokens_per_minute="10000")
    limiter = RateLimiter()
    verdicts = [limiter.admit(key, 1.0, tokens=500) for _ in range(100)]  # 100 at once, none answered yet
    admitted = [v for v in verdicts if v.admitted]
    assert len(admitted) == 20 and all(v.which == "tokens" for v in verdicts if not v.admitted)
    for v in admitted[:10]:
        limiter.settle(v.reservation, 100)  # they used less than they reserved: room again
    assert limiter.admit(key, 2.0, tokens=500).admitted
    for v in admitted[10:]:
        limiter.settle(v.reservation, 0)  # failed: nothing used
    assert limiter.admit(key, 2.0, tokens=8000).admitted  # 10 x 100 + 500 + 8,000 fits in 10,000
    assert not limiter.admit(key, 2.0, tokens=1000).admitted


def test_one_request_larger_than_the_limit_runs_alone_in_an_empty_window():
    key, _ = secret_key(tokens_per_minute="1000")
    limiter = RateLimiter()
    assert limiter.admit(key, 0.0, tokens=5000).admitted
    assert not limiter.admit(key, 1.0, tokens=1).admitted


def test_each_of_several_gateways_admits_its_share_so_together_they_keep_the_limit():
    key, _ = secret_key(requests_per_minute="60", tokens_per_minute="1000")
    gateways = [RateLimiter(share=2), RateLimiter(share=2)]
    admitted = sum(g.admit(key, 0.0).admitted for _ in range(100) for g in gateways)
    assert admitted == 60 and gateways[0].admit(key, 1.0).headers["x-ratelimit-limit-requests"] == "30"
    small, _ = secret_key(requests_per_minute="1")
    three = [RateLimiter(share=3) for _ in range(3)]
    assert sum(g.admit(small, 0.0).admitted for g in three) == 3  # at least 1 each: over by share - 1 at most


def test_a_key_without_limits_gets_no_headers():
    key, _ = secret_key()
    assert RateLimiter().admit(key, 0.0).headers == {}


# ---- usage -------------------------------------------------------------------------------------------
def test_usage_of_complete_answers():
    assert from_answer(b'{"usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}}').total == 12
    assert from_answer(b'{"usage": {"prompt_tokens": 9, "total_tokens": 9}}').prompt == 9  # embeddings
    assert from_answer(b'{"usage": {"input_tokens": 3, "output_tokens": 4}}').completion == 4  # Responses API
    assert from_answer(b'{"choices": []}') is None and from_answer(b"not json") is None


def sse(*events) -> bytes:
    return b"".join(b"data: " + (json.dumps(e).encode() if not isinstance(e, bytes) else e) + b"\n\n"
                    for e in events)


STREAM = sse({"choices": [{"delta": {"content": "a"}}]}, {"choices": [{"delta": {"content": "b"}}]},
             {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}}, b"[DONE]")


@pytest.mark.parametrize("cut", [1, 5, 17, 60, 100, len(STREAM) - 3])
def test_the_usage_event_asked_for_on_the_clients_behalf_is_metered_and_stripped_wherever_chunks_split(cut):
    meter = StreamMeter(strip_usage_event=True)
    out = meter.feed(STREAM[:cut]) + meter.feed(STREAM[cut:]) + meter.flush()
    assert meter.usage.prompt == 4 and meter.usage.completion == 2
    assert b"usage" not in out and out == sse({"choices": [{"delta": {"content": "a"}}]},
                                              {"choices": [{"delta": {"content": "b"}}]}, b"[DONE]")


def test_a_client_that_asked_for_usage_gets_it():
    meter = StreamMeter(strip_usage_event=False)
    assert meter.feed(STREAM) + meter.flush() == STREAM and meter.usage.total == 6


def test_include_usage_is_added_only_when_missing():
    payload = {"stream": True, "stream_options": {"continuous_usage_stats": False}}
    assert ask_for_stream_usage(payload) and payload["stream_options"] == {"continuous_usage_stats": False,
                                                                           "include_usage": True}
    assert not ask_for_stream_usage({"stream": True, "stream_options": {"include_usage": True}})
    assert not ask_for_stream_usage({"stream": False})


# ---- served names, catalogue, model lookup -------------------------------------------------------------
def test_the_oldest_claim_wins_a_served_name_whatever_the_order():
    a = Claim(("team-b", "llama"), "llama-8b", "2026-01-01T00:00:00Z")
    b = Claim(("team-a", "llama"), "llama-8b", "2026-02-01T00:00:00Z")
    tie = Claim(("team-a", "zzz"), "llama-8b", "2026-01-01T00:00:00Z")
    assert owners([a, b])["llama-8b"] == a == owners([b, a])["llama-8b"]  # created first
    # Created in the same second: namespace/name decides, so every reader picks the same one.
    assert owners([a, b, tie])["llama-8b"] == tie == owners([tie, b, a])["llama-8b"]
    assert conflict(b, [a, b]) == a and conflict(a, [a, b]) is None and conflict(a, [a, tie]) == tie


def tis(ns, name, created, served=None, uri="hf://org/llama-8b", desired=0):
    return {"metadata": {"namespace": ns, "name": name, "creationTimestamp": created},
            "spec": {"engine": {"type": "vllm"}, "model": {"uri": uri, **({"servedName": served} if served else {})}},
            "status": {"desiredReplicas": desired}}


def test_catalog_routes_a_name_to_its_owner_and_hands_it_over_when_the_owner_goes():
    catalog = Catalog()
    catalog.put(entry_from_object(tis("b", "second", "2026-02-01T00:00:00Z")))
    catalog.put(entry_from_object(tis("a", "first", "2026-01-01T00:00:00Z")))
    catalog.put(entry_from_object(tis("a", "other", "2026-01-01T00:00:00Z", served="qwen")))
    assert catalog.model("llama-8b").key == ("a", "first") and catalog.model("qwen").key == ("a", "other")
    catalog.remove(("a", "first"))
    assert catalog.model("llama-8b").key == ("b", "second")
    catalog.retain({("b", "second")}, namespace="a")  # a relisting of namespace a leaves b alone
    assert catalog.model("qwen") is None and catalog.model("llama-8b").key == ("b", "second")


def test_model_names_from_bodies_and_kserve_paths():
    assert model_in_body(b'{"model": "m", "messages": []}')[0] == "m"
    assert model_in_body(b'{"messages": []}') == (None, {"messages": []})
    assert model_in_body(b"not json") == (None, None) and model_in_body(b'["m"]') == (None, None)
    assert triton_model("/v2/models/resnet/versions/1/infer") == "resnet"
    assert triton_model("/v2/health/ready") is None


def test_v1_and_v2_paths_are_the_one_endpoint_not_a_namespace():
    assert route("/v1/chat/completions", "127.0.0.1:8080") is None
    assert route("/v2/models/resnet/infer", "localhost") is None
    assert route("/v1/chat/completions", "llama.ml") == ("ml", "llama", "/v1/chat/completions")  # Host still wins
    assert route("/ml/llama/v1/models", "127.0.0.1") == ("ml", "llama", "/v1/models")


def test_the_operator_reports_a_lost_served_name_as_routable_false():
    obs = Observation(1, served_name="llama-8b", name_owner=("team-b", "llama"))
    status = plan_status({}, obs, "2026-12-02T00:00:00Z")
    routable = next(c for c in status["conditions"] if c["type"] == "Routable")
    assert routable["status"] == "False" and routable["reason"] == "ServedNameConflict"
    assert "team-b/llama" in routable["message"] and "llama-8b" in routable["message"]
    mine = plan_status({}, Observation(1, served_name="llama-8b"), "2026-12-02T00:00:00Z")
    assert next(c for c in mine["conditions"] if c["type"] == "Routable")["status"] == "True"


# ---- NetworkPolicy ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("engine,serving,metrics", [("vllm", [8000], 8000), ("triton", [8000, 8001], 8002)])
def test_network_policy_admits_the_gateway_and_prometheus_and_nothing_else(engine, serving, metrics):
    spec = parse_spec({"engine": {"type": engine}, "model": {"uri": "hf://org/m"}})
    settings = NetworkPolicySettings("tidal-system", {"app.kubernetes.io/name": "tidal-activator"},
                                     "monitoring", {"app.kubernetes.io/name": "prometheus"})
    policy = render_network_policy("llama", "team-a", "uid-1", spec, settings)
    assert policy["spec"]["podSelector"] == {"matchLabels": {"tidal.dev/inferenceservice": "llama"}}
    assert policy["spec"]["policyTypes"] == ["Ingress"]  # ingress listed below is all that is admitted
    gateway, prometheus = policy["spec"]["ingress"]
    assert gateway["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "tidal-system"}},
                                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "tidal-activator"}}}]
    assert [p["port"] for p in gateway["ports"]] == serving
    assert prometheus["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                                   "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]
    assert [p["port"] for p in prometheus["ports"]] == [metrics]
    # Every peer names both a namespace and pods: an empty selector would admit every pod of the cluster.
    for rule in policy["spec"]["ingress"]:
        for peer in rule["from"]:
            assert peer["namespaceSelector"]["matchLabels"] and peer["podSelector"]["matchLabels"]


def test_gateway_errors_take_the_kserve_shape_for_v2_clients_and_engine_answers_pass_untouched():
    from aiohttp import web

    from tidal.gateway import errors
    made = errors.rate_limited("requests", "5", 12, {"x-ratelimit-limit-requests": "5"})
    kserve = errors.in_kserve_shape(made)
    assert kserve.status == 429 and json.loads(kserve.body) == {"error": json.loads(made.body)["error"]["message"]}
    assert kserve.headers["Retry-After"] == "12" and kserve.headers["x-ratelimit-limit-requests"] == "5"
    engine = web.json_response({"error": "model 'x' is not ready"}, status=400)  # Triton's own answer
    assert errors.in_kserve_shape(engine) is engine


def test_the_wake_call_says_how_fast_held_requests_arrive_and_how_long_requests_take():
    from tidal.gateway.demand import Demand
    demand = Demand()
    key = ("ml", "chat")
    assert demand.wake_call(key, 1, 0.0) == {"pending": 1, "arrival_rate": 0.0}  # no request time yet
    for i in range(60):  # 60 held over the 3 s since the first: 20/s (the 5 s window would say 12/s)
        demand.held(key, i * 0.05)
    demand.served(key, 4.0)
    demand.served(key, 9.0)  # moving average: 4 + 0.2 x 5
    assert demand.wake_call(key, 60, 3.0) == {"pending": 60, "arrival_rate": 20.0, "request_seconds": 5.0}
    assert demand.wake_call(key, 60, 5.0)["arrival_rate"] == 12.0  # 5 s on: the whole window, 60 / 5
    assert demand.wake_call(key, 50, 60.0)["arrival_rate"] == 0.0  # the surge is over
    assert key not in demand._arrivals  # and nothing is kept for it
    demand.held(key, 100.0)
    demand.held(key, 100.004)  # two requests a few milliseconds apart are not a surge of 500/s
    assert demand.wake_call(key, 2, 100.005)["arrival_rate"] == 0.667


def test_made_up_services_do_not_grow_the_gateways_memory():
    from tidal.gateway import demand as module
    demand = module.Demand()
    for i in range(module.MAX_SERVICES + 500):
        demand.held(("x", f"made-up-{i}"), 0.0)
    assert len(demand._arrivals) == module.MAX_SERVICES
