"""Who makes way in a full pool (#33): the pure choice (autoscaling/make_way.py) and what it does to a fleet
in `tidal simulate` (the same function the operator applies after each tick)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings, strategies as st

from tests.properties import examples
from tidal.autoscaling.make_way import Seat, idle_enough_to_yield, make_way

NOW = 10_000.0


def waiting(name="wake", held=5.0, oldest=290.0, pending=1, **kw) -> Seat:
    return Seat(("ml", name), replicas=pending, ready=0, min_replicas=0, busy=True, idle_since=NOW,
                pending_for_gpu=pending, held=held, oldest_held_s=oldest, **kw)


def idle(name, since, replicas=1, **kw) -> Seat:
    return Seat(("ml", name), replicas=replicas, ready=replicas, min_replicas=kw.pop("min_replicas", 0), busy=False,
                idle_since=NOW - since, **kw)


def test_the_replica_idle_longest_makes_way_and_the_message_says_for_whom():
    [step] = make_way([waiting(), idle("recent", 20), idle("quiet", 200)], NOW, hold_timeout_s=300)
    assert (step.victim, step.replicas, step.for_service) == (("ml", "quiet"), 0, ("ml", "wake"))
    assert "make way for ml/wake: 5 request(s) held (the oldest 290 s)" in step.message and "idle for 200 s" in step.message


def test_a_service_with_other_replicas_gives_one_before_another_gives_its_last():
    [step] = make_way([waiting(), idle("single", 500), idle("pair", 100, replicas=2)], NOW, hold_timeout_s=300)
    assert (step.victim, step.replicas) == (("ml", "pair"), 1)


def busy(name, replicas=1, held=0.0, oldest=0.0, **kw) -> Seat:
    return Seat(("ml", name), replicas=replicas, ready=replicas, min_replicas=kw.pop("min_replicas", 0), busy=True,
                idle_since=NOW, held=held, oldest_held_s=oldest, **kw)


def test_nobody_below_their_minimum_or_waiting_themselves_makes_way_nor_the_busy_for_a_short_wait():
    seats = [waiting(oldest=100), waiting("also-waiting", oldest=100), idle("floor", 500, min_replicas=1),
             busy("busy", 2)]
    assert make_way(seats, NOW, hold_timeout_s=300) == []


def test_a_starving_service_takes_one_seat_from_the_busy_service_with_the_most_replicas():
    # Held 160 s of a 300 s hold with no replica at all, and nobody idle: requests about to be lost.
    seats = [waiting(oldest=160, pending=2), busy("one", 1), busy("three", 3), busy("three-queued", 3, held=4),
             busy("important", 5, priority=2), busy("late-too", 4, held=3, oldest=200)]
    [step] = make_way(seats, NOW, hold_timeout_s=300)  # one seat, though it asked for two
    assert (step.victim, step.replicas, step.for_service) == (("ml", "three"), 2, ("ml", "wake"))
    assert "busy with 3 replica(s)" in step.message and "none was idle" in step.message
    # An idle replica still goes first; a service that already serves gets none from the busy.
    assert [s.victim for s in make_way([*seats, idle("quiet", 200)], NOW, 300)] == [("ml", "quiet"), ("ml", "three")]
    assert make_way([replace(waiting(oldest=160), ready=1, replicas=2), busy("three", 3)], NOW, 300) == []
    # The last seat of a busy service too, when nobody has more: the seats go round.
    [step] = make_way([waiting(oldest=160), busy("only", 1)], NOW, 300)
    assert (step.victim, step.replicas) == (("ml", "only"), 0)


def test_a_fresh_wait_takes_nothing_a_long_one_takes_what_the_requests_cannot_outwait():
    # Held 10 s of a 300 s hold: only a replica idle 290 s or more gives way; held 290 s: one idle 10 s does.
    assert idle_enough_to_yield(10, 300, 0) == 290 and idle_enough_to_yield(290, 300, 0) == 10
    seats = [idle("quiet", 60)]
    assert make_way([waiting(oldest=10), *seats], NOW, hold_timeout_s=300) == []
    assert [s.victim for s in make_way([waiting(oldest=250), *seats], NOW, hold_timeout_s=300)] == [("ml", "quiet")]


def test_higher_priority_never_makes_way_for_lower_and_a_donor_frees_enough_gpus():
    # (held 100 s of a 300 s hold: not yet long enough to outrank priority)
    assert make_way([waiting(priority=0, oldest=100), idle("important", 500, priority=2)], NOW, 300) == []
    assert make_way([waiting(gpus=4), idle("small", 500, gpus=2)], NOW, 300) == []


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.booleans(), st.floats(0, 1000),
                          st.integers(0, 2), st.floats(0, 50), st.floats(0, 300), st.integers(0, 2)),
                min_size=1, max_size=12))
@settings(max_examples=examples(300))
def test_never_more_taken_than_pending_never_below_minimum_the_busy_only_for_the_starving(raw):
    seats = [Seat(("ml", f"s{i}"), replicas=r, ready=r if p == 0 else 0, min_replicas=m, busy=b,
                  idle_since=NOW - idle_s, pending_for_gpu=p, held=h, oldest_held_s=oldest, priority=tier)
             for i, (r, m, b, idle_s, p, h, oldest, tier) in enumerate(raw)]
    steps = make_way(seats, NOW, hold_timeout_s=300)
    by_key = {s.key: s for s in seats}
    assert len(steps) <= sum(s.pending_for_gpu for s in seats if s.held > 0)
    from_busy: dict = {}
    for step in steps:
        victim, beneficiary = by_key[step.victim], by_key[step.for_service]
        assert victim.pending_for_gpu == 0 and step.replicas >= victim.min_replicas
        assert step.for_service != step.victim
        if victim.busy or victim.held:  # only for requests about to be lost, from no higher a tier, one seat each
            assert beneficiary.ready == 0 and beneficiary.oldest_held_s >= 150 and victim.oldest_held_s < 150
            assert victim.priority <= beneficiary.priority
            from_busy[step.for_service] = from_busy.get(step.for_service, 0) + 1
    assert all(n == 1 for n in from_busy.values())


def test_in_the_simulated_fleet_a_full_pools_held_requests_are_served_not_lost():
    """Two services served once and idle (an hour's idle period: they would keep their GPUs all along) fill a
    pool of 2 GPUs; a third's requests arrive a minute later. Without making way they wait out the 600 s hold
    and are lost; with it, an idle replica gives way once they have waited longer than it has been idle."""
    from tidal.autoscaling import Policy
    from tidal.simulate.engine import SimConfig
    from tidal.simulate.fleet import simulate_fleet
    from tidal.simulate.latency import LatencyModel
    from tidal.simulate.policies import TidalPolicy
    from tidal.simulate.trace import Request
    quick = LatencyModel(prefill_s_per_token=0.0, decode_s_per_token=0.0, overhead_s=1.0, max_concurrency=10)
    traces = [[Request(0.0, 1, 1)], [Request(0.0, 1, 1)], [Request(60.0 + i, 1, 1) for i in range(5)]]

    def run(makes_way: bool):
        def policy():
            p = TidalPolicy(Policy(min_replicas=0, max_replicas=1, target_queue=4, max_concurrency=10,
                                   idle_seconds=3600, adaptive_idle=False))
            p.makes_way = makes_way
            return p
        return simulate_fleet(traces, policy, SimConfig(latency=quick, cold_start_s=30), pool_gpus=2)
    kept, made_way = run(False), run(True)
    assert kept.lost == 5
    assert made_way.lost == 0 and made_way.wait_max < 600


def test_in_the_simulated_fleet_two_busy_services_on_one_gpu_take_turns_and_lose_nothing():
    """A pool of 1 GPU and two services that never go idle: without the seat going round the second's requests
    wait out the 600 s hold for 25 minutes and are lost; with it, each takes the seat when its oldest request
    has waited the hold less two cold starts, and every request is served."""
    from tidal.autoscaling import Policy
    from tidal.simulate.engine import SimConfig
    from tidal.simulate.fleet import simulate_fleet
    from tidal.simulate.latency import LatencyModel
    from tidal.simulate.policies import TidalPolicy
    from tidal.simulate.trace import Request
    quick = LatencyModel(prefill_s_per_token=0.0, decode_s_per_token=0.0, overhead_s=1.0, max_concurrency=10)
    traces = [[Request(float(t), 1, 1) for t in range(0, 1500, 2)],
              [Request(float(t), 1, 1) for t in range(10, 1500, 2)]]

    def run(makes_way: bool):
        def policy():
            p = TidalPolicy(Policy(min_replicas=0, max_replicas=1, target_queue=4, max_concurrency=10))
            p.makes_way = makes_way
            return p
        return simulate_fleet(traces, policy, SimConfig(latency=quick, cold_start_s=30), pool_gpus=1)
    kept, shared = run(False), run(True)
    assert kept.lost > 500, kept.lost
    assert shared.lost == 0 and shared.wait_max < 600, (shared.lost, shared.wait_max)
    # Each service's longest wait, as the fleet report gives it: the starved one waited out the hold.
    assert kept.wait_max_by_service[0] < 60 <= 600 <= kept.wait_max_by_service[1], kept.wait_max_by_service
    assert max(shared.wait_max_by_service) < 600, shared.wait_max_by_service


def test_a_low_services_requests_outrank_an_idle_high_one_once_they_have_waited_half_the_hold():
    high = idle("important", 500, priority=2)
    assert make_way([waiting(priority=0, oldest=100), high], NOW, hold_timeout_s=300) == []
    [step] = make_way([waiting(priority=0, oldest=160), high], NOW, hold_timeout_s=300)
    assert step.victim == ("ml", "important")  # 160 s of a 300 s hold: nobody waits forever


def test_the_priority_tier_reaches_the_pods_as_the_charts_priorityclass_and_bad_tiers_are_refused():
    import pytest
    from pydantic import ValidationError

    from tidal.api.crd import crd
    from tidal.api.v1alpha1 import parse_spec
    from tidal.render import RenderSettings, render_deployment

    def pod(**placement):
        spec = parse_spec({"engine": {"type": "vllm"}, "model": {"uri": "hf://o/m"},
                           "placement": {"nodePool": "a100", **placement}})
        return render_deployment("m", "ml", "u", spec, RenderSettings())["spec"]["template"]["spec"]
    assert pod(priority="high")["priorityClassName"] == "tidal-high"
    assert pod(priority="high", priorityClassName="mine")["priorityClassName"] == "mine"
    assert "priorityClassName" not in pod()
    with pytest.raises(ValidationError, match="placement.priority") as err:
        parse_spec({"engine": {"type": "vllm"}, "model": {"uri": "hf://o/m"}, "placement": {"priority": "urgent"}})
    assert "low|normal|high" in str(err.value) and "urgent" in str(err.value)
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert schema["properties"]["spec"]["properties"]["placement"]["properties"]["priority"]["pattern"] == \
        "^(low|normal|high)$"  # refused at kubectl apply, naming the field and the allowed values
