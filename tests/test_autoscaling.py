"""The scaling decision, with synthetic time: named limits, scenarios, and properties (hypothesis)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.properties import examples

from tidal.autoscaling import Observation, Policy, ScalerState, decide
from tidal.autoscaling.decide import measured_at
from tidal.autoscaling.limits import (adapted_idle_seconds, batch_that_fits, batch_that_runs, clamp, expected_backlog, limit_scale_down, limit_scale_up,
                                      recommend, remember_gap, replicas_to_drain, stabilise_down, too_late_to_help,
                                      within_tolerance)

POLICY = Policy(min_replicas=0, max_replicas=10, target_queue=4, max_concurrency=48, idle_seconds=120,
                scale_down_window_s=60)


# ---- the limits, one by one ----------------------------------------------------------------------
def test_recommend_full_batches_plus_the_target_queue():
    assert recommend(20, 40, 4, 48) == 2  # 60 in the system, 52 per replica
    assert recommend(0, 100, 4, 48) == 2  # busy replicas are kept even with nothing waiting
    assert recommend(10, 0, 4, 0) == 3  # queue-only signals (Triton, custom PromQL): ceil(10 / 4)
    assert recommend(0, 0, 4, 48) == 0


def test_tolerance_band():
    assert within_tolerance(10, 11, 0.1) and not within_tolerance(10, 12, 0.1)
    assert not within_tolerance(0, 1, 0.1) and within_tolerance(0, 0, 0.1)


def test_stabilise_down_takes_the_window_maximum():
    history = [(0, 5), (30, 2), (50, 1)]
    assert stabilise_down(1, history, now=55, window_s=60) == 5
    assert stabilise_down(1, history, now=65, window_s=60) == 2


def test_rate_limits():
    assert limit_scale_up(1, 100, rate=4, step=4) == 5
    assert limit_scale_up(10, 100, rate=4, step=4) == 40
    assert limit_scale_down(10, 1, rate=2) == 5
    assert limit_scale_down(1, 0, rate=2) == 0


def test_clamp():
    assert clamp(0, 1, 4) == 1 and clamp(9, 1, 4) == 4


# ---- scenarios over synthetic time ---------------------------------------------------------------
def run(observations, policy=POLICY, state=None, start=0.0, step=2.0):
    """Feed observations every `step` s; the Deployment follows each decision at once."""
    state = state or ScalerState()
    decisions = []
    current = observations[0][0]
    for i, (_, waiting, running) in enumerate(observations):
        obs = Observation(current=current, ready=current, waiting=waiting, running=running)
        d = decide(obs, state, policy, start + i * step)
        decisions.append(d)
        state, current = d.state, d.replicas
    return decisions


def test_burst_scales_up_at_once_and_idle_returns_to_zero_after_the_idle_period():
    burst = [(1, 400, 48)] * 3  # 448 in the system wants 9 replicas; one step may only reach 5
    quiet = [(None, 0, 0)] * 100  # 200 s of nothing
    decisions = run(burst + quiet)
    assert decisions[0].replicas == 5 and decisions[0].reason == "QueueAboveTarget"
    replicas = [d.replicas for d in decisions]
    first_zero = replicas.index(0)
    # last activity at t=4 s; zero only once 120 s have passed
    assert first_zero * 2.0 - 4.0 >= 120
    assert decisions[first_zero].reason == "IdleToZero"
    assert all(r >= 1 for r in replicas[:first_zero])


def test_missing_metrics_hold_the_replicas():
    d = decide(Observation(current=3, ready=3, waiting=None, running=None), ScalerState(last_active=0.0),
               POLICY, now=10_000)
    assert (d.replicas, d.reason) == (3, "MetricsUnavailable")


def test_a_failed_custom_query_holds_the_replicas_and_says_it_is_the_query():
    d = decide(Observation(current=2, ready=2, waiting=None, running=None, query_error="parse error at char 9"),
               ScalerState(last_active=0.0), POLICY, now=10_000)
    assert (d.replicas, d.reason) == (2, "QueryFailed")
    assert d.message.startswith("spec.scaling.query failed: parse error at char 9")


def test_activator_wakes_a_service_at_zero_even_without_metrics():
    d = decide(Observation(current=0, ready=0, waiting=None, running=None, pending=1), ScalerState(), POLICY, 5)
    assert (d.replicas, d.reason) == (1, "ActivatorWake") and d.state.last_active == 5


def test_a_full_pool_stops_the_scale_up_but_not_the_service():
    # 4 replicas asked for, 3 placed and serving, 1 Pending: a queue of 500 asks for 10, gets none more.
    busy = Observation(current=4, ready=3, waiting=500, running=144, unschedulable=1)
    d = decide(busy, ScalerState(observing_since=0.0), POLICY, now=500)
    assert (d.replicas, d.reason) == (4, "Unschedulable") and "cannot be scheduled" in d.message
    # Nothing placed at all, no metrics from anywhere: still no scale to zero because of it.
    stuck = Observation(current=2, ready=0, waiting=0, running=0, unschedulable=2)
    d = decide(stuck, ScalerState(observing_since=0.0, last_active=0.0), POLICY, now=10_000)
    assert d.replicas == 2
    # Once they schedule, scaling up resumes.
    d = decide(replace(busy, unschedulable=0, ready=4), ScalerState(observing_since=0.0), POLICY, now=500)
    assert d.replicas > 4 and d.reason == "QueueAboveTarget"


def test_never_more_replicas_than_the_pool_could_hold():
    # Four 8-GPU nodes hold four 8-GPU replicas: a queue asking for 10 gets 4, and a service already at 4
    # gets no more.
    d = decide(Observation(current=1, ready=1, waiting=500, running=48, pool_capacity=4),
               ScalerState(observing_since=0.0), POLICY, now=500)
    assert d.replicas == 4 and "holds at most 4" in d.message
    d = decide(Observation(current=4, ready=4, waiting=500, running=192, pool_capacity=4),
               ScalerState(observing_since=0.0), POLICY, now=500)
    assert (d.replicas, d.reason) == (4, "Unschedulable")


def test_starting_replicas_stay_while_the_window_wants_them_and_go_once_it_does_not():
    idle = Observation(current=4, ready=1, waiting=0, running=0)
    # Four wanted 30 s ago: the three starting stay for the window, as ready ones would.
    wanted_lately = ScalerState(observing_since=0.0, last_active=0.0, history=((470.0, 4),))
    d = decide(idle, wanted_lately, POLICY, now=500)
    assert (d.replicas, d.reason) == (4, "ReplicasStarting")
    # Nothing wanted more than the one that serves for a whole window (a first wake that grew while its cold
    # start was unknown): the starting ones go, at the scale-down rate, never the one ready.
    state, steps = ScalerState(observing_since=0.0, last_active=0.0), [4]
    for now in (500, 502):
        d = decide(replace(idle, current=steps[-1]), state, POLICY, now=now)
        state = d.state
        steps.append(d.replicas)
        assert d.reason == "StartingNotNeeded"
    assert steps == [4, 2, 1]
    assert "still starting no longer needed" in decide(idle, ScalerState(observing_since=0.0, last_active=0.0),
                                                       POLICY, now=500).message
    # Requests still wait, in the engines or the gateway: the starting replicas are what they wait for.
    for busy in (replace(idle, waiting=1), replace(idle, gateway_demand=50)):  # 50 > the ready one's 48 places
        d = decide(busy, ScalerState(observing_since=0.0, last_active=0.0), POLICY, now=500)
        assert (d.replicas, d.reason) == (4, "ReplicasStarting")
    # No replica serves yet: nothing shows the load, so nothing starting is removed.
    d = decide(replace(idle, ready=0), ScalerState(observing_since=0.0, last_active=0.0), POLICY, now=500)
    assert (d.replicas, d.reason) == (4, "ReplicasStarting")


def test_a_restarted_operator_waits_for_its_window_before_scaling_down():
    persisted = ScalerState(last_active=0.0, last_scale=0.0)  # what status carried over the restart
    d = decide(Observation(current=4, ready=4, waiting=0, running=0), persisted, POLICY, now=1000)
    assert (d.replicas, d.reason) == (4, "WindowFilling")
    later = decide(Observation(current=4, ready=4, waiting=0, running=0), d.state, POLICY, now=1061)
    assert later.replicas < 4


# ---- properties ----------------------------------------------------------------------------------
@st.composite
def scenarios(draw, metrics=st.booleans(), in_bounds=st.booleans(), unschedulable=st.sampled_from([0, 0, 0, 1, 3]),
              capacity=st.sampled_from([None, None, 1, 4, 8]), idle=st.just(False), few=st.just(False)):
    """A policy, an observation (current inside [min, max] when `in_bounds`), a state and a time."""
    small = draw(few)  # a service of a few replicas, often allowed to go to zero
    lo = draw(st.sampled_from([0, 0, 1]) if small else st.integers(0, 3))
    policy = Policy(min_replicas=lo, max_replicas=max(1, lo + draw(st.integers(0, 20))),
                    target_queue=draw(st.floats(0.5, 50)), max_concurrency=draw(st.floats(1, 256)),
                    idle_seconds=draw(st.floats(0, 600)), scale_down_window_s=draw(st.floats(0, 300)),
                    tolerance=draw(st.floats(0, 0.5)))
    current = draw(st.integers(policy.min_replicas, policy.max_replicas) if draw(in_bounds)
                   else st.integers(0, 3) if small else st.integers(0, 30))
    has_metrics = draw(metrics)
    quiet = draw(idle) and has_metrics  # nothing waiting, running or held: what scaling down needs
    # Idle (nothing waiting or running) and settled (every replica ready) are drawn often on purpose: the
    # properties about scaling down and to zero say nothing unless examples reach them (each test counts).
    obs = Observation(current=current, ready=draw(st.one_of(st.just(current), st.integers(0, current))),
                      waiting=(0.0 if quiet else draw(st.one_of(st.just(0.0), st.floats(0, 2000))))
                      if has_metrics else None,
                      running=(0.0 if quiet else draw(st.one_of(st.just(0.0), st.floats(0, 2000))))
                      if has_metrics else None,
                      pending=0.0 if quiet else draw(st.sampled_from([0.0, 0.0, 0.0, 1.0, 50.0])),
                      held_rate=draw(st.sampled_from([0.0, 0.2, 30.0])),
                      cold_start_s=draw(st.sampled_from([None, 5.0, 120.0])),
                      request_s=draw(st.sampled_from([None, 0.5, 60.0])),
                      unschedulable=draw(unschedulable), pool_capacity=draw(capacity))
    now = draw(st.floats(1000, 2000))
    history = tuple(draw(st.one_of(st.just([]), st.lists(st.tuples(st.floats(now - 400, now), st.integers(0, 40)),
                                                          max_size=20))))
    gaps = tuple(draw(st.lists(st.sampled_from([30.0, 200.0, 900.0, 5000.0]), max_size=2)))
    state = ScalerState(last_active=draw(st.one_of(st.none(), st.just(0.0), st.floats(0, now))),
                        observing_since=draw(st.one_of(st.none(), st.just(0.0), st.floats(0, now))), history=history,
                        idle_gaps=gaps)
    return obs, state, policy, now


@settings(max_examples=examples(500))
@given(scenarios())
def test_never_outside_min_max(scenario):
    obs, state, policy, now = scenario
    assert policy.min_replicas <= decide(obs, state, policy, now).replicas <= policy.max_replicas


def test_never_to_zero_while_work_exists_or_before_the_idle_period():
    reached = []  # examples that went to zero: the property says something only if there are some

    @settings(max_examples=examples(500))
    # Mostly quiet and small, so that some go to zero (about 1 in 60: each of IdleToZero's conditions holds);
    # the rest carry work, which must never go to zero.
    @given(scenarios(idle=st.sampled_from([True, True, True, False]), few=st.sampled_from([True, True, True, False])))
    def prop(scenario):
        obs, state, policy, now = scenario
        d = decide(obs, state, policy, now)
        if d.replicas == 0 and obs.current > 0:
            reached.append(scenario)
            assert not obs.pending and obs.waiting == 0 and obs.running == 0
            since = state.observing_since if state.observing_since is not None else now
            active = state.last_active if state.last_active is not None else since
            # the idle period as written, or as learned: never shorter than the scale-down window or a cold start
            learned = min(policy.idle_seconds, max(policy.scale_down_window_s, obs.cold_start_s or 0.0))
            assert now - active >= (policy.idle_seconds if not all(g > policy.idle_seconds for g in state.idle_gaps)
                                    or len(state.idle_gaps) < 2 else learned)
    prop()
    assert len(reached) >= 3, f"only {len(reached)} example(s) went to zero"


@settings(max_examples=examples(300))
@given(scenarios(metrics=st.just(False), in_bounds=st.just(True)))
def test_missing_metrics_never_scale_down(scenario):
    obs, state, policy, now = scenario
    assert decide(obs, state, policy, now).replicas >= obs.current


def test_no_change_inside_the_tolerance_band():
    reached = []

    @settings(max_examples=examples(500))
    @given(scenarios(metrics=st.just(True), in_bounds=st.just(True)))
    def prop(scenario):
        obs, state, policy, now = scenario
        assume(obs.current > 0 and not obs.pending)
        d = decide(obs, state, policy, now)
        if within_tolerance(obs.current, d.recommended, policy.tolerance):
            reached.append(scenario)
            assert d.replicas == obs.current
    prop()
    assert len(reached) >= 5, f"only {len(reached)} example(s) fell inside the band"


def test_no_scale_down_inside_the_stabilisation_window():
    reached = []

    @settings(max_examples=examples(500))
    @given(scenarios(metrics=st.just(True), in_bounds=st.just(True), idle=st.booleans()))
    def prop(scenario):
        obs, state, policy, now = scenario
        d = decide(obs, state, policy, now)
        if d.replicas < obs.current:
            reached.append(scenario)
            wanted = max(r for t, r in d.state.history if now - t <= policy.scale_down_window_s)
            assert d.replicas >= min(wanted, obs.current) or d.replicas == policy.min_replicas
            assert now - d.state.observing_since >= policy.scale_down_window_s  # the window has filled
            if obs.ready < obs.current:  # while replicas start, only those still starting go, once one serves
                assert d.replicas >= obs.ready >= 1
    prop()
    assert len(reached) >= 5, f"only {len(reached)} example(s) scaled down"


@settings(max_examples=examples(300))
@given(scenarios(in_bounds=st.just(True)))
def test_restart_safe_no_scale_down_on_a_fresh_memory(scenario):
    obs, _, policy, now = scenario
    assume(policy.scale_down_window_s > 0)
    persisted = ScalerState(last_active=now - 10_000, last_scale=now - 10_000)  # all that status carries
    assert decide(obs, persisted, policy, now).replicas >= obs.current


@settings(max_examples=examples(300))
@given(scenarios())
def test_deterministic(scenario):
    obs, state, policy, now = scenario
    assert decide(obs, state, policy, now) == decide(obs, replace(state), policy, now)


def test_last_active_time_is_persisted_on_going_idle_and_sparsely_while_busy():
    from tidal.planning.scaling_status import from_iso, plan_scaling_status

    def status_after(active, stored, now):
        d = decide(Observation(current=1, ready=1, waiting=0, running=0), ScalerState(last_active=active), POLICY, now)
        current = {"lastActiveTime": stored} if stored else {}
        return from_iso(plan_scaling_status(current, d, 1, 0, 1, now, idle_seconds=120).get("lastActiveTime"))

    def busy_status(stored, now):
        d = decide(Observation(current=1, ready=1, waiting=0, running=5), ScalerState(), POLICY, now)
        current = {"lastActiveTime": stored} if stored else {}
        return from_iso(plan_scaling_status(current, d, 1, 0, 1, now, idle_seconds=120).get("lastActiveTime"))

    t0 = 1_800_000_000.0
    from tidal.planning.scaling_status import to_iso
    assert busy_status(None, t0) == t0  # first activity is recorded
    assert busy_status(to_iso(t0), t0 + 30) == t0  # busy: not rewritten every tick...
    assert busy_status(to_iso(t0), t0 + 60) == t0 + 60  # ...but every idle/2 = 60 s
    assert status_after(t0 + 40, to_iso(t0), t0 + 42) == t0 + 40  # gone idle: the exact moment is kept


@given(scenarios(in_bounds=st.just(True), unschedulable=st.integers(1, 3)))
def test_never_adds_replicas_while_some_cannot_be_scheduled(scenario):
    obs, state, policy, now = scenario
    assume(obs.current > 0)
    assert decide(obs, state, policy, now).replicas <= obs.current



@given(scenarios(in_bounds=st.just(True), capacity=st.integers(1, 8)))
def test_never_scales_up_beyond_what_the_pool_could_hold(scenario):
    obs, state, policy, now = scenario
    d = decide(obs, state, policy, now)
    assert d.replicas <= max(obs.current, obs.pool_capacity, policy.min_replicas)


def test_min_replicas_wins_over_a_small_pool_when_waking():
    """The case a random run found: minReplicas 2, a pool that holds 1, a request held at zero. The
    floor the user set is kept (the second replica waits Pending, visibly); the pool caps only what
    the autoscaler adds on its own account."""
    policy = Policy(min_replicas=2, max_replicas=4)
    d = decide(Observation(current=0, ready=0, waiting=None, running=None, pending=40, pool_capacity=1),
               ScalerState(), policy, 1000.0)
    assert d.replicas == 2 and d.reason == "ActivatorWake"
    d = decide(Observation(current=0, ready=0, waiting=None, running=None, pending=40, pool_capacity=1),
               ScalerState(), Policy(min_replicas=0, max_replicas=4), 1000.0)
    assert d.replicas == 1


# ---- waking for a surge (#18) ----------------------------------------------------------------------
SMALL_BATCH = Policy(min_replicas=0, max_replicas=20, target_queue=4, max_concurrency=8)


def test_expected_backlog_counts_what_arrives_during_the_cold_start():
    assert expected_backlog(100, 20, 20) == 500


def test_everything_is_served_when_nothing_waits_and_the_ready_replicas_have_room():
    from tidal.autoscaling.limits import everything_served
    assert everything_served(0, 30, 1, 48)
    assert not everything_served(1, 0, 1, 48)  # one waiting in an engine or held
    assert not everything_served(0, 828, 1, 48)  # the gateway's line behind the first ready replica


def test_a_first_wake_expects_as_many_again_as_it_holds():
    from tidal.autoscaling.limits import first_wake_backlog
    assert first_wake_backlog(100, waking=True) == 200
    assert first_wake_backlog(1, waking=False) == 1  # the wake itself: what is held


def test_a_first_wake_grows_with_the_arrivals_its_unknown_cold_start_is_expected_to_see():
    """No cold start measured yet: while it wakes, 100 held are expected to be 200 when a replica is ready, at
    8 + 4 a replica 17; counting the held alone it asked for 9. The rate of the moment does not enter (a burst
    of 50/s now says nothing of the rest of a wake nobody has timed)."""
    held = Observation(current=1, ready=0, waiting=0, running=0, pending=100, held_rate=50)
    d = decide(held, ScalerState(woke_at=1000.0), SMALL_BATCH, 1020.0)
    assert (d.replicas, d.reason) == (5, "WakeForBacklog")  # toward 17, four more at once (the step)
    assert d.recommended == 17 and "200 expected when a replica is ready" in d.message
    # At the wake itself one request wakes one replica.
    first = decide(replace(held, current=0, pending=1), ScalerState(), SMALL_BATCH, 1000.0)
    assert (first.replicas, first.reason) == (1, "ActivatorWake")


def test_replicas_to_drain_the_backlog_at_the_request_rate():
    # 600 waiting over 60 s while 5/s arrive, 8 s a request, 48 slots: 2.5 -> 3
    assert replicas_to_drain(600, 5, 8, 60, 48) == 3
    assert replicas_to_drain(48, 0, 10, 10, 48) == 1  # exactly one replica's worth


def wake_until_steady(obs: Observation, policy: Policy = SMALL_BATCH) -> list:
    """The activator calls again while it holds requests; the Deployment follows each decision."""
    decisions, state = [], ScalerState()
    for i in range(10):
        d = decide(obs, state, policy, 100.0 + i)
        decisions.append(d)
        if d.replicas == obs.current:
            break
        state, obs = d.state, replace(obs, current=d.replicas)
    return decisions


def test_a_surge_from_zero_gets_its_replicas_within_one_cold_start():
    """100 held, 20/s arriving, a 20 s cold start, 8 s requests on 8 slots: 500 will wait when the
    replicas are ready; serving them within 10 s while 20/s keep coming takes (50 + 20) x 8 / 8 = 70,
    more than the 42 that hold them all (8 running + 4 queued each), so 42, capped at maxReplicas 20.
    Before, the surge got one replica and the rest one cold start after it was ready."""
    held = Observation(current=0, ready=0, waiting=0, running=0, pending=100, held_rate=20,
                       cold_start_s=20, request_s=8)
    decisions = wake_until_steady(held)
    assert [d.reason for d in decisions] == ["ActivatorWake", "WakeForBacklog", "WakeForBacklog",
                                             "WaitingForFirstReplica"]
    assert [d.replicas for d in decisions] == [4, 16, 20, 20]  # the rate limit's steps, seconds apart
    assert "500 expected when a replica is ready" in decisions[0].message


def test_short_requests_at_a_low_rate_wake_one_replica():
    """One request held, 0.2/s, 4 s requests, a 60 s cold start, 48 slots: one replica serves it all."""
    obs = Observation(current=0, ready=0, waiting=0, running=0, pending=1, held_rate=0.2,
                      cold_start_s=60, request_s=4)
    decisions = wake_until_steady(obs, Policy(max_replicas=8, max_concurrency=48))
    assert [(d.replicas, d.reason) for d in decisions] == [(1, "ActivatorWake"), (1, "WaitingForFirstReplica")]


def test_without_a_measured_request_time_the_wake_up_grows_only_into_room_no_service_at_zero_needs():
    """The first wake-up of a service: no request time yet, so the held requests say nothing about how fast they
    drain. It grows on them only into the pool's room beyond one seat for each other service at zero (they wake
    into it); in a pool of unknown size (a service alone) it grows as the backlog asks."""
    obs = Observation(current=0, ready=0, waiting=0, running=0, pending=30, held_rate=3, cold_start_s=10)
    # (30 + 3 x 10) / 12 = 5: at most 4 from zero in one decision, then the fifth while they start
    assert [d.replicas for d in wake_until_steady(obs)] == [4, 5, 5]
    starting = replace(obs, current=1, pending=600)
    alone = decide(starting, ScalerState(), SMALL_BATCH, 10.0)
    assert (alone.replicas, alone.reason) == (5, "WakeForBacklog")  # four more at once (the step), toward 53
    # A pool with room for 6 (this one's 1 and 5 free) and 3 other services at zero: 2 to spare.
    shared = decide(replace(starting, pool_capacity=6, wake_reserve=3), ScalerState(), SMALL_BATCH, 10.0)
    assert (shared.replicas, shared.reason) == (3, "WakeForBacklog")
    # As many at zero as there are free GPUs: nothing to spare, it waits for its first replica.
    full = decide(replace(starting, pool_capacity=6, wake_reserve=5), ScalerState(), SMALL_BATCH, 10.0)
    assert (full.replicas, full.reason) == (1, "WaitingForFirstReplica")


def test_the_room_to_spare_is_what_the_services_at_zero_do_not_need():
    from tidal.autoscaling.limits import spare_beyond_reserve
    assert spare_beyond_reserve(64, 40, 10) == 14
    assert spare_beyond_reserve(64, 40, 30) == 0
    assert spare_beyond_reserve(None, 3, 10) > 1000


def test_a_wake_up_while_replicas_start_never_removes_them_and_respects_a_full_pool():
    obs = Observation(current=3, ready=0, waiting=0, running=0, pending=500, held_rate=10, cold_start_s=30,
                      request_s=8, unschedulable=1)
    d = decide(obs, ScalerState(), SMALL_BATCH, 10.0)
    assert (d.replicas, d.reason) == (3, "Unschedulable")
    d = decide(replace(obs, unschedulable=0, pool_capacity=5), ScalerState(), SMALL_BATCH, 10.0)
    assert (d.replicas, d.reason) == (5, "WakeForBacklog")
    d = decide(replace(obs, pending=1, held_rate=0, unschedulable=0), ScalerState(), SMALL_BATCH, 10.0)
    assert (d.replicas, d.reason) == (3, "WaitingForFirstReplica")


@given(scenarios(in_bounds=st.just(True)))
def test_a_wake_up_never_removes_starting_replicas(scenario):
    obs, state, policy, now = scenario
    obs = replace(obs, ready=0, pending=max(1.0, obs.pending))  # requests held, nothing serves yet
    assert decide(obs, state, policy, now).replicas >= max(1, obs.current)


def test_while_metrics_are_missing_held_requests_wake_a_service_at_zero_but_never_resize_one_that_starts():
    """A Prometheus outage must change nothing that exists: the wake-up call (which carries no metrics)
    starts a service at zero, and growing the starting replicas waits for a tick that has metrics."""
    at_zero = Observation(current=0, ready=0, waiting=None, running=None, pending=50, held_rate=10,
                          cold_start_s=30, request_s=8)
    assert decide(at_zero, ScalerState(), SMALL_BATCH, 10.0).reason == "ActivatorWake"
    starting = replace(at_zero, current=1)
    d = decide(starting, ScalerState(), SMALL_BATCH, 10.0)
    assert (d.replicas, d.reason) == (1, "MetricsUnavailable")
    assert decide(replace(starting, waiting=0, running=0), ScalerState(), SMALL_BATCH, 10.0).reason == "WakeForBacklog"


# ---- the idle period learns from the service's quiet gaps ----------------------------------------
def test_the_idle_period_shortens_only_after_two_gaps_that_outlasted_it():
    assert adapted_idle_seconds((), 300, 60) == 300
    assert adapted_idle_seconds((900.0,), 300, 60) == 300  # one long gap is not enough
    assert adapted_idle_seconds((900.0, 880.0), 300, 60) == 60
    assert adapted_idle_seconds((900.0, 200.0), 300, 60) == 300  # the last gap was bridged: back to 300
    assert adapted_idle_seconds((900.0, 300.0), 300, 60) == 300  # a gap of exactly the idle period was bridged
    assert adapted_idle_seconds((900.0, 900.0), 300, 400) == 300  # never longer than written
    assert remember_gap((900.0, 880.0), 120.4) == (880.0, 120.0)  # the last two, whole seconds


def quiet_then_busy(state: ScalerState, quiet_s: float, now: float, policy: Policy = POLICY):
    """A service at zero since `now - quiet_s`: the activator's wake-up call, then its replica serving one
    request and going quiet again. Returns the state and the time it went quiet."""
    woke = decide(Observation(current=0, ready=0, waiting=None, running=None, pending=1, cold_start_s=60),
                  replace(state, last_active=now - quiet_s), policy, now)
    assert woke.reason == "ActivatorWake"
    starting = decide(Observation(current=1, ready=0, waiting=0, running=0, pending=1, cold_start_s=60), woke.state,
                      policy, now + 30)  # a tick while the replica starts: the held request keeps it active
    busy = decide(Observation(current=1, ready=1, waiting=0, running=1, cold_start_s=60), starting.state, policy,
                  now + 70)
    return busy.state, now + 70


def idle_decisions(state: ScalerState, since: float, policy: Policy = POLICY) -> list:
    """One idle replica observed every 2 s for 400 s; the Deployment follows each decision."""
    out, current = [], 1
    for i in range(1, 200):
        d = decide(Observation(current=current, ready=current, waiting=0, running=0, cold_start_s=60), state,
                   policy, since + 2 * i)
        out.append((since + 2 * i, d))
        state, current = d.state, d.replicas
        if current == 0:
            break
    return out


def first_zero_after(decisions, since: float) -> float:
    return next(t for t, d in decisions if d.replicas == 0) - since


def test_a_service_woken_after_long_gaps_goes_to_zero_after_a_cold_start_and_says_why():
    """Idle period 120 s; gaps of 900 s. After the first, the replica still waits 120 s; after the second,
    60 s (the scale-down window and the cold start), and the decision names the gaps."""
    state = ScalerState(observing_since=0.0)
    state, quiet_from = quiet_then_busy(state, 900, 10_000)
    assert state.idle_gaps == (900.0,)
    assert 120 <= first_zero_after(idle_decisions(state, quiet_from), quiet_from) < 124
    state, quiet_from = quiet_then_busy(state, 900, 20_000)
    assert state.idle_gaps == (900.0, 900.0)
    decisions = idle_decisions(state, quiet_from)
    assert 60 <= first_zero_after(decisions, quiet_from) < 64
    zero = next(d for _, d in decisions if d.replicas == 0)
    assert zero.reason == "IdleToZero" and "adapted from idleSecondsBeforeZero 120s" in zero.message
    assert "900s, 900s" in zero.message
    # a quiet of 100 s that the replica bridges is a gap too: the next wait is the full 120 s again
    bridged = decide(Observation(current=1, ready=1, waiting=0, running=1, cold_start_s=60), state, POLICY,
                     quiet_from + 100)
    assert bridged.state.idle_gaps == (900.0, 100.0)
    assert first_zero_after(idle_decisions(bridged.state, quiet_from + 100), quiet_from + 100) >= 120


def test_fixed_idle_period_ignores_the_gaps():
    fixed = replace(POLICY, adaptive_idle=False)
    state = ScalerState(observing_since=0.0, last_active=1000.0, idle_gaps=(900.0, 900.0))
    assert 120 <= first_zero_after(idle_decisions(state, 1000, fixed), 1000) < 124
    assert 60 <= first_zero_after(idle_decisions(state, 1000), 1000) < 64


def test_a_quiet_gap_from_before_a_restart_is_not_learned_while_replicas_ran():
    """After a restart, a busy service's lastActiveTime can be minutes old (written sparsely): the first
    busy tick must not read that as a quiet gap. At zero it is exact, and counts."""
    restored = ScalerState(last_active=1000.0)
    busy = decide(Observation(current=2, ready=2, waiting=5, running=40), restored, POLICY, 1150.0)
    assert busy.state.idle_gaps == ()
    woke = decide(Observation(current=0, ready=0, waiting=None, running=None, pending=1), restored, POLICY, 1150.0)
    assert woke.state.idle_gaps == (150.0,)


def test_the_quiet_since_watching_began_counts_as_a_gap_for_a_service_that_never_served():
    """Created at zero at t=0, first request at t=3,600: an hour of silence is a gap like any later one.
    A first request soon after creation (shorter than the shortest idle period) says nothing."""
    watched = ScalerState(observing_since=0.0)
    first = Observation(current=0, ready=0, waiting=None, running=None, pending=1, cold_start_s=60)
    assert decide(first, watched, POLICY, 3600.0).state.idle_gaps == (3600.0,)
    assert decide(first, watched, POLICY, 30.0).state.idle_gaps == ()
    # a service that has replicas was not necessarily quiet: only a stored lastActiveTime says so
    busy = decide(Observation(current=1, ready=1, waiting=0, running=2), watched, POLICY, 3600.0)
    assert busy.state.idle_gaps == ()


def test_the_replicas_a_wake_started_go_once_the_backlog_is_served_not_a_window_later():
    """Woken to 4 for 400 held requests. The tick after they are ready, the new pods have no queue series
    yet: that holds. The first scrape shows the backlog served (6 running, none waiting): the service halves
    at once, as any scale-down, instead of keeping the wake's 4 through the 60 s scale-down window."""
    held = Observation(current=0, ready=0, waiting=0, running=0, pending=400, held_rate=10, cold_start_s=30,
                       request_s=8)
    woke = decide(held, ScalerState(observing_since=0.0), SMALL_BATCH, 100.0)
    assert woke.replicas == 4
    no_series = decide(Observation(current=4, ready=4, waiting=None, running=None), woke.state, SMALL_BATCH, 131.0)
    assert (no_series.replicas, no_series.reason) == (4, "MetricsUnavailable")
    served = decide(Observation(current=4, ready=4, waiting=0, running=6), no_series.state, SMALL_BATCH, 140.0)
    assert (served.replicas, served.reason) == (2, "QueueBelowTarget")
    # while the backlog is still queued, the engines' queue asks for the replicas itself
    queued = decide(Observation(current=4, ready=4, waiting=60, running=32), no_series.state, SMALL_BATCH, 140.0)
    assert queued.replicas > 4 and queued.reason == "QueueAboveTarget"


