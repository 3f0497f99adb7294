"""`make demo`: the local GPU cluster, the operator, and a model served from an example.

This first version shows the operator side: a vLLM InferenceService applied with kubectl lands
on the H100 pool, becomes Ready, and answers a completion. (Scaling 0 -> N -> 0 under a replayed
trace comes with the autoscaler and the activator.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .devcluster.cluster import REPO_ROOT, DevCluster
from .devcluster.processes import pid_alive, stop_pid

EXAMPLE = REPO_ROOT / "examples" / "vllm-llama-h100.yaml"


def _kubectl(info, *args, input=None, check=True):
    return subprocess.run([info.kubectl(), "--kubeconfig", str(info.kubeconfig), *args], input=input,
                          capture_output=True, text=True, check=check)


def up(state_dir: Path) -> int:
    started = time.monotonic()
    cluster = DevCluster(state_dir)
    info = cluster.up()
    print("--- installing the InferenceService CRD")
    _kubectl(info, "apply", "-f", str(REPO_ROOT / "crds"))
    _kubectl(info, "wait", "--for=condition=Established", "crd/inferenceservices.tidal.dev")
    pid_file = state_dir / "operator.pid"
    if not (pid_file.exists() and pid_alive(int(pid_file.read_text()))):
        log = open(state_dir / "logs" / "operator.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "tidal.cli", "run", "--kubeconfig", str(info.kubeconfig),
                                 "--prometheus-url", info.prometheus_url],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        pid_file.write_text(str(proc.pid))
        print(f"--- operator started (pid {proc.pid}, log {state_dir / 'logs' / 'operator.log'})")
    _kubectl(info, "create", "secret", "generic", "hf-token", "--from-literal=HF_TOKEN=demo", check=False)
    print(f"--- kubectl apply -f {EXAMPLE.relative_to(REPO_ROOT)}")
    _kubectl(info, "apply", "-f", str(EXAMPLE))
    print("--- waiting for Ready (simulated model load)")
    _kubectl(info, "wait", "tis/llama-8b", "--for=condition=Ready", "--timeout=180s")
    print(_kubectl(info, "get", "tis,deploy,pods", "-o", "wide").stdout)
    pods = json.loads(_kubectl(info, "get", "pods", "-l", "tidal.dev/inferenceservice=llama-8b", "-o",
                               "json").stdout)["items"]
    ip = pods[0]["status"]["podIP"]
    body = json.dumps({"model": "llama-3.1-8b", "prompt": "def fib(n):", "max_tokens": 16}).encode()
    request = urllib.request.Request(f"http://{ip}:8000/v1/completions", body, {"Content-Type": "application/json"})
    answer = json.load(urllib.request.urlopen(request, timeout=30))
    print(f"--- POST http://{ip}:8000/v1/completions -> {answer['usage']}")
    print(f"""
Done in {time.monotonic() - started:.0f} s. Look around:
  export KUBECONFIG={info.kubeconfig}
  export PATH={info.binaries_dir}:$PATH
  kubectl describe tis llama-8b
  kubectl explain tis.spec.scaling
  Prometheus: {info.prometheus_url}/graph?g0.expr=vllm:num_requests_waiting
Stop everything with: make demo-down""")
    return 0


def down(state_dir: Path) -> int:
    pid_file = state_dir / "operator.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text())
        if pid_alive(pid):
            stop_pid(pid)
            print(f"  stopped operator (pid {pid})")
        pid_file.unlink()
    DevCluster(state_dir).down()
    return 0


def main(action: str, state_dir: str) -> int:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return up(Path(state_dir)) if action == "up" else down(Path(state_dir))
