"""Where files and batch progress live: a directory (on a PersistentVolume in a cluster), or an S3-compatible
bucket (clients/s3.py, the same five operations). Objects are named
by slash-separated keys; a write is atomic (a temporary file renamed over the name), an append is flushed
to disk before it returns, so a result line written is a result line kept after a kill.

The methods block: callers on the event loop run them in a thread (`asyncio.to_thread`)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from ...streams import READ_CHUNK, split_lines


class Writer(Protocol):
    """An object written piece by piece (an upload of up to 200 MB is never held whole): it appears under its
    name at commit(), complete, or not at all."""
    def write(self, data: bytes) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


class Storage(Protocol):
    def put(self, name: str, data: bytes) -> None: ...
    def append(self, name: str, data: bytes) -> None: ...
    def get(self, name: str) -> bytes | None: ...
    def names(self, prefix: str) -> list[str]: ...
    def delete(self, name: str) -> bool: ...
    def writer(self, name: str) -> Writer: ...
    def chunks(self, name: str) -> Iterator[bytes] | None: ...  # the bytes, streamed; None: no such object
    def lines(self, name: str) -> Iterator[bytes | None] | None: ...  # without their line ends (streams.py)


class _FileWriter:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        self.file = open(self.tmp, "wb")

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


class DirectoryStorage:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        if not name or name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"bad object name {name!r}")
        return self.root / name

    def put(self, name: str, data: bytes) -> None:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def append(self, name: str, data: bytes) -> None:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def get(self, name: str) -> bytes | None:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            return None

    def writer(self, name: str) -> _FileWriter:
        return _FileWriter(self._path(name))

    def chunks(self, name: str) -> Iterator[bytes] | None:
        try:
            f = open(self._path(name), "rb")
        except FileNotFoundError:
            return None

        def read():
            with f:
                while chunk := f.read(READ_CHUNK):
                    yield chunk
        return read()

    def lines(self, name: str) -> Iterator[bytes | None] | None:
        chunks = self.chunks(name)
        return None if chunks is None else split_lines(chunks)

    def names(self, prefix: str) -> list[str]:
        """Object names directly under `prefix` (a folder), sorted."""
        folder = self._path(prefix.rstrip("/"))
        if not folder.is_dir():
            return []
        return sorted(f"{prefix.rstrip('/')}/{p.name}" for p in folder.iterdir()
                      if p.is_file() and not p.name.startswith("."))

    def delete(self, name: str) -> bool:
        try:
            self._path(name).unlink()
            return True
        except FileNotFoundError:
            return False


def open_storage(where: str | Path):
    """A directory path, or `s3://bucket[/prefix]`."""
    if str(where).startswith("s3://"):
        from ...clients.s3 import S3Storage
        return S3Storage(str(where))
    return DirectoryStorage(where)
