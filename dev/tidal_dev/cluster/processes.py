"""Start, watch and stop the control-plane processes.

Each component runs in its own process group with its log in `<state>/logs/`.
A component that dies or never becomes healthy is reported by name with the
tail of its log, so a failed start says what to look at.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


class ComponentError(RuntimeError):
    def __init__(self, component: str, problem: str, log_path: Path | None):
        tail = log_tail(log_path) if log_path else ""
        super().__init__(f"{component}: {problem}" + (f"\n--- last lines of {log_path} ---\n{tail}" if tail else ""))
        self.component = component


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
    except OSError:
        return ""


def free_port() -> int:
    """A port nobody listens on now. Components bind it moments later; a lost race
    shows up as 'address already in use' and the start is retried on a new port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """`n` distinct ports nobody listens on now. Held open together while chosen: asked one at a time, the
    kernel can hand out the same port twice (a Triton test got one port for two of its listeners)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(n)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def port_is_listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); it is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def http_ok(url: str, ssl_context: ssl.SSLContext | None = None, expect: bytes | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=ssl_context) as resp:
            body = resp.read()
            return resp.status == 200 and (expect is None or expect in body)
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class Component:
    """One process of the local cluster: how to start it and how to tell it is healthy."""

    name: str
    command: Callable[[dict[str, int]], list[str]]  # ports -> argv
    ports: list[str]  # names of the ports it listens on, chosen free at start
    healthy: Callable[[dict[str, int]], bool]
    startup_timeout: float = 60.0
    pid: int | None = None
    port_numbers: dict[str, int] = field(default_factory=dict)


def start(component: Component, log_dir: Path, fixed_ports: dict[str, int] | None = None,
          attempts: int = 3) -> None:
    """Start a component and wait until it is healthy, retrying on a port clash."""
    log_path = log_dir / f"{component.name}.log"
    for attempt in range(attempts):
        chosen = dict(zip(component.ports, free_ports(len(component.ports))))
        component.port_numbers = {p: (fixed_ports or {}).get(p) or chosen[p] for p in component.ports}
        argv = component.command(component.port_numbers)
        with open(log_path, "ab") as log:
            log.write(f"\n=== start {time.strftime('%H:%M:%S')}: {' '.join(argv)}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            except OSError as err:
                raise ComponentError(component.name, f"cannot execute {argv[0]}: {err}", None) from err
        component.pid = proc.pid
        deadline = time.monotonic() + component.startup_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if component.healthy(component.port_numbers):
                return
            time.sleep(0.2)
        exit_code = proc.poll()
        if exit_code is None:
            stop_pid(proc.pid)
        proc.wait()
        tail = log_tail(log_path, 40)
        if "address already in use" in tail.lower() and attempt + 1 < attempts and not fixed_ports:
            continue
        problem = (f"exited with code {exit_code} during start" if exit_code is not None
                   else f"not healthy after {component.startup_timeout:.0f} s")
        raise ComponentError(component.name, problem, log_path)


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left after `timeout`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                _reap(pid)
                return
            time.sleep(0.05)
    _reap(pid)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
