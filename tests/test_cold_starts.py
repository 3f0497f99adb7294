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


def test_a_restarted_operator_reads_the_last_cold_start_from_status():
    assert ColdStarts().last(KEY, {"lastColdStartSeconds": 61.2}) == 61.2
    assert ColdStarts().last(KEY, {"lastColdStartSeconds": "soon"}) is None


def test_status_keeps_the_last_cold_start_and_writes_it_only_when_it_changes():
    decision = Decision(1, "Steady", "", ScalerState())
    out = plan_scaling_status({}, decision, 1, 0.0, 1, 1000.0, cold_start_s=42.46)
    assert out["lastColdStartSeconds"] == 42.5
    again = plan_scaling_status(out, decision, 1, 0.0, 1, 1002.0, cold_start_s=42.46)
    assert again == out
