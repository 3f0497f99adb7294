"""One source of truth for what the autoscaler sees: the operator (from Prometheus's answer and the gateway's
wake-up calls) and the simulator (from its modelled scrape and gateway) turn the same world into the same
`Observation`, because both go through autoscaling/observe.py. If either path grows a rule of its own, a
case below differs."""

from __future__ import annotations

import time
from dataclasses import replace

from hypothesis import given, strategies as st

from tidal.api.v1alpha1 import parse_spec
from tidal.autoscaling import Policy
from tidal.autoscaling.observe import GatewayLoad
from tidal.clients.prometheus import ServiceLoad
from tidal.controller.autoscaler import Autoscaler
from tidal.controller.store import DeploymentState, ServiceStore
from tidal.engines import engine
from tidal.simulate.policies import TidalPolicy, View

KEY = ("ml", "chat")
SPEC = parse_spec({"engine": {"type": "vllm"}, "model": {"uri": "hf://org/model"}})
ADAPTER = engine("vllm")
counts = st.floats(min_value=0, max_value=500, allow_nan=False).map(lambda x: round(x, 2))


@st.composite
def worlds(draw):
    current = draw(st.integers(0, 6))
    return dict(current=current, ready=draw(st.integers(0, current)), scraped=draw(st.booleans()),
                waiting=draw(counts), running=draw(counts), held=draw(counts), held_rate=draw(counts),
                request_s=draw(st.none() | st.floats(0.1, 60)), unschedulable=draw(st.integers(0, 3)),
                cold_start_s=draw(st.none() | st.floats(1, 600)), wake=draw(st.booleans()),
                # the gateway's load report (the fast signal): in flight, in its line, arriving per second
                in_flight=draw(counts), line=draw(counts), arriving=draw(counts),
                age=draw(st.integers(0, 30).map(float)),  # seconds since the engines' gauges were scraped
                kv=draw(st.none() | st.integers(0, 100).map(lambda p: p / 100)))  # their KV caches' usage


def operator_sees(w: dict):
    """The operator's path: the Deployment in its store, the gateway's last wake-up call, Prometheus's answer
    (the engines' series exist once a scrape has seen a ready replica; the gateway's held gauge always)."""
    scaler = Autoscaler(kube=None, prometheus=None, store=ServiceStore())
    scaler.store.deployments[KEY] = DeploymentState(replicas=w["current"], ready=w["ready"])
    scaler.store.unschedulable[KEY] = {f"pod-{i}" for i in range(w["unschedulable"])}
    scaler._held[KEY] = (w["held_rate"], w["request_s"], time.monotonic())
    status = {"lastColdStartSeconds": w["cold_start_s"]} if w["cold_start_s"] is not None else {}
    report = GatewayLoad(w.get("in_flight", 0.0), w.get("line", 0.0), w.get("arriving", 0.0), w["request_s"])
    if report.has_traffic():  # the gateway reports busy services only
        scaler.gateway_loads.report("gateway-0", {KEY: report}, time.monotonic())
    held = w["held"] if w["ready"] == 0 else 0.0
    if w["wake"]:  # a wake-up call: no query; while nothing serves, no engine series can exist
        return scaler._observe(KEY, SPEC, ServiceLoad(), extra_pending=held, status=status)
    series = w["ready"] > 0 and w["scraped"]
    load = ServiceLoad(waiting=w["waiting"] if series else 0.0, running=w["running"] if series else 0.0,
                       pending=held, seen={ADAPTER.queue_metric, ADAPTER.inflight_metric} if series else set(),
                       scrape_age_s=w.get("age", 0.0) if series else None,
                       kv_usage_sum=w["kv"] if series and w.get("kv") is not None else 0.0,
                       kv_pods=1 if series and w.get("kv") is not None else 0,
                       running_pods={f"pod-{i}" for i in range(w["ready"])} if series else set())
    return scaler._observe(KEY, SPEC, load, status=status)


def simulator_sees(w: dict):
    policy = TidalPolicy(Policy())
    policy.cold_start_s = w["cold_start_s"]
    view = View(now=100.0, current=w["current"], ready=w["ready"], scraped_waiting=w["waiting"],
                scraped_running=w["running"], live_concurrency=0.0, held=w["held"], held_rate=w["held_rate"],
                request_s=w["request_s"], unschedulable=w["unschedulable"], scraped_series=w["scraped"],
                in_flight=w.get("in_flight", 0.0), arrivals_per_s=w.get("arriving", 0.0),
                scraped_at=100.0 - w.get("age", 0.0), scraped_kv_usage=w.get("kv"),
                scraped_engines=w["ready"] if w["scraped"] else 0)
    view = replace(view, live_concurrency=view.in_flight + w.get("line", 0.0))
    return policy.observed(view, wake=w["wake"])


@given(worlds())
def test_the_operator_and_the_simulator_observe_the_same_world_the_same_way(w):
    if w["wake"] and w["ready"]:
        return  # neither decides on a wake-up call while a replica serves (the tick does)
    assert operator_sees(w) == simulator_sees(w)


def test_serving_replicas_no_scrape_has_seen_are_unknown_on_both_paths_not_idle():
    w = dict(current=2, ready=2, scraped=False, waiting=0.0, running=0.0, held=0.0, held_rate=0.0,
             request_s=None, unschedulable=0, cold_start_s=None, wake=False)
    for obs in (operator_sees(w), simulator_sees(w)):
        assert obs.waiting is None and obs.running is None


def test_the_gateways_load_report_is_the_same_fast_signal_on_both_paths():
    w = dict(current=2, ready=2, scraped=True, waiting=1.0, running=9.0, held=0.0, held_rate=0.0, request_s=4.0,
             unschedulable=0, cold_start_s=None, wake=False, in_flight=10.0, line=2.0, arriving=12.0)
    for obs in (operator_sees(w), simulator_sees(w)):
        assert (obs.gateway_demand, obs.gateway_rate, obs.request_s) == (12.0, 12.0, 4.0)
        assert "10 in flight, 2 held, 12/s arriving" in obs.gateway_message
    quiet = {**w, "in_flight": 0.0, "line": 0.0, "arriving": 0.0}
    for obs in (operator_sees(quiet), simulator_sees(quiet)):
        assert obs.gateway_demand is None  # no report: no news, not "zero"


def test_held_requests_while_nothing_serves_are_demand_on_both_paths():
    w = dict(current=1, ready=0, scraped=False, waiting=0.0, running=0.0, held=40.0, held_rate=3.0,
             request_s=2.0, unschedulable=1, cold_start_s=30.0, wake=True)
    for obs in (operator_sees(w), simulator_sees(w)):
        assert (obs.pending, obs.held_rate, obs.waiting, obs.unschedulable, obs.cold_start_s) == (40.0, 3.0, 0.0, 1, 30.0)