def test_a_replica_added_late_in_a_wake_would_only_arrive_after_the_backlog_is_gone():
    # 2 replicas x 48 slots / 2 s = 48/s served, 20/s arriving: 671 waiting drain in 24 s
    assert too_late_to_help(55, 671, 20, 2.0, 48, 2)
    assert not too_late_to_help(5, 671, 20, 2.0, 48, 2)
    assert not too_late_to_help(55, 671, 60, 2.0, 48, 2)  # arrivals outpace them: it never drains
    assert not too_late_to_help(55, 671, 20, None, 48, 2)  # no request time: no verdict
    policy = Policy(max_replicas=8, max_concurrency=48)
    starting = Observation(current=2, ready=0, waiting=0, running=0, pending=671, held_rate=20, cold_start_s=60,
                           request_s=2.0)
    early = decide(starting, ScalerState(woke_at=1000.0), policy, 1005.0)
    late = decide(starting, ScalerState(woke_at=1000.0), policy, 1055.0)
    assert early.replicas > 2 and early.reason == "WakeForBacklog"
    assert (late.replicas, late.reason) == (2, "WaitingForFirstReplica")
    assert "would be ready after the starting ones have served the backlog" in late.message


def test_the_gaps_survive_a_restart_in_status():
    from tidal.planning.scaling_status import plan_scaling_status, restored_state

    woke = decide(Observation(current=0, ready=0, waiting=None, running=None, pending=1),
                  ScalerState(last_active=1000.0, idle_gaps=(900.0,)), POLICY, 1950.0)
    status = plan_scaling_status({}, woke, 0, None, 1, 1950.0)
    assert status["recentIdleGaps"] == [900, 950]
    assert restored_state(status).idle_gaps == (900.0, 950.0)
    again = decide(Observation(current=1, ready=1, waiting=0, running=3), woke.state, POLICY, 1960.0)
    assert plan_scaling_status(status, again, 1, 0, 1, 1960.0)["recentIdleGaps"] == [900, 950]


