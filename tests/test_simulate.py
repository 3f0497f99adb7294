"""The simulator's mechanics on tiny hand-made traces, and the baselines' documented behaviour."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tidal.autoscaling import Policy
from tidal.simulate.latency import LatencyModel
from tidal.simulate.engine import SimConfig, physical_limit_hours, simulate
from tidal.simulate.policies import KedaHpaPolicy, KnativeKpaPolicy, TidalPolicy, View
from tidal.simulate.trace import Request, load_trace

# 1 s per request, whatever its size: easy arithmetic.
ONE_SECOND = LatencyModel(prefill_s_per_token=0.0, decode_s_per_token=0.0, overhead_s=1.0, max_concurrency=10)


def tidal(**kw):
    return TidalPolicy(Policy(**{"min_replicas": 0, "max_replicas": 4, "target_queue": 4, "max_concurrency": 10,
                                 "idle_seconds": 120, "scale_down_window_s": 60, **kw}))


def test_one_request_at_zero_waits_exactly_one_cold_start():
    result = simulate([Request(0.0, 10, 10)], tidal(), SimConfig(latency=ONE_SECOND, cold_start_s=60))
    assert result.cold_starts == 1 and result.lost == 0
    assert result.wait_p50 == pytest.approx(60.0)  # the activator woke it at once; the model took 60 s
    assert result.slo_misses == 1
    assert result.gpu_hours * 3600 == pytest.approx(61.0)  # launched at 0, served 60-61, trace over


def test_ready_replicas_that_no_scrape_has_seen_yet_are_a_missing_metric_not_an_idle_service():
    """As in the operator: pods that serve but export no queue series yet mean MetricsUnavailable (a hold).
    Reading them as 0 waiting, 0 running would let a policy remove them before their backlog is served."""
    policy = tidal()
    unseen = View(now=100.0, current=3, ready=3, scraped_waiting=0.0, scraped_running=0.0, live_concurrency=10,
                  held=0.0, scraped_series=False, in_flight=10)
    assert policy.tick(unseen) == 3 and policy.reasons == {"MetricsUnavailable": 1}
    seen = View(now=102.0, current=3, ready=3, scraped_waiting=0.0, scraped_running=5.0, live_concurrency=5,
                held=0.0)
    policy.tick(seen)
    assert "MetricsUnavailable" in policy.reasons and len(policy.reasons) == 2  # decided on the numbers


def test_the_gateways_count_scales_up_through_a_metrics_gap_and_never_down():
    """No queue series yet, but the gateway sees 50 requests (10 in flight, 40 in its line) for 3 replicas of
    10 slots and a target queue of 4: 4 replicas now, not after a scrape. The same gap with a quiet gateway
    removes nothing."""
    policy = tidal()
    busy = View(now=100.0, current=3, ready=3, scraped_waiting=0.0, scraped_running=0.0, live_concurrency=50,
                held=0.0, scraped_series=False, in_flight=10)
    assert policy.tick(busy) == 4 and policy.reasons == {"GatewayLoad": 1}
    quiet = View(now=102.0, current=4, ready=4, scraped_waiting=0.0, scraped_running=0.0, live_concurrency=0,
                 held=0.0, scraped_series=False)
    assert policy.tick(quiet) == 4 and policy.reasons["MetricsUnavailable"] == 1


def test_a_burst_queues_in_fifo_order_on_a_warm_replica():
    burst = [Request(0.0, 1, 1) for _ in range(25)]
    result = simulate(burst, tidal(min_replicas=1, max_replicas=1), SimConfig(latency=ONE_SECOND, initial_replicas=1))
    # 10 slots: 10 start at once, 10 after 1 s, 5 after 2 s
    assert result.wait_p50 == pytest.approx(1.0) and result.wait_p99 == pytest.approx(2.0)
    assert result.cold_starts == 0 and result.slo_misses == 0


def test_an_idle_gap_longer_than_the_idle_period_costs_a_second_cold_start():
    trace = [Request(0.0, 1, 1), Request(400.0, 1, 1)]
    short_idle = simulate(trace, tidal(idle_seconds=120), SimConfig(latency=ONE_SECOND, cold_start_s=30))
    long_idle = simulate(trace, tidal(idle_seconds=600), SimConfig(latency=ONE_SECOND, cold_start_s=30))
    assert short_idle.cold_starts == 2 and long_idle.cold_starts == 1
    assert short_idle.gpu_hours < long_idle.gpu_hours  # zero between the two requests is cheaper...
    assert short_idle.slo_misses == 2 and long_idle.slo_misses == 1  # ...and the second request pays for it


def test_keda_reaches_zero_only_after_cooldown_plus_hpa_window():
    keda = KedaHpaPolicy(target=4, min_replicas=0, max_replicas=8)
    replicas, zero_at = 1, None
    for t in range(0, 1200, 15):
        waiting = 40.0 if t < 30 else 0.0  # a burst, then silence
        desired = keda.tick(View(t, replicas, replicas, waiting, 0.0, waiting, 0.0))
        replicas = desired if desired is not None else replicas
        if replicas == 0 and zero_at is None:
            zero_at = t
    assert zero_at is not None and zero_at >= 300 + 300  # the HPA holds its burst size 300 s, then cooldown 300 s


def test_knative_panics_on_a_2x_burst_and_does_not_scale_down_while_panicking():
    kpa = KnativeKpaPolicy(container_concurrency=10, min_replicas=0, max_replicas=10)  # target 7 per pod
    for t in range(60):
        kpa.observe(View(t, 1, 1, 0, 0, 5.0, 0))
    assert kpa.tick(View(60, 1, 1, 0, 0, 5.0, 0)) == 1
    for t in range(60, 66):
        kpa.observe(View(t, 1, 1, 0, 0, 30.0, 0))  # 30 in flight on one pod: over 2x its target
    burst = kpa.tick(View(66, 1, 1, 0, 0, 30.0, 0))
    assert kpa.panic_since == 66 and burst >= 3
    for t in range(66, 80):
        kpa.observe(View(t, burst, burst, 0, 0, 0.0, 0))  # the burst is gone...
    assert kpa.tick(View(80, burst, burst, 0, 0, 0.0, 0)) == burst  # ...but no scale-down while panicking


def test_physical_limit_is_the_work_divided_by_the_slots():
    trace = [Request(float(i), 1, 1) for i in range(36)]
    assert physical_limit_hours(trace, ONE_SECOND) == pytest.approx(36 / 10 / 3600)


def test_jsonl_traces_and_bad_rows(tmp_path):
    good = tmp_path / "t.jsonl"
    good.write_text('{"timestamp": 10.5, "input_tokens": 100, "output_tokens": 20}\n'
                    '{"timestamp": 10.0, "input_tokens": 50, "output_tokens": 5}\n')
    assert load_trace(good) == [Request(0.0, 50, 5), Request(0.5, 100, 20)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 1, "input_tokens": "many"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: need timestamp, input_tokens, output_tokens"):
        load_trace(bad)


def test_the_command_writes_json_markdown_and_a_plot(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" +
                     "".join(f"2023-11-16 18:17:{s:02d}.0000000,500,20\n" for s in range(0, 50, 5)))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "tidal.cli", "simulate", "--trace", str(trace), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "tidal: 100% of the requests replayed" in proc.stdout  # progress is shown
    report = json.loads((out / "simulation.json").read_text())
    assert [r["policy"] for r in report["results"]] == ["tidal", "keda-hpa", "knative-kpa"]
    assert "| tidal |" in (out / "simulation.md").read_text()
    assert (out / "simulation.png").read_bytes()[:4] == b"\x89PNG"


# ---- the clairvoyant bound and the workloads beyond one trace -----------------------------------------
def test_clairvoyant_keeps_a_replica_across_a_gap_shorter_than_a_cold_start_and_restarts_across_a_longer_one():
    from tidal.simulate.clairvoyant import clairvoyant_hours, needed_per_second
    ten_seconds = LatencyModel(prefill_s_per_token=0, decode_s_per_token=0, overhead_s=10, max_concurrency=1)
    # The worked example of clairvoyant.py: launched at -60 s, busy 0-10, idle 40 s (kept), busy 50-60.
    short_gap = [Request(0, 1, 1), Request(50, 1, 1)]
    assert needed_per_second(short_gap, ten_seconds)[:12] == [1] * 10 + [0, 0]
    assert clairvoyant_hours(short_gap, ten_seconds, 60) * 3600 == pytest.approx(60 + 10 + 40 + 10)
    # A 300 s gap: stopped, and launched again one cold start before the work returns.
    assert clairvoyant_hours([Request(0, 1, 1), Request(310, 1, 1)], ten_seconds, 60) * 3600 == \
        pytest.approx(60 + 10 + 60 + 10)
    # Two requests at once on one slot per replica: two replicas, each paying its cold start.
    assert clairvoyant_hours([Request(0, 1, 1), Request(0, 1, 1)], ten_seconds, 60) * 3600 == pytest.approx(140)


def test_clairvoyant_is_never_dearer_than_a_policy_that_serves_without_waiting():
    """On a trace every request of which Tidal starts at once (a warm replica, never saturated), the
    clairvoyant schedule costs no more than Tidal did."""
    from tidal.simulate.clairvoyant import clairvoyant_hours
    trace = [Request(float(t), 1, 1) for t in range(0, 600, 7)]
    result = simulate(trace, tidal(min_replicas=1), SimConfig(latency=ONE_SECOND, initial_replicas=1,
                                                              cold_start_s=30))
    assert result.wait_p99 == 0
    assert clairvoyant_hours(trace, ONE_SECOND, 30) <= result.gpu_hours + 30 / 3600  # (Tidal's replica was warm)


def test_rate_scaling_and_bursts_from_zero():
    from tidal.simulate.workloads import bursts_from_zero, fleet, rate_scaled, varied_bursts
    trace = [Request(float(t), t + 1, 2 * t + 1) for t in range(100)]
    fast = rate_scaled(trace, 4)
    assert fast[-1].arrival == pytest.approx(99 / 4) and [r.input_tokens for r in fast] == [r.input_tokens for r in trace]
    with pytest.raises(ValueError):
        rate_scaled(trace, 0)
    bursts = bursts_from_zero(trace, bursts=3, idle_s=900, surge_s=60, rate_per_s=10, seed=1)
    assert bursts == bursts_from_zero(trace, bursts=3, idle_s=900, surge_s=60, rate_per_s=10, seed=1)  # seeded
    starts = [bursts[0].arrival] + [b.arrival for a, b in zip(bursts, bursts[1:]) if b.arrival - a.arrival > 600]
    assert len(starts) == 3 and 400 < len(bursts) < 2000  # about 600 requests in three surges
    assert {(r.input_tokens, r.output_tokens) for r in bursts} <= {(r.input_tokens, r.output_tokens) for r in trace}
    varied = varied_bursts(trace, bursts=6, seed=3)
    assert varied == varied_bursts(trace, bursts=6, seed=3) and varied != varied_bursts(trace, bursts=6, seed=4)
    quiets = [b.arrival - a.arrival for a, b in zip(varied, varied[1:]) if b.arrival - a.arrival >= 20]
    assert 1 <= len(quiets) <= 6 and all(q < 1800 + 60 for q in quiets)  # (a slow surge can add a few seconds)
    services = fleet(trace, services=5, seed=2)
    assert len(services) == 5 and all(s == sorted(s, key=lambda r: r.arrival) for s in services)
    assert len({len(s) for s in services}) > 1  # scaled differently


def test_a_fleet_sharing_one_gpu_makes_the_second_cold_start_wait_for_it():
    """Two services, one GPU: the second service's replica is Pending until the first one's is removed, and
    only then starts its cold start; GPU time counts from when a replica holds the GPU."""
    from tidal.simulate.fleet import simulate_fleet
    cfg = SimConfig(latency=ONE_SECOND, cold_start_s=10, hold_timeout_s=1000)
    policy = lambda: tidal(idle_seconds=20, scale_down_window_s=0, max_replicas=1)  # noqa: E731
    traces = [[Request(0.0, 1, 1)], [Request(1.0, 1, 1)]]
    shared = simulate_fleet(traces, policy, cfg, pool_gpus=1)
    ample = simulate_fleet(traces, policy, cfg, pool_gpus=2)
    assert ample.pending_launches == 0 and shared.pending_launches == 1
    assert shared.lost == ample.lost == 0 and shared.cold_starts == ample.cold_starts == 2
    # Alone, each waits one cold start (10 s). Sharing, the second waits for the first replica to idle out
    # (served at 10-11 s, then idle 20 s) and then for a cold start of its own: over 30 s.
    assert ample.wait_max == pytest.approx(10, abs=1) and shared.wait_max > 30
    # The pool's cost is the first replica's idle time that the second service waited through, on top.
    assert shared.gpu_hours > ample.gpu_hours


# ---- the reactive bound and `make demo`'s requests ----------------------------------------------------
def test_the_reactive_bound_starts_every_replica_at_the_first_request_and_no_policy_answers_a_burst_sooner():
    from tidal.simulate.policies import ReactiveBound
    # 200 requests over 10 s, 1 s each, 10 slots per replica, a 30 s cold start, at most 4 replicas
    burst = [Request(i * 0.05, 1, 1) for i in range(200)]
    cfg = SimConfig(latency=ONE_SECOND, cold_start_s=30, scrape_interval_s=1.0)
    bound = simulate(burst, ReactiveBound(4, 30.0), cfg)
    assert bound.cold_starts == 4  # all four launched by the first request, none again
    # Ready at 30 s with 40 slots: the first request waits the cold start, the last of 200 (at 9.95 s) four
    # rounds of 1 s more: 200 / 40 = 5 rounds from 30 s.
    assert bound.wait_p50 >= 30 - 9.95 and max(bound.wait_p50, bound.wait_p99) <= 30 + 4
    for policy in (tidal(), KnativeKpaPolicy(10, 0, 4), KedaHpaPolicy(4, 0, 4)):
        other = simulate(burst, policy, cfg)
        assert other.wait_p50 >= bound.wait_p50 and other.wait_p99 >= bound.wait_p99, policy.name


def test_the_demo_workload_is_its_warm_up_a_quiet_then_its_burst_four_times_faster():
    from tidal.simulate.workloads import DEMO_SPEEDUP, DEMO_WINDOW_S, demo_replay, demo_slice
    trace = [Request(float(t), t, 1) for t in range(0, 600, 2)]
    burst = demo_slice(trace)
    assert burst[0].arrival == 0 and [r.input_tokens for r in burst] == list(range(120, 480, 2))
    assert burst[-1].arrival == pytest.approx((478 - DEMO_WINDOW_S[0]) / DEMO_SPEEDUP)
    sent = demo_replay(trace, quiet_s=300)
    assert sent[:20] == burst[:20] and len(sent) == 20 + len(burst)
    assert sent[20].arrival - sent[19].arrival == pytest.approx(300)
    with pytest.raises(ValueError, match="no requests between 120 s and 480 s"):
        demo_slice([Request(1.0, 1, 1)])


def test_the_command_takes_several_policies_and_names_an_unknown_one(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" +
                     "".join(f"2023-11-16 18:17:{s:02d}.0000000,500,20\n" for s in range(0, 50, 5)))
    run = [sys.executable, "-m", "tidal.cli", "simulate", "--trace", str(trace), "--out", str(tmp_path / "out")]
    proc = subprocess.run(run + ["--policy", "tidal,reactive-bound"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "simulation.json").read_text())
    assert [r["policy"] for r in report["results"]] == ["tidal", "reactive-bound"]
    bad = subprocess.run(run + ["--policy", "tidal,kserve"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "--policy 'tidal,kserve': unknown kserve; choose from tidal, keda-hpa, knative-kpa, reactive-bound" \
        in bad.stderr


def test_with_kv_admission_a_replica_takes_long_prompts_only_while_its_kv_cache_holds_them():
    """--kv-admission, as vLLM admits a request only while its blocks fit: 196,608 tokens of KV cache hold sixteen 12,100-token
    requests, whatever the 48 places of its batch; short ones fill the batch. The scrape shows the cache's use."""
    from tidal.simulate.service import Service
    svc = Service(LatencyModel(), cold_start_s=0.0, kv_admission=True)
    svc.scale_to(1, 0.0)
    for _ in range(40):
        svc.arrive(Request(0.0, 12_000, 100), 0.0)
    assert len(svc.dispatch(0.0)) == 16 and svc.waiting() == 24
    assert svc.scrape(0.0).kv_usage == pytest.approx(16 * 12_100 / 196_608)
    short = Service(LatencyModel(), cold_start_s=0.0, kv_admission=True)
    short.scale_to(1, 0.0)
    for _ in range(60):
        short.arrive(Request(0.0, 200, 180), 0.0)
    assert len(short.dispatch(0.0)) == 48 and short.waiting() == 12


