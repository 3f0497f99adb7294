"""A real S3 server for the tests: S3Proxy (tools/s3proxy.sh, from Maven Central) on loopback, keeping its
objects in the test's directory, with AWS signature v4 and one access key."""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from pathlib import Path

from tests.server_process import connects, serving

ROOT = Path(__file__).resolve().parents[1]
ACCESS_KEY, SECRET_KEY = "tidal-test", "tidal-test-secret-key"


@dataclass
class S3Server:
    url: str

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to reach it: the variables every AWS SDK reads."""
        return {"AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_REGION": "us-east-1"}

    def client(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1")


@contextlib.contextmanager
def s3_server(directory: Path, buckets=("tidal",)):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (directory / "data").mkdir(parents=True, exist_ok=True)
    properties = directory / "s3proxy.conf"
    properties.write_text(f"s3proxy.endpoint=http://127.0.0.1:{port}\n"
                          "s3proxy.authorization=aws-v2-or-v4\n"
                          f"s3proxy.identity={ACCESS_KEY}\ns3proxy.credential={SECRET_KEY}\n"
                          "jclouds.provider=filesystem\n"
                          f"jclouds.filesystem.basedir={directory / 'data'}\n")
    server = S3Server(f"http://127.0.0.1:{port}")
    with serving([str(ROOT / "tools/s3proxy.sh"), "--properties", str(properties)], directory / "s3proxy.log",
                 lambda: connects("127.0.0.1", port), timeout_s=60):
        client = server.client()
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield server