def test_a_batch_backlog_is_demand_and_its_end_lets_the_service_idle_to_zero():
    """One replica busy with a batch's places full (48 running, none waiting in the engine) and 1,800 of
    its requests not sent yet: the backlog asks for more replicas, up to maxReplicas. When the backlog is
    sent and answered, the service idles to zero like any other."""
    busy = Observation(current=1, ready=1, waiting=0, running=48, batch_backlog=1800)
    d = decide(busy, ScalerState(last_active=0.0), POLICY, now=10.0)
    assert d.replicas > 1 and "1800 of a batch" in d.message, d
    alone = decide(replace(busy, batch_backlog=0), ScalerState(last_active=0.0), POLICY, now=10.0)
    assert alone.replicas == 1  # the same replica without the backlog: its batch is enough
    state, current = d.state, d.replicas
    for t in range(12, 400, 2):
        d = decide(Observation(current=current, ready=current, waiting=0, running=0), state, POLICY, now=float(t))
        state, current = d.state, d.replicas
    assert current == 0


# ---- the gateway's fast signal (#32) -------------------------------------------------------------------------
def _serving(**gateway) -> Observation:
    """Two ready replicas of 48 slots, Prometheus's last scrape quiet (the rise has not reached it yet)."""
    return Observation(current=2, ready=2, waiting=0.0, running=20.0, cold_start_s=60.0, **gateway)


