"""The model cache's fetch phase, side by side in one run: a replica on a node without the model (it downloads)
vs one on a node that holds it (a cache hit), and the fetcher's peak memory for a model and one four times its
size (it streams: memory should not follow the model's size).

A real S3 server (S3Proxy, tests/s3_server.py) holds two synthetic models of random bytes in 4 files each;
`tidal fetch-model` runs as the init container would, each run a fresh process, its peak RSS read from the
kernel (GNU time's %M). Reported: seconds per phase, the ratio uncached / cached, and peak
MiB per model size.

  python benchmarks/model_cache.py [--megabytes 256]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.s3_server import ACCESS_KEY, SECRET_KEY, s3_server  # noqa: E402


def upload(client, name: str, megabytes: int) -> None:
    import io
    quarter = megabytes * 2**20 // 4
    for i in range(4):  # multipart (S3Proxy refuses one PUT this large), as model uploads are
        client.upload_fileobj(io.BytesIO(os.urandom(quarter)), "models", f"{name}/part-{i}.safetensors")


def fetch(uri: str, root: Path, url: str) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of one `tidal fetch-model` process, its peak as GNU time reads it (the child of a
    small process: a child forked from this one would count this process's memory as its own)."""
    env = {**os.environ, "AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
           "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1"}
    started = time.monotonic()
    proc = subprocess.run(["/usr/bin/time", "-f", "peak-kib %M", sys.executable, "-m", "tidal.cli", "fetch-model",
                           "--uri", uri, "--cache-root", str(root), "--budget", "64Gi", "--termination-log",
                           str(root.parent / "log")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak = next(int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("peak-kib "))
    return took, peak / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=256, help="the smaller model's size")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work, s3_server(Path(work) / "s3", buckets=("models",)) as s3:
        client = s3.client()
        upload(client, "small", args.megabytes)
        upload(client, "large", args.megabytes * 4)
        root = Path(work) / "node"
        uncached, small_rss = fetch("s3://models/small", root, s3.url)
        cached, _ = fetch("s3://models/small", root, s3.url)
        _, large_rss = fetch("s3://models/large", root, s3.url)
    print(f"fetch phase, {args.megabytes} MB model: uncached node {uncached:.2f} s, cached node {cached:.2f} s "
          f"(uncached / cached = {uncached / cached:.1f}x)")
    print(f"fetcher peak RSS: {args.megabytes} MB model {small_rss:.0f} MiB, {args.megabytes * 4} MB model "
          f"{large_rss:.0f} MiB (large / small = {large_rss / small_rss:.2f})")


if __name__ == "__main__":
    main()
