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
