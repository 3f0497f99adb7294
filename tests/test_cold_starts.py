"""The operator's cold-start clock, and the status field that carries the last one across a restart."""

from tidal.controller.cold_starts import ColdStarts
from tidal.autoscaling import Decision, ScalerState
from tidal.planning.scaling_status import plan_scaling_status

KEY = ("ml", "chat")


def test_a_cold_start_is_timed_from_the_wake_decision_to_the_first_ready_replica():
    clock = ColdStarts()
    assert clock.last(KEY) is None
    clock.begun(KEY, 100.0)
    clock.begun(KEY, 105.0)  # a second decision while starting does not restart the clock
    clock.replicas_ready(KEY, 0, 110.0)
    clock.replicas_ready(KEY, 1, 142.5)
    assert clock.last(KEY) == 42.5
    clock.begun(KEY, 200.0)
    clock.abandoned(KEY)  # back to zero before anything was ready: not a cold start
    clock.replicas_ready(KEY, 1, 300.0)
    assert clock.last(KEY) == 42.5


def test_a_new_services_first_replica_is_timed_but_only_wake_ups_are_counted():
    from tidal.controller import metrics
    clock = ColdStarts()
    key = ("ml", "new-one")
    counted = metrics.COLD_START.labels(*key)
    clock.begun(key, 10.0, wake_up=False)  # created with one replica
    clock.begun(key, 12.0)  # a wake-up call while it starts does not restart the clock or make it a wake-up
    clock.replicas_ready(key, 1, 40.0)
    assert clock.last(key) == 30.0 and counted._sum.get() == 0
    clock.begun(key, 100.0)  # its first wake-up
    clock.replicas_ready(key, 1, 125.0)
    assert clock.last(key) == 25.0 and counted._sum.get() == 25.0


def test_a_wake_ups_clock_starts_before_its_write_so_a_replica_ready_at_once_still_ends_it():
    # Scaled 1 -> 0 -> 1 within a second, the old replica may never have been deleted: the watch then brings
    # "1 ready" while the scale-up write is still in flight. The clock must already be running (CI saw a
    # wake-up never counted when it started after the write returned).
    clock = ColdStarts()
    assert clock.scaling(KEY, 0, 1, 100.0) is True
    assert clock.replicas_ready(KEY, 1, 100.5) == 0.5
    assert clock.scaling(KEY, 1, 3, 101.0) is False  # not from zero: no clock
    assert clock.replicas_ready(KEY, 3, 102.0) is None
    # A failed write abandons the clock it started; back to zero abandons one still running.
    started = clock.scaling(KEY, 0, 1, 200.0)
    clock.not_scaled(KEY, started)
    assert clock.replicas_ready(KEY, 1, 230.0) is None
    clock.scaling(KEY, 0, 1, 300.0)
    assert clock.scaling(KEY, 1, 0, 301.0) is False
    assert clock.replicas_ready(KEY, 1, 330.0) is None and clock.last(KEY) == 0.5


def test_a_replica_counts_as_ready_only_in_a_status_that_has_seen_the_spec():
    from tidal.planning.status import ready_for_its_spec

    def deployment(replicas, generation, observed, ready):
        return {"metadata": {"generation": generation}, "spec": {"replicas": replicas},
                "status": {"observedGeneration": observed, "readyReplicas": ready}}
    assert ready_for_its_spec(deployment(1, 7, 7, 1)) == 1
    assert ready_for_its_spec(deployment(1, 7, 6, 1)) == 0  # the status of before the scale-up
    assert ready_for_its_spec(deployment(0, 6, 6, 1)) == 0  # asked for none: its last replica is leaving
    assert ready_for_its_spec(deployment(2, 3, 3, None)) == 0
    assert ready_for_its_spec({"metadata": {}, "spec": {}, "status": {}}) == 0


def test_a_restarted_operator_reads_the_last_cold_start_from_status():
    assert ColdStarts().last(KEY, {"lastColdStartSeconds": 61.2}) == 61.2
    assert ColdStarts().last(KEY, {"lastColdStartSeconds": "soon"}) is None


