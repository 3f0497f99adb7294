"""#35 with real parts: two real vLLM replicas (the CPU build, --enable-prefix-caching) behind the gateway in its
static mode, the official `openai` client holding multi-turn conversations. vLLM's own counters say where the
prefix cache was used (vllm:prefix_cache_queries_total / _hits_total, in prompt tokens, per replica).

- `prefix`: every turn of a conversation lands on the replica that owns its key (computed here with the same
  ring), whose hits rise turn after turn; the other replica sees none of it.
- `prefix` behind one system prompt that every conversation shares: each conversation keeps one replica, and
  once the gateway has learned the prompt is shared, conversations go to both.
- `least-loaded`: the same conversations, sent a few at a time, spread over both replicas."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.static_gateway import static_gateway
from tests.test_real_vllm import SERVED, SPEC, Replica, running, tiny_model, vllm_bin  # noqa: F401  (a fixture)
from tidal.api.v1alpha1 import parse_spec
from tidal.render import RenderSettings, render_deployment
from tidal.routing.prefix import chunk_digests, prefix_key
from tidal.routing.ring import HashRing
from tidal.routing.shared import MAX_CHUNKS, SHARED_BY, SharedPrefixes

pytestmark = [pytest.mark.real_engine, pytest.mark.prefix_routing]
PREFIX_CHARS = 256  # the tiny model holds 2,048 tokens: conversations stay short


def counters(replica: Replica) -> tuple[float, float]:
    """(prompt tokens looked up in the prefix cache, of those found), as the replica's /metrics says."""
    text = urllib.request.urlopen(f"{replica.url}/metrics", timeout=10).read().decode()
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    return values.get("vllm:prefix_cache_queries_total", 0.0), values.get("vllm:prefix_cache_hits_total", 0.0)


@pytest.fixture(scope="module")
def replicas(tiny_model, tmp_path_factory):  # noqa: F811
    spec = {**SPEC, "engine": {**SPEC["engine"], "args": [*SPEC["engine"]["args"], "--enable-prefix-caching"]}}
    container = render_deployment("tiny", "ml", "uid", parse_spec(spec), RenderSettings())["spec"]["template"][
        "spec"]["containers"][0]
    binary, work = vllm_bin(), tmp_path_factory.mktemp("vllm-prefix")
    with running([Replica(container, tiny_model, f"127.0.0.{30 + i}", work / f"r{i}", binary)
                  for i in range(2)]) as started:
        yield started


def opening(topic: int) -> list[dict]:
    return [{"role": "system", "content": f"You answer questions about topic number {topic}. " * 4},
            {"role": "user", "content": f"Tell me about topic {topic}, please, in some detail. " * 3}]


async def talk(address: str, messages: list[dict], turns: int) -> None:
    from openai import AsyncOpenAI
    async with AsyncOpenAI(base_url=f"http://{address}/v1", api_key="unused", max_retries=0, timeout=120) as client:
        await _turns(client, messages, turns)


async def _turns(client, messages: list[dict], turns: int) -> None:
    for turn in range(turns):
        answer = await client.chat.completions.create(model=SERVED, messages=messages, max_tokens=8,
                                                      extra_body={"ignore_eos": True})
        assert answer.usage.completion_tokens == 8
        messages += [{"role": "assistant", "content": answer.choices[0].message.content},
                     {"role": "user", "content": f"And then, question {turn}?"}]


