"""The control plane and Prometheus going down under steady load, on a cluster of their own (its control plane
is restarted here): kube-apiserver and etcd restarted, Prometheus down for a minute. The fixtures and the load
are test_faults.py's; a module of its own so that `make test` runs it beside that one (`--dist loadfile`).

Load goes through the activator, as users' traffic does, and every response is counted.
"""

from __future__ import annotations

import time

import pytest

from tests.cluster.test_autoscaler import apply, replicas, service
from tests.cluster.test_faults import Load, Sampler, _new_service_serves, faulty  # noqa: F401  (a fixture)
from tests.cluster.test_operator import condition, events, get, wait_condition
from tests.cluster.test_smoke import wait_for

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_control_plane_restart_loses_nothing_and_everything_reconnects(faulty, component):
    kubectl, ns, cluster = faulty["kubectl"], "faults", faulty["cluster"]
    name = f"steady-{component.split('-')[-1]}"
    apply(kubectl, ns, service(name, minReplicas=1, maxReplicas=2))
    wait_condition(kubectl, ns, name, "Ready", "True", "ModelReady")
    url = f"{faulty['activator'].url}/{ns}/{name}/v1/completions"
    with Load(url, concurrency=4, max_tokens=20) as load:
        time.sleep(2)
        cluster.stop_component(component)
        down_at = time.monotonic()
        time.sleep(8)
        cluster.start_component(component)
        wait_for(lambda: kubectl("get", "--raw", "/readyz", check=False).returncode == 0, timeout=90,
                 what=f"the apiserver ready after the {component} restart")
        back = time.monotonic() - down_at
        _new_service_serves(faulty, f"after-{component.split('-')[-1]}")
        recovered = time.monotonic() - down_at
        time.sleep(2)
    print(f"{component} down 8 s; API back after {back:.1f} s; a new service served after {recovered:.1f} s; "
          f"requests ok {load.ok}, failed {len(load.failures)}")
    assert load.failures == [] and load.ok > 20
    assert faulty["operator"].proc.poll() is None and faulty["activator"].proc.poll() is None
    # Scaling resumed: the autoscaler has the new service's metrics and decides for it.
    wait_condition(kubectl, ns, f"after-{component.split('-')[-1]}", "ScalingActive", "True", timeout=60)


def test_prometheus_down_for_a_minute_holds_replicas_then_scaling_resumes(faulty):
    """A minute is 12 of this service's idle periods and 7 of the operator's metrics grace (8 s here): long
    enough that an autoscaler reading an outage as idle would have scaled to zero many times over. (It was
    three minutes; nothing in the behaviour needs more than one, and CI paid two minutes for it.)"""
    kubectl, ns, cluster = faulty["kubectl"], "faults", faulty["cluster"]
    apply(kubectl, ns, service("held", minReplicas=0, maxReplicas=4, idleSecondsBeforeZero=5,
                               scaleDownStabilizationSeconds=3))
    url = f"{faulty['activator'].url}/{ns}/held/v1/completions"
    # 8 clients, 0.7 s per request, 4 at a time: 2 replicas wanted, steadily.
    with Load(url, concurrency=8, max_tokens=100) as load:
        wait_for(lambda: replicas(kubectl, ns, "held") == 2, timeout=60, interval=0.5, what="2 replicas under load")
        time.sleep(5)
        before = replicas(kubectl, ns, "held")
        cluster.stop_component("prometheus")
        try:
            with Sampler(lambda: replicas(kubectl, ns, "held"), interval=2) as history:
                obj = wait_condition(kubectl, ns, "held", "ScalingActive", "False", "MetricsUnavailable", timeout=30)
                # A pod evicted while Prometheus is blind: its last samples (taken busy, never marked
                # stale) stay visible for Prometheus' 5-minute lookback after the restart.
                evicted = get(kubectl, ns, "pods", "-l", "tidal.dev/inferenceservice=held")["items"][0]
                kubectl("delete", "pod", evicted["metadata"]["name"], "-n", ns, "--wait=false")
                time.sleep(60)
        finally:
            cluster.start_component("prometheus")
            back_at = time.monotonic()
    during = [n for _, n in history.values]
    print(f"Prometheus down 60 s: replicas {before} before, {sorted(set(during))} during; "
          f"requests ok {load.ok}, failed {len(load.failures)}")
    assert set(during) == {before}, "replicas changed while the autoscaler was blind"
    assert "keeping the current replicas" in condition(obj, "ScalingActive")["message"]
    assert ("Warning", "MetricsUnavailable") in [(t, r) for t, r, _ in events(kubectl, ns, "held")]
    assert load.failures == []
    # Back: metrics flow again and the idle service goes to zero, as it should: the evicted pod's
    # leftover busy samples are not load (they would hold a replica for two more minutes).
    wait_condition(kubectl, ns, "held", "ScalingActive", "True", timeout=60)
    wait_for(lambda: replicas(kubectl, ns, "held") == 0, timeout=90, interval=1, what="scaling resumed: to zero")
    print(f"at zero {time.monotonic() - back_at:.0f} s after Prometheus came back")
