"""The operator's wake endpoint while a service's replicas start: what it decides on, and that two calls
never decide on the same replica count."""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml

from tidal.controller.autoscaler import Autoscaler
from tidal.controller.store import DeploymentState, ServiceStore

KEY = ("ml", "demo")


class SlowKube:
    """A fake, and only for what the real apiserver cannot produce on demand: two decisions interleaved.
    Each scale() takes 50 ms, so a second wake-up call arrives while the first one's write is in flight
    (in a cluster that happens on a burst, at random). It records what a user would see: the Scaled Events."""

    def __init__(self):
        self.scaled: list[str] = []

    async def scale(self, namespace, name, replicas):
        await asyncio.sleep(0.05)

    async def event(self, body, type_, reason, message):
        if reason == "Scaled":
            self.scaled.append(message.split(" replicas:")[0])

    async def patch_status(self, namespace, name, status, resource_version):
        return {"metadata": {"namespace": namespace, "name": name}, "status": status}


def starting_service() -> tuple[Autoscaler, SlowKube]:
    example = Path(__file__).resolve().parents[1] / "examples" / "demo-scale-to-zero.yaml"
    spec = yaml.safe_load(example.read_text())["spec"]
    body = {"metadata": {"namespace": KEY[0], "name": KEY[1], "generation": 1, "resourceVersion": "1"},
            "spec": spec, "status": {"lastColdStartSeconds": 20.0}}
    store = ServiceStore()
    store.services[KEY] = body
    store.deployments[KEY] = DeploymentState(replicas=1, ready=0)  # woken a moment ago, loading its model
    store.nodes["gpu-1"] = {"metadata": {"name": "gpu-1", "labels": {"tidal.dev/pool": "h100"}},
                            "status": {"allocatable": {"nvidia.com/gpu": "8"}}}  # room for the example's 6
    kube = SlowKube()
    return Autoscaler(kube, prometheus=None, store=store), kube


def test_wake_up_calls_while_replicas_start_grow_them_one_decision_at_a_time():
    autoscaler, kube = starting_service()

    async def two_calls():
        # 8 slots and 4 queued per replica, 1 s requests, 20/s arriving over a 20 s cold start
        return await asyncio.gather(autoscaler.wake(*KEY, pending=20, arrivals_per_s=20.0, request_s=1.0),
                                    autoscaler.wake(*KEY, pending=60, arrivals_per_s=20.0, request_s=1.0))

    first, second = asyncio.run(two_calls())
    # No replica serves, so there is no engine queue to wait for: the gateway's numbers are the demand,
    # and the wake-up grows at once, not at the next tick.
    assert first.reason == "WakeForBacklog" and first.replicas > 1
    # The second call decided on what the first one left, not on the same 1 replica.
    assert kube.scaled[0] == f"1 -> {first.replicas}"
    assert all(b.split(" -> ")[0] == a.split(" -> ")[1] for a, b in zip(kube.scaled, kube.scaled[1:])), kube.scaled
    assert autoscaler.store.deployments[KEY].replicas == max(first.replicas, second.replicas)
    # and a wake-up call made no query, so it says nothing about Prometheus: no MetricsUnavailable
    assert "MetricsUnavailable" not in {first.reason, second.reason}
    conditions = autoscaler.store.services[KEY].get("status", {}).get("conditions", [])
    assert all(c["reason"] != "MetricsUnavailable" for c in conditions), conditions


def test_while_prometheus_is_down_a_wake_up_call_changes_nothing_that_exists():
    """A pod evicted during an outage leaves a service with no ready replica; the requests the gateway then
    holds are its usual load, not a surge, and nothing may be resized blind (tests/cluster/test_faults.py)."""
    autoscaler, kube = starting_service()
    autoscaler._prometheus_down_since = 0.0  # the last tick's query failed
    held = asyncio.run(autoscaler.wake(*KEY, pending=60, arrivals_per_s=20.0, request_s=1.0))
    assert (held.replicas, held.reason) == (1, "MetricsUnavailable") and kube.scaled == []