def test_status_keeps_the_last_cold_start_and_writes_it_only_when_it_changes():
    decision = Decision(1, "Steady", "", ScalerState())
    out = plan_scaling_status({}, decision, 1, 0.0, 1, 1000.0, cold_start_s=42.46)
    assert out["lastColdStartSeconds"] == 42.5
    again = plan_scaling_status(out, decision, 1, 0.0, 1, 1002.0, cold_start_s=42.46)
    assert again == out


# ---- where the seconds went (#30.3) ------------------------------------------------------------------
def kubelet_pod(fetch: tuple[str, str] | None = ("20:00:05", "20:00:35")) -> dict:
    """A replica's status as a kubelet writes it (second resolution): created 20:00:00, scheduled at :02, the
    fetch container from :05 to :35, the engine started at :40, Ready at 20:01:30."""
    def t(hms):
        return f"2026-12-06T{hms}Z"
    status = {"conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": t("20:00:02")},
                             {"type": "Ready", "status": "True", "lastTransitionTime": t("20:01:30")}],
              "containerStatuses": [{"name": "engine", "state": {"running": {"startedAt": t("20:00:40")}}}]}
    if fetch:
        status["initContainerStatuses"] = [{"name": "fetch-model", "state": {"terminated": {
            "exitCode": 0, "startedAt": t(fetch[0]), "finishedAt": t(fetch[1])}}}]
    return {"metadata": {"creationTimestamp": t("20:00:00")}, "status": status}


def test_a_cold_start_is_split_into_its_phases_that_sum_to_what_the_operator_timed():
    from tidal.planning.cold_start_phases import phases, summary
    parts = phases(kubelet_pod(), total_s=93.0)
    assert parts == {"scheduling": 2.0, "image_pull": 3.0 + 5.0, "weight_fetch": 30.0, "engine_load": 50.0,
                     "ready": 3.0}
    assert sum(parts.values()) == 93.0
    assert summary(93.0, parts) == ("cold start of 93.0 s: scheduling 2 s, image pull 8 s, weight fetch 30 s, "
                                    "engine load 50 s, ready 3 s")
    hit = phases(kubelet_pod(fetch=("20:00:05", "20:00:05")), total_s=93.0)  # the node's cache had the weights
    assert hit["weight_fetch"] == 0.0 and hit["image_pull"] == 38.0
    pvc = phases(kubelet_pod(fetch=None), total_s=93.0)  # no fetch container: a pvc:// model
    assert pvc["weight_fetch"] == 0.0 and pvc["image_pull"] == 38.0
    # A cold start shorter than the kubelet's whole seconds (0.4 s measured, 1 s between the stamps): the parts
    # still sum to what was measured.
    quick = phases(kubelet_pod(fetch=None), total_s=0.4)
    assert abs(sum(quick.values()) - 0.4) <= 0.2 and all(v >= 0 for v in quick.values())
    # The fetch's own report (its termination message) beats the kubelet's whole seconds, which also count the
    # process starting: a hit whose container ran from :05 to :06 spent 0.0 s fetching, a fetch 29.6 s.
    hit = kubelet_pod(fetch=("20:00:05", "20:00:06"))
    hit["status"]["initContainerStatuses"][0]["state"]["terminated"]["message"] = "CacheHit: 0.004 s, 0 bytes"
    parts = phases(hit, total_s=93.0)
    assert parts["weight_fetch"] == 0.0 and parts["image_pull"] == 38.0 and sum(parts.values()) == 93.0
    fetched = kubelet_pod()
    fetched["status"]["initContainerStatuses"][0]["state"]["terminated"]["message"] = \
        "Fetched: 29.600 s, 16,060,522,392 bytes"
    assert phases(fetched, total_s=93.0)["weight_fetch"] == 29.6
    unstarted = kubelet_pod()
    del unstarted["status"]["containerStatuses"]
    assert phases(unstarted, 93.0) is None  # no invented figures


