"""Component start-up: failures name the component and show its log; a port clash is retried."""

from __future__ import annotations

import socket
import sys

import pytest

from tidal_dev.cluster import processes
from tidal_dev.cluster.processes import Component, ComponentError, http_ok, pid_alive, start, stop_pid


def http_server(port_name="web"):
    return Component(
        "tiny-http",
        lambda p: [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(p[port_name])],
        [port_name],
        lambda p: http_ok(f"http://127.0.0.1:{p[port_name]}/"),
        startup_timeout=10,
    )


def test_a_component_that_fails_is_named_with_its_log_tail(tmp_path):
    broken = Component("kube-fake", lambda p: ["sh", "-c", "echo 'E0101 cannot open certificate file'; exit 3"],
                       [], lambda p: False, startup_timeout=5)
    with pytest.raises(ComponentError) as err:
        start(broken, tmp_path)
    message = str(err.value)
    assert message.startswith("kube-fake: exited with code 3")
    assert "cannot open certificate file" in message


def test_a_component_that_never_gets_healthy_is_stopped_and_reported(tmp_path):
    hung = Component("stuck", lambda p: ["sleep", "60"], [], lambda p: False, startup_timeout=1)
    with pytest.raises(ComponentError, match="stuck: not healthy after 1 s"):
        start(hung, tmp_path)
    assert not pid_alive(hung.pid)


def test_a_busy_port_is_retried_on_another(tmp_path, monkeypatch):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    first = iter([[busy.getsockname()[1]]])  # the first choice is a port someone took since
    real_free_ports = processes.free_ports
    monkeypatch.setattr(processes, "free_ports", lambda n: next(first, None) or real_free_ports(n))
    component = http_server()
    try:
        start(component, tmp_path)
        assert component.port_numbers["web"] != busy.getsockname()[1]
        assert "Address already in use" in (tmp_path / "tiny-http.log").read_text()
    finally:
        if component.pid:
            stop_pid(component.pid)
        busy.close()
