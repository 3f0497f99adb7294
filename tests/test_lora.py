"""LoRA adapters (#34) without an engine: the API refuses what cannot run, naming the adapter; the renderer fetches
each adapter as the model is fetched and gives the engine its flags; the node cache keeps an adapter while a base
that loads it runs; the gateway lists adapters with their base as `parent`, and a name an older service claimed
stays that service's."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from tidal.api.v1alpha1 import parse_spec
from tidal.gateway.catalog import Catalog, entry_from_object
from tidal.gateway.openai_api import model_object
from tidal.modelcache.layout import ENTRIES, cache_key
from tidal.modelcache.store import in_use, used_with
from tidal.planning.served_names import claims_of
from tidal.planning.status import Observation, routable_condition
from tidal.render import RenderSettings, render_deployment
from tidal.render.settings import ModelCacheSettings

pytestmark = pytest.mark.lora
BASE = {"engine": {"type": "vllm"}, "model": {"uri": "s3://models/llama-3.1-8b"}}
TWO = [{"name": "sql-expert", "uri": "s3://adapters/sql", "rank": 8}, {"name": "poet", "uri": "hf://org/poet-lora"}]


def engine_of(spec: dict, settings: RenderSettings | None = None) -> tuple[dict, dict]:
    pod = render_deployment("llama", "ml", "uid", parse_spec(spec), settings or RenderSettings())["spec"]["template"][
        "spec"]
    return pod, pod["containers"][0]


@pytest.mark.parametrize("adapters,lora,words", [
    ([{"name": "a", "uri": "s3://x/a"}, {"name": "a", "uri": "s3://x/b"}], {}, "each name may appear only once; "
                                                                               "repeated: a"),
    ([{"name": "llama-3.1-8b", "uri": "s3://x/a"}], {}, "'llama-3.1-8b' is the model's own served name"),
    ([{"name": "a", "uri": "s3://x/a", "rank": 64}], {"maxRank": 32}, "'a' has rank 64, above lora.maxRank (32)"),
    ([{"name": "a", "uri": "s3://x/a", "revision": "main"}], {}, "'a': revision is only meaningful for an hf://"),
])
def test_an_adapter_that_cannot_run_is_refused_naming_it(adapters, lora, words):
    with pytest.raises(ValidationError, match=words.replace("(", r"\(").replace(")", r"\)")):
        parse_spec({**BASE, "adapters": adapters, "lora": lora})


def test_adapters_need_an_engine_that_serves_them():
    with pytest.raises(ValidationError, match="engine.type 'triton' serves no LoRA adapters; engines that do: "
                                              "sglang, vllm"):
        parse_spec({**BASE, "engine": {"type": "triton"}, "adapters": TWO})


def test_the_crd_refuses_the_same_at_apply():
    from tidal.api.crd import render
    spec = yaml.safe_load(render())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    messages = {r["message"] for r in spec["x-kubernetes-validations"] if r.get("fieldPath") == ".adapters"}
    assert {"adapters: each name may appear only once", "adapters: an adapter's rank must not exceed lora.maxRank",
            "adapters: an adapter may not take the model's own served name"} <= messages


def test_vllm_gets_each_adapter_by_name_and_a_rank_it_accepts():
    _, engine = engine_of({**BASE, "adapters": TWO, "lora": {"maxRank": 12, "maxAdaptersPerBatch": 2}})
    args = engine["args"]
    assert "--enable-lora" in args
    assert args[args.index("--max-lora-rank") + 1] == "16"  # vLLM takes 1, 8, 16, 32, ...: 12 rounds up
    assert args[args.index("--max-loras") + 1] == "2"
    modules = args[args.index("--lora-modules") + 1:]
    assert modules == ["sql-expert=/adapters/0", "poet=/adapters/1"]


def test_without_adapters_nothing_changes():
    _, engine = engine_of(BASE)
    assert not any("lora" in a for a in engine["args"])


def test_each_adapter_is_downloaded_by_its_storages_own_tool_into_a_pod_volume_the_engine_reads_only():
    pod, engine = engine_of({**BASE, "adapters": [*TWO, {"name": "mine", "uri": "pvc://claims/adapters/mine"}]})
    fetch = {c["name"]: c["command"] for c in pod["initContainers"]}
    assert fetch["fetch-adapter-0"][:4] == ["aws", "s3", "sync", "s3://adapters/sql"]
    assert fetch["fetch-adapter-1"][:3] == ["hf", "download", "org/poet-lora"]
    assert {"name": "adapters", "mountPath": "/adapters", "readOnly": True} in engine["volumeMounts"]
    claim = next(v for v in pod["volumes"] if v["name"] == "adapter-claim-2")
    assert claim["persistentVolumeClaim"] == {"claimName": "claims", "readOnly": True}
    assert "mine=/adapter-claims/2/adapters/mine" in engine["args"]


def test_with_the_node_cache_an_adapter_is_fetched_once_per_node_and_tied_to_its_base():
    cache = RenderSettings(model_cache=ModelCacheSettings(root="/var/lib/tidal/models", budget="1Ti"))
    pod, engine = engine_of({**BASE, "adapters": TWO}, cache)
    fetch = {c["name"]: c["command"] for c in pod["initContainers"]}
    base_key = cache_key("s3://models/llama-3.1-8b")
    assert fetch["fetch-adapter-0"] == ["tidal", "fetch-model", "--uri", "s3://adapters/sql", "--cache-root",
                                        "/model-cache", "--budget", "1Ti", "--used-with", base_key]
    assert f"sql-expert=/model-cache/{ENTRIES}/{cache_key('s3://adapters/sql')}/model" in engine["args"]


def test_an_adapter_is_kept_while_a_base_that_loads_it_runs(tmp_path):
    """The rendered engine wrapper holds its base's in-use lock (one per engine); an adapter fetched `--used-with`
    that base counts as in use as long as the lock is held."""
    entries = tmp_path / ENTRIES
    base, adapter = entries / "llama-1", entries / "sql-2"
    for entry in (base, adapter):
        entry.mkdir(parents=True)
        (entry / "in-use").touch()
    used_with(adapter, base.name)
    assert not in_use(adapter)
    _, engine = engine_of(BASE, RenderSettings(model_cache=ModelCacheSettings(root="/x", budget="1Ti")))
    running = subprocess.Popen([*engine["command"], "sleep", "60"],
                               env={**os.environ, "TIDAL_MODEL_IN_USE": str(base / "in-use")})
    try:
        deadline = time.monotonic() + 10
        while not in_use(base):
            assert time.monotonic() < deadline and running.poll() is None, "the wrapper never took the lock"
            time.sleep(0.05)
        assert in_use(adapter)
    finally:
        running.kill()
        running.wait(10)
    assert not in_use(adapter)


def service(name: str, created: str, served: str, adapters: list[str]) -> dict:
    return {"metadata": {"namespace": "ml", "name": name, "creationTimestamp": created},
            "spec": {"engine": {"type": "vllm"}, "model": {"uri": f"s3://m/{served}"},
                     "adapters": [{"name": a, "uri": f"s3://a/{a}"} for a in adapters]}}


def test_the_gateway_routes_each_adapter_to_its_base_and_lists_it_with_its_parent():
    catalog = Catalog()
    catalog.put(entry_from_object(service("llama", "2026-01-01T00:00:00Z", "llama", ["sql-expert", "poet"])))
    assert catalog.model("sql-expert").key == catalog.model("poet").key == ("ml", "llama")
    listed = {name: model_object(entry, 1, 0, name) for name, entry in catalog.by_name.items()}
    assert listed["poet"]["parent"] == "llama" and listed["poet"]["id"] == "poet"
    assert "parent" not in listed["llama"]


def test_an_adapter_named_like_an_older_services_model_stays_with_the_older_one():
    older = service("qwen", "2026-01-01T00:00:00Z", "qwen", [])
    newer = service("llama", "2026-02-01T00:00:00Z", "llama", ["qwen", "poet"])
    catalog = Catalog()
    for body in (older, newer):
        catalog.put(entry_from_object(body))
    assert catalog.model("qwen").key == ("ml", "qwen") and catalog.model("poet").key == ("ml", "llama")
    assert [c.served_name for c in claims_of(newer)] == ["llama", "qwen", "poet"]
    status, reason, message = routable_condition(Observation(1, served_name="llama",
                                                             adapter_owners=(("qwen", ("ml", "qwen")),)))
    assert (status, reason) == ("False", "AdapterNameConflict")
    assert "adapter 'qwen' is also claimed by ml/qwen" in message and "Rename the adapter" in message


TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"


def test_adapter_traffic_is_dealt_by_share_and_a_conversation_stays_with_one_adapter():
    from tidal.simulate.trace import load_trace
    from tidal.simulate.workloads import by_adapter
    trace = load_trace(TRACES / "mooncake-synthetic.jsonl")
    split = by_adapter(trace, [50, 30, 20], seed=1)
    assert sum(len(t) for t in split) == len(trace)
    conversations = [{r.blocks[0] for r in t if r.blocks} for t in split]
    assert not (conversations[0] & conversations[1]) and not (conversations[1] & conversations[2])
    first, _, last = (len(c) for c in conversations)
    assert first > last  # 50 % of the conversations against 20 %


def test_simulate_compares_one_service_per_adapter_with_adapters_on_a_shared_base(tmp_path):
    import json

    import sys
    out = tmp_path / "sim"
    subprocess.run([sys.executable, "-m", "tidal.cli", "simulate", "--trace", str(TRACES / "azure-llm-2023-code.csv"),
                    "--policy", "tidal", "--adapters", "8", "--out", str(out)], check=True, capture_output=True)
    rows = {r["deployment"]: r for r in json.loads((out / "adapters.json").read_text())["results"]}
    alone, shared = rows["one service per adapter"], rows["adapters on a shared base"]
    assert (alone["services"], shared["services"]) == (8, 1)
    # Eight adapters each warm on a GPU of their own cost more than one base warm for all of them.
    assert shared["gpu_hours"] < alone["gpu_hours"] and shared["lost"] == alone["lost"] == 0


def test_an_adapter_that_cannot_be_fetched_is_named_in_the_condition():
    from tidal.planning.status import fetch_failure
    pod = {"status": {"initContainerStatuses": [
        {"name": "fetch-model", "state": {"terminated": {"exitCode": 0}}},
        {"name": "fetch-adapter-1", "state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {
            "exitCode": 1, "message": "ModelFetchFailed: s3://adapters/poet: no object under adapters/poet"}}}]}}
    assert fetch_failure([pod]) == ("AdapterFetchFailed",
                                    "the fetch of spec.adapters[1]: s3://adapters/poet: no object under adapters/poet")
    aws = {"status": {"initContainerStatuses": [{"name": "fetch-adapter-0", "state": {"terminated": {
        "exitCode": 1, "message": "fatal error: An error occurred (AccessDenied) when calling the ListObjectsV2"}}}]}}
    reason, message = fetch_failure([aws])
    assert reason == "AdapterFetchFailed" and message.startswith("the fetch of spec.adapters[0]: fatal error: ")


def test_a_key_limited_to_an_adapter_reaches_that_adapter_and_not_its_base():
    from aiohttp import web

    from tidal.gateway.endpoints import Endpoints
    from tidal.gateway.keys import ApiKey, digest
    from tidal.gateway.routing import Router
    catalog = Catalog()
    catalog.put(entry_from_object(service("llama", "2026-01-01T00:00:00Z", "llama", ["sql-expert", "poet"])))
    router = Router(catalog, Endpoints())
    key = ApiKey("analysts", digest("x" * 32), models=frozenset({"sql-expert"}))
    assert router.entry_for(key, "sql-expert").key == ("ml", "llama")
    for other in ("llama", "poet"):
        refused = router.entry_for(key, other)
        assert isinstance(refused, web.Response) and refused.status == 403
    listed = json.loads(router.models("/v1/models", key).body)
    assert [m["id"] for m in listed["data"]] == ["sql-expert"] and listed["data"][0]["parent"] == "llama"
