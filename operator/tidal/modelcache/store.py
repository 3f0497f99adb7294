"""A node's model cache: each model fetched once per node, complete or not at all, within a byte budget.

- One fetch per model at a time: an exclusive lock on `locks/<key>.lock`. Replicas starting together on one
  node all ask; the first downloads, the others wait on the lock and then find the entry (zero bytes fetched).
- Complete or absent: a download goes to `partial/<key>.<pid>/`, every file's size (and sha256, where the
  source gives one) is checked, and only then is the directory renamed into `entries/<key>` (one rename, atomic
  on one filesystem). A fetch killed half-way leaves a partial directory, which the next fetch removes.
- A budget: before a download, least-recently-used entries are evicted until the model fits; an entry whose
  `in-use` file an engine holds a shared lock on is never evicted (the lock dies with the engine, even on
  SIGKILL), nor one handed to a replica in the last HANDOVER_S (its engine container may not have started
  and taken the lock yet). A model larger than the whole budget is refused before a byte is fetched
  (CacheTooSmall).

The lock, the rename and the eviction are plain POSIX file operations, so this works on any node-local
filesystem (a hostPath or a local PersistentVolume). The methods block; they run in the fetch init container.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .layout import ENTRIES, IN_USE, LOCKS, MANIFEST, PARTIAL, USED_WITH, WEIGHTS, cache_key
from .sources import RemoteFile, Source


# From the fetch handing an entry to a replica to its engine taking the in-use lock: the init container exits,
# the kubelet starts the engine container. Seconds, usually; an image pull of the engine can take minutes.
HANDOVER_S = 900.0


class CacheTooSmall(Exception):
    """The model is larger than the node's whole cache budget."""


class CacheFull(Exception):
    """The model would fit the budget, but the models in use leave no room for it."""


class FetchFailed(Exception):
    """The source failed, or what arrived is not what it listed (size or checksum)."""


@dataclass(frozen=True)
class Fetched:
    path: Path  # the weights directory an engine loads
    key: str
    hit: bool  # already on the node: nothing was downloaded
    fetched_bytes: int
    evicted: tuple[str, ...] = ()


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@contextmanager
def _locked(path: Path, mode: int) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle, mode)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def in_use(entry: Path) -> bool:
    """Whether an engine holds its shared lock on the entry's in-use file (see render/model_fetch.py), or, for an
    adapter, on the in-use file of a base it is used with (an engine holds its base's lock, which covers the
    adapters it loads: one lock per engine, whatever the number of adapters)."""
    if _held(entry):
        return True
    users = entry / USED_WITH
    return users.is_dir() and any(_held(entry.parent / base.name) for base in users.iterdir())


def used_with(entry: Path, base_key: str) -> None:
    """Record that replicas of `base_key` load this entry (an adapter): in use while one of them runs."""
    (entry / USED_WITH).mkdir(exist_ok=True)
    (entry / USED_WITH / base_key).touch()


def _held(entry: Path) -> bool:
    try:
        handle = open(entry / IN_USE, "rb")
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


