"""fake-gcs-server (tools/fake-gcs-server.sh): Cloud Storage's JSON API on loopback, the emulator Google's client
libraries reach through STORAGE_EMULATOR_HOST. Objects are uploaded through that API, as a user's `gcloud storage
cp` would put them, so the emulator computes their md5 and size itself."""

from __future__ import annotations

import contextlib
import json
import socket
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.server_process import serving

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class GcsServer:
    url: str
    directory: Path  # the emulator's files (objects under data/<bucket>/)

    def create_bucket(self, name: str) -> None:
        request = urllib.request.Request(f"{self.url}/storage/v1/b", data=json.dumps({"name": name}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    def upload(self, bucket: str, name: str, data: bytes) -> None:
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        request = urllib.request.Request(f"{self.url}/upload/storage/v1/b/{bucket}/o?{query}", data=data,
                                         headers={"Content-Type": "application/octet-stream"}, method="POST")
        urllib.request.urlopen(request, timeout=30).close()


@contextlib.contextmanager
def gcs_server(directory: Path, buckets=("models",)):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    directory.mkdir(parents=True, exist_ok=True)
    server = GcsServer(f"http://127.0.0.1:{port}", directory)

    def answers() -> bool:
        try:
            urllib.request.urlopen(f"{server.url}/storage/v1/b", timeout=1).close()
            return True
        except OSError:
            return False
    with serving([str(ROOT / "tools/fake-gcs-server.sh"), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
                  "-public-host", f"127.0.0.1:{port}", "-backend", "filesystem", "-filesystem-root",
                  str(directory / "data"), "-log-level", "warn"], directory / "fake-gcs-server.log", answers,
                 timeout_s=120):
        for bucket in buckets:
            server.create_bucket(bucket)
        yield server
