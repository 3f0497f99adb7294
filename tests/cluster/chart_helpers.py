"""Helm, service-account kubeconfigs and 'in-cluster-style' processes for the chart tests.

KWOK pods run no process, so the chart's operator and activator pods are scheduled and become Ready
but do nothing. The real processes run here instead, exactly as the chart's Deployments start them:
the same arguments (read back from the installed Deployment), the same environment, and the chart's
ServiceAccount token against the RBAC-enforcing apiserver. Only addresses change: ports on loopback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tidal_dev.cluster.cluster import ClusterInfo
from tidal_dev.cluster.processes import free_port, http_ok

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tidal"


def helm(info: ClusterInfo | None, *args, check=True) -> subprocess.CompletedProcess:
    from tidal_dev.cluster.binaries import binaries_dir
    binary = str((info.binaries_dir if info else binaries_dir()) / "helm")
    cmd = [binary, *(["--kubeconfig", str(info.kubeconfig)] if info else []), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def template(*args) -> list[dict]:
    out = helm(None, "template", "tidal", str(CHART), "-n", "tidal-system", "--kube-version", "1.36.3", *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def sa_kubeconfig(info: ClusterInfo, kubectl, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as a ServiceAccount, with a token from the TokenRequest API,
    as a pod's projected token would."""
    token = kubectl("create", "token", account, "-n", namespace, "--duration", "2h").stdout.strip()
    admin = yaml.safe_load(Path(info.kubeconfig).read_text())
    cluster = admin["clusters"][0]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "clusters": [cluster],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": cluster["name"], "user": account}}],
        "current-context": account}))
    return path


def deployment_args(kubectl, namespace: str, name: str) -> list[str]:
    dep = json.loads(kubectl("get", "deployment", name, "-n", namespace, "-o", "json").stdout)
    return dep["spec"]["template"]["spec"]["containers"][0]["args"]


def _replace_flag(args: list[str], flag: str, value: str | None) -> list[str]:
    """Drop --flag=... / --flag ...; then add --flag=value (None: only drop)."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == flag:
            skip = True
            continue
        if arg.startswith(flag + "="):
            continue
        out.append(arg)
    return out + ([f"{flag}={value}"] if value is not None else [])


class ChartProcess:
    def __init__(self, name: str, args: list[str], kubeconfig: Path, log_dir: Path, port_flag: str,
                 env: dict[str, str], health_path: str = "/healthz", extra: dict[str, str] | None = None):
        self.name, self.port = name, free_port()
        args = _replace_flag(args, port_flag, str(self.port))
        for flag, value in (extra or {}).items():
            args = _replace_flag(args, flag, value)
        self.args = [*args, f"--kubeconfig={kubeconfig}"]
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "tidal.cli", *self.args], stdout=self._log,
                                     stderr=subprocess.STDOUT, env={**os.environ, **env})
        self.url = f"http://127.0.0.1:{self.port}"
        self.health_path = health_path

    def wait_healthy(self, path: str | None = None, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.log()}")
            if http_ok(self.url + (path or self.health_path)):
                return
            time.sleep(0.2)
        raise AssertionError(f"{self.name} not answering {path or self.health_path} after {timeout} s:\n{self.log()}")

    def ready(self) -> bool:
        return http_ok(self.url + "/readyz")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()[-4000:]

    def stop(self, sig: str = "term") -> None:
        if self.proc.poll() is None:
            self.proc.kill() if sig == "kill" else self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def audit_events(path: Path, username: str) -> list[dict]:
    """Completed requests by one user from the apiserver's JSON audit log."""
    events = []
    for line in path.read_text().splitlines():
        event = json.loads(line)
        if event.get("user", {}).get("username") == username and event.get("stage") == "ResponseComplete":
            events.append(event)
    return events


def permissions(event: dict) -> list[tuple[str, str, str]]:
    """(apiGroup, resource[/subresource], verb) a resource request needed; none for discovery URLs.

    A server-side apply that creates its object is a PATCH answered 201, and the apiserver checks the
    create verb for it too: without `create`, that PATCH is refused."""
    ref = event.get("objectRef")
    if not ref or not ref.get("resource"):
        return []
    resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    needed = [(ref.get("apiGroup", ""), resource, event["verb"])]
    if event["verb"] == "patch" and event.get("responseStatus", {}).get("code") == 201:
        needed.append((ref.get("apiGroup", ""), resource, "create"))
    return needed


def granted(docs: list[dict], account: str) -> set[tuple[str, str, str]]:
    """Every (apiGroup, resource, verb) the rendered chart grants a ServiceAccount, through any binding."""
    roles = {(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")): d for d in docs
             if d["kind"] in ("Role", "ClusterRole")}
    out = set()
    for binding in (d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == account for s in binding["subjects"]):
            continue
        ref = binding["roleRef"]
        role = roles[(ref["kind"], ref["name"], binding["metadata"].get("namespace") if ref["kind"] == "Role" else None)]
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        out.add((group, resource, verb))
    return out
