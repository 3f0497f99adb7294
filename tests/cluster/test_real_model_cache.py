"""#30's goal on the local cluster: a cached wake spends zero seconds in the fetch phase — measured, not built in.

The operator runs with the node cache on (`--model-cache-root`); the service's pods run for real (annotation
sim.tidal.dev/engine: real): the sim-runtime runs the rendered init container `tidal fetch-model` as a process
against S3Proxy (the node's hostPath is a directory of its own per simulated node), writes when it started and
ended on the pod, then starts the real vLLM on the weights it fetched. The operator times each cold start's
phases from those times (status.lastColdStartPhases). S3Proxy's answers pass through a forwarder that counts the
object GETs and slows them, so the first fetch takes seconds a whole-second clock can see.

On a cluster of its own: the shared cluster's operator runs without the node cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.cluster.test_operator import condition
from tests.cluster.test_smoke import wait_for
from tests.conftest import TEST_NODES, Kubectl, install_crd, start_operator
from tests.s3_server import ACCESS_KEY, SECRET_KEY, s3_server
from tests.tcp_forwarder import TcpForwarder
from tests.test_model_cache import model_bytes, tiny_model  # noqa: F401  (a fixture)
from tidal.modelcache.layout import cache_key, node_label
from tidal_dev.cluster.cluster import DevCluster
from tidal_dev.cluster.processes import pid_alive

pytestmark = [pytest.mark.cluster, pytest.mark.real_engine, pytest.mark.model_cache]
NS, NAME, URI = "models", "cached", "s3://models/tiny"


@pytest.fixture(scope="module")
def cache_cluster(tmp_path_factory, tiny_model):  # noqa: F811
    workdir = tmp_path_factory.mktemp("cache-cluster")
    cluster = DevCluster(workdir / "cluster", TEST_NODES, scrape_interval="1s")
    info = cluster.up()
    kubectl = Kubectl(info)
    install_crd(kubectl)
    operator = start_operator(info, workdir / "operator.log", "--model-cache-root", "/var/lib/tidal/models")
    with s3_server(workdir / "s3", buckets=("models",)) as s3:
        for f in tiny_model.iterdir():
            s3.client().upload_file(str(f), "models", f"tiny/{f.name}")
        # About 3 s for the whole model: slow enough that a fetch shows in whole seconds.
        forwarder = TcpForwarder(int(s3.url.rsplit(":", 1)[1]), bytes_per_s=model_bytes(tiny_model) / 3)
        kubectl("create", "namespace", NS)
        kubectl("create", "secret", "generic", "s3-credentials", "-n", NS, f"--from-literal=AWS_ACCESS_KEY_ID={ACCESS_KEY}",
                f"--from-literal=AWS_SECRET_ACCESS_KEY={SECRET_KEY}", f"--from-literal=AWS_ENDPOINT_URL={forwarder.url}",
                "--from-literal=AWS_REGION=us-east-1")
        yield kubectl, forwarder, cluster
    operator.proc.terminate()
    operator.proc.wait(10)
    cluster.down()


def _apply(kubectl, min_replicas: int) -> None:
    kubectl("apply", "-n", NS, "-f", "-", input=json.dumps({
        "apiVersion": "tidal.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": NAME},
        # --dtype=float32: see tests/test_real_vllm.py (bfloat16 kernels died of SIGILL on this AMX CPU)
        "spec": {"engine": {"type": "vllm", "args": ["--enforce-eager", "--max-num-seqs=2", "--dtype=float32"]},
                 "model": {"uri": URI, "servedName": "tiny-cached", "credentials": {"secretName": "s3-credentials"}},
                 "resources": {"gpus": 1, "cpu": "1", "memory": "4Gi"},
                 "placement": {"nodePool": "h100", "podAnnotations": {"sim.tidal.dev/engine": "real"}},
                 "scaling": {"minReplicas": min_replicas, "maxReplicas": 1, "idleSecondsBeforeZero": 0,
                             "adaptIdlePeriod": False, "scaleDownStabilizationSeconds": 0}}}))


def _status(kubectl) -> dict:
    return json.loads(kubectl("get", "inferenceservice", NAME, "-n", NS, "-o", "json").stdout)


def _pods(kubectl) -> list[dict]:
    return json.loads(kubectl("get", "pods", "-n", NS, "-l", f"tidal.dev/inferenceservice={NAME}", "-o",
                              "json").stdout)["items"]


def _serving(kubectl, seconds_before: float | None) -> dict:
    """Status once the real vLLM serves and a cold start newer than `seconds_before` has its phases."""
    def done():
        obj = _status(kubectl)
        status = obj.get("status") or {}
        ready = (condition(obj, "Ready") or {}).get("reason") == "ModelReady"
        fresh = status.get("lastColdStartPhases") and status.get("lastColdStartSeconds") != seconds_before
        return obj if ready and fresh else None
    return wait_for(done, timeout=400, interval=2, what="the real vLLM serving from the node cache, its cold start timed")


def test_a_cached_wake_spends_zero_seconds_fetching(cache_cluster):
    kubectl, s3, cluster = cache_cluster
    _apply(kubectl, 1)
    first = _serving(kubectl, None)
    [pod] = [p for p in _pods(kubectl) if not p["metadata"].get("deletionTimestamp")]
    home = pod["spec"]["nodeName"]
    fetched = s3.gets("/models/tiny/")
    phases = first["status"]["lastColdStartPhases"]
    print("first start:", first["status"]["lastColdStartSeconds"], "s", phases, fetched, "GETs")
    assert fetched >= 1 and phases["weight_fetch"] >= 1, (fetched, phases)  # the node had nothing: a real fetch
    assert phases["engine_load"] > 0, phases  # vLLM's own start, not counted as fetching
    wait_for(lambda: home in kubectl("get", "nodes", "-l", node_label(cache_key(URI)), "-o", "name").stdout,
             timeout=30, what=f"{home} labelled as holding the weights")

    _apply(kubectl, 0)
    wait_for(lambda: not _pods(kubectl), timeout=120, interval=1, what="scaled to zero")
    _apply(kubectl, 1)
    woken = _serving(kubectl, first["status"]["lastColdStartSeconds"])
    [pod] = [p for p in _pods(kubectl) if not p["metadata"].get("deletionTimestamp")]
    phases = woken["status"]["lastColdStartPhases"]
    print("cached wake:", woken["status"]["lastColdStartSeconds"], "s", phases)
    assert pod["spec"]["nodeName"] == home  # the wake went where the weights are
    assert s3.gets("/models/tiny/") == fetched  # and read not one object from S3
    assert phases["weight_fetch"] == 0, phases  # a cached wake: zero seconds in the fetch phase
    assert phases["engine_load"] > 0, phases

    # The real engines run in sessions of their own, as containers would: stopping the cluster must stop them
    # too, or each vLLM outlives it (~1 GB).
    engines = _processes_in(pod["metadata"]["uid"])
    assert engines, "the real vLLM's processes (their working directory is the pod's)"
    cluster.down(quiet=True)
    wait_for(lambda: not [p for p in engines if pid_alive(p)], timeout=20, interval=0.5,
             what=f"the real engine's processes {engines} gone with the cluster")


def _processes_in(pod_uid: str) -> list[int]:
    """The processes whose working directory is the sim-runtime's directory for this pod."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and Path(os.readlink(proc / "cwd")).name == pod_uid:
                found.append(int(proc.name))
        except OSError:
            continue
    return found