def test_without_kv_admission_the_batch_is_the_only_limit_and_no_kv_gauge_is_exported():
    from tidal.simulate.service import Service
    svc = Service(LatencyModel(), cold_start_s=0.0)
    svc.scale_to(1, 0.0)
    for _ in range(40):
        svc.arrive(Request(0.0, 12_000, 100), 0.0)
    assert len(svc.dispatch(0.0)) == 40 and svc.scrape(0.0).kv_usage is None


def test_with_routing_modelled_a_replica_prefills_one_prompt_at_a_time_and_the_rest_wait():
    """A GPU's prefill is compute: two 10,000-token prompts taken at once are prefilled one after the other
    (1.01 s each at 0.1 ms a token), so the second's first token comes after 2.02 s, and until its prefill
    begins the engine counts it waiting, as vLLM does a request its step's token budget has no room for.
    Decoding stays shared (the batch's places). Without routing modelled, both took 1.01 s."""
    from tidal.simulate.service import Service
    svc = Service(LatencyModel(), cold_start_s=0.0, shared_prefill=True)
    svc.scale_to(1, 0.0)
    for _ in range(2):
        svc.arrive(Request(0.0, 10_000, 100), 0.0)
    done = sorted(at for at, _, _ in svc.dispatch(0.0))
    assert [o.ttft for o in svc.outcomes] == pytest.approx([1.01, 2.02])
    assert done == pytest.approx([1.01 + 0.7, 2.02 + 0.7])
    scraped = svc.scrape(0.5)
    assert (scraped.waiting, scraped.running, scraped.engines) == (1, 1, 1)
    assert (svc.scrape(1.5).waiting, svc.scrape(1.5).running) == (0, 2)
    parallel = Service(LatencyModel(), cold_start_s=0.0)
    parallel.scale_to(1, 0.0)
    for _ in range(2):
        parallel.arrive(Request(0.0, 10_000, 100), 0.0)
    parallel.dispatch(0.0)
    assert [o.ttft for o in parallel.outcomes] == pytest.approx([1.01, 1.01])
