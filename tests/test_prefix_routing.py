"""#35, the pure parts: the key of a prompt's leading text, the ring with bounded loads, and the gateway's choice
of replica with them (the simulator's KV prefix cache and the real vLLM are tested beside)."""

from __future__ import annotations

import pytest

from tidal.gateway.balancing import Balancer
from tidal.gateway.endpoints import Endpoint
from tidal.routing.prefix import prefix_key
from tidal.routing.ring import LOAD_FACTOR, HashRing, load_bound

pytestmark = pytest.mark.prefix_routing
SYSTEM = {"role": "system", "content": "You are a careful assistant. " * 20}  # 580 characters, shared by all


def conversation(topic: int, turns: int) -> list[dict]:
    messages = [SYSTEM]
    for t in range(turns):
        messages.append({"role": "user", "content": f"Question {t} about topic {topic}: " + "details " * 100})
        messages.append({"role": "assistant", "content": f"Answer {t}: " + "words " * 80})
    return messages[:-1]  # ends with the user's turn


def test_every_turn_of_a_conversation_has_one_key_and_conversations_differ():
    keys = [prefix_key({"messages": conversation(7, turns)}) for turns in (2, 3, 6)]
    assert keys[0] is not None and len(set(keys)) == 1
    others = {prefix_key({"messages": conversation(topic, 3)}) for topic in range(50)}
    assert len(others) == 50  # the shared system prompt is shorter than the key's 2048 characters
    # A prompt shorter than the prefix gets no key (least-loaded); content parts count as their text.
    assert prefix_key({"messages": [{"role": "user", "content": "hi"}]}) is None
    parts = [{"role": "user", "content": [{"type": "text", "text": "x" * 3000}, {"type": "image_url"}]}]
    assert prefix_key({"messages": parts}) == prefix_key({"messages": [{"role": "user", "content": "x" * 3000}]})
    assert prefix_key({"prompt": "p" * 5000}) == prefix_key({"prompt": ["p" * 5000 + "more", "other"]})
    assert prefix_key({"prompt": "p" * 100}, chars=64) is not None and prefix_key(None) is None


def test_keys_reach_past_a_system_prompt_that_many_conversations_share_and_stay_put_for_each():
    from tidal.routing.prefix import chunk_digests
    from tidal.routing.shared import SHARED_BY, SharedPrefixes
    long_system = {"role": "system", "content": "Tool definitions: " + "call(x) returns y. " * 600}  # 11,000 chars
    chat = [long_system, {"role": "user", "content": "Question about topic 0: " + "details " * 300}]
    assert len(chunk_digests({"messages": chat})) == 6 and chunk_digests({"messages": chat})[0] == prefix_key(
        {"messages": chat})  # whole 2048-character chunks only; the first is prefix_key's
    shared = SharedPrefixes()

    def key(topic, turns):
        messages = [long_system]
        for t in range(turns):
            messages += [{"role": "user", "content": f"Question {t} about topic {topic}: " + "details " * 300},
                         {"role": "assistant", "content": f"Answer {t}: " + "words " * 200}]
        return shared.key(chunk_digests({"messages": messages[:-1]}))
    first = [key(topic, 1) for topic in range(SHARED_BY)]
    # Until SHARED_BY conversations have begun with it, the prompt is not known to be shared: the key is its first
    # chunk, as for a conversation with a prompt of its own; the last of them already keys past it.
    assert len(set(first[:-1])) == 1 and first[-1] != first[0]
    # From then on every conversation keys on its own first message, on every turn.
    keys = {topic: {key(topic, turns) for turns in (1, 2, 4)} for topic in range(30)}
    assert all(len(k) == 1 for k in keys.values()) and len({k.pop() for k in keys.values()}) == 30
    # A conversation whose answer was regenerated (two branches) is not a shared prompt: it keeps its key.
    alone = SharedPrefixes()
    mine = [{"role": "system", "content": "My own prompt. " * 300}, {"role": "user", "content": "hello " * 400}]
    before = alone.key(chunk_digests({"messages": mine}))
    for answer in ("one answer", "another answer"):
        branch = mine + [{"role": "assistant", "content": answer * 300}, {"role": "user", "content": "go on " * 400}]
        assert alone.key(chunk_digests({"messages": branch})) == before
    # Memory is bounded: the least recently seen prefixes are forgotten first.
    small = SharedPrefixes(capacity=100)
    for topic in range(200):
        small.key(chunk_digests({"messages": [{"role": "user", "content": f"topic {topic} " * 2000}]}))
    assert len(small._after) <= 100
    assert SharedPrefixes().key([]) is None