def test_prefix_routing_keeps_each_conversation_on_the_replica_holding_its_prefix(replicas, tmp_path):
    ring = HashRing([r.url.removeprefix("http://") for r in replicas])
    owner = {topic: ring.owner(prefix_key({"messages": opening(topic)}, PREFIX_CHARS)) for topic in range(20)}
    # Two conversations whose keys the ring gives to different replicas (the same on every gateway replica).
    first = 0
    second = next(t for t in owner if owner[t] != owner[first])
    endpoints = [f"ml/tiny@{SERVED}={r.url.removeprefix('http://')}" for r in replicas]
    with static_gateway(endpoints, tmp_path / "gateway.log", "--static-routing", "prefix",
                        "--static-prefix-characters", str(PREFIX_CHARS)) as gateway:
        for topic in (first, second):
            home = next(r for r in replicas if r.url.endswith(owner[topic]))
            away = next(r for r in replicas if r is not home)
            before_home, before_away = counters(home), counters(away)
            asyncio.run(talk(gateway.address, opening(topic), turns=4))
            (queried, hits), (away_queried, away_hits) = counters(home), counters(away)
            assert (away_queried, away_hits) == before_away, "a turn went to the other replica"
            assert queried > before_home[0] and hits - before_home[1] > 0.5 * (queried - before_home[0]), \
                (before_home, queried, hits)  # turns 2-4 found the conversation in its cache
        assert gateway.sample("tidal_gateway_routed_requests_total", how="prefix") == 8


SHARED_SYSTEM = {"role": "system", "content": "You are the help desk of one product; answer briefly and politely. " * 8}


def behind_shared(topic: int) -> list[dict]:
    """A conversation behind the system prompt that all of them share (544 characters: two whole chunks)."""
    return [SHARED_SYSTEM, {"role": "user", "content": f"My question is about topic {topic}, please answer it. " * 6}]


def test_conversations_behind_one_shared_system_prompt_spread_and_each_keeps_its_replica(replicas, tmp_path):
    """Keyed on their first chunk (all the shared prompt), all of these conversations would have one key and one
    replica. The gateway learns the prompt is shared once SHARED_BY conversations have begun with it, and keys
    the later ones past it: each still keeps one replica for all its turns, and they go to both."""
    names = [r.url.removeprefix("http://") for r in replicas]
    ring, learner, owner = HashRing(names), SharedPrefixes(), {}
    # What the gateway will do, predicted with the same parts (it learns from the same prompts in the same order).
    # The replicas' ports are free ones, so the ring differs from run to run: at least ten conversations, and more
    # until those keyed past the prompt fall on both replicas (a key's owner never depends on later ones).
    for topic in range(40):
        owner[topic] = ring.owner(learner.key(chunk_digests({"messages": behind_shared(topic)}, PREFIX_CHARS,
                                                            MAX_CHUNKS)))
        learned = [t for t in owner if t >= SHARED_BY - 1]
        if topic >= 9 and len({owner[t] for t in learned}) == 2:
            break
    topics = list(owner)
    first_chunks = {chunk_digests({"messages": behind_shared(t)}, PREFIX_CHARS)[0] for t in topics}
    assert len(first_chunks) == 1
    assert len({owner[t] for t in learned}) == 2, owner  # these texts' keys fall on both replicas
    endpoints = [f"ml/tiny@{SERVED}={name}" for name in names]
    with static_gateway(endpoints, tmp_path / "gateway.log", "--static-routing", "prefix",
                        "--static-prefix-characters", str(PREFIX_CHARS)) as gateway:
        for topic in topics:
            before = [counters(r) for r in replicas]
            asyncio.run(talk(gateway.address, behind_shared(topic), turns=2))
            served = [name for name, r, b in zip(names, replicas, before) if counters(r)[0] > b[0]]
            assert len(served) == 1, (topic, served)  # both turns on one replica
            if topic in learned:
                assert served == [owner[topic]], (topic, served, owner[topic])


def test_least_loaded_spreads_the_same_conversations(replicas, tmp_path):
    endpoints = [f"ml/tiny@{SERVED}={r.url.removeprefix('http://')}" for r in replicas]
    before = [counters(r) for r in replicas]
    with static_gateway(endpoints, tmp_path / "gateway.log") as gateway:
        async def several():  # four conversations at once: the second request finds the first replica busy
            await asyncio.gather(*(talk(gateway.address, opening(100 + t), turns=2) for t in range(4)))
        asyncio.run(several())
        assert gateway.sample("tidal_gateway_routed_requests_total", how="least-loaded") == 8
    after = [counters(r) for r in replicas]
    assert all(a[0] > b[0] for a, b in zip(after, before)), (before, after)  # both replicas served some
