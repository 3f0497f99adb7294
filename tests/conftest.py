"""Shared fixtures. Tests that need the local cluster use `dev_cluster` and are marked `cluster`."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tidal_dev.cluster.cluster import ClusterInfo, DevCluster
from tidal_dev.cluster.stack import wait_established

TESTS_DIR = Path(__file__).parent
TEST_NODES = TESTS_DIR / "nodepools-test.yaml"


def pytest_collection_modifyitems(items):
    for item in items:
        if "dev_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def dev_cluster(tmp_path_factory) -> ClusterInfo:
    """One real control plane + Prometheus for the whole session, torn down at the end.

    It has its own state directory, so it never touches a cluster started with `make cluster`.
    """
    state_dir = Path(os.environ.get("TIDAL_TEST_STATE_DIR") or tmp_path_factory.mktemp("cluster"))
    cluster = DevCluster(state_dir, TEST_NODES, scrape_interval="1s")
    info = cluster.up()
    yield info
    cluster.down()


@pytest.fixture(scope="session")
def k8s(dev_cluster):
    from tidal_dev.cluster.bootstrap import api_client
    api = api_client(dev_cluster.kubeconfig)
    yield api
    api.close()


@pytest.fixture
def namespace(k8s):
    """A fresh namespace per test, deleted afterwards (with everything in it)."""
    from kubernetes import client
    core = client.CoreV1Api(k8s)
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name, propagation_policy="Background")


class Kubectl:
    """kubectl as a user runs it, against the test cluster (the version matching the server)."""

    def __init__(self, info: ClusterInfo):
        self.binary, self.kubeconfig = info.kubectl(), str(info.kubeconfig)

    def __call__(self, *args, check=True, input=None):
        import subprocess
        proc = subprocess.run([self.binary, "--kubeconfig", self.kubeconfig, *args], capture_output=True,
                              text=True, input=input, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc


@pytest.fixture(scope="session")
def kubectl(dev_cluster) -> Kubectl:
    return Kubectl(dev_cluster)


class OperatorProcess:
    def __init__(self, proc, log_path, url):
        self.proc, self.log_path, self.url = proc, log_path, url


def start_operator(info: ClusterInfo, log_path: Path, *extra, port: int | None = None) -> OperatorProcess:
    """`tidal run` against a test cluster, as the tests configure it: fast ticks, short grace."""
    import subprocess
    import sys
    import time

    from tidal_dev.cluster.processes import free_port, http_ok
    log = open(log_path, "a")
    port = port or free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tidal.cli", "run", "--kubeconfig", str(info.kubeconfig),
                             "--resync-seconds", "5", "--prometheus-url", info.prometheus_url,
                             "--autoscale-interval", "1", "--metrics-grace", "8", "--http-port", str(port),
                             "--http-host", "127.0.0.1", *extra],
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + 30
    while not http_ok(f"http://127.0.0.1:{port}/healthz") and time.monotonic() < deadline:
        time.sleep(0.2)
    return OperatorProcess(proc, log_path, f"http://127.0.0.1:{port}")


def wait_for_resyncs(operator: OperatorProcess, passes: int = 1, timeout: float = 60) -> None:
    """Until the operator has finished `passes` more resync passes over every service (its own counter):
    evidence that a resync ran, where a fixed sleep would pass on a stalled operator too."""
    import time
    import urllib.request

    def done() -> float:
        text = urllib.request.urlopen(f"{operator.url}/metrics", timeout=5).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("tidal_operator_resyncs_total "))
    start, deadline = done(), time.monotonic() + timeout
    while done() < start + passes:
        assert time.monotonic() < deadline, f"no {passes} resync pass(es) in {timeout} s: the operator stalled"
        assert operator.proc.poll() is None, "the operator exited"
        time.sleep(0.2)


def install_crd(kubectl) -> None:
    kubectl("apply", "-f", str(TESTS_DIR.parent / "crds"))
    wait_established([kubectl.binary, "--kubeconfig", kubectl.kubeconfig], "inferenceservices.tidal.dev")


@pytest.fixture(scope="session")
def operator(dev_cluster, kubectl, tmp_path_factory):
    """`tidal run` against the test cluster, with the CRD installed, for the whole session."""
    import subprocess

    install_crd(kubectl)
    op = start_operator(dev_cluster, tmp_path_factory.mktemp("operator") / "operator.log")
    yield op
    op.proc.terminate()
    try:
        op.proc.wait(10)
    except subprocess.TimeoutExpired:
        op.proc.kill()


class ActivatorProcess:
    def __init__(self, proc, url, metrics_url, log_path=None):
        self.proc, self.url, self.metrics_url, self.log_path = proc, url, metrics_url, log_path


def wake_token_file(dev_cluster) -> Path:
    """The gateway's proof on wake-up calls (its ServiceAccount's token for the wake audience, as the chart
    projects it into its pod), made once per cluster."""
    from tidal_dev.cluster.stack import gateway_wake_token
    token = dev_cluster.state_dir / "gateway-wake-token"
    if not token.exists():
        gateway_wake_token(dev_cluster, token)
    return token


def start_activator(dev_cluster, operator, *extra, key_namespace: str | None = None):
    """`tidal activator` against the test cluster, its metrics registered with Prometheus.

    API keys are on by default in `tidal activator` and the chart. The tests of holding, waking, routing
    and faults run it with keys off (`--api-keys off`, the trusted-mesh mode) so that their requests
    need no header; tests/cluster/test_gateway.py runs it with keys on (key_namespace)."""
    import json
    import subprocess
    import sys
    import time

    from tidal_dev.cluster.processes import free_port, http_ok
    port, metrics_port = free_port(), free_port()
    token = wake_token_file(dev_cluster)
    proc = subprocess.Popen([sys.executable, "-m", "tidal.cli", "activator", "--kubeconfig", str(dev_cluster.kubeconfig),
                             "--operator-url", operator.url, "--host", "127.0.0.1", "--port", str(port),
                             "--wake-token-file", str(token),
                             "--metrics-port", str(metrics_port),
                             *(["--api-key-namespace", key_namespace] if key_namespace else ["--api-keys", "off"]),
                             *extra],
                            stdout=open(log_path := dev_cluster.state_dir / "logs" / f"activator-{port}.log", "w"),
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while not http_ok(f"http://127.0.0.1:{metrics_port}/healthz") and time.monotonic() < deadline:
        time.sleep(0.1)
    (dev_cluster.state_dir / "targets" / f"activator-{port}.json").write_text(json.dumps(
        [{"targets": [f"127.0.0.1:{metrics_port}"], "labels": {"job": "activator"}}]))
    return ActivatorProcess(proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}", log_path)


@pytest.fixture(scope="session")
def activator(dev_cluster, operator):
    act = start_activator(dev_cluster, operator, "--hold-timeout", "60")
    yield act
    act.proc.terminate()
    act.proc.wait(10)


@pytest.fixture(scope="session")
def queue_only_activator(dev_cluster, operator):
    """A gateway that sends the operator no load reports (--load-report-interval 0). Tests that claim a service
    scales out from its engine's own queue send their burst through it: the session's gateway reports the
    same burst a second after it begins, and its fast signal would scale first (#32), proving nothing about
    the queue."""
    act = start_activator(dev_cluster, operator, "--hold-timeout", "300", "--load-report-interval", "0")
    yield act
    act.proc.terminate()
    act.proc.wait(10)


# Property tests: derandomised by default (CI and `make test` give the same examples every run);
# `make test-properties-random` runs a longer randomised search (profile "random").
from hypothesis import settings as _hypothesis_settings  # noqa: E402

# No per-example deadline: with a cluster running in the same session, an example that takes 200 ms on a
# busy core is no failure (speed is measured in benchmarks, not here).
_hypothesis_settings.register_profile("ci", derandomize=True, database=None, print_blob=True, deadline=None)
_hypothesis_settings.register_profile("random", max_examples=5000, derandomize=False, database=None,
                                      print_blob=True, deadline=None)
_hypothesis_settings.load_profile(os.environ.get("TIDAL_HYPOTHESIS_PROFILE", "ci"))
if os.environ.get("TIDAL_HYPOTHESIS_PROFILE", "ci") == "ci":
    # Hypothesis also draws literals found in the project's loaded modules (5 % of draws), and which modules a
    # pytest-xdist worker has loaded depends on the tests it ran before: "derandomised" examples then differed
    # between runs (a branch-reach count fell from 8 to 1 in CI). No constants: the same examples every run.
    from hypothesis.internal.conjecture import providers as _providers
    if hasattr(_providers, "_get_local_constants") and hasattr(_providers, "Constants"):
        _providers._get_local_constants = _providers.Constants
