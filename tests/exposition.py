"""A small HTTP server on loopback that answers every GET with what the test sets: a metrics exposition
for Prometheus to scrape, or an error answer. Optionally registered as a scrape target of a cluster."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path


class TextServer:
    def __init__(self, text: str = "", status: int = 200, content_type: str = "text/plain; version=0.0.4"):
        self.text, self.status, self.content_type = text, status, content_type
        self._target: Path | None = None
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = owner.text.encode()
                self.send_response(owner.status)
                self.send_header("Content-Type", owner.content_type)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def scraped_by(self, cluster_state_dir: Path, name: str, **labels: str) -> "TextServer":
        """Register as a file-discovery target of the local cluster's Prometheus."""
        self._target = cluster_state_dir / "targets" / f"{name}.json"
        self._target.write_text(json.dumps([{"targets": [f"127.0.0.1:{self.port}"], "labels": labels}]))
        return self

    def close(self) -> None:
        if self._target is not None:
            self._target.unlink(missing_ok=True)
        self.server.shutdown()

    def __enter__(self) -> "TextServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def sample_sum(text: str, name: str, **labels) -> float:
    """The sum of a metric's samples in an exposition whose labels include `labels`."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()))


def metric_value(url: str, name: str, **labels) -> float:
    """sample_sum of what `<url>/metrics` serves now."""
    import urllib.request
    return sample_sum(urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode(), name, **labels)
