"""Where a model lives in a node's cache, as a pure function of its uri and revision: the operator renders the
engine's path from it, the fetcher on the node writes there, and both agree without talking.

  <root>/entries/<key>/model/           the weights, complete and verified (only ever renamed into place)
  <root>/entries/<key>/entry.json       what was fetched: uri, revision, files, bytes
  <root>/entries/<key>/in-use           engines hold a shared lock on it while they run (never evicted then)
  <root>/entries/<key>/used-with/<base> an adapter's: the bases whose replicas load it (in use while one of them is)
  <root>/engine-cache/<key>/            what the engine keeps between starts (vLLM's compile cache)
  <root>/partial/<key>.<pid>/           a download in progress; a killed fetch leaves it here, never in entries/
  <root>/locks/<key>.lock               one fetch per model per node at a time; the others wait, then reuse
"""

from __future__ import annotations

import hashlib
import re

ENTRIES, PARTIAL, LOCKS, ENGINE_CACHE = "entries", "partial", "locks", "engine-cache"
MANIFEST, IN_USE, WEIGHTS, USED_WITH = "entry.json", "in-use", "model", "used-with"
FETCH_CONTAINER = "fetch-model"  # the init container that runs `tidal fetch-model` (the operator reads its end)
ADAPTER_FETCH_PREFIX = "fetch-adapter-"  # an adapter's init container: this and its index in spec.adapters


def cache_key(uri: str, revision: str | None = None) -> str:
    """A directory name unique to (uri, revision), readable enough to find by eye:
    `s3://models/llama-3.1-8b` -> `llama-3.1-8b-5c2f0e1a9b7d3e64`."""
    canonical = uri.rstrip("/") + ("@" + revision if revision else "")
    tail = re.sub(r"[^A-Za-z0-9._-]+", "-", uri.rstrip("/").rsplit("/", 1)[-1])[:48].strip("-.") or "model"
    return f"{tail}-{hashlib.sha256(canonical.encode()).hexdigest()[:16]}"


NODE_LABEL_PREFIX = "model-cache.tidal.dev/"


def node_label(key: str) -> str:
    """The label the operator puts on a node whose cache holds `key` (the key's hash: a label's name part is at
    most 63 characters, a key up to 65). New replicas prefer nodes that carry it."""
    return NODE_LABEL_PREFIX + key.rsplit("-", 1)[-1]


def weights_path(root: str, key: str) -> str:
    return f"{root.rstrip('/')}/{ENTRIES}/{key}/{WEIGHTS}"


def engine_cache_path(root: str, key: str) -> str:
    return f"{root.rstrip('/')}/{ENGINE_CACHE}/{key}"


def in_use_path(root: str, key: str) -> str:
    return f"{root.rstrip('/')}/{ENTRIES}/{key}/{IN_USE}"