def test_a_sustained_rise_the_gateway_sees_scales_up_once_the_slots_there_are_full_naming_it():
    # 40/s of 4 s requests is 160 busy slots: 4 replicas of 48, whatever the last scrape said. The first report
    # (60 in flight on 96 slots) finds room; a second later they are full and the rise is acted on.
    rising = dict(gateway_rate=40.0, request_s=4.0, gateway_message="the gateway sees")
    assert decide(_serving(gateway_demand=60.0, **rising), ScalerState(), POLICY, now=1000.0).replicas == 2
    d = decide(_serving(gateway_demand=100.0, **rising), ScalerState(), POLICY, now=1001.0)
    assert (d.replicas, d.reason) == (4, "GatewayLoad") and "Prometheus last saw" in d.message


def test_a_burst_the_replicas_serve_before_a_new_one_could_start_buys_none():
    # 150 requests at once on 2 x 48 slots (3 replicas by count), 4 s each, then 1/s: drained in about 8 s,
    # long before a replica started now would be ready (60 s).
    d = decide(_serving(gateway_demand=150.0, gateway_rate=1.0, request_s=4.0), ScalerState(), POLICY, now=1000.0)
    assert d.replicas == 2 and d.reason != "GatewayLoad"


def test_a_rise_within_the_tolerance_of_what_serves_buys_no_replica_and_one_past_it_does():
    # One full replica of 48 slots + 4 waiting places: 96 arrivals/s at 0.57 s a request is 1.06 replicas, within
    # 10 % of the one there (HPA's tolerance, on the ratio before rounding); 110/s is 1.22: a second replica.
    one = Observation(current=1, ready=1, waiting=0.0, running=0.0, cold_start_s=60.0, gateway_demand=52.0,
                      request_s=0.57)
    assert decide(replace(one, gateway_rate=96.0), ScalerState(), POLICY, now=1000.0).replicas == 1
    d = decide(replace(one, gateway_rate=110.0), ScalerState(), POLICY, now=1000.0)
    assert (d.replicas, d.reason) == (2, "GatewayLoad")