def test_a_replica_joining_or_leaving_moves_only_its_share_of_keys():
    keys = [f"conversation-{i}" for i in range(10_000)]
    four = HashRing([f"10.0.0.{i}:8000" for i in range(4)])
    five = HashRing([f"10.0.0.{i}:8000" for i in range(5)])
    moved = [k for k in keys if four.owner(k) != five.owner(k)]
    assert all(five.owner(k) == "10.0.0.4:8000" for k in moved)  # only to the new replica
    assert 0.12 <= len(moved) / len(keys) <= 0.28, len(moved)  # about 1/5
    three = HashRing([f"10.0.0.{i}:8000" for i in range(3)])  # 10.0.0.3 left
    moved = [k for k in keys if four.owner(k) != three.owner(k)]
    assert all(four.owner(k) == "10.0.0.3:8000" for k in moved)  # only the leaver's keys


def test_no_replica_takes_more_than_its_bounded_share_even_for_one_hot_conversation():
    ring = HashRing(["a:1", "b:1", "c:1"])
    loads = {"a:1": 0, "b:1": 0, "c:1": 0}
    for _ in range(30):  # 30 requests of one conversation in flight at once
        total = sum(loads.values()) + 1
        chosen = ring.pick("hot", loads)
        loads[chosen] += 1
        assert loads[chosen] <= load_bound(total, 3)
    assert max(loads.values()) <= -(-LOAD_FACTOR * 30 // 3)  # ceil(1.25 * 30 / 3) = 13
    assert sorted(loads.values()) != [0, 0, 30]
    # Only eligible replicas (room, not already tried) are picked; none eligible: none.
    assert ring.pick("hot", {}, eligible={"b:1"}) == "b:1" and ring.pick("hot", {}, eligible=set()) is None


def test_the_gateway_sends_a_conversation_to_its_owner_and_overflows_past_the_bound():
    replicas = [Endpoint("127.0.0.1", 8000 + i, capacity=8) for i in range(3)]
    balancer = Balancer()
    key = ("ml", "chat")
    first, how = balancer.choose(key, replicas, replicas, "conv-1")
    assert how == "prefix"
    for _ in range(5):
        again, how = balancer.choose(key, replicas, replicas, "conv-1")
        assert again is first and how == "prefix"
    first.inflight = 6  # busy with this conversation: over 1.25 x its share of 7 in flight
    other, how = balancer.choose(key, replicas, replicas, "conv-1")
    assert other is not first and how == "overflow"
    first.inflight = 0
    # Without a key (a short prompt, or least-loaded routing): the least busy.
    replicas[1].inflight, replicas[2].inflight = 3, 2
    assert balancer.choose(key, replicas, replicas, None) == (replicas[0], "least-loaded")
    # A replica that is full is never chosen by the ring.
    first.inflight = 8
    chosen, _ = balancer.choose(key, replicas, replicas, "conv-1")
    assert chosen is not first


# ---- the simulator: each replica's KV prefix cache, the same ring ---------------------------------------------
def test_a_replicas_prefix_cache_reuses_only_a_leading_run_and_forgets_the_least_recent():
    from tidal.simulate.prefix_cache import KvPrefixCache, reused_tokens
    cache = KvPrefixCache(capacity_blocks=4)
    cache.keep((1, 2, 3))
    assert cache.reuse((1, 2, 9, 3)) == 2  # block 3 after a miss is no use: its attention needs block 9
    assert cache.reuse((5, 1)) == 0
    cache.keep((7, 8))  # 5 blocks in 4 places: the least recently used (3) goes
    assert cache.reuse((1, 2, 3)) == 2 and cache.reuse((7, 8)) == 2
    assert reused_tokens(3, 1200) == 1199  # the last prompt token is always computed
    assert reused_tokens(1, 1200) == 512


def conversations(count: int, turns: int, turn_gap_s: float = 3.0, shared_blocks: int = 0) -> list:
    """Multi-turn chats, as Mooncake's trace writes them: each turn's prompt is the last one's blocks and more (a
    2,048-token start growing by 1,024 tokens a turn); every conversation's next turn comes turn_gap_s later, the
    conversations spread over that gap. `shared_blocks`: a system prompt that long in front of every one."""
    from tidal.simulate.trace import Request
    out, next_block = [], 10**6
    for c in range(count):
        blocks: tuple = tuple(range(shared_blocks))
        for t in range(turns):
            grow = 4 if t == 0 else 2
            blocks += tuple(range(next_block, next_block + grow))
            next_block += grow
            out.append(Request(c * turn_gap_s / count + t * turn_gap_s, len(blocks) * 512, 50, blocks))
    return sorted(out, key=lambda r: r.arrival)


def test_in_the_simulator_prefix_routing_reuses_more_and_answers_sooner_within_the_bound():
    """80 conversations of 6 turns, each a turn every 10 s (8 requests a second of about 4,600 prompt tokens:
    37,000 tokens a second to prefill on 4 replicas that prefill 40,000 together), whose KV caches hold 24
    conversations' histories each: the ring gives each replica about 20 (they fit); least-loaded sends every
    conversation through every cache (80 do not fit), so a turn rarely finds its history where it lands, and
    every prefill it repeats delays the prompts behind it."""
    least, prefix = built_case(conversations(80, 6, turn_gap_s=10.0), history_blocks=14)
    assert prefix.prefix_cache_hit_ratio > 1.5 * least.prefix_cache_hit_ratio, (prefix, least)
    assert prefix.ttft_p50_s <= 0.7 * least.ttft_p50_s, (prefix.ttft_p50_s, least.ttft_p50_s)
    assert prefix.over_load_bound == 0 and prefix.gpu_hours <= least.gpu_hours
    assert prefix.row()["routing"] == "prefix" and "ttft_p99_s" in prefix.row()


def built_case(requests: list, history_blocks: int) -> tuple:
    """(least-loaded's result, prefix's) on 4 replicas whose KV caches hold 24 histories each."""
    from dataclasses import replace

    from tidal.autoscaling import Policy
    from tidal.simulate.engine import SimConfig, simulate
    from tidal.simulate.latency import LatencyModel
    from tidal.simulate.report import make_policy
    latency = LatencyModel(max_concurrency=8, kv_cache_tokens=24 * history_blocks * 512)
    cfg = SimConfig(latency=latency, initial_replicas=4)
    scaling = Policy(min_replicas=4, max_replicas=4)
    results = [simulate(requests, make_policy("tidal", cfg, scaling), replace(cfg, routing=r))
               for r in ("least-loaded", "prefix")]
    return results[0], results[1]


def test_behind_one_long_shared_system_prompt_prefix_routing_still_keeps_conversations_apart():
    """The same chats behind one 4-block system prompt that every conversation begins with. Keyed on the first
    block, all 80 would share one key: one owner, the rest spilled by the bound wherever the load allows, and
    no better than least-loaded. Keyed past the shared prompt (tidal.routing.shared), each keeps its own
    replica; the shared blocks are cached everywhere anyway."""
    least, prefix = built_case(conversations(80, 6, turn_gap_s=10.0, shared_blocks=4), history_blocks=18)
    assert prefix.prefix_cache_hit_ratio > 1.3 * least.prefix_cache_hit_ratio, (prefix, least)
    assert prefix.ttft_p50_s <= 0.7 * least.ttft_p50_s, (prefix.ttft_p50_s, least.ttft_p50_s)
    assert prefix.over_load_bound == 0 and prefix.gpu_hours <= least.gpu_hours


def test_tidal_simulate_writes_one_result_per_routing_on_the_mooncake_trace(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path
    trace = Path(__file__).resolve().parents[2] / "shared" / "traces" / "mooncake-synthetic.jsonl"
    out = subprocess.run([sys.executable, "-m", "tidal.cli", "simulate", "--trace", str(trace), "--policy", "tidal",
                          "--routing", "least-loaded,prefix", "--out", str(tmp_path)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    results = json.loads((tmp_path / "simulation.json").read_text())["results"]
    assert [r["routing"] for r in results] == ["least-loaded", "prefix"]
    for r in results:
        assert {"ttft_p50_s", "ttft_p99_s", "prefix_cache_hit_ratio", "gpu_hours", "over_load_bound"} <= set(r)
        assert r["over_load_bound"] == 0
    assert (tmp_path / "simulation.png").is_file() and "prefix cache hits" in (tmp_path / "simulation.md").read_text()
    bad = subprocess.run([sys.executable, "-m", "tidal.cli", "simulate", "--trace", str(trace), "--routing", "random",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--routing 'random'" in bad.stderr