class CacheStore:
    def __init__(self, root: Path, budget_bytes: int, clock: Callable[[], float] = time.time):
        self.root, self.budget, self.clock = Path(root), budget_bytes, clock

    def ensure(self, uri: str, revision: str | None, source: Source | Callable[[], Source], log=print) -> Fetched:
        """The model's entry, fetched from `source` unless the node has it (a callable source is made only
        then: a cache hit neither imports nor authenticates a storage client)."""
        key = cache_key(uri, revision)
        entry = self.root / ENTRIES / key
        with _locked(self.root / LOCKS / f"{key}.lock", fcntl.LOCK_EX):
            if (entry / MANIFEST).is_file():
                os.utime(entry / MANIFEST)  # least recently used: this one was just used
                log(f"{uri}: in this node's cache ({key}); nothing to fetch")
                return Fetched(entry / WEIGHTS, key, True, 0)
            self._drop_partials(key)
            if callable(source):
                source = source()
            files = source.list()
            total = sum(f.size for f in files)
            if total > self.budget:
                raise CacheTooSmall(f"{uri} is {total / 2**30:.1f} GiB; the node's model cache holds "
                                    f"{self.budget / 2**30:.1f} GiB (raise modelCache.budget)")
            evicted = self._make_room(total, keep=key)
            partial = self.root / PARTIAL / f"{key}.{os.getpid()}"
            (partial / WEIGHTS).mkdir(parents=True)
            fetched = self._download(source, files, partial / WEIGHTS, log)
            (partial / IN_USE).touch()
            (partial / MANIFEST).write_text(json.dumps({"uri": uri, "revision": revision, "bytes": total,
                                                        "files": len(files)}))
            entry.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(entry, ignore_errors=True)  # an entry without its manifest: an older, broken write
            os.rename(partial, entry)
            log(f"{uri}: fetched {fetched:,} bytes in {len(files)} file(s) into this node's cache ({key})")
            return Fetched(entry / WEIGHTS, key, False, fetched, tuple(evicted))

    def entries(self) -> list[tuple[Path, float, int]]:
        """(entry, last used, bytes) of every complete entry, least recently used first."""
        out = []
        for entry in (self.root / ENTRIES).glob("*") if (self.root / ENTRIES).is_dir() else ():
            manifest = entry / MANIFEST
            if manifest.is_file():
                out.append((entry, manifest.stat().st_mtime, json.loads(manifest.read_text())["bytes"]))
        return sorted(out, key=lambda e: e[1])

    def _make_room(self, needed: int, keep: str) -> list[str]:
        entries = self.entries()
        used = sum(size for _, _, size in entries)
        evicted = []
        now = self.clock()
        for entry, last_used, size in entries:
            if used + needed <= self.budget:
                break
            if entry.name == keep or now - last_used < HANDOVER_S or in_use(entry):
                continue
            with _locked(self.root / LOCKS / f"{entry.name}.lock", fcntl.LOCK_EX):
                shutil.rmtree(entry, ignore_errors=True)
            used -= size
            evicted.append(entry.name)
        if used + needed > self.budget:
            raise CacheFull(f"the node's model cache ({self.budget / 2**30:.1f} GiB) is held by models in use; "
                            f"{needed / 2**30:.1f} GiB more do not fit until one of them stops")
        return evicted

    def _drop_partials(self, key: str) -> None:
        """Downloads of this model that a killed fetch left (we hold its lock: none is running)."""
        for stale in (self.root / PARTIAL).glob(f"{key}.*") if (self.root / PARTIAL).is_dir() else ():
            shutil.rmtree(stale, ignore_errors=True)

    @staticmethod
    def _download(source: Source, files: list[RemoteFile], into: Path, log) -> int:
        fetched = 0
        for n, remote in enumerate(files, 1):
            target = into / remote.path
            if not target.resolve().is_relative_to(into.resolve()):
                raise FetchFailed(f"{remote.path!r}: a file name that leaves the model's directory")
            target.parent.mkdir(parents=True, exist_ok=True)
            digest, size = hashlib.sha256(), 0
            md5 = hashlib.md5(usedforsecurity=False) if remote.md5 else None
            with open(target, "wb") as out:
                for chunk in source.read(remote):
                    out.write(chunk)
                    digest.update(chunk)
                    if md5:
                        md5.update(chunk)
                    size += len(chunk)
            if size != remote.size:
                raise FetchFailed(f"{remote.path}: {size:,} bytes arrived, the source listed {remote.size:,}")
            if remote.sha256 and digest.hexdigest() != remote.sha256:
                raise FetchFailed(f"{remote.path}: sha256 {digest.hexdigest()} is not the source's {remote.sha256}")
            if md5 and md5.hexdigest() != remote.md5:
                raise FetchFailed(f"{remote.path}: md5 {md5.hexdigest()} is not the source's {remote.md5}")
            fetched += size
            log(f"  [{n}/{len(files)}] {remote.path}: {size:,} bytes")
        return fetched
