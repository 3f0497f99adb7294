"""The node's model cache (#30), with real parts: S3Proxy (a real S3 server) holds a real model (the tiny Llama of
tools/engines/), and the fetch is the rendered init container's own command, run as a process with the node's
cache directory in a temporary folder (as the local cluster runs real engines). What S3Proxy served is counted
by a TCP forwarder in front of it (tests/tcp_forwarder.py), which can also slow the answers so a download can
be killed half-way. The in-use lock is held by the rendered engine wrapper itself (sh + flock(1))."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.s3_server import s3_server
from tests.tcp_forwarder import TcpForwarder
from tidal.api.v1alpha1 import parse_spec
from tidal.modelcache.layout import ENGINE_CACHE, ENTRIES, cache_key
from tidal.modelcache.sources import S3Source
from tidal.modelcache.store import CacheFull, CacheStore, in_use
from tidal.render import RenderSettings, render_deployment
from tidal.render.model_fetch import CACHE_DIR
from tidal.render.settings import ModelCacheSettings

pytestmark = pytest.mark.model_cache
TINY = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tidal" / "models" / "tiny-llama-1"


@pytest.fixture(scope="module")
def tiny_model() -> Path:
    """The tiny Llama with random weights (made once by tools/engines/tiny_model.py, `make install`)."""
    if not (TINY / "model.safetensors").is_file():
        subprocess.run([str(Path(__file__).parents[1] / "tools/engines/vllm-cpu.sh"),
                        str(Path(__file__).parents[1] / "tools/engines/tiny_model.py"), str(TINY)], check=True)
    return TINY


@pytest.fixture(scope="module")
def s3(tmp_path_factory, tiny_model):
    with s3_server(tmp_path_factory.mktemp("s3"), buckets=("models",)) as server:
        client = server.client()
        for name in ("tiny", "tiny-copy"):
            for f in tiny_model.iterdir():
                client.upload_file(str(f), "models", f"{name}/{f.name}")
        yield server


def model_bytes(model: Path) -> int:
    return sum(f.stat().st_size for f in model.iterdir())


def deployment(uri: str, budget: str = "1Gi") -> dict:
    spec = parse_spec({"engine": {"type": "vllm"}, "model": {"uri": uri}})
    settings = RenderSettings(model_cache=ModelCacheSettings(root="/var/lib/tidal/models", budget=budget))
    return render_deployment("llm", "ml", "uid-1", spec, settings)


def fetch_process(uri: str, cache_root: Path, s3_url: str, budget: str = "1Gi", env: dict | None = None,
                  termination_log: Path | None = None) -> subprocess.Popen:
    """The rendered init container's command, as the node would run it, with the node's cache at cache_root."""
    init = deployment(uri, budget)["spec"]["template"]["spec"]["initContainers"][0]
    argv = [a.replace(CACHE_DIR, str(cache_root)) for a in init["command"]]
    assert argv[:2] == ["tidal", "fetch-model"], argv
    argv += ["--termination-log", str(termination_log or cache_root.parent / "termination-log")]
    from tests.s3_server import ACCESS_KEY, SECRET_KEY
    full_env = {**os.environ, "AWS_ENDPOINT_URL": s3_url, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "tidal.cli", *argv[1:]], env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def fetch(uri: str, cache_root: Path, s3_url: str, **kw) -> tuple[int, str]:
    proc = fetch_process(uri, cache_root, s3_url, **kw)
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, out


def test_the_rendered_replica_fetches_into_the_node_cache_and_mounts_it_read_only():
    pod = deployment("s3://models/tiny")["spec"]["template"]["spec"]
    key = cache_key("s3://models/tiny")
    assert pod["volumes"][0] == {"name": "model-cache", "hostPath": {"path": "/var/lib/tidal/models",
                                                                      "type": "DirectoryOrCreate"}}
    engine = pod["containers"][0]
    weights = next(m for m in engine["volumeMounts"] if m["mountPath"] == CACHE_DIR)
    assert weights["readOnly"] is True
    assert f"{CACHE_DIR}/{ENTRIES}/{key}/model" in engine["args"]  # vllm serve <the cached weights>
    writable = [m for m in engine["volumeMounts"] if m["name"] == "model-cache" and not m.get("readOnly")]
    assert writable == [{"name": "model-cache", "mountPath": "/engine-cache", "subPath": f"{ENGINE_CACHE}/{key}"}]
    assert engine["command"][:2] == ["/bin/sh", "-c"] and engine["args"][:2] == ["vllm", "serve"]


def test_a_second_replica_on_the_node_fetches_zero_bytes(s3, tiny_model, tmp_path):
    counting = TcpForwarder(int(s3.url.rsplit(":", 1)[1]))
    root = tmp_path / "node-cache"
    code, out = fetch("s3://models/tiny", root, counting.url)
    assert code == 0, out
    files = len(list(tiny_model.iterdir()))
    assert counting.gets("/models/tiny/") == files, counting.requests
    weights = root / ENTRIES / cache_key("s3://models/tiny") / "model"
    assert {f.name: f.read_bytes() for f in weights.iterdir()} == {f.name: f.read_bytes() for f in tiny_model.iterdir()}
    assert (tmp_path / "termination-log").read_text().startswith("Fetched: ")  # its seconds, for the operator
    code, out = fetch("s3://models/tiny", root, counting.url)
    assert code == 0 and "cache hit" in out and "(0 bytes fetched" in out, out
    assert counting.gets("/models/tiny/") == files, "the second replica fetched again"
    report = (tmp_path / "termination-log").read_text()
    assert report.startswith("CacheHit: ") and report.endswith(" s, 0 bytes"), report


def test_two_replicas_starting_together_fetch_once(s3, tiny_model, tmp_path):
    counting = TcpForwarder(int(s3.url.rsplit(":", 1)[1]), bytes_per_s=2e6)  # ~0.6 s: they overlap
    root = tmp_path / "node-cache"
    procs = [fetch_process("s3://models/tiny", root, counting.url) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert counting.gets("/models/tiny/") == len(list(tiny_model.iterdir())), counting.requests
    assert sorted("cache hit" in o for o in outs) == [False, True], outs


def test_a_fetch_killed_half_way_leaves_nothing_a_replica_would_load(s3, tiny_model, tmp_path):
    slow = TcpForwarder(int(s3.url.rsplit(":", 1)[1]), bytes_per_s=200e3)  # the 1.2 MB weights take ~6 s
    root = tmp_path / "node-cache"
    proc = fetch_process("s3://models/tiny", root, slow.url)
    deadline = time.monotonic() + 60
    while not any(f.stat().st_size > 100_000 for f in root.glob("partial/*/model/*") if f.is_file()):
        assert time.monotonic() < deadline and proc.poll() is None, "the download never got under way"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    entry = root / ENTRIES / cache_key("s3://models/tiny")
    assert not entry.exists(), "a half-fetched model is in the cache, where a replica would load it"
    code, out = fetch("s3://models/tiny", root, s3.url)  # the next replica: a whole model, the leftover gone
    assert code == 0, out
    assert model_bytes(entry / "model") == model_bytes(tiny_model)
    assert list((root / "partial").iterdir()) == []


def test_eviction_under_a_small_budget_keeps_the_model_a_running_engine_uses(s3, tiny_model, tmp_path):
    root, size = tmp_path / "node-cache", model_bytes(tiny_model)
    an_hour_later = lambda: time.time() + 3600  # noqa: E731  (past the hand-over time of a fetched entry)
    store = CacheStore(root, budget_bytes=int(size * 1.5), clock=an_hour_later)
    client = s3.client()
    first = store.ensure("s3://models/tiny", None, S3Source("models/tiny", client))
    # The engine, as rendered: the wrapper takes the shared lock, then execs the engine (here `sleep`).
    engine = deployment("s3://models/tiny")["spec"]["template"]["spec"]["containers"][0]
    running = subprocess.Popen([*engine["command"], "sleep", "60"],
                               env={**os.environ, "TIDAL_MODEL_IN_USE": str(first.path.parent / "in-use")})
    try:
        deadline = time.monotonic() + 10
        while not in_use(first.path.parent):
            assert time.monotonic() < deadline and running.poll() is None, "the wrapper never took the lock"
            time.sleep(0.05)
        with pytest.raises(CacheFull, match="in use"):
            store.ensure("s3://models/tiny-copy", None, S3Source("models/tiny-copy", client))
        assert model_bytes(first.path) == size, "the model in use was touched"
    finally:
        running.kill()
        running.wait(10)
    # The engine stopped: now the least recently used model makes way.
    second = store.ensure("s3://models/tiny-copy", None, S3Source("models/tiny-copy", client))
    assert second.evicted == (first.key,) and not first.path.exists() and model_bytes(second.path) == size


@pytest.mark.parametrize("case", ["missing", "wrong-credentials", "too-large"])
def test_a_fetch_that_cannot_succeed_names_its_reason_for_the_operator(s3, tmp_path, case):
    log = tmp_path / "termination-log"
    uri = "s3://models/no-such-model" if case == "missing" else "s3://models/tiny"
    env = {"AWS_SECRET_ACCESS_KEY": "not-the-key"} if case == "wrong-credentials" else {}
    code, out = fetch(uri, tmp_path / "node-cache", s3.url, budget="100Ki" if case == "too-large" else "1Gi",
                      env=env, termination_log=log)
    reason = "CacheTooSmall" if case == "too-large" else "ModelFetchFailed"
    assert code == 1 and log.read_text().startswith(f"{reason}: "), (out, log.read_text())
    assert "Traceback" not in out, out
    assert not (tmp_path / "node-cache" / ENTRIES).exists() or not any((tmp_path / "node-cache" / ENTRIES).iterdir())


def test_the_local_clusters_simulated_engine_reads_the_wrapped_command():
    from tidal_dev.simserver.registry import engine_spec
    engine = deployment("s3://models/tiny")["spec"]["template"]["spec"]["containers"][0]
    spec = engine_spec(engine, {})
    assert spec is not None and spec.engine == "vllm" and spec.port == 8000



def prefetch_pod(uri: str, budget: str = "1Gi") -> dict:
    from tidal.render import render_prefetch
    spec = parse_spec({"engine": {"type": "vllm"}, "model": {"uri": uri, "cache": {"prefetch": True}},
                       "placement": {"nodePool": "a100"}})
    settings = RenderSettings(model_cache=ModelCacheSettings(root="/var/lib/tidal/models", budget=budget))
    return render_prefetch("llm", "ml", "uid-1", spec, settings)["spec"]["template"]["spec"]


def test_a_prefetch_pod_fetches_then_keeps_its_model_from_eviction_until_stopped(s3, tiny_model, tmp_path):
    """The prefetch DaemonSet's two containers, run as the node would: the fetch, then the holder (the same
    command with --hold). While the holder runs, the cache refuses to evict the model for another; stopped
    (SIGTERM, as the kubelet does), it exits cleanly and lets go."""
    counting = TcpForwarder(int(s3.url.rsplit(":", 1)[1]))
    root, size = tmp_path / "node-cache", model_bytes(tiny_model)
    pod = prefetch_pod("s3://models/tiny")
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-model"] and pod["containers"][0]["name"] == "hold"
    from tests.s3_server import ACCESS_KEY, SECRET_KEY
    env = {**os.environ, "AWS_ENDPOINT_URL": counting.url, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
           "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1"}

    def run(container: dict) -> subprocess.Popen:
        argv = [a.replace(CACHE_DIR, str(root)) for a in container["command"]]
        assert argv[:2] == ["tidal", "fetch-model"], argv
        return subprocess.Popen([sys.executable, "-m", "tidal.cli", *argv[1:], "--termination-log",
                                 str(tmp_path / "termination-log")], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    init = run(pod["initContainers"][0])
    assert init.wait(120) == 0, init.stdout.read()
    holder = run(pod["containers"][0])
    entry = root / ENTRIES / cache_key("s3://models/tiny")
    try:
        deadline = time.monotonic() + 20
        while not in_use(entry):
            assert time.monotonic() < deadline and holder.poll() is None, "the holder never took the lock"
            time.sleep(0.05)
        assert counting.gets("/models/tiny/") == len(list(tiny_model.iterdir())), "the holder fetched again"
        store = CacheStore(root, budget_bytes=int(size * 1.5), clock=lambda: time.time() + 3600)
        with pytest.raises(CacheFull, match="in use"):
            store.ensure("s3://models/tiny-copy", None, S3Source("models/tiny-copy", s3.client()))
    finally:
        holder.send_signal(signal.SIGTERM)
        code = holder.wait(10)
    assert code == 0, holder.stdout.read()
    assert not in_use(entry)


# ---- gs:// models: Cloud Storage's JSON API (fake-gcs-server, the emulator Google's libraries use) ----------
@pytest.fixture(scope="module")
def gcs(tmp_path_factory, tiny_model):
    from tests.gcs_server import gcs_server
    with gcs_server(tmp_path_factory.mktemp("gcs"), buckets=("models",)) as server:
        for name in ("tiny", "tampered"):
            for f in tiny_model.iterdir():
                server.upload("models", f"{name}/{f.name}", f.read_bytes())
        yield server


def gcs_fetch(uri: str, cache_root: Path, endpoint: str, **env) -> tuple[int, str]:
    """The rendered init container's command for a gs:// model, as the node would run it."""
    spec = parse_spec({"engine": {"type": "vllm"}, "model": {"uri": uri, "credentials": {"secretName": "gcs"}}})
    settings = RenderSettings(model_cache=ModelCacheSettings(root="/var/lib/tidal/models", budget="1Gi"))
    pod = render_deployment("llm", "ml", "uid-1", spec, settings)["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    # The key reaches the fetch as a file from the Secret, never as a copied value (what google-auth reads).
    assert {"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": "/var/run/secrets/tidal/gcs/credentials.json"} \
        in init["env"]
    assert {"name": "gcs-key", "secret": {"secretName": "gcs", "items": [
        {"key": "credentials.json", "path": "credentials.json"}]}} in pod["volumes"]
    argv = [a.replace(CACHE_DIR, str(cache_root)) for a in init["command"]]
    full_env = {k: v for k, v in os.environ.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"}
    proc = subprocess.run([sys.executable, "-m", "tidal.cli", *argv[1:], "--termination-log",
                           str(cache_root.parent / "termination-log")],
                          env={**full_env, "STORAGE_EMULATOR_HOST": endpoint, **env}, capture_output=True, text=True,
                          timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def test_a_gs_model_is_fetched_once_per_node_and_checked_against_its_md5(gcs, tiny_model, tmp_path):
    counting = TcpForwarder(int(gcs.url.rsplit(":", 1)[1]))
    downloads = lambda: sum(n for (m, p), n in counting.requests.items() if "alt=media" in p)  # noqa: E731
    root = tmp_path / "node-cache"
    code, out = gcs_fetch("gs://models/tiny", root, counting.url)
    assert code == 0, out
    weights = root / ENTRIES / cache_key("gs://models/tiny") / "model"
    assert {f.name: f.read_bytes() for f in weights.iterdir()} == {f.name: f.read_bytes() for f in tiny_model.iterdir()}
    assert downloads() == len(list(tiny_model.iterdir()))
    code, out = gcs_fetch("gs://models/tiny", root, counting.url)  # a second replica on the node
    assert code == 0 and "cache hit" in out, out
    assert downloads() == len(list(tiny_model.iterdir())), "the second replica downloaded again"
    # An object whose bytes no longer match the md5 Cloud Storage lists for it (damaged at rest or on the way):
    # refused, and nothing of it in the cache.
    stored = gcs.directory / "data" / "models" / "tampered" / "model.safetensors"
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    code, out = gcs_fetch("gs://models/tampered", root, gcs.url)
    report = (root.parent / "termination-log").read_text()
    assert code == 1 and report.startswith("ModelFetchFailed: ") and "md5" in report, (out, report)
    assert not (root / ENTRIES / cache_key("gs://models/tampered")).exists()


def test_a_gs_fetch_with_unusable_credentials_names_them(tmp_path):
    """No emulator: google-auth reads the Secret's credentials.json; a file that is no Google credential stops
    the fetch before any request, with a reason the operator reports (ModelFetchFailed)."""
    key = tmp_path / "credentials.json"
    key.write_text('{"type": "not_a_google_credential"}')
    root = tmp_path / "node-cache"
    code, out = gcs_fetch("gs://models/tiny", root, "", GOOGLE_APPLICATION_CREDENTIALS=str(key))
    report = (tmp_path / "termination-log").read_text()
    assert code == 1 and report.startswith("ModelFetchFailed: gs://models/tiny: "), (out, report)
    assert "credentials" in report.lower() and "Traceback" not in out, report
