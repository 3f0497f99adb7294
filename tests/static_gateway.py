"""The gateway in static mode (fixed upstreams, no cluster, keys off), for the tests that put real engines
behind it."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

from tidal.devcluster.processes import free_port, http_ok


@contextlib.contextmanager
def static_gateway(endpoints: list[str], log: Path):
    """endpoints: `namespace/name[@served]=host:port` each; yields the gateway's host:port."""
    port, metrics = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tidal.cli", "activator", "--host", "127.0.0.1", "--port", str(port),
                             "--metrics-port", str(metrics), "--api-keys", "off",
                             *[f"--static-endpoint={e}" for e in endpoints]],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while not http_ok(f"http://127.0.0.1:{metrics}/healthz") and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