def test_a_moments_high_rate_the_replicas_have_slots_for_buys_no_replica():
    # The code trace x4 at 146 s: 27 in flight on one replica of 48, 74/s counted over a second or two (1.4
    # replicas by rate). The blip was over long before a replica started then would have been ready.
    blip = Observation(current=1, ready=1, waiting=0.0, running=0.0, cold_start_s=60.0, gateway_demand=27.0,
                       gateway_rate=74.0, request_s=0.97)
    assert decide(blip, ScalerState(), POLICY, now=1000.0).replicas == 1
    assert decide(replace(blip, gateway_demand=48.0), ScalerState(), POLICY, now=1000.0).replicas == 2  # full


def test_the_gateways_view_never_removes_what_the_engines_queue_asks_for():
    busy = Observation(current=4, ready=4, waiting=100.0, running=192.0, cold_start_s=60.0, gateway_demand=1.0,
                       gateway_rate=0.1, request_s=4.0)
    assert decide(busy, ScalerState(), POLICY, now=1000.0).replicas >= 4


@given(st.floats(0, 500), st.floats(0, 100), st.floats(0.1, 30), st.integers(1, 10))
@settings(max_examples=examples(300))
def test_with_metrics_missing_the_gateway_only_ever_adds(demand, rate, request_s, current):
    obs = Observation(current=current, ready=current, waiting=None, running=None, cold_start_s=60.0,
                      gateway_demand=demand, gateway_rate=rate, request_s=request_s)
    d = decide(obs, ScalerState(), POLICY, now=1000.0)
    assert d.replicas >= min(current, POLICY.max_replicas)
    assert d.reason in ("GatewayLoad", "MetricsUnavailable")


