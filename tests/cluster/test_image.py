"""#19: the image `make image` builds, read by third-party tools (skopeo, umoci), and Tidal running from it:
`tidal run` and `tidal activator` from its root filesystem, read-only, as UID 65532, against a cluster of
their own (the session's operator must not serve what this one should)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.cluster.test_operator import EXAMPLES, get, wait_condition
from tests.cluster.test_smoke import wait_for
from tests.conftest import TEST_NODES, Kubectl, install_crd
from tidal import __version__
from tidal_dev.cluster.cluster import DevCluster
from tidal_dev.cluster.processes import free_port, http_ok

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "tools" / "image" / "build.py"
UID = 65532


def build(out: Path) -> dict:
    proc = subprocess.run([sys.executable, str(BUILD), "--out", str(out)], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "index.json").read_text())["manifests"][0]


def skopeo(layout: Path, *flags: str) -> dict:
    return json.loads(subprocess.run(["skopeo", "inspect", *flags, f"oci:{layout}:{__version__}"],
                                     capture_output=True, text=True, check=True).stdout)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    if os.geteuid() != 0 or not shutil.which("mmdebstrap"):
        pytest.fail("the image build needs root and mmdebstrap (make install installs it)")
    out = tmp_path_factory.mktemp("image") / "image"
    build(out)
    return out


def test_the_image_runs_tidal_as_65532_with_labels_and_an_sbom(image):
    config = skopeo(image, "--config")
    assert config["config"]["User"] == f"{UID}:{UID}" and config["config"]["Entrypoint"] == ["tidal"]
    labels = config["config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == __version__
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert labels["org.opencontainers.image.revision"] == head
    assert {"org.opencontainers.image.source", "org.opencontainers.image.created",
            "org.opencontainers.image.licenses", "org.opencontainers.image.title"} <= set(labels)
    assert skopeo(image)["Digest"] == json.loads((image / "index.json").read_text())["manifests"][0]["digest"]
    sbom = json.loads((image.parent / "image.spdx.json").read_text())
    names = {p["name"] for p in sbom["packages"]}
    assert {"python3.11-minimal", "libc6", "kopf", "aiohttp", "pydantic", "tidal"} <= names, sorted(names)
    assert sbom["spdxVersion"] == "SPDX-2.3"


def test_two_builds_give_the_same_digest(image, tmp_path):
    first = json.loads((image / "index.json").read_text())["manifests"][0]
    assert build(tmp_path / "again") == first


def run_in_image(rootfs: Path, config: dict, conf: Path, args: list[str], log: Path) -> subprocess.Popen:
    """As a container runtime would run it: the image's root read-only with /proc, /dev and a tmpfs /tmp;
    the config directory mounted read-only at /tmp/conf; the image's user, environment and entrypoint.
    In a mount namespace of its own, so nothing it mounts outlives it (every step execs: the Popen's pid
    is the program's)."""
    user, env, entry = config["User"], config["Env"], config["Entrypoint"]
    script = ('set -e; r="$1"; c="$2"; shift 2; mount --bind "$r" "$r"; mount -o remount,bind,ro "$r"; '
              'mount -t proc proc "$r/proc"; mount --rbind /dev "$r/dev"; '
              'mount -t tmpfs -o mode=1777 tmpfs "$r/tmp"; mkdir "$r/tmp/conf"; mount -o bind,ro "$c" "$r/tmp/conf"; '
              f'exec env -i {" ".join(env)} {shutil.which("chroot")} --userspec={user} "$r" "$@"')
    return subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                             str(rootfs), str(conf), *entry, *args], stdout=open(log, "w"), stderr=subprocess.STDOUT)


def test_operator_and_gateway_from_the_image_serve_an_example(image, tmp_path_factory):
    work = tmp_path_factory.mktemp("image-run")
    subprocess.run(["umoci", "unpack", "--image", f"{image}:{__version__}", str(work / "bundle")], check=True,
                   capture_output=True)
    rootfs = work / "bundle" / "rootfs"
    size = sum(p.lstat().st_size for p in rootfs.rglob("*") if p.is_file() and not p.is_symlink())
    assert size < 250e6, f"the unpacked image is {size / 1e6:.0f} MB"
    config = skopeo(image, "--config")["config"]
    cluster = DevCluster(work / "cluster", TEST_NODES, scrape_interval="1s")
    info = cluster.up()
    procs = []
    try:
        kubectl = Kubectl(info)
        install_crd(kubectl)
        conf = work / "conf"
        conf.mkdir(mode=0o755)
        shutil.copy(info.kubeconfig, conf / "kubeconfig")
        (conf / "kubeconfig").chmod(0o644)
        op_port, port, metrics_port = free_port(), free_port(), free_port()
        procs.append(run_in_image(rootfs, config, conf, [
            "run", "--kubeconfig=/tmp/conf/kubeconfig", f"--prometheus-url={info.prometheus_url}",
            f"--http-port={op_port}", "--http-host=127.0.0.1", "--autoscale-interval=1", "--metrics-grace=8",
            "--network-policy=off"], work / "operator.log"))
        procs.append(run_in_image(rootfs, config, conf, [
            "activator", "--kubeconfig=/tmp/conf/kubeconfig", f"--operator-url=http://127.0.0.1:{op_port}",
            "--host=127.0.0.1", f"--port={port}", f"--metrics-port={metrics_port}", "--api-keys=off"],
            work / "activator.log"))
        for url, proc, log in ((f"http://127.0.0.1:{op_port}/healthz", procs[0], "operator.log"),
                               (f"http://127.0.0.1:{metrics_port}/healthz", procs[1], "activator.log")):
            wait_for(lambda: http_ok(url) or proc.poll() is not None, timeout=60, what=f"{url} from the image")
            assert proc.poll() is None, (work / log).read_text()[-3000:]
        for proc in procs:  # as the image's user, on a read-only root
            status = Path(f"/proc/{proc.pid}/status").read_text()
            assert f"Uid:\t{UID}\t{UID}" in status, status
            mounts = Path(f"/proc/{proc.pid}/mountinfo").read_text().splitlines()
            root = next(line for line in mounts if line.split()[4] == "/")
            assert " ro," in f" {root.split()[5]}," or root.split()[5].startswith("ro"), root
        namespace = "image-test"
        kubectl("create", "namespace", namespace)
        kubectl("create", "secret", "generic", "hf-token", "-n", namespace, "--from-literal=HF_TOKEN=not-a-real-token")
        kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "vllm-llama-h100.yaml"))
        wait_condition(kubectl, namespace, "llama-8b", "Ready", "True", "ModelReady", timeout=120)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/completions",
            json.dumps({"model": "llama-3.1-8b", "prompt": "hi", "max_tokens": 4}).encode(),
            {"Content-Type": "application/json"})
        answer = json.load(urllib.request.urlopen(request, timeout=120))
        assert answer["usage"]["completion_tokens"] == 4
        assert get(kubectl, namespace, "inferenceservice", "llama-8b")["status"]["readyReplicas"] >= 1
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        cluster.down()
