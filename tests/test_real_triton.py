"""#13: NVIDIA's tritonserver (2.51, from the nvidia-pytriton wheel) started from the command line the operator
renders, with a python-backend model that batches and takes 0.2 s a batch: `tritonclient` infers over HTTP
through the gateway and over gRPC directly, Triton's own pending-request gauge shows the queue under load,
and the operator's readiness check (KServe v2 model ready) agrees with Triton."""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.exposition import sample_sum
from tests.static_gateway import static_gateway
from tidal.api.v1alpha1 import parse_spec
from tidal.clients.engine_health import triton_model_ready
from tidal_dev.cluster.processes import free_port, http_ok
from tidal.render.deployment import render_deployment
from tidal.render.settings import RenderSettings
from tidal_dev.simserver.real import engine_tool, triton_command

pytestmark = pytest.mark.real_engine
ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.30"
SPEC = {"engine": {"type": "triton", "drainSeconds": 30}, "model": {"uri": "s3://bucket/repository",
                                                                     "servedName": "delay"},
        "resources": {"gpus": 0, "cpu": "1"}}


class Triton:
    """One tritonserver from the rendered command, on its own loopback address."""

    def __init__(self, work: Path, host: str):
        work.mkdir(parents=True, exist_ok=True)
        repository = work / "repository"
        shutil.copytree(ROOT / "tools" / "engines" / "triton-models", repository)
        container = render_deployment("delay", "ml", "uid", parse_spec(SPEC), RenderSettings())["spec"][
            "template"]["spec"]["containers"][0]
        backends = Path(subprocess.run([str(engine_tool("tritonserver.sh")), "--print-backend-directory"], capture_output=True,
                                       text=True, check=True).stdout.strip())
        self.host, self.ports = host, {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
        command = triton_command(container, repository, host, self.ports, backends)
        self.log = work / "triton.log"
        self.proc = subprocess.Popen(command.argv, env=command.env, cwd=work, stdout=open(self.log, "w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60  # ready in about 1.5 s; a stub that cannot find its libraries hangs
        while not http_ok(f"http://{host}:{self.ports['http']}/v2/models/delay/ready"):
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.2)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.ports['http']}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        for region in glob.glob("/dev/shm/triton_python_backend_shm_region_*"):  # left behind by a kill
            try:
                os.unlink(region)
            except OSError:
                pass


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    server = Triton(tmp_path_factory.mktemp("triton"), HOST)
    try:
        yield server.ports, server.proc
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gateway(triton, tmp_path_factory):
    ports, _ = triton
    with static_gateway([f"ml/delay=127.0.0.30:{ports['http']}"],
                        tmp_path_factory.mktemp("gateway") / "gateway.log") as static:
        yield static.address


def test_tritonclient_infers_over_http_through_the_gateway_and_over_grpc(triton, gateway):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    ports, _ = triton
    data = np.arange(6, dtype=np.float32).reshape(1, 6)
    http = httpclient.InferenceServerClient(gateway)
    assert http.is_model_ready("delay")
    inp = httpclient.InferInput("INPUT0", [1, 6], "FP32")
    inp.set_data_from_numpy(data)  # the binary tensor extension, as tritonclient sends by default
    assert np.array_equal(http.infer("delay", [inp]).as_numpy("OUTPUT0"), data * 2)
    grpc = grpcclient.InferenceServerClient(f"{HOST}:{ports['grpc']}")
    ginp = grpcclient.InferInput("INPUT0", [1, 6], "FP32")
    ginp.set_data_from_numpy(data)
    assert np.array_equal(grpc.infer("delay", [ginp]).as_numpy("OUTPUT0"), data * 2)


def test_the_operators_readiness_check_and_the_pending_gauge_read_real_triton(triton, gateway):
    import tritonclient.http.aio as aioclient
    ports, _ = triton
    assert asyncio.run(triton_model_ready(HOST, ports["http"], "delay")) == (True, "")
    ready, why = asyncio.run(triton_model_ready(HOST, ports["http"], "no-such-model"))
    assert not ready and "no-such-model" in why

    def pending() -> float:
        import urllib.request
        text = urllib.request.urlopen(f"http://{HOST}:{ports['metrics']}/metrics", timeout=5).read().decode()
        line = next(l for l in text.splitlines() if l.startswith("nv_inference_pending_request_count{"))
        assert 'model="delay"' in line and 'version="1"' in line
        return float(line.rsplit(" ", 1)[1])

    async def load():
        client = aioclient.InferenceServerClient(gateway)
        inp = aioclient.InferInput("INPUT0", [1, 4], "FP32")
        inp.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
        tasks = [asyncio.create_task(client.infer("delay", [inp])) for _ in range(40)]  # 5 batches of 8
        await asyncio.sleep(0.3)
        seen = await asyncio.to_thread(pending)
        results = await asyncio.gather(*tasks)
        await client.close()
        return seen, results

    seen, results = asyncio.run(load())
    assert seen >= 8, seen  # the queue Tidal scales Triton on, while one batch runs
    assert all(np.array_equal(r.as_numpy("OUTPUT0"), np.full((1, 4), 2, dtype=np.float32)) for r in results)
    assert pending() == 0


def test_a_draining_triton_answers_what_it_takes_and_exits_once_idle_while_no_client_sees_an_error(tmp_path):
    """SIGTERM (as the kubelet sends it) to one of two Triton replicas under load: Triton refuses new
    connections, still answers on the ones it has, and waits up to --exit-timeout-secs for its
    inferences and its HTTP connections to end. Every client gets its answer, and the drained replica
    exits by itself, well before its exit timeout. (In a cluster the pod also leaves the Service's endpoints
    and gets no more requests; this static gateway cannot see that, so requests on its open connections
    keep reaching the draining replica, which answers them: measured, replica 1 answered 58 of 120.)"""
    import tritonclient.http.aio as aioclient
    servers = [Triton(tmp_path / f"t{i}", f"127.0.0.{31 + i}") for i in range(2)]
    try:
        with static_gateway([f"ml/delay={s.endpoint}" for s in servers], tmp_path / "gateway.log") as static:
            async def load():
                client = aioclient.InferenceServerClient(static.address)

                async def one(i: int):
                    inp = aioclient.InferInput("INPUT0", [1, 4], "FP32")
                    inp.set_data_from_numpy(np.full((1, 4), i, dtype=np.float32))
                    return (await client.infer("delay", [inp])).as_numpy("OUTPUT0")

                tasks = []
                for i in range(120):  # 6 s of arrivals at 20 a second; each batch takes 0.2 s
                    tasks.append(asyncio.create_task(one(i)))
                    if i == 40:
                        os.kill(servers[0].proc.pid, signal.SIGTERM)
                    await asyncio.sleep(0.05)
                results = await asyncio.gather(*tasks, return_exceptions=True)
                await client.close()
                return results

            results = asyncio.run(load())
            errors = [r for r in results if isinstance(r, Exception)]
            assert not errors, errors[:3]
            assert all(np.array_equal(r, np.full((1, 4), 2 * i, dtype=np.float32)) for i, r in enumerate(results))
            # Triton exits once no HTTP connection is open to it: the gateway closes idle ones after 4 s
            # (before, its pooled connections kept Triton up for all of --exit-timeout-secs, and it exited 1).
            assert servers[0].proc.wait(20) == 0, servers[0].log.read_text()[-3000:]
            assert servers[1].proc.poll() is None
            # Per replica, from Triton's own count: both answered (replica 0 is gone; replica 1 says what it did).
            metrics = urllib.request.urlopen(f"http://{servers[1].host}:{servers[1].ports['metrics']}/metrics",
                                             timeout=5).read().decode()
            on_1 = sample_sum(metrics, "nv_inference_request_success", model="delay")
            assert 30 <= on_1 <= 90, f"replica 1 answered {on_1:g} of 120: the gateway did not spread the load"
    finally:
        for server in servers:
            server.stop()