def test_while_prometheus_is_down_the_gateways_count_changes_nothing():
    obs = Observation(current=2, ready=2, waiting=None, running=None, cold_start_s=60.0, gateway_demand=300.0,
                      gateway_rate=40.0, request_s=4.0, metrics_outage=True)
    d = decide(obs, ScalerState(), POLICY, now=1000.0)
    assert (d.replicas, d.reason) == (2, "MetricsUnavailable")


# ---- the scale-down window counts from when the demand was seen ----------------------------------------------
def test_a_scraped_reading_is_dated_when_it_was_scraped_and_the_gateways_count_now():
    scraped = Observation(current=2, ready=2, waiting=0.0, running=60.0, queue_age_s=12.0)
    assert measured_at(scraped, now=100.0, slow=2, fast=0) == 88.0
    assert measured_at(scraped, now=100.0, slow=2, fast=2) == 100.0  # the gateway's count of now says as much
    assert measured_at(replace(scraped, queue_age_s=-3.0), now=100.0, slow=2, fast=0) == 100.0  # never later


def _first_scale_down(age_s: float) -> float:
    """Four busy replicas until 80 s, idle after; each tick reads a scrape `age_s` old."""
    state, current = ScalerState(observing_since=-1000.0), 4
    for now in range(0, 400, 2):
        busy = now - age_s < 80
        obs = Observation(current=current, ready=current, waiting=0.0, running=180.0 if busy else 0.0,
                          queue_age_s=age_s)
        d = decide(obs, state, POLICY, float(now))
        state = d.state
        if d.replicas < current:
            return float(now)
    raise AssertionError("never scaled down")


