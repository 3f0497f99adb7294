"""Faults under steady load, on a cluster of their own: the operator killed mid scale-up and mid batch, the
gateway restarted, a full pool. (The control plane and Prometheus going down: test_control_plane_faults.py,
on a cluster of its own too, so the two run side by side in `make test`.)

Load goes through the activator, as users' traffic does, and every response is counted.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import aiohttp
import pytest

from tests.cluster.test_autoscaler import apply, ready_replicas, replicas, service
from tests.cluster.test_operator import condition, events, get, wait_condition
from tests.cluster.test_smoke import wait_for
from tests.cluster.service_proxy import ServiceProxy
from tests.conftest import TEST_NODES, Kubectl, install_crd, start_activator, start_operator
from tidal_dev.cluster.cluster import DevCluster

pytestmark = pytest.mark.cluster


class Background:
    """Runs `_run` in a thread while the `with` block lasts; `_stop` tells it to finish."""

    join_timeout = 30.0

    def __init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        raise NotImplementedError

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(self.join_timeout)


class Load(Background):
    """`concurrency` clients, each sending its next request when the last one is answered, until stopped.
    Counts every outcome; a failure records when it happened."""

    join_timeout = 120.0

    def __init__(self, url: str, concurrency: int, max_tokens: int):
        super().__init__()
        self.url, self.concurrency, self.max_tokens = url, concurrency, max_tokens
        self.ok, self.failures = 0, []

    def _run(self):
        asyncio.run(self._clients())

    async def _clients(self):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
            async def client():
                while not self._stop.is_set():
                    try:
                        async with http.post(self.url, json={"prompt": "x", "max_tokens": self.max_tokens}) as r:
                            await r.read()
                            if r.status == 200:
                                self.ok += 1
                            else:
                                self.failures.append((time.monotonic(), r.status))
                    except (aiohttp.ClientError, asyncio.TimeoutError) as err:
                        self.failures.append((time.monotonic(), f"{type(err).__name__}: {err}"[:160]))
                        await asyncio.sleep(0.1)
            await asyncio.gather(*(client() for _ in range(self.concurrency)))


class Sampler(Background):
    """Reads a value every `interval` seconds in the background: a history to assert on."""

    def __init__(self, read, interval: float = 0.5):
        super().__init__()
        self.read, self.interval, self.values = read, interval, []

    def _run(self):
        while not self._stop.is_set():
            try:
                self.values.append((time.monotonic(), self.read()))
            except AssertionError:  # kubectl failing while the apiserver restarts
                pass
            self._stop.wait(self.interval)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    """A cluster with its own operator and activator, free to be broken."""
    state = tmp_path_factory.mktemp("fault-cluster")
    cluster = DevCluster(state, TEST_NODES, scrape_interval="1s")
    info = cluster.up()
    kubectl = Kubectl(info)
    install_crd(kubectl)
    logs = tmp_path_factory.mktemp("fault-logs")
    operator = start_operator(info, logs / "operator.log")
    activator = start_activator(info, operator, "--hold-timeout", "120")
    kubectl("create", "namespace", "faults")
    env = {"cluster": cluster, "info": info, "kubectl": kubectl, "operator": operator, "activator": activator,
           "logs": logs}
    yield env
    for proc in (env["activator"].proc, env["operator"].proc):
        proc.terminate()
        proc.wait(20)
    cluster.down()


def test_operator_killed_mid_scale_up_converges_without_a_scale_down_or_a_failed_request(faulty):
    kubectl, ns = faulty["kubectl"], "faults"
    apply(kubectl, ns, service("surge", minReplicas=1, maxReplicas=8, scaleDownStabilizationSeconds=30))
    wait_condition(kubectl, ns, "surge", "Ready", "True", "ModelReady")
    url = f"{faulty['activator'].url}/{ns}/surge/v1/completions"
    # 2.8 s per request, 4 at a time per replica plus 2 waiting: 24 clients want 4 replicas (5 at most,
    # when pods are scraped a moment apart), so the kill lands short of 8 however slow this machine is;
    # then 24 more clients arrive while the operator is down, and the restarted one must grow to 8
    # without first shrinking.
    with Load(url, concurrency=24, max_tokens=400) as first, \
            Sampler(lambda: replicas(kubectl, ns, "surge")) as history:
        wait_for(lambda: (replicas(kubectl, ns, "surge") or 0) >= 4, timeout=60, interval=0.2,
                 what="a scale-up to 4")
        faulty["operator"].proc.kill()  # SIGKILL: no cleanup, no goodbye
        killed_at, at_kill = time.monotonic(), replicas(kubectl, ns, "surge")
        ready_at_kill = ready_replicas(kubectl, ns, "surge")
        faulty["operator"].proc.wait(10)
        with Load(url, concurrency=24, max_tokens=400) as second:
            faulty["operator"] = start_operator(faulty["info"], faulty["logs"] / "operator.log",  # same address,
                                                port=int(faulty["operator"].url.rsplit(":", 1)[1]))  # as a Service
            wait_for(lambda: replicas(kubectl, ns, "surge") == 8, timeout=90, interval=0.5,
                     what="replicas grown to 8 after the restart")
            time.sleep(10)  # and they stay there while the load lasts
    after_kill = [n for t, n in history.values if t >= killed_at and n is not None]
    ok, failures = first.ok + second.ok, first.failures + second.failures
    print(f"replicas at the kill: {at_kill} ({ready_at_kill} ready); after: min {min(after_kill)}, max {max(after_kill)}; "
          f"requests ok {ok}, failed {len(failures)}")
    assert 4 <= at_kill < 8, "the kill should land on the size 24 clients want"
    assert min(after_kill) >= at_kill, "a restarted operator scaled down on lost memory"
    assert max(after_kill) == 8 and after_kill[-1] == 8
    assert failures == [] and ok > 50


FINAL = ("completed", "failed", "expired", "cancelled")


def test_operator_killed_mid_batch_the_batch_completes_each_custom_id_once(faulty, tmp_path):
    """OpenAI's Batch API through a gateway with a batch directory, for a model at zero: the operator is
    SIGKILLed once the batch has woken the model and is under way, and restarted 5 s later. The batch
    completes, each custom_id once in the output, and the model returns to zero after it."""
    import openai
    kubectl, ns = faulty["kubectl"], "faults"
    nightly = service("nightly", maxReplicas=3, idleSecondsBeforeZero=5, scaleDownStabilizationSeconds=3)
    nightly["spec"]["model"]["servedName"] = "nightly"
    apply(kubectl, ns, nightly)
    wait_for(lambda: replicas(kubectl, ns, "nightly") == 0, timeout=60, interval=0.5, what="nightly at zero")
    gateway = start_activator(faulty["info"], faulty["operator"], "--hold-timeout", "120",
                              "--batch-storage", str(tmp_path / "batches"))
    try:
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=60)
        count = 800
        lines = "".join(json.dumps({"custom_id": f"n{i}", "method": "POST", "url": "/v1/completions",
                                    "body": {"model": "nightly", "prompt": f"p{i}", "max_tokens": 3}}) + "\n"
                        for i in range(count))
        uploaded = client.files.create(file=("nightly.jsonl", lines.encode()), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/completions",
                                      completion_window="24h")

        def under_way():
            b = client.batches.retrieve(batch.id)
            counts = b.request_counts
            return b if (counts and (counts.completed >= count // 8 or counts.failed)) or b.status in FINAL else None
        seen = wait_for(under_way, timeout=180, interval=0.5, what="the batch under way")
        assert seen.status == "in_progress" and seen.request_counts.failed == 0, seen
        faulty["operator"].proc.kill()  # SIGKILL: no cleanup, no goodbye
        faulty["operator"].proc.wait(10)
        at_kill = client.batches.retrieve(batch.id).request_counts.completed
        time.sleep(5)
        faulty["operator"] = start_operator(faulty["info"], faulty["logs"] / "operator.log",
                                            port=int(faulty["operator"].url.rsplit(":", 1)[1]))
        done = wait_for(lambda: (b := client.batches.retrieve(batch.id)).status in ("completed", "failed") and b,
                        timeout=300, interval=0.5, what="the batch final")
        print(f"completed at the kill: {at_kill} of {count}")
        assert at_kill < count, "the kill should land mid-batch"
        assert done.status == "completed" and done.request_counts.completed == count, done
        output = [json.loads(x) for x in client.files.content(done.output_file_id).read().splitlines()]
        ids = [o["custom_id"] for o in output]
        assert len(ids) == count and sorted(ids) == sorted(f"n{i}" for i in range(count))
        assert all(o["response"]["status_code"] == 200 for o in output)
        wait_for(lambda: replicas(kubectl, ns, "nightly") == 0, timeout=90, interval=0.5,
                 what="nightly back at zero after the batch")
    finally:
        gateway.proc.terminate()
        gateway.proc.wait(10)
        kubectl("delete", "tis", "nightly", "-n", ns, "--wait=false")


def _new_service_serves(faulty, name):
    """The operator reconciles a service created now, and the activator routes to its new pods."""
    kubectl = faulty["kubectl"]
    apply(kubectl, "faults", service(name, minReplicas=1))
    wait_condition(kubectl, "faults", name, "Ready", "True", "ModelReady", timeout=90)
    import urllib.request
    request = urllib.request.Request(f"{faulty['activator'].url}/faults/{name}/v1/completions",
                                     data=b'{"prompt": "x", "max_tokens": 5}',
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200


def test_a_full_pool_is_reported_and_never_overfilled_nor_emptied(faulty):
    kubectl, ns = faulty["kubectl"], "faults"
    # Another tenant holds one of the four 8-GPU A100 nodes, so only 3 of our 8-GPU replicas can run.
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "other-tenant"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "other-tenant"}},
                 "template": {"metadata": {"labels": {"app": "other-tenant"}}, "spec": {
                     "nodeSelector": {"tidal.dev/pool": "a100"},
                     "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                     "containers": [{"name": "train", "image": "trainer:1",
                                     "resources": {"limits": {"nvidia.com/gpu": "8"}}}]}}}}))
    wait_for(lambda: kubectl("get", "pods", "-n", ns, "-l", "app=other-tenant", "-o",
                             "jsonpath={.items[0].spec.nodeName}").stdout, timeout=30, what="the tenant placed")
    big = service("big", minReplicas=1, maxReplicas=6, scaleDownStabilizationSeconds=60)
    big["spec"]["placement"] = {"nodePool": "a100"}
    big["spec"]["resources"] = {"gpus": 8}
    apply(kubectl, ns, big)
    wait_condition(kubectl, ns, "big", "Ready", "True", "ModelReady")
    url = f"{faulty['activator'].url}/{ns}/big/v1/completions"
    # 40 clients, 4 at a time per replica: 7 replicas wanted; the pool could hold 4, and has room for 3.
    with Load(url, concurrency=40, max_tokens=400) as load, \
            Sampler(lambda: replicas(kubectl, ns, "big")) as history:
        obj = wait_condition(kubectl, ns, "big", "ScalingLimited", "True", "Unschedulable", timeout=60)
        time.sleep(15)  # and it stays that way under the same load
    counts = [n for _, n in history.values if n is not None]
    pods = get(kubectl, ns, "pods", "-l", "tidal.dev/inferenceservice=big")["items"]
    pending = [p for p in pods if not p["spec"].get("nodeName")]
    print(f"pool full: replicas max {max(counts)}, min {min(counts)}; {len(pods)} pods, {len(pending)} Pending; "
          f"requests ok {load.ok}, failed {len(load.failures)}")
    assert max(counts) == 4, "more replicas than the pool could ever hold"
    assert min(counts) >= 1, "scaled towards zero while replicas could not schedule"
    assert len(pending) == 1
    assert "cannot be scheduled" in condition(obj, "ScalingLimited")["message"] or \
        "holds at most" in condition(obj, "ScalingLimited")["message"]
    assert ("Warning", "Unschedulable") in [(t, r) for t, r, _ in events(kubectl, ns, "big")]
    assert load.failures == []
    # The tenant leaves: the Pending replica gets its node.
    kubectl("delete", "deployment", "other-tenant", "-n", ns)
    wait_for(lambda: all(p["spec"].get("nodeName") for p in
                         get(kubectl, ns, "pods", "-l", "tidal.dev/inferenceservice=big")["items"]),
             timeout=60, what="the Pending replica scheduled once the pool had room")


def _port(process) -> int:
    return int(process.url.rsplit(":", 1)[1])


def test_activator_restarts_lose_nothing_with_two_replicas_and_only_in_flight_requests_with_one(faulty):
    kubectl, ns, info, operator = faulty["kubectl"], "faults", faulty["info"], faulty["operator"]
    apply(kubectl, ns, service("gate", minReplicas=2, maxReplicas=2))
    wait_condition(kubectl, ns, "gate", "Ready", "True", "ModelReady")
    proxy = ServiceProxy()
    start = lambda: start_activator(info, operator, "--hold-timeout", "60", "--drain-seconds", "2")  # noqa: E731
    replicas_now = [start(), start()]
    proxy.backends = [_port(p) for p in replicas_now]
    concurrency = 8
    with Load(f"{proxy.url}/{ns}/gate/v1/completions", concurrency=concurrency, max_tokens=40) as load:
        time.sleep(3)
        # A rolling restart of two replicas, as a Deployment does it: the new pod is ready first; the old
        # one leaves the Service's endpoints and gets SIGTERM at the same moment.
        for old in list(replicas_now):
            new = start()
            proxy.backends.append(_port(new))
            proxy.backends.remove(_port(old))
            old.proc.terminate()
            assert old.proc.wait(30) == 0
            replicas_now[replicas_now.index(old)] = new
            time.sleep(2)
        served_in_rollout, failed_in_rollout = load.ok, list(load.failures)
        # Down to one replica (scaled in gracefully), which then crashes; its replacement is already up.
        survivor, leaving = replicas_now
        proxy.backends.remove(_port(leaving))
        leaving.proc.terminate()
        leaving.proc.wait(30)
        time.sleep(2)
        replacement = start()
        proxy.backends.append(_port(replacement))
        time.sleep(1)
        proxy.backends.remove(_port(survivor))
        survivor.proc.kill()
        survivor.proc.wait(10)
        time.sleep(3)
    replacement.proc.terminate()
    replacement.proc.wait(30)
    crash_failures = load.failures[len(failed_in_rollout):]
    print(f"activator rolling restart: {served_in_rollout} ok, {len(failed_in_rollout)} failed; "
          f"single replica SIGKILLed: {len(crash_failures)} failed of at most {concurrency} in flight; "
          f"{load.ok} ok in all")
    assert failed_in_rollout == [], f"a graceful restart of one of two replicas failed requests: {failed_in_rollout}"
    assert len(crash_failures) <= concurrency, crash_failures
    assert load.ok > served_in_rollout  # the replacement serves
