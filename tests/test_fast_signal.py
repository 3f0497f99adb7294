"""The fast signal (#32): what the gateway reports every second, how the operator adds up its replicas' reports,
and the report endpoint's answers to bad input. The decision on it is in test_autoscaling.py and
test_simulate.py; end to end (the real gateway and operator on the local cluster) in
tests/cluster/test_activator.py."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestClient, TestServer

from tidal.autoscaling.observe import GatewayLoad
from tidal.controller.autoscaler import Autoscaler
from tidal.controller.gateway_loads import FRESH_S, GatewayLoads
from tidal.controller.http import build_app
from tidal.controller.store import ServiceStore
from tidal.gateway.demand import Demand
from tidal.gateway.endpoints import Endpoint, Endpoints
from tidal.gateway.load_report import build_report


def test_the_report_names_only_busy_services_with_what_the_gateway_sees():
    endpoints, demand = Endpoints(), Demand()
    endpoints.update(("ml", "chat"), "pod-a", Endpoint("10.0.0.1", 8000, inflight=3))
    endpoints.update(("ml", "chat"), "pod-b", Endpoint("10.0.0.2", 8000, inflight=4))
    endpoints.update(("ml", "quiet"), "pod-c", Endpoint("10.0.0.3", 8000))  # a replica, no traffic
    for t in (100.0, 100.5, 101.0, 101.5, 102.0, 102.5):
        demand.arrived(("ml", "chat"), t)
    demand.served(("ml", "chat"), 4.0)
    demand.arrived(("ml", "old"), 10.0)  # arrived long ago: forgotten
    report = build_report(endpoints, {("ml", "waking"): 5, ("ml", "none-held"): 0}, demand, 103.0,
                          oldest_held_s=lambda key, now: 12.5 if key == ("ml", "waking") else 0.0)
    assert report == {"ml/chat": {"in_flight": 7, "held": 0, "arrival_rate": 2.0, "request_seconds": 4.0},
                      "ml/waking": {"in_flight": 0, "held": 5, "arrival_rate": 0.0, "oldest_held_s": 12.5}}


def test_the_replicas_reports_add_up_and_a_silent_gateway_stops_counting():
    loads = GatewayLoads()
    loads.report("gw-a", {("ml", "chat"): GatewayLoad(10, 2, 3.0, 4.0)}, now=100.0)
    loads.report("gw-b", {("ml", "chat"): GatewayLoad(6, 0, 1.0, 2.0)}, now=100.5)
    both = loads.of(("ml", "chat"), now=101.0)
    assert (both.in_flight, both.held, both.arrivals_per_s) == (16, 2, 4.0)
    assert 2.0 < both.request_s < 4.0  # the request time weighted by each gateway's traffic
    assert loads.of(("ml", "other"), now=101.0) is None  # no report is no news
    later = loads.of(("ml", "chat"), now=100.0 + FRESH_S + 0.2)  # gw-a went silent, gw-b's is still fresh
    assert (later.in_flight, later.arrivals_per_s) == (6, 1.0)
    assert loads.of(("ml", "chat"), now=100.5 + FRESH_S + 0.1) is None


def test_a_bad_report_is_a_400_naming_the_problem_and_changes_nothing():
    scaler = Autoscaler(kube=None, prometheus=None, store=ServiceStore())

    async def post(body):
        async with TestClient(TestServer(build_app(scaler))) as client:
            response = await client.post("/v1/load", json=body)
            return response.status, await response.json()
    status, said = asyncio.run(post({"gateway": "gw-a", "services": {"no-slash": {"in_flight": 1}}}))
    assert status == 400 and said["reason"].startswith("BadReport: services: 'no-slash'"), said
    status, said = asyncio.run(post({"services": {}}))
    assert status == 400 and "gateway" in said["reason"], said
    # A well-formed report for a service the operator does not run: kept, nothing scaled.
    status, said = asyncio.run(post({"gateway": "gw-a", "services": {"ml/chat": {"in_flight": "lots", "held": 2}}}))
    assert (status, said) == (200, {"scaled": []})
    assert scaler.gateway_loads.of(("ml", "chat"), now=__import__("time").monotonic()).in_flight == 0.0