def test_the_scale_down_window_counts_from_the_scrape_not_from_when_it_was_read():
    # The idle scrape is read 14 s late either way; the busy ones are no longer held 14 s past the window.
    assert _first_scale_down(0.0) == 140.0
    assert _first_scale_down(14.0) == 140.0


def test_a_busy_reading_holds_the_replicas_however_old_it_is():
    history = tuple((float(t), 1) for t in range(0, 100, 2))
    busy = Observation(current=4, ready=4, waiting=0.0, running=180.0, queue_age_s=3600.0)
    d = decide(busy, ScalerState(history=history, observing_since=-1000.0), POLICY, now=100.0)
    assert d.replicas == 4


# ---- engines that leave requests waiting with room in their batches (long prefills) -----------------------------
def test_the_batch_that_runs_is_what_the_engines_run_while_requests_wait_beside_room():
    assert batch_that_runs(48, waiting=120, running=40, engines=8) == 5  # prefilling long prompts: 5 a replica
    assert batch_that_runs(48, waiting=30, running=384, engines=8) == 48  # every batch full: the batch is the limit
    assert batch_that_runs(48, waiting=0, running=16, engines=8) == 48  # nothing waits: no news about the limit
    assert batch_that_runs(48, waiting=12, running=40, engines=None) == 48  # how many engines answered is unknown
    assert batch_that_runs(0, waiting=12, running=40, engines=8) == 0  # queue-only signals stay queue-only
    assert batch_that_runs(48, waiting=50, running=0, engines=2) == 48  # nothing runs yet: nothing to learn
    assert batch_that_runs(48, waiting=9, running=3, engines=4) == 1  # fewer running than engines: at least one


