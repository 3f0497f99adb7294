"""`tidal-dev cluster up/down` as a user runs it: nothing left behind, stale state recovered."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tidal_dev.cluster.processes import pid_alive, port_is_listening
from tests.conftest import TEST_NODES

pytestmark = pytest.mark.cluster


def tidal(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "tidal_dev", "cluster", *args],
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"tidal {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def listening_ports(state_dir):
    """Every loopback port the cluster's components were started on, from their command lines."""
    state = json.loads((state_dir / "state.json").read_text())
    ports = {int(state["api_server"].rsplit(":", 1)[1]), int(state["prometheus_url"].rsplit(":", 1)[1])}
    for pid in state["pids"].values():
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        for arg in argv:
            for token in arg.decode().replace(",", " ").split():
                if token.startswith(("http://127.0.0.1:", "127.0.0.1:")):
                    ports.add(int(token.rsplit(":", 1)[1].split("/")[0]))
        if b"--secure-port" in argv:
            ports.add(int(argv[argv.index(b"--secure-port") + 1]))
    return state["pids"], ports


def test_up_then_down_leaves_no_process_and_no_port(tmp_path, dev_cluster):
    # dev_cluster ensures the binaries are built; this is a second, independent cluster.
    state_dir = tmp_path / "c1"
    out = tidal("up", "--state-dir", str(state_dir), "--nodes", str(TEST_NODES)).stdout
    assert f"export KUBECONFIG={state_dir / 'kubeconfig'}" in out
    status = json.loads(tidal("status", "--state-dir", str(state_dir)).stdout)
    assert status["running"] and set(status["components"]) == {
        "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "prometheus",
        "sim-runtime"}
    pids, ports = listening_ports(state_dir)
    assert all(port_is_listening(p) for p in ports)
    tidal("down", "--state-dir", str(state_dir))
    assert not [name for name, pid in pids.items() if pid_alive(pid)]
    assert not [p for p in ports if port_is_listening(p)]
    assert tidal("status", "--state-dir", str(state_dir), check=False).returncode == 3


def test_up_recovers_from_a_stale_state_directory(tmp_path, dev_cluster):
    state_dir = tmp_path / "c2"
    tidal("up", "--state-dir", str(state_dir), "--nodes", str(TEST_NODES))
    pids, _ = listening_ports(state_dir)
    for pid in pids.values():  # a crash: everything dies, state.json stays
        os.killpg(pid, signal.SIGKILL)
    out = tidal("up", "--state-dir", str(state_dir), "--nodes", str(TEST_NODES)).stdout
    assert "cleaning stale state" in out
    new_pids, _ = listening_ports(state_dir)
    assert all(pid_alive(p) for p in new_pids.values())
    # a second `up` on a running cluster is a no-op, not an error
    assert "already running" in tidal("up", "--state-dir", str(state_dir), "--nodes", str(TEST_NODES)).stdout
    tidal("down", "--state-dir", str(state_dir))
    assert not any(pid_alive(p) for p in new_pids.values())
