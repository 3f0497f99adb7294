"""The gateway in static mode (fixed upstreams, no cluster, keys off), for the tests that put real engines
behind it."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tidal_dev.cluster.processes import free_port, http_ok


@dataclass
class StaticGateway:
    address: str  # host:port of the OpenAI endpoint
    metrics_url: str

    def sample(self, name: str, **labels: str) -> float:
        """One sample of the gateway's own metrics (0 when the series does not exist yet)."""
        text = urllib.request.urlopen(self.metrics_url, timeout=5).read().decode()
        return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


@contextlib.contextmanager
def static_gateway(endpoints: list[str], log: Path, *extra: str):
    """endpoints: `namespace/name[@served]=host:port` each; extra: more of `tidal activator`'s flags."""
    port, metrics = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tidal.cli", "activator", "--host", "127.0.0.1", "--port", str(port),
                             "--metrics-port", str(metrics), "--api-keys", "off",
                             *[f"--static-endpoint={e}" for e in endpoints], *extra],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while not http_ok(f"http://127.0.0.1:{metrics}/healthz") and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        yield StaticGateway(f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics}/metrics")
    finally:
        proc.terminate()
        proc.wait(10)
