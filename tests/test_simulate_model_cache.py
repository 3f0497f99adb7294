"""#30.7: `tidal simulate --model-cache on|off` — a cold start as the weights' fetch (size / bandwidth) plus the
load, on GPU nodes that each keep what they fetched (on) or fetch every time (off)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tidal.simulate.nodes import CacheModel, Nodes

pytestmark = pytest.mark.model_cache
MODEL = CacheModel(True, model_gb=16, fetch_gb_per_s=0.5, cache_gb_per_node=40, gpus_per_node=2)  # 2 models a node


def test_a_second_replica_on_a_node_that_holds_the_model_fetches_nothing_and_one_starting_meanwhile_shares_the_fetch():
    nodes = Nodes(MODEL, gpus=4)
    node, fetch = nodes.place("a", now=0.0)
    assert fetch == 32.0
    again, fetch = nodes.place("a", now=10.0)  # while the first fetch runs: it waits for that one
    assert again == node and fetch == 22.0
    nodes.release(node, "a")
    nodes.release(again, "a")
    assert nodes.place("a", now=100.0) == (node, 0.0)  # cached: a hit
    assert nodes.hit_ratio() == pytest.approx(1 / 3)


def test_with_the_cache_off_every_cold_start_fetches():
    nodes = Nodes(CacheModel(False, 16, 0.5, 40, 2), gpus=4)
    for t in (0.0, 100.0, 200.0):
        node, fetch = nodes.place("a", now=t)
        assert fetch == 32.0
        nodes.release(node, "a")
    assert nodes.hit_ratio() == 0.0


def test_eviction_takes_the_least_recently_used_model_never_one_a_replica_runs():
    nodes = Nodes(CacheModel(True, 16, 0.5, 40, 8), gpus=8)  # one node, room for two models
    nodes.place("a", 0.0)  # a runs (never released)
    b, _ = nodes.place("b", 1.0)
    nodes.release(b, "b")
    nodes.place("c", 2.0)  # full: b (idle) makes way, not a (running)
    assert list(nodes.nodes[0].cached) == ["a", "c"]


def test_prefetch_spreads_every_model_over_the_nodes_within_their_budgets():
    nodes = Nodes(CacheModel(True, 16, 0.5, 40, 2, prefetch=True), gpus=8)  # 4 nodes of 2 models: 8 places
    nodes.prefetch(["a", "b", "c", "d"])
    assert [sorted(n.cached) for n in nodes.nodes] == [["a", "c"], ["a", "c"], ["b", "d"], ["b", "d"]]
    assert nodes.place("d", 0.0) == (2, 0.0)  # to a node that holds it, at no fetch


def test_the_command_reports_cache_hits_and_the_cold_start_p50_only_when_modelled(tmp_path):
    trace = tmp_path / "t.csv"
    # Two bursts 20 minutes apart: the second wakes on a node that kept the model.
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(
        f"2023-11-16 18:{m:02d}:{s:02d}.0000000,500,20\n" for m in (0, 20) for s in range(0, 10, 2)))

    def run(*extra):
        out = tmp_path / "-".join(extra or ("plain",))
        proc = subprocess.run([sys.executable, "-m", "tidal.cli", "simulate", "--trace", str(trace), "--policy",
                               "tidal", "--out", str(out), *extra], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return json.loads((out / "simulation.json").read_text())["results"][0]
    plain, on, off = run(), run("--model-cache", "on"), run("--model-cache", "off")
    assert "cache_hit_ratio" not in plain and "cold_start_p50_s" not in plain
    assert on["cold_starts"] == off["cold_starts"] == 2
    assert (on["cache_hit_ratio"], off["cache_hit_ratio"]) == (0.5, 0.0)
    assert off["cold_start_p50_s"] == 60 + 32 and on["cold_start_p50_s"] <= off["cold_start_p50_s"]
    # The phases the operator reports, as far as the simulator models them.
    assert off["cold_start_phases_p50_s"] == {"weight_fetch": 32.0, "engine_load": 60.0}
    assert "cold_start_phases_p50_s" not in plain