def test_requests_waiting_beside_half_empty_batches_scale_up_and_say_why():
    # 8 engines prefilling 12,000-token prompts run 5 each and queue 120: at 48 places a replica that is
    # ceil(160 / 52) = 4 replicas' worth, and the service never grew while TTFT rose to tens of seconds.
    policy = replace(POLICY, max_replicas=40)
    slow = Observation(current=8, ready=8, waiting=120.0, running=40.0, engines_scraped=8)
    d = decide(slow, ScalerState(), policy, now=1000.0)
    assert d.replicas == 18 and d.reason == "QueueAboveTarget"  # ceil(160 / (5 + 4))
    assert "requests wait with room in the batches: 5 run a replica" in d.message
    # Counted against the replicas ready now (12, four of them new since the scrape) it would read 3 a replica
    # and ask for 23: the engines the scrape read are what ran those 40.
    assert decide(replace(slow, current=12, ready=12), ScalerState(), policy, now=1000.0).replicas == 18
    assert decide(replace(slow, engines_scraped=None), ScalerState(), policy, now=1000.0).replicas == 8


# ---- a batch of long prompts fills the KV cache before its places ----------------------------------------------
def test_the_batch_that_fits_is_what_runs_when_the_kv_cache_is_full():
    assert batch_that_fits(48, running=104, ready=8, kv_usage=0.95) == 13  # 13 a replica fill 95 %: 13.7
    assert batch_that_fits(48, running=96, ready=2, kv_usage=0.30) == 48  # short prompts: the batch is the limit
    assert batch_that_fits(48, running=2, ready=1, kv_usage=0.05) == 48  # too little in the cache to tell
    assert batch_that_fits(48, running=30, ready=2, kv_usage=None) == 48  # an engine without the gauge
    assert batch_that_fits(0, running=30, ready=2, kv_usage=0.9) == 0  # queue-only signals stay queue-only
    assert batch_that_fits(48, running=3, ready=1, kv_usage=1.0) == 3


def test_long_prompts_waiting_behind_full_kv_caches_scale_up_and_say_why():
    # 8 replicas of a 48-request batch run 13 long prompts each (their KV caches 95 % full) and 300 wait: counted
    # at 48 places a replica that is 8 replicas' worth (ceil(404 / 52)), the service never grew while they waited.
    policy = replace(POLICY, max_replicas=40)
    full = Observation(current=8, ready=8, waiting=300.0, running=104.0, kv_usage=0.95)
    d = decide(full, ScalerState(), policy, now=1000.0)
    assert d.replicas == 24 and d.reason == "QueueAboveTarget"  # ceil(404 / (13 + 4)), within the x4 step limit
    assert "KV caches 95% full: 13 a replica" in d.message
    assert decide(replace(full, kv_usage=None), ScalerState(), policy, now=1000.0).replicas == 8
