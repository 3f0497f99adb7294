"""A test's server as a process of its own: started, waited for until it answers, stopped afterwards (what the S3
and Cloud Storage servers of the tests share)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def serving(argv: list[str], log: Path, answers: Callable[[], bool], timeout_s: float) -> Iterator[subprocess.Popen]:
    """Run `argv` (output into `log`) until the block ends; enter once `answers()` is true. A server that exits or
    does not answer within `timeout_s` fails the test with the end of its log."""
    proc = subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while not answers():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def connects(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False
