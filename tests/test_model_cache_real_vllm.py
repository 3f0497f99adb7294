"""#30: real vLLM (its CPU build) loads a model from the node's cache, fetched there from a real S3 server by the
rendered init container's command, and runs under the rendered wrapper that holds the model's in-use lock:
while it serves, the cache will not evict its model; once it stops, the lock is gone."""

from __future__ import annotations

import time

import pytest

from tests.test_model_cache import deployment, fetch, s3, tiny_model  # noqa: F401  (fixtures)
from tests.test_real_vllm import Replica, vllm_bin
from tidal.modelcache.layout import ENTRIES, cache_key
from tidal.modelcache.store import in_use

pytestmark = [pytest.mark.real_engine, pytest.mark.model_cache]
ARGS = ["--enforce-eager", "--max-num-seqs=4", "--dtype=float32"]  # float32: see tests/test_real_vllm.py


def test_real_vllm_serves_from_the_node_cache_and_holds_its_model_in_use(s3, tmp_path):  # noqa: F811
    root = tmp_path / "node-cache"
    code, out = fetch("s3://models/tiny", root, s3.url)
    assert code == 0, out
    entry = root / ENTRIES / cache_key("s3://models/tiny")
    spec_container = deployment("s3://models/tiny")["spec"]["template"]["spec"]["containers"][0]
    spec_container["args"] += ARGS
    replica = Replica(spec_container, entry / "model", "127.0.0.31", tmp_path / "vllm", vllm_bin())
    try:
        replica.wait_ready()
        assert in_use(entry), "the engine runs without holding its model's in-use lock"
        from openai import OpenAI
        client = OpenAI(base_url=f"{replica.url}/v1", api_key="none")
        [model] = [m.id for m in client.models.list()]
        answer = client.completions.create(model=model, prompt="hello", max_tokens=5, extra_body={"ignore_eos": True})
        assert answer.usage.completion_tokens == 5
    finally:
        replica.stop()
    deadline = time.monotonic() + 30
    while in_use(entry):  # the lock dies with the engine's process
        assert time.monotonic() < deadline, "the in-use lock outlived the engine"
        time.sleep(0.2)
