"""`make up` / `make down`: the local cluster plus Tidal's own components, as processes.

Up: the cluster (reused when running), the CRD, the operator (autoscaling on), the gateway with API
keys on, and a bootstrap API key (a Secret in tidal-system). Their URLs and the key go into
`.tidal/state.json` (`operator_url`, `gateway_url`, `gateway_metrics_url`, `api_key`, `playground_url`,
`files_url`, `batches_url`), which is
readable by its owner only. Running it twice reuses what is running.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

from tidal.controller.wake_auth import AUDIENCE as WAKE_AUDIENCE
from ..repo import repo_root
from .cluster import ClusterInfo, DevCluster
from .processes import free_ports, http_ok, pid_alive, stop_pid

KEYS_NAMESPACE = "tidal-system"
BOOTSTRAP_KEY = "tidal-bootstrap-key"
GATEWAY_ACCOUNT = "tidal-activator"  # the operator's default --wake-caller is tidal-system/tidal-activator
COMPONENTS = ("gateway", "operator")  # stopped in this order


def _kubectl(info: ClusterInfo, *args, input=None, check=True):
    return subprocess.run([info.kubectl(), "--kubeconfig", str(info.kubeconfig), *args], input=input,
                          capture_output=True, text=True, check=check)


def wait_established(kubectl: list[str], crd: str, timeout_s: float = 60.0) -> None:
    """Until the CRD `crd` serves. Not `kubectl wait --for=condition=Established`: while a CRD just applied has no
    status.conditions yet, that fails at once ("accessor error: <nil>") instead of waiting, as it did in a CI run."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = subprocess.run([*kubectl, "get", f"crd/{crd}", "-o",
                                'jsonpath={.status.conditions[?(@.type=="Established")].status}'],
                               capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip() == "True":
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"crd/{crd} not Established within {timeout_s:g} s: "
                               f"{found.stderr.strip() or found.stdout.strip() or 'no condition yet'}")
        time.sleep(0.2)


def _start(state_dir: Path, name: str, argv: list[str], ready_url: str, extra: dict) -> dict:
    """Start a background `tidal` process once; a second call reuses it. Returns its record."""
    record_file = state_dir / f"{name}.json"
    if record_file.exists():
        record = json.loads(record_file.read_text())
        if pid_alive(record["pid"]):
            return record
    log = open(state_dir / "logs" / f"{name}.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "tidal.cli", *argv], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    record = {"pid": proc.pid, **extra}
    record_file.write_text(json.dumps(record))
    deadline = time.monotonic() + 30
    while not http_ok(ready_url) and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited ({proc.returncode}); see {state_dir / 'logs' / f'{name}.log'}")
        time.sleep(0.2)
    return record


def _bootstrap_key(info: ClusterInfo) -> str:
    """The bootstrap key's token: the one already in the cluster, else a new one."""
    _kubectl(info, "create", "namespace", KEYS_NAMESPACE, check=False)
    found = _kubectl(info, "get", "secret", BOOTSTRAP_KEY, "-n", KEYS_NAMESPACE, "-o", "jsonpath={.data.key}",
                     check=False)
    if found.returncode == 0 and found.stdout:
        return base64.b64decode(found.stdout).decode()
    token = "tidal-" + secrets.token_urlsafe(32)
    _kubectl(info, "apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Secret", "metadata": {
            "name": BOOTSTRAP_KEY, "namespace": KEYS_NAMESPACE, "labels": {"tidal.dev/api-key": "true"},
            "annotations": {"description": "made by `make up`: may use every model; delete it to revoke"}},
        "stringData": {"key": token}}))
    return token


def gateway_wake_token(info: ClusterInfo, path: Path) -> Path:
    """A token of the gateway's ServiceAccount (tidal-system/tidal-activator) for the wake audience, in a file
    only its owner reads: what the chart's projected volume gives the gateway's pod, for a gateway that runs
    as a process. Valid 30 days; `make up` makes a new one each time it starts the gateway."""
    _kubectl(info, "create", "namespace", KEYS_NAMESPACE, check=False)
    _kubectl(info, "create", "serviceaccount", GATEWAY_ACCOUNT, "-n", KEYS_NAMESPACE, check=False)
    token = _kubectl(info, "create", "token", GATEWAY_ACCOUNT, "-n", KEYS_NAMESPACE, "--audience", WAKE_AUDIENCE,
                     "--duration", "720h").stdout.strip()
    path.touch(mode=0o600)
    path.write_text(token)
    return path


def up(state_dir: Path, nodes_file: Path | None = None, scrape_interval: str = "2s",
       operator_args: tuple[str, ...] = ()) -> ClusterInfo:
    state_dir = Path(state_dir).resolve()
    cluster = DevCluster(state_dir, nodes_file, scrape_interval=scrape_interval)
    info = cluster.up()
    _kubectl(info, "apply", "-f", str(repo_root() / "crds"))
    wait_established([info.kubectl(), "--kubeconfig", str(info.kubeconfig)], "inferenceservices.tidal.dev")
    token = _bootstrap_key(info)
    op_port, gw_port, gw_metrics = free_ports(3)
    operator = _start(state_dir, "operator", [
        "run", "--kubeconfig", str(info.kubeconfig), "--prometheus-url", info.prometheus_url,
        "--autoscale-interval", "1", "--metrics-grace", "10", "--http-host", "127.0.0.1", "--http-port", str(op_port),
        *operator_args], f"http://127.0.0.1:{op_port}/healthz", {"url": f"http://127.0.0.1:{op_port}"})
    gateway = _start(state_dir, "gateway", [
        "activator", "--kubeconfig", str(info.kubeconfig), "--operator-url", operator["url"], "--host", "127.0.0.1",
        "--port", str(gw_port), "--metrics-port", str(gw_metrics), "--api-key-namespace", KEYS_NAMESPACE,
        "--prometheus-url", info.prometheus_url, "--batch-storage", str(state_dir / "batches"),
        "--wake-token-file", str(gateway_wake_token(info, state_dir / "gateway-wake-token"))],
        f"http://127.0.0.1:{gw_metrics}/healthz",
        {"url": f"http://127.0.0.1:{gw_port}", "metrics": f"127.0.0.1:{gw_metrics}"})
    # Prometheus scrapes the gateway (its held-request gauge is part of the autoscaler's query) and the
    # operator (replicas, cold starts, costs: the dashboards' and the playground's series).
    (state_dir / "targets" / "gateway.json").write_text(json.dumps(
        [{"targets": [gateway["metrics"]], "labels": {"job": "activator"}}]))
    (state_dir / "targets" / "operator.json").write_text(json.dumps(
        [{"targets": [operator["url"].removeprefix("http://")], "labels": {"job": "operator"}}]))
    info = cluster.info()
    info.extra.update({"operator_url": operator["url"], "gateway_url": gateway["url"],
                       "gateway_metrics_url": f"http://{gateway['metrics']}", "api_key": token,
                       "playground_url": f"{gateway['url']}/playground/",
                       # OpenAI's Files and Batch APIs on the same endpoint, kept in .tidal/batches
                       "files_url": f"{gateway['url']}/v1/files", "batches_url": f"{gateway['url']}/v1/batches"})
    cluster.save(info)
    return info


def down(state_dir: Path, log=print) -> None:
    state_dir = Path(state_dir).resolve()
    for name in COMPONENTS:
        record_file = state_dir / f"{name}.json"
        if record_file.exists():
            pid = json.loads(record_file.read_text())["pid"]
            if pid_alive(pid):
                stop_pid(pid)
                log(f"  stopped {name} (pid {pid})")
            record_file.unlink()
    DevCluster(state_dir).down()