def test_the_clock_observes_each_phase_and_status_carries_them_only_when_they_change():
    from tidal.controller import metrics
    clock = ColdStarts()
    engine_load = lambda: sum(s.value for m in metrics.COLD_START_PHASE.collect() for s in m.samples  # noqa: E731
                              if s.name.endswith("_sum") and s.labels["phase"] == "engine_load")
    before = engine_load()
    clock.explained(KEY, {"scheduling": 1.0, "image_pull": 2.0, "weight_fetch": 0.0, "engine_load": 50.0,
                          "ready": 1.0})
    assert engine_load() == before + 50.0
    decision = Decision(1, "ActivatorWake", "", ScalerState())
    status = plan_scaling_status({}, decision, 0, None, 1, 1000.0, cold_start_phases=clock.last_phases(KEY))
    assert status["lastColdStartPhases"]["engine_load"] == 50.0
    same = dict(clock.last_phases(KEY))  # the same figures, another object: nothing new to write
    assert plan_scaling_status(status, decision, 1, None, 1, 1001.0, cold_start_phases=same) == status


def test_a_new_cold_start_never_shows_an_older_ones_phases_and_is_explained_when_its_pod_can_say():
    # The first start's phases (52 s of them) beside a 28 s wake would say where 52 s went in 28.
    clock = ColdStarts()
    first = {"scheduling": 0.0, "image_pull": 0.5, "weight_fetch": 3.4, "engine_load": 35.5, "ready": 0.0}
    clock.begun(KEY, 0.0)
    clock.replicas_ready(KEY, 1, 39.4)
    clock.explained(KEY, first)
    decision = Decision(1, "ActivatorWake", "", ScalerState())
    status = plan_scaling_status({}, decision, 0, None, 1, 100.0, cold_start_s=39.4,
                                 cold_start_phases=clock.last_phases(KEY))
    assert status["lastColdStartPhases"] == first and clock.unexplained(KEY, 100.0) is None
    clock.begun(KEY, 200.0)
    took = clock.replicas_ready(KEY, 1, 228.0)  # the pod's times are not there yet: not explained
    assert clock.last_phases(KEY) is None and clock.unexplained(KEY, 229.0) == took == 28.0
    status = plan_scaling_status(status, decision, 0, None, 1, 229.0, cold_start_s=took,
                                 cold_start_phases=clock.last_phases(KEY))
    assert status["lastColdStartSeconds"] == 28.0 and status["lastColdStartPhases"] is None  # removed (merge patch)
    clock.explained(KEY, {**first, "weight_fetch": 0.0, "engine_load": 27.0})  # a later tick found them
    assert clock.unexplained(KEY, 230.0) is None and clock.last_phases(KEY)["weight_fetch"] == 0.0
    clock.begun(KEY, 300.0)
    clock.replicas_ready(KEY, 1, 330.0)
    assert clock.unexplained(KEY, 330.0 + 31.0) is None  # a pod that never says is given up on


def test_a_cold_start_is_explained_by_one_caller_only():
    # The watch that saw the replica ready and a tick can both try: the one that claims it goes on (one Event).
    clock = ColdStarts()
    clock.begun(KEY, 0.0)
    clock.replicas_ready(KEY, 1, 30.0)
    pending = clock.claim(KEY)
    assert pending == (30.0, 30.0) and clock.claim(KEY) is None and clock.unexplained(KEY, 31.0) is None
    clock.unclaim(KEY, pending)  # its pod showed no times yet: a later tick tries again
    assert clock.unexplained(KEY, 32.0) == 30.0
    clock.claim(KEY)
    clock.begun(KEY, 40.0)
    clock.replicas_ready(KEY, 1, 50.0)  # a newer cold start ended while the older one was being explained
    clock.unclaim(KEY, pending)
    assert clock.unexplained(KEY, 51.0) == 10.0  # the newer one is what is left to explain
